"""A session report: one HTML page, its PNG figures and the frames as PNGs, from a session
file alone. The page opens with a one-screen header (header.py) and the run configuration
folded away; the frames are placed at their stage positions to scale (mosaic.py), listed one
per line, and every human act is shown (human_acts.py).

Every section is drawn from what the file holds; where a session lacks the facts a section
needs (no stage positions, no ground truth, no timings), the page says "not available" and why,
so replayed sessions and sessions from real NSID files report as well as twin surveys.
"""

from __future__ import annotations

import heapq
import html
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from agent.policy import UNKNOWN
from instruments.session_file.decision_record import DecisionRecord, accuracy
from instruments.session_file.decision_row import DecisionRow
from instruments.session_file.overview import StoredOverview
from instruments.session_file.reader import SessionReader
from instruments.utils import atomic_file
from instruments.utils.image8 import to_uint8
from workflows.report.format import number, percent, when
from workflows.report.header import configuration_html, header_html
from workflows.report.human_acts import acts
from workflows.report.mosaic import (
    FrameImages,
    colours,
    frame_table,
    mosaic_html,
    write_frame_images,
)
from workflows.report.overview_map import Underlay, search_map, write_underlay
from workflows.report.risk_coverage import figure as risk_figure
from workflows.report.risk_coverage import risk_coverage
from workflows.report.risk_coverage import summary as risk_summary

FUNNEL = ("all frames", "confident", "rescanned", "adjudicated", "human", UNKNOWN)
FUNNEL_COLOURS = {"all frames": "grey", "confident": "C0", "rescanned": "C2",
                  "adjudicated": "C1", "human": "C3", UNKNOWN: "black"}
THUMB_PX = 128
# the timings a record holds, in the order they happen, named for people
TIMINGS = {"acquire_s": "acquire (instrument)", "classify_s": "classify",
           "total_s": "whole frame (first acquisition to record)"}


@dataclass
class Section:
    """One report section: a title, a figure (or why there is none) and notes."""

    title: str
    image: str | None = None
    unavailable: str | None = None
    html: str = ""


# text from the session (operator names, notes, labels) is drawn as typed: `$...$` is not
# parsed as maths and nothing goes through TeX
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def _save(fig: Figure, out: Path, name: str) -> str:
    with atomic_file.atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return name


def _route(row: DecisionRow) -> str:
    return row.route or "no route"


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
        f"<p>Classifier accuracy {percent(alone)}; final-label accuracy {percent(final)} "
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
        ax.imshow(thumb, cmap="gray", vmin=0, vmax=255)
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
    keys = [k for k in TIMINGS if any(k in f.timings for f in facts)] + sorted(
        {k for f in facts for k in f.timings} - set(TIMINGS))
    if not keys:
        section.unavailable = "not available: the records carry no timings"
        return section
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for key in keys:
        points = [(f.sequence, f.timings[key]) for f in facts if key in f.timings]
        ax.plot([p[0] for p in points], [p[1] for p in points], ".-",
                label=TIMINGS.get(key, key))
    ax.set_xlabel("frame sequence")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    section.image = _save(fig, out, "timings.png")
    rows = []
    for key in keys:
        values = np.array([f.timings[key] for f in facts if key in f.timings])
        rows.append((TIMINGS.get(key, key), len(values), *(
            f"{number(float(v), 3)} s" for v in (np.median(values), values.mean(),
                                                values.max(), values.sum()))))
    section.html = _table(["timing", "frames", "median", "mean", "max", "total"], rows) + (
        "<p>A frame taken ahead (pipelined) is acquired while the frame before it is decided, "
        "so the whole-frame times of a session overlap. Sessions written before whole-frame "
        "times counted the first acquisition show them shorter than the acquisition.</p>")
    return section


def _table(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def human_acts(rows: list[DecisionRow], records: list[DecisionRecord]) -> Section:
    """Every human act the file holds (workflows/report/human_acts.py)."""
    section = Section("Human acts")
    found = [act for row, record in zip(rows, records, strict=True)
             for act in acts(row.sequence if row.sequence is not None else row.index, record)]
    if not found:
        section.unavailable = "no human acts in this session"
        return section
    section.html = _table(["frame", "act", "operator", "time", "note", "what it changed"],
                          [(f"#{a.frame}", a.act, a.operator, a.time, a.note, a.changed)
                           for a in found])
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
        [(when(r.get("time")), r.get("kind", ""), r.get("source", "instrument"),
          r.get("message", "")) for r in rows[:shown]])
    if len(rows) > shown:
        section.html += f"<p>the first {shown} of {len(rows)} shown</p>"
    return section


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
dl.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px;
           margin: 8px 0 12px; font-size: 15px; }}
