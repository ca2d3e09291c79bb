"""`micagent inspect SESSION.h5 [--json]` and `micagent export SESSION.h5 OUT_DIR`."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from instruments.session_file.export import export_frames
from instruments.session_file.hdf5_probe import check_metadata_finishes
from instruments.session_file.layout import SessionFileError
from instruments.session_file.reader import SessionReader
from workflows.terminal import DAMAGED, fail, file_error, json_text


class ExportFormat(StrEnum):
    png = "png"
    tiff = "tiff"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-"


def _print_summary(summary: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"session {summary['session_id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    status = summary["status"] + (f" ({summary['reason']})" if summary.get("reason") else "")
    if not summary["closed"]:
        status += " - never closed: writer still running or it crashed"
    accuracy = summary["accuracy"]
    rows = [
        ("file", summary["path"]), ("status", status),
        ("started", str(summary["started"])), ("ended", str(summary["ended"])),
        ("instrument", json.dumps(summary["instrument"])),
        ("frames", str(summary["frames"])),
        ("incidents", _counts(summary.get("incidents", {}))),
        ("labels", _counts(summary["label_counts"])),
        ("routes", _counts(summary["route_counts"])),
        ("escalations", f"{summary['escalations']} ({_counts(summary['escalation_counts'])})"),
        ("approvals", f"{summary['approvals']} ({_counts(summary['approval_decisions'])}; "
                      f"{summary['human_changed']} changed the label)"),
        ("accuracy", "no ground truth" if accuracy is None
         else f"{accuracy:.3f} over {summary['scored_frames']} frames with ground truth"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    console.print(table)


def inspect(
    session: Annotated[Path, typer.Argument(help="Session file (.h5).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Summarise a session file: frames, labels, routes, escalations, approvals, status."""
    try:
        check_metadata_finishes(session)
        with SessionReader(session) as reader:
            summary = reader.summary()
    except SessionFileError as exc:
        raise fail(exc) from exc
    except DAMAGED as exc:
        raise file_error(exc, session) from exc
    if as_json:
        typer.echo(json_text(summary))
    else:
        _print_summary(summary)


def export(
    session: Annotated[Path, typer.Argument(help="Session (or other NSID) file (.h5).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the exported images.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="png: 8-bit scaled; "
                                              "tiff: float32 values.")] = ExportFormat.png,
) -> None:
    """Export every frame as a PNG or TIFF image, named <index>_<label>_<frame uuid>, the
    label and route also in its metadata."""
    try:
        check_metadata_finishes(session)
        paths = export_frames(session, out_dir, fmt.value)
    except SessionFileError as exc:
        raise fail(exc) from exc
    except DAMAGED as exc:
        raise file_error(exc, session, out_dir) from exc
    typer.echo(f"exported {len(paths)} frame(s) to {out_dir}")
