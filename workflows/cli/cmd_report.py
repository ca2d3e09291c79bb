"""`micagent report SESSION.h5 --out DIR`: an HTML page with PNG figures of one session;
`micagent report RESULTS --out DIR` the same for an archive replay's results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instruments.session_file.hdf5_probe import check_metadata_finishes
from instruments.session_file.layout import SessionFileError
from workflows.replay.store import ResultsFolderError
from workflows.report.archive_report import build_archive_report
from workflows.report.session_report import build_report
from workflows.terminal import DAMAGED, fail, file_error


def report(
    session: Annotated[Path, typer.Argument(help="Session file (.h5) from `micagent run`, or "
                                                 "a results folder of `micagent replay "
                                                 "--out`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html and its PNGs.")],
    least_certain: Annotated[int, typer.Option(min=0, help="Frames in the least-certain grid.")]
    = 12,
) -> None:
    """Write a session report (a one-screen summary, the frames at their stage positions to
    scale, one line per frame, human acts, risk against coverage, escalations, timings) as
    index.html with its PNGs, or an archive replay report (changed labels per class,
    confidence shift, throughput)."""
    if session.is_dir():
        _archive_report(session, out)
        return
    if not session.is_file():
        raise fail(f"no such file: {session}")
    try:
        check_metadata_finishes(session)
        page = build_report(session, out, least_certain=least_certain)
    except SessionFileError as exc:
        raise fail(exc) from exc
    except DAMAGED as exc:
        raise file_error(exc, session, out) from exc
    typer.echo(f"report: {page}")


def _archive_report(results: Path, out: Path) -> None:
    try:
        page = build_archive_report(results, out)
    except (ResultsFolderError, FileNotFoundError) as exc:
        raise fail(exc) from exc
    except DAMAGED as exc:
        raise file_error(exc, results, out) from exc
    typer.echo(f"report: {page}")