dl.facts dt {{ font-weight: 600; color: #52606d; }} dl.facts dd {{ margin: 0; }}
details {{ margin: 8px 0; }} summary {{ cursor: pointer; font-weight: 600; }}
h3 {{ font-size: 14px; margin: 12px 0 2px; }} table.config th {{ font-weight: normal; }}
.mosaic {{ position: relative; background: #eef1f4; border: 1px solid #c9d1d9; }}
.mosaic .tile {{ position: absolute; box-sizing: border-box; border-style: solid;
                background: #fff; }}
.mosaic .tile img {{ display: block; width: 100%; height: 100%; }}
.mosaic .tile .mark {{ position: absolute; top: -7px; right: -7px; }}
.mark {{ display: inline-block; min-width: 13px; height: 13px; line-height: 13px;
        font: bold 10px/13px system-ui, sans-serif; text-align: center; color: #fff;
        background: #1d232b; border-radius: 7px; margin-right: 4px; }}
.scalebar {{ border-bottom: 3px solid #1d232b; margin: 6px 0; font-size: 12px; }}
.legend {{ margin: 4px 0; font-size: 13px; }} .chip {{ margin-right: 14px; white-space: nowrap; }}
.chip i, .swatch {{ display: inline-block; width: 11px; height: 11px; margin-right: 4px;
                   vertical-align: middle; }}
img.thumb {{ width: 64px; height: 64px; display: block; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #b42318; }}
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
    """Write `index.html`, its figures and the frames as PNGs into `out_dir`; the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with SessionReader(session_path) as reader:
        provenance = dict(reader.provenance or {})
        happened = reader.incidents()
        facts = reader.rows()
        records = reader.records()
        overview = reader.overview()
        least = heapq.nsmallest(max(least_certain, 0),
                                [f for f in facts if f.confidence is not None],
                                key=lambda f: (f.confidence, f.index))
        images, kept = {}, {}
        for row in facts:
            image = reader.frame(row.index).image
            images[row.index] = write_frame_images(row.index, image, out)
            step = max(1, max(image.shape) // THUMB_PX)
            kept[row.index] = to_uint8(image[::step, ::step]) if row in least else None
    classes = _class_order(provenance, facts)
    palette = colours(classes)
    with matplotlib.rc_context(PLAIN_TEXT):
        underlay = write_underlay(overview, out) if overview is not None else None
        searched = ([] if overview is None else
                    [search_section(overview, facts, provenance, out)])
        sections = [stage_mosaic(facts, images, palette, underlay), *searched,
                    risk_coverage_section(facts, out),
                    human_acts(facts, records), escalation_funnel(facts, out),
                    class_counts(facts, classes, out), confidence_histogram(facts, out),
                    reliability_diagram(facts, out),
                    least_certain_grid([(f, kept[f.index]) for f in least], out),
                    frames_section(facts, records, images, palette),
                    incidents(happened), timings(facts, out)]
    title = f"Session {provenance.get('session_id') or Path(session_path).name}"
    page = out / "index.html"
    body = (header_html(provenance, facts) + configuration_html(provenance)
            + "\n".join(_render(s) for s in sections))
    atomic_file.write_text(page, PAGE.format(title=html.escape(str(title)), sections=body))
    return page


def stage_mosaic(facts: list[DecisionRow], images: dict[int, FrameImages],
                 palette: dict[str, str], underlay: Underlay | None = None) -> Section:
    section = Section("Frames at their stage positions")
    drawn = mosaic_html(facts, images, palette, underlay)
    if drawn is None:
        section.unavailable = "not available: the frames carry no distinct stage positions"
    else:
        section.html = drawn
    return section


def search_section(overview: StoredOverview, facts: list[DecisionRow],
                   provenance: dict[str, Any], out: Path) -> Section:
    """The overview's candidate scores, the order the frames were taken in and the hits."""
    return Section("Where the search looked", image=search_map(
        overview, facts, str(provenance.get("objective", "")), out))


def risk_coverage_section(facts: list[DecisionRow], out: Path) -> Section:
    section = Section("Risk against coverage (against ground truth)")
    curve = risk_coverage(facts)
    if curve is None:
        section.unavailable = "not available: the frames carry no ground truth"
        return section
    section.image = _save(risk_figure(curve), out, "risk_coverage.png")
    section.html = f"<p>{html.escape(risk_summary(curve))}</p>"
    return section


def frames_section(facts: list[DecisionRow], records: list[DecisionRecord],
                   images: dict[int, FrameImages], palette: dict[str, str]) -> Section:
    section = Section(f"Frames ({len(facts)})")
    if not facts:
        section.unavailable = "not available: the session has no frames"
    else:
        section.html = frame_table(facts, records, images, palette)
    return section


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
