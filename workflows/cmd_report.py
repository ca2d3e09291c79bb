"""`micagent report SESSION.h5 --out DIR`: an HTML page with PNG figures of one session."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instruments.session_layout import SessionFileError
from workflows.cli_output import DAMAGED, fail, file_error
from workflows.report import build_report


def report(
    session: Annotated[Path, typer.Argument(help="Session file (.h5) from `micagent run`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html and its PNGs.")],
    least_certain: Annotated[int, typer.Option(min=0, help="Frames in the least-certain grid.")]
    = 12,
) -> None:
    """Write a session report: stage map, escalation funnel, confidence, timings."""
    if not session.is_file():
        raise fail(f"no such file: {session}")
    try:
        page = build_report(session, out, least_certain=least_certain)
    except SessionFileError as exc:
        raise fail(exc) from exc
    except DAMAGED as exc:
        raise file_error(exc, session, out) from exc
    typer.echo(f"report: {page}")
