"""`micagent replay FILE`: a stored session's frames through the current model and policy in
this process, and the diff of old and new decisions."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from instruments.session_file.decision_record import accuracy
from instruments.session_file.decision_row import DecisionRow
from instruments.session_file.hdf5_probe import check_metadata_finishes
from instruments.session_file.reader import SessionReader
from workflows.replay.config import replay_run_config
from workflows.replay.decisions import REFUSED, changes_title, replay_row
from workflows.terminal import DAMAGED, fail, file_error, json_text


def decision_diff(old: list[DecisionRow], new: list[DecisionRow]) -> dict[str, Any]:
    """Stored vs new decisions per frame (matched by frame id; the archive's replay rows),
    with accuracy where the file stored ground truth. A frame the replay did not record
    (refused: NaN/Inf pixels, or any frame the instrument layer turned down) is `refused`,
    never `changed`; accuracy counts the frames replayed."""
    new_by_id = {row.frame_id: row for row in new}
    rows = [replay_row(row, new_by_id.get(row.frame_id)) for row in old]
    replayed = [row for row in rows if row["new_route"] != REFUSED]
    truths = [row["truth"] for row in replayed]
    old_accuracy, scored = accuracy([row["stored_label"] for row in replayed], truths)
    new_accuracy, _ = accuracy([row["new_label"] for row in replayed], truths)
    return {"frames": len(rows), "changed": sum(row["changed"] for row in rows),
            "route_changed": sum(row["route_changed"] for row in rows),
            "refused": len(rows) - len(replayed), "rows": rows,
            "accuracy": {"old": old_accuracy, "new": new_accuracy} if scored else None}


def replay_file(session_file: str, model: str | None, as_json: bool, state_dir: str) -> None:
    """`micagent replay FILE`: a stored session's frames through the current model and policy
    (unattended) in this process; prints what changed (workflows/cli/cmd_replay.py dispatches)."""
    source = Path(session_file).resolve()
    try:
        check_metadata_finishes(source)
        with SessionReader(source) as reader:
            old = reader.rows()
            stored = reader.provenance.get("run_config") or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's error
        raise fail(f"cannot read {session_file}: {exc}") from exc
    if not old:
        raise fail(f"{session_file} holds no frames to replay")
    from workflows.session_assembly import StartError, run_session  # after the input is read

    replay_id = str(uuid.uuid4())
    out = Path(state_dir).resolve() / "replays" / f"{source.stem}.replay-{replay_id}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = replay_run_config(source, stored, len(old), model, Path(state_dir).resolve(), out,
                               replay_id)
    quiet_console = Console(quiet=True)
    try:
        run_session(config, quiet_console, quiet=True)
    except StartError as exc:
        raise fail(f"replay failed to start: {exc}") from exc
    except DAMAGED as exc:                  # frames damaged inside a readable file
        raise file_error(exc, session_file) from exc
    with SessionReader(out) as reader:
        new = reader.rows()
    diff = decision_diff(old, new)
    diff.update(source=str(source), replay_file=str(out))
    if as_json:
        sys.stdout.write(json_text(diff) + "\n")
    else:
        _print_diff(source, diff)
    if diff["refused"]:
        raise fail(f"{diff['refused']} of {diff['frames']} frames of {session_file} were "
                   "refused (could not be classified: NaN/Inf pixels or an unusable frame)",
                   code=1)


def _print_diff(source: Path, diff: dict[str, Any]) -> None:
    table = Table(title=f"replay of {source.name}: {changes_title(diff)}, "
                        f"{diff['refused']} refused")
    for column in ("frame", "old", "new", "truth"):
        table.add_column(column)
    for row in diff["rows"]:
        refused = row["new_route"] == REFUSED
        if row["changed"] or row["route_changed"] or refused:
            new = REFUSED if refused else f"{row['new_label']} ({row['new_route']})"
            table.add_row(row["frame_id"][:8], f"{row['stored_label']} ({row['stored_route']})",
                          new, str(row["truth"]))
    console = Console()
    console.print(table)
    if diff["accuracy"]:
        console.print(f"accuracy: old {diff['accuracy']['old']:.3f}, "
                      f"new {diff['accuracy']['new']:.3f}")
