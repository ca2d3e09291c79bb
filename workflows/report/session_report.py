"""A session report: one HTML page and its PNG figures, from a session file alone.

Every section is drawn from what the file holds; where a session lacks the facts a section
needs (no stage positions, no ground truth, no timings), the page says "not available" and why,
so replayed sessions and sessions from real NSID files report as well as twin surveys.
"""

from __future__ import annotations

import heapq
import html
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.spatial import cKDTree

from agent.policy import UNKNOWN
from instruments.session_file.decision_record import ESCALATED_ROUTES, accuracy
from instruments.session_file.decision_row import DecisionRow
from instruments.session_file.reader import SessionReader
from instruments.utils import atomic_file

FUNNEL = ("all frames", "confident", "rescanned", "adjudicated", "human", UNKNOWN)
FUNNEL_COLOURS = {"all frames": "grey", "confident": "C0", "rescanned": "C2",
                  "adjudicated": "C1", "human": "C3", UNKNOWN: "black"}
UNKNOWN_COLOUR = (0.15, 0.15, 0.15, 1.0)
THUMB_PX = 128


@dataclass
class Section:
    """One report section: a title, a figure (or why there is none) and notes."""

    title: str
    image: str | None = None
    unavailable: str | None = None
    html: str = ""


def _thumbnail(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    step = max(1, max(a.shape) // THUMB_PX)
    a = a[::step, ::step]
    finite = a[np.isfinite(a)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    return np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def _colours(labels: list[str]) -> dict[str, Any]:
    """A palette colour per class; unknown (no class) always near-black."""
    from matplotlib import colormaps

    classes = [name for name in labels if name != UNKNOWN]
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {**{name: cmap(i % cmap.N) for i, name in enumerate(classes)},
            UNKNOWN: UNKNOWN_COLOUR}


# text from the session (operator names, notes, labels) is drawn as typed: `$...$` is not
# parsed as maths and nothing goes through TeX
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def _save(fig: Figure, out: Path, name: str) -> str:
    with atomic_file.atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return name


def stage_map(facts: list[DecisionRow], classes: list[str], out: Path) -> Section:
    section = Section("Stage map")
    placed = [f for f in facts if f.x is not None and f.y is not None]
    if len({(f.x, f.y) for f in placed}) < 2:
        with_tiles = [f for f in facts if f.tile is not None]
        if len({f.tile for f in with_tiles}) < 2:
            section.unavailable = "not available: the frames carry no distinct stage positions"
            return section
        placed = with_tiles
    colours = _colours(classes)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    use_tiles = placed[0].x is None or len({(f.x, f.y) for f in placed}) < 2
    scale, unit = (1.0, "tile") if use_tiles else (1e6, "µm")
    centres = np.array([(f.tile[1], f.tile[0]) if use_tiles else (f.x * scale, f.y * scale)
                        for f in placed], dtype=float)
    sizes = [1.0 if use_tiles else (f.fov or 0.0) * scale for f in placed]
    # tiles drawn to scale when they are visible at the survey's spacing, else as markers
    to_scale = np.median(sizes) >= 0.3 * _spacing(centres)
    for f, (cx, cy), size in zip(placed, centres, sizes, strict=True):
        colour = colours.get(f.label or "", (0.7, 0.7, 0.7, 1.0))
        if to_scale and size > 0:
            ax.add_patch(Rectangle((cx - size / 2, cy - size / 2), size, size,
                                   facecolor=colour, edgecolor="white", linewidth=0.6))
        else:
            ax.plot(cx, cy, "s", color=colour, markersize=13)
        if f.route == "contested":
            ax.plot(cx, cy, "x", color="red", markersize=9, markeredgewidth=2.2)
        elif f.human is not None:
            ax.plot(cx, cy, "*", color="black", markeredgecolor="white", markersize=9)
        elif f.route in ESCALATED_ROUTES or f.rescans or f.adjudicated:
            ax.plot(cx, cy, "o", markerfacecolor="none", markeredgecolor="black",
                    markersize=6, markeredgewidth=1.5)
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.set_xlabel(f"stage x ({unit})")
    ax.set_ylabel(f"stage y ({unit})")
    shown = [c for c in classes if any(f.label == c for f in placed)]
    handles = [Rectangle((0, 0), 1, 1, color=colours[c]) for c in shown]
    markers = [ax.plot([], [], "o", markerfacecolor="none", markeredgecolor="black")[0],
               ax.plot([], [], "*", color="black")[0], ax.plot([], [], "x", color="red")[0]]
    ax.legend(handles + markers, shown + ["escalated", "human decision", "contested"],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{len(placed)} frames by final label"
                 + ("" if to_scale else " (markers, not to scale)"))
    section.image = _save(fig, out, "stage_map.png")
    return section


def _route(row: DecisionRow) -> str:
    return row.route or "no route"


def _spacing(centres: np.ndarray) -> float:
    """Median distance from each tile centre to its nearest neighbour."""
    distances, _ = cKDTree(centres).query(centres, k=2)
    return float(np.median(distances[:, 1]))


def confidence_histogram(facts: list[DecisionRow], out: Path) -> Section:
    section = Section("Classifier confidence")
    scored = [f for f in facts if f.confidence is not None]
    if not scored:
        section.unavailable = "not available: no frame carries a classifier prediction"
        return section
    routes = sorted({_route(f) for f in scored})
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    ax.hist([[f.confidence for f in scored if _route(f) == r] for r in routes],
            bins=np.linspace(0, 1, 21), stacked=True, label=routes)
    ax.set_xlabel("top-class probability (calibrated)")
    ax.set_ylabel("frames")
    ax.legend(title="route", fontsize=8)
    section.image = _save(fig, out, "confidence.png")
    return section


def reliability_diagram(facts: list[DecisionRow], out: Path, bins: int = 10) -> Section:
    section = Section("Reliability (against ground truth)")
    scored = [f for f in facts if f.confidence is not None and f.truth and f.predicted]
    if not scored:
        section.unavailable = "not available: the frames carry no ground truth"
        return section
    conf = np.array([f.confidence for f in scored])
    correct = np.array([f.predicted == f.truth for f in scored], dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    centres, per_bin, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            centres.append(conf[mask].mean())
            per_bin.append(correct[mask].mean())
            counts.append(int(mask.sum()))
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.bar(edges[:-1], [correct[which == b].mean() if (which == b).any() else 0
                        for b in range(bins)], width=1 / bins, align="edge", alpha=0.35,
           edgecolor="black", label="accuracy per bin")
    ax.plot(centres, per_bin, "o-", color="C3", label="mean confidence vs accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"ECE {ece:.3f} over {len(scored)} frames")
    section.image = _save(fig, out, "reliability.png")
    truths = [f.truth for f in facts]
    alone, _ = accuracy([f.predicted for f in facts], truths)
    final, scored_frames = accuracy([f.label for f in facts], truths)
    section.html = (
        f"<p>Classifier accuracy {alone:.3f}; final-label accuracy {final:.3f} "
        f"({scored_frames} frames with ground truth).</p>")
    return section


def funnel_counts(facts: list[DecisionRow]) -> dict[str, int]:
    """Frames at each stage of escalation (a frame may pass several stages)."""
    return {
        "all frames": len(facts),
        "confident": sum(f.route == "confident" for f in facts),
        "rescanned": sum(f.rescans > 0 for f in facts),
        "adjudicated": sum(f.adjudicated for f in facts),
        "human": sum(f.human is not None or f.route == "human" for f in facts),
        UNKNOWN: sum(f.label == UNKNOWN for f in facts),
    }


def escalation_funnel(facts: list[DecisionRow], out: Path) -> Section:
    section = Section("Escalation funnel")
    if not facts:
        section.unavailable = "not available: the session has no frames"
        return section
    counts = funnel_counts(facts)
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    names = list(FUNNEL)[::-1]
    ax.barh(names, [counts[n] for n in names], color=[FUNNEL_COLOURS[n] for n in names])
    for i, n in enumerate(names):
        ax.text(counts[n], i, f" {counts[n]}", va="center")
    ax.set_xlabel("frames")
    ax.set_xlim(0, max(1, len(facts)) * 1.15)
    section.image = _save(fig, out, "funnel.png")
    routes = Counter(_route(f) for f in facts)
    section.html = _table(["route", "frames"], sorted(routes.items()))
    return section


def class_counts(facts: list[DecisionRow], classes: list[str], out: Path) -> Section:
    section = Section("Per-class counts")
    labelled = [f for f in facts if f.label]
    if not labelled:
        section.unavailable = "not available: no frame has a label"
        return section
    final = Counter(f.label for f in labelled)
    truth = Counter(f.truth for f in facts if f.truth)
    names = [c for c in classes if final[c] or truth[c]] + sorted(
        set(final) - set(classes))
    fig = Figure(figsize=(7, 3.8))
    ax = fig.add_subplot()
    pos = np.arange(len(names))
    width = 0.4 if truth else 0.8
    ax.bar(pos - (width / 2 if truth else 0), [final[n] for n in names], width,
           label="final label")
    if truth:
        ax.bar(pos + width / 2, [truth[n] for n in names], width, label="ground truth")
        ax.legend(fontsize=8)
    ax.set_xticks(pos, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("frames")
    section.image = _save(fig, out, "classes.png")
    return section


def least_certain_grid(kept: list[tuple[DecisionRow, np.ndarray]], out: Path) -> Section:
    section = Section(f"Least certain frames ({len(kept)})")
    if not kept:
        section.unavailable = "not available: no frame carries a classifier prediction"
        return section
    cols = min(4, len(kept))
    rows = math.ceil(len(kept) / cols)
    fig = Figure(figsize=(3.0 * cols, 3.6 * rows), layout="constrained")
    for i, (f, thumb) in enumerate(kept):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(thumb, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [f"#{f.sequence} {f.label} ({f.confidence:.2f})",
                 _route(f) + (f": {f.human.decision.value} by {f.human.operator}"
                              if f.human else "")]
        if f.truth:
            lines.append(f"truth: {f.truth}")
        ax.set_title("\n".join(lines), fontsize=8)
    section.image = _save(fig, out, "least_certain.png")
    return section


def timings(facts: list[DecisionRow], out: Path) -> Section:
    section = Section("Timings")
    keys = sorted({k for f in facts for k in f.timings})
    if not keys:
        section.unavailable = "not available: the records carry no timings"
        return section
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for key in keys:
        points = [(f.sequence, f.timings[key]) for f in facts if key in f.timings]
        ax.plot([p[0] for p in points], [p[1] for p in points], ".-", label=key)
    ax.set_xlabel("frame sequence")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    section.image = _save(fig, out, "timings.png")
    rows = []
    for key in keys:
        values = np.array([f.timings[key] for f in facts if key in f.timings])
        rows.append((key, len(values), f"{np.median(values):.4f}", f"{values.mean():.4f}",
                     f"{values.max():.4f}", f"{values.sum():.2f}"))
    section.html = _table(["timing", "frames", "median s", "mean s", "max s", "total s"], rows)
    return section


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def human_decisions(facts: list[DecisionRow]) -> Section:
    section = Section("Human decisions")
    decided = [f for f in facts if f.human]
    if not decided:
        section.unavailable = "no human decisions in this session"
        return section
    section.html = _table(
        ["frame", "operator", "time", "proposal", "decision", "label", "changed", "note"],
        [(f"#{f.sequence}", h.operator, _when(h.time), h.proposal or "", h.decision.value,
          h.label or "", h.changed, h.note) for f in decided if (h := f.human)])
    return section


def incidents(rows: list[dict[str, Any]], shown: int = 200) -> Section:
    """The incidents of the session's event stream, as its file's incident log holds them."""
    section = Section("Incidents")
    if not rows:
        section.unavailable = "no incidents in this session"
        return section
    counts = Counter(str(r.get("kind")) for r in rows)
    section.html = _table(["kind", "count"], sorted(counts.items())) + _table(
        ["time", "kind", "source", "message"],
        [(_when(r.get("time")), r.get("kind", ""), r.get("source", "instrument"),
          r.get("message", "")) for r in rows[:shown]])
    if len(rows) > shown:
        section.html += f"<p>the first {shown} of {len(rows)} shown</p>"
    return section


def _when(value: float | str | None) -> str:
    """A timestamp as UTC ISO text (epoch seconds or already text)."""
    if isinstance(value, int | float) and math.isfinite(value):
        return datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="seconds")
    return "" if value is None else str(value)


def _provenance_rows(provenance: dict[str, Any], summary: dict[str, Any]) -> list[tuple]:
    rows = [(key, summary[key]) for key in ("session_id", "status", "frames", "accuracy")
            if summary.get(key) is not None]
    for key, value in provenance.items():
        if key in ("session_id", "status", "frames", "accuracy"):
            continue
        text = value if isinstance(value, str | int | float) else json.dumps(value,
                                                                             default=str)
        rows.append((key, text if len(str(text)) <= 300 else str(text)[:300] + "…"))
    return rows


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; color: #1d232b; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px;
      border-bottom: 1px solid #d9dee4; padding-bottom: 4px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
td, th {{ border: 1px solid #d9dee4; padding: 3px 8px; text-align: left; vertical-align: top;
         font-size: 13px; }}
th {{ background: #f0f3f6; }} img {{ max-width: 100%; }}
.na {{ color: #8a5a00; font-style: italic; }}
</style></head><body>
<h1>{title}</h1>
{sections}
</body></html>
"""


def _render(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    if section.image:
        parts.append(f'<img src="{html.escape(section.image)}" '
                     f'alt="{html.escape(section.title)}">')
    if section.unavailable:
        parts.append(f'<p class="na">{html.escape(section.unavailable)}</p>')
    parts.append(section.html)
    return "<section>" + "".join(parts) + "</section>"


def build_report(session_path: str | Path, out_dir: str | Path,
                 least_certain: int = 12) -> Path:
    """Write `index.html` and its PNGs for a session file into `out_dir`; returns the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with SessionReader(session_path) as reader:
        provenance = dict(reader.provenance or {})
        summary = reader.summary()
        happened = reader.incidents()
        facts = reader.rows()
        scored = [f for f in facts if f.confidence is not None]
        least = heapq.nsmallest(max(least_certain, 0), scored,
                                key=lambda f: (f.confidence, f.index))
        kept = [(f, _thumbnail(reader.frame(f.index).image)) for f in least]
    classes = _class_order(provenance, facts)
    overview = Section("Session")
    overview.html = _table(["field", "value"], _provenance_rows(provenance, summary))
    with matplotlib.rc_context(PLAIN_TEXT):
        sections = [overview, stage_map(facts, classes, out), escalation_funnel(facts, out),
                    class_counts(facts, classes, out), confidence_histogram(facts, out),
                    reliability_diagram(facts, out), least_certain_grid(kept, out),
                    human_decisions(facts), incidents(happened), timings(facts, out)]
    title = f"micagent session report: {summary.get('session_id') or Path(session_path).name}"
    page = out / "index.html"
    atomic_file.write_text(page, PAGE.format(title=html.escape(str(title)),
                                             sections="\n".join(_render(s) for s in sections)))
    return page


def _class_order(provenance: dict[str, Any], facts: list[DecisionRow]) -> list[str]:
    """Class names from the model provenance when stored, else the labels seen."""
    model = provenance.get("model") if isinstance(provenance.get("model"), dict) else {}
    known: list[str] = []
    for names in (model.get("class_names"), provenance.get("class_names")):
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and names:
            known = list(names)
            break
    seen = {f.label for f in facts if f.label} | {f.truth for f in facts if f.truth}
    return known + sorted(seen - set(known))
