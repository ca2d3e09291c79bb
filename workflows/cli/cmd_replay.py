"""`micagent replay`: stored sessions through the current model and policy.

One session file and no --out: replayed in this process, the diff printed (as before).
Several inputs (files, folders, globs) or --out RESULTS: an archive replay on Dask
distributed (workflows/replay/archive.py) into a Parquet results folder; an embedded
LocalCluster unless --scheduler names a running one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workflows.replay.decisions import changes_title
from workflows.replay.single_file import replay_file
from workflows.terminal import fail, json_text, one_line

err = Console(stderr=True)


def _summary_table(summary: dict, out: Path) -> Table:
    table = Table(title=f"archive replay: {changes_title(summary)}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("sessions", ", ".join(f"{k}: {v}" for k, v in
                                        sorted(summary["sessions"].items())))
    if summary["duplicates"]:
        table.add_row("duplicates (replayed once)", str(len(summary["duplicates"])))
    speed = summary["throughput"].get("frames_per_s")
    if speed:
        table.add_row("this run", f"{summary['throughput']['frames']} frames, "
                                  f"{speed:.1f} frames/s")
    if summary["accuracy"]:
        acc = summary["accuracy"]
        table.add_row("accuracy (stored truth)", f"old {acc['old']:.3f}, new {acc['new']:.3f}"
                                                 f" ({acc['frames']} frames)")
    for row in summary["session_status"]:
        if row["status"] == "failed":
            table.add_row(Text(f"failed {Path(row['source']).name}", style="red"),
                          Text(one_line(row["error"])))
    table.add_row("results", f"{out}/frames (Parquet), {out}/summary.json")
    return table


def replay(
    sessions: Annotated[list[str], typer.Argument(help="session files, folders or glob "
                                                       "patterns")],
    model: str | None = typer.Option(None, help="checkpoint folder (default: bundled)"),
    out: str | None = typer.Option(None, help="results folder (Parquet dataset + summary); "
                                              "needed for more than one input"),
    workers: int | None = typer.Option(None, help="local cluster: worker processes "
                                                  "(default: the cores)"),
    scheduler: str | None = typer.Option(None, help="a running Dask scheduler, "
                                                    "tcp://HOST:8786"),
    frames_per_task: int = typer.Option(256, help="sessions longer than this are split "
                                                  "into frame ranges"),
    connect_timeout: float = typer.Option(10.0, help="seconds to reach the scheduler"),
    as_json: bool = typer.Option(False, "--json", help="print the diff (one file) or the "
                                                      "archive summary as one JSON object"),
    state_dir: str = typer.Option(".micagent", help="caches and demonstration banks"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Run stored sessions' frames through the current model and policy (unattended) and
    report what changed: one file in this process, an archive on Dask with --out."""
    if out is None:
        if len(sessions) == 1 and workers is None and scheduler is None:
            replay_file(sessions[0], model, as_json, state_dir)
            return
        raise fail("--out RESULTS is needed to replay several sessions (or with "
                   "--workers/--scheduler)")
    if workers is not None and scheduler is not None:
        raise fail("--workers starts a local cluster; --scheduler uses a running one: "
                   "give one of them")
    if frames_per_task < 1 or (workers is not None and workers < 1):
        raise fail("--frames-per-task and --workers must be at least 1")
    # Dask and the session machinery load only for an archive (about 3 s): a bad single
    # input is refused before them
    from workflows.replay.archive import ArchiveError, dask_client, prepare_archive, run_archive
    from workflows.session_assembly import BUNDLED_MODEL

    results = Path(out).resolve()
    try:
        job = prepare_archive(sessions, model or BUNDLED_MODEL, results)
        with dask_client(workers, scheduler, err, connect_timeout) as client:
            summary = run_archive(client, job, state_dir=state_dir,
                                  frames_per_task=frames_per_task, console=err, quiet=quiet)
    except ArchiveError as exc:
        raise fail(f"archive replay did not start: {exc}") from exc
    except KeyboardInterrupt as exc:
        raise fail(f"interrupted; what finished is in {results}: run the same command "
                   "again to resume", code=130) from exc
    if as_json:
        sys.stdout.write(json_text(summary) + "\n")
    else:
        Console().print(_summary_table(summary, results))
    if summary["sessions"].get("failed"):
        raise typer.Exit(1)
