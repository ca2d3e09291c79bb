"""`micagent report RESULTS`: an HTML page with PNG figures of an archive replay's results
folder (workflows/replay/store.py): changed labels per class (route-only changes apart), the
stored-vs-new label matrix, the confidence shift, throughput per worker, and the sessions that
failed."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from workflows.replay.decisions import change
from workflows.replay.store import ResultsFolder
from workflows.report.session_report import PAGE, PLAIN_TEXT, Section, _render, _save, _table


def changed_per_class(summary: dict[str, Any], frames: dict[str, list], out: Path) -> Section:
    section = Section("Labels per class: stored, new, changed")
    labels = summary["changed_matrix"]["labels"]
    if not labels:
        section.unavailable = "no frames replayed"
        return section
    changed = {label: 0 for label in labels}
    route_only = {label: 0 for label in labels}
    for row in (dict(zip(frames, values, strict=True)) for values in zip(*frames.values(),
                                                                        strict=True)):
        kind = change(row)
        if kind is not None:
            (changed if kind == "label" else route_only)[row["stored_label"] or "none"] += 1
    counts = summary["class_counts"]
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6.0, 0.7 * len(labels) + 2), 3.8))
    ax = fig.add_subplot()
    ax.bar(x - 0.27, [counts[c]["old"] for c in labels], 0.27, label="stored")
    ax.bar(x, [counts[c]["new"] for c in labels], 0.27, label="new")
    ax.bar(x + 0.27, [changed[c] for c in labels], 0.27, label="label changed (by stored class)")
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    section.image = _save(fig, out, "changed_per_class.png")
    section.html = _table(
        ["stored class", "stored", "new", "label changed", "route only changed"],
        [(c, counts[c]["old"], counts[c]["new"], changed[c], route_only[c]) for c in labels]
        + [("all", summary["frames"], summary["frames"], summary["changed"],
            summary.get("route_changed", 0))])
    return section


def changed_matrix(summary: dict[str, Any], out: Path) -> Section:
    section = Section("Stored label (rows) against new label (columns)")
    labels, counts = summary["changed_matrix"]["labels"], summary["changed_matrix"]["counts"]
    if not labels:
        section.unavailable = "no frames replayed"
        return section
    matrix = np.asarray(counts)
    fig = Figure(figsize=(max(5.0, 0.55 * len(labels) + 2.5),) * 2)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("new label")
    ax.set_ylabel("stored label")
    section.image = _save(fig, out, "changed_matrix.png")
    return section


def confidence_shift(frames: dict[str, list], out: Path) -> Section:
    section = Section("Confidence shift (new top-1 probability minus stored)")
    pairs = [(a, b) for a, b in zip(frames["stored_confidence"], frames["new_confidence"],
                                    strict=True) if a is not None and b is not None]
    if not pairs:
        section.unavailable = "no frame has both a stored and a new confidence"
        return section
    shift = np.array([b - a for a, b in pairs])
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.hist(shift, bins=np.linspace(-1, 1, 41), color="#4c78a8")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("new - stored confidence")
    ax.set_ylabel("frames")
    section.image = _save(fig, out, "confidence_shift.png")
    section.html = _table(["frames", "median shift", "mean shift", "lower", "higher"],
                          [(len(shift), f"{np.median(shift):+.3f}", f"{shift.mean():+.3f}",
                            int((shift < 0).sum()), int((shift > 0).sum()))])
    return section


def throughput_steps(tasks: dict[str, list], run_id: str) -> tuple[list[float], list[int]]:
    """Frames replayed against seconds since the run's first task started, from (0, 0) so
    that a run of one task is a step, not a lone point."""
    mine = [i for i, run in enumerate(tasks["run_id"]) if run == run_id]
    t0 = min(tasks["started"][i] for i in mine)
    order = sorted(mine, key=lambda i: tasks["finished"][i])
    return ([0.0] + [tasks["finished"][i] - t0 for i in order],
            [int(n) for n in np.cumsum([0] + [tasks["frames"][i] for i in order])])


def throughput(summary: dict[str, Any], tasks: dict[str, list], out: Path) -> Section:
    section = Section("Throughput of the latest run")
    info = summary["throughput"]
    if not info:
        section.unavailable = "no task has run"
        return section
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.step(*throughput_steps(tasks, info["run_id"]), where="post", marker="o")
    ax.set_xlabel("seconds since the first task started")
    ax.set_ylabel("frames replayed")
    section.image = _save(fig, out, "throughput.png")
    speed = info.get("frames_per_s")
    rows = [(w, v["frames"], f"{v['seconds']:.1f}",
             f"{v['frames'] / v['seconds']:.2f}" if v["seconds"] else "",
             f"{v['peak_rss_mb']:.0f}") for w, v in sorted(info["workers"].items())]
    section.html = (f"<p>{info['frames']} frames in {info['tasks']} tasks, "
                    f"{info['wall_s']:.1f} s wall"
                    + (f", {speed:.2f} frames/s" if speed else "") + "</p>"
                    + _table(["worker", "frames", "busy s", "frames/s busy", "peak RSS MB"],
                             rows))
    return section


def failures(summary: dict[str, Any]) -> Section:
    section = Section("Sessions not replayed completely")
    bad = [s for s in summary["session_status"] if s["status"] in ("failed", "pending")]
    if not bad:
        section.html = "<p>none</p>"
        return section
    section.html = _table(["source", "status", "frames", "replayed", "error"],
                          [(s["source"], s["status"], s["frames"], s["replayed"],
                            s["error"] or "") for s in bad])
    return section


def _overview(summary: dict[str, Any], root: Path) -> Section:
    section = Section("Archive")
    acc = summary["accuracy"]
    rows = [("results", str(root)), ("model", summary["model"]["model_path"]),
            ("model sha256", summary["model"]["model_sha256"]),
            ("frames replayed", summary["frames"]), ("labels changed", summary["changed"]),
            ("route only changed (same label)", summary.get("route_changed", 0)),
            ("sessions", ", ".join(f"{k}: {v}" for k, v in sorted(summary["sessions"].items()))),
            ("duplicate inputs (replayed once)", len(summary["duplicates"]))]
    if acc:
        rows.append(("accuracy on stored truth", f"stored {acc['old']:.3f}, new "
                                                 f"{acc['new']:.3f} ({acc['frames']} frames)"))
    section.html = _table(["field", "value"], rows)
    return section


def build_archive_report(results: str | Path, out_dir: str | Path) -> Path:
    """Write `index.html` and its PNGs for a results folder into `out_dir`; the page."""
    store = ResultsFolder(results)
    if store.manifest() is None:
        raise FileNotFoundError(f"{results} holds no archive replay results")
    summary = store.summary()
    frames = store.table("frames", ["stored_label", "new_label", "stored_route", "new_route",
                                    "stored_confidence", "new_confidence"]).to_pydict()
    tasks = store.table("tasks", ["run_id", "started", "finished", "frames"]).to_pydict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(PLAIN_TEXT):
        sections = [_overview(summary, store.root), changed_per_class(summary, frames, out),
                    changed_matrix(summary, out), confidence_shift(frames, out),
                    throughput(summary, tasks, out), failures(summary)]
    page = out / "index.html"
    page.write_text(PAGE.format(title=html.escape(f"micagent archive replay: {store.root.name}"),
                                sections="\n".join(_render(s) for s in sections)),
                    encoding="utf-8")
    return page
