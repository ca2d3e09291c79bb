"""What a replay changed: a label, or only the route to the same label, counted apart, the
same in the archive's summary, its per-class table and the single-file diff; and the
archive report's throughput for a run of one task."""

from __future__ import annotations

import re
from pathlib import Path

from instruments.session_file.decision_row import DecisionRow
from workflows.replay.decisions import REFUSED, change, changes_title, replay_row
from workflows.replay.single_file import decision_diff
from workflows.replay.store import ResultsFolder
from workflows.report.archive_report import build_archive_report, throughput_steps

# (stored label, stored route, new label, new route)
DECISIONS = [("Tips", "confident", "Tips", "confident"),
             ("Tips", "confident", "Tips", "contested"),        # route only
             ("Fibres", "rescan", "Fibres", "confident"),       # route only
             ("Fibres", "confident", "Powder", "confident"),    # label
             ("Powder", "adjudicated", "Tips", "contested"),    # label (and route)
             ("Powder", "confident", None, REFUSED)]            # refused: neither


def _rows(stored: bool) -> list[DecisionRow]:
    return [DecisionRow(index=i, frame_id=f"f{i}", label=d[0 if stored else 2],
                        route=d[1 if stored else 3], confidence=0.9, truth=d[0])
            for i, d in enumerate(DECISIONS) if stored or d[3] != REFUSED]


def test_a_label_change_and_a_route_only_change_are_told_apart() -> None:
    diff = decision_diff(_rows(stored=True), _rows(stored=False))
    assert [change(r) for r in diff["rows"]] == [None, "route", "route", "label", "label", None]
    assert [(r["changed"], r["route_changed"]) for r in diff["rows"]] == [
        (False, False), (False, True), (False, True), (True, False), (True, False),
        (False, False)]
    assert (diff["changed"], diff["route_changed"], diff["refused"]) == (2, 2, 1)
    assert changes_title(diff) == "2 of 6 labels changed, 2 route-only changes"


def _results(root: Path, tasks: int) -> ResultsFolder:
    store = ResultsFolder(root)
    store.create("0" * 64, "model", ["Fibres", "Powder", "Tips"])
    stored, new = _rows(stored=True), {r.frame_id: r for r in _rows(stored=False)}
    store.append("frames", [{**replay_row(row, new.get(row.frame_id)), "session_key": "k",
                             "source": "a.h5", "frame_index": row.index, "task_start": 0,
                             "task_stop": len(stored)} for row in stored])
    store.append("tasks", [{"run_id": "run", "session_key": "k", "source": "a.h5",
                            "start": 0, "stop": len(stored), "status": "done", "frames": n,
                            "worker": "w", "started": 100.0, "finished": 100.0 + 2 * (i + 1),
                            "seconds": 2.0, "worker_peak_rss_mb": 300.0}
                           for i, n in enumerate([len(stored)] if tasks == 1 else [4, 2])])
    store.append("sessions", [{"run_id": "run", "scanned": 1.0, "session_key": "k",
                               "session_id": "s", "source": "a.h5", "frames": len(stored)}])
    return store


def test_the_archive_summary_and_its_per_class_table_agree(tmp_path: Path) -> None:
    store = _results(tmp_path / "results", tasks=2)
    summary = store.write_summary()
    assert (summary["changed"], summary["route_changed"]) == (2, 2)
    page = build_archive_report(store.root, tmp_path / "report").read_text(encoding="utf-8")
    table = page.split("<th>stored class</th>")[1].split("</table>")[0]
    per_class = {cells[0]: [int(c) for c in cells[1:]] for cells in (
        re.findall(r"<td>([^<]*)</td>", line) for line in table.split("<tr>")[1:])}
    assert per_class["Fibres"][2:] == [1, 1] and per_class["Powder"][2:] == [1, 0]
    assert per_class["Tips"][2:] == [0, 1]
    assert per_class["all"][2:] == [summary["changed"], summary["route_changed"]]
    assert sum(v[2] for k, v in per_class.items() if k != "all") == summary["changed"]
    assert "<td>labels changed</td><td>2</td>" in page


def test_the_throughput_of_a_run_of_one_task_is_a_step_from_zero(tmp_path: Path) -> None:
    store = _results(tmp_path / "results", tasks=1)
    tasks = store.table("tasks", ["run_id", "started", "finished", "frames"]).to_pydict()
    assert throughput_steps(tasks, "run") == ([0.0, 2.0], [0, 6])
    report = build_archive_report(store.root, tmp_path / "report")
    assert (report.parent / "throughput.png").stat().st_size > 1000
