"""Archive replay on Dask distributed: many session files through one model, one task per
session file (large sessions split into frame ranges), results in a Parquet folder.

Before any work: the inputs are expanded, the checkpoint is read, the output folder is checked
(another model's results are refused), the scheduler is reached (or an embedded LocalCluster
started), every worker loads the model (a worker plugin), the inputs are scanned and their
recorded classes compared with the model's. Then the ranges not yet stored are replayed; each
finished range is written by this client, in parts, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster, as_completed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workflows.replay.store import ResultsFolder, ResultsFolderError
from workflows.replay.task import SessionScan, short_key
from workflows.replay.worker import ReplayModel, replay_task, scan_task
from workflows.terminal import notice

SESSION_SUFFIXES = (".h5", ".hdf5")
FLUSH_SECONDS = 5.0
# Dask's statistical profiler keeps a call tree per second of work for an hour; under the deep
# torch stacks of a replay that grew a worker by ~3 MB per session (measured), so it is off
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
FLUSH_TASKS = 256


class ArchiveError(RuntimeError):
    """The archive replay cannot start (nothing was replayed or written)."""


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    class_names: list[str]


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files, folders (their session files, recursively) and glob patterns, in the order
    given; a pattern that names nothing is an error (a typo must not shrink the archive)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = ([pattern] if Path(pattern).exists()        # a name may hold [ or *
                   else sorted(glob.glob(pattern, recursive=True)))
        hits = []
        for match in map(Path, matches):
            if match.is_dir():
                hits += sorted(p for p in match.rglob("*")
                               if p.suffix.lower() in SESSION_SUFFIXES and p.is_file())
            elif match.exists():
                hits.append(match)
        if not hits:
            raise ArchiveError(f"no session files at {pattern!r}")
        found += hits
    return [p.resolve() for p in found]


def model_info(model: str | Path) -> ModelInfo:
    """Class names and fingerprint of a checkpoint folder, without loading its weights."""
    from models.checkpoint import CheckpointError, checkpoint_sha256, read_meta
    try:
        meta = read_meta(model)
        return ModelInfo(str(Path(model).resolve()), checkpoint_sha256(model),
                         list(meta["class_names"]))
    except (CheckpointError, OSError) as exc:
        raise ArchiveError(f"cannot use model {model}: {exc}") from exc


@contextmanager
def dask_client(workers: int | None, scheduler: str | None, console: Console,
                connect_timeout: float = 10.0) -> Iterator[Client]:
    """A client of the scheduler at `scheduler`, or of an embedded LocalCluster (worker
    processes of one thread each, `workers` of them, the cores by default)."""
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ArchiveError(f"cannot reach the Dask scheduler at {scheduler} "
                               f"(within {connect_timeout:g} s): {exc}") from exc
        notice(console, f"scheduler {scheduler}: {len(client.scheduler_info()['workers'])} "
                        f"workers; dashboard: {client.dashboard_link}")
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with dask.config.set(WORKER_CONFIG), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster:
        console.print(f"local cluster: {n} worker processes; dashboard: "
                      f"{cluster.dashboard_link}")
        with Client(cluster) as client:
            yield client


def _deduplicate(scans: list[SessionScan]) -> tuple[list[SessionScan], list[dict[str, Any]]]:
    """Each session once (the first file that holds it); the other files as duplicates."""
    first: dict[str, SessionScan] = {}
    duplicates = []
    for scan in scans:
        if scan.key in first:
            duplicates.append({"source": scan.source, "duplicate_of": first[scan.key].source})
        else:
            first[scan.key] = scan
    return list(first.values()), duplicates


def _check_classes(scans: list[SessionScan], model: ModelInfo) -> None:
    other = [s for s in scans if s.class_names and set(s.class_names) != set(model.class_names)]
    if other:
        names = ", ".join(Path(s.source).name for s in other[:3])
        raise ArchiveError(
            f"the model's classes {model.class_names} are not those recorded in "
            f"{len(other)} session(s) ({names}{', ...' if len(other) > 3 else ''}: "
            f"{list(other[0].class_names or ())}); use a model for that class set")


def plan_ranges(frames: int, done: set[tuple[int, int]],
                per_task: int) -> list[tuple[int, int]]:
    """Ranges of at most `per_task` frames covering the frames of [0, frames) that no stored
    range covers (whatever range size the earlier runs used)."""
    covered = [False] * frames
    for start, stop in done:
        for i in range(start, min(stop, frames)):
            covered[i] = True
    ranges, start = [], None
    for i in range(frames + 1):
        free = i < frames and not covered[i]
        if free and start is None:
            start = i
        if start is not None and (not free or i - start == per_task):
            ranges.append((start, i))
            start = i if free else None
    return ranges


def _session_rows(run_id: str, scans: list[SessionScan],
                  duplicates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    by_source = {s.source: s for s in scans}
    rows = [{"run_id": run_id, "scanned": now, "session_key": s.key,
             "session_id": s.session_id, "source": s.source, "frames": s.frames,
             "instrument": s.instrument, "error": s.error, "duplicate_of": None}
            for s in scans]
    for dup in duplicates:
        kept = by_source[dup["duplicate_of"]]
        rows.append({"run_id": run_id, "scanned": now, "session_key": kept.key,
                     "session_id": kept.session_id, "source": dup["source"],
                     "frames": kept.frames, "instrument": kept.instrument, "error": None,
                     "duplicate_of": dup["duplicate_of"]})
    return rows


class _Buffer:
    """Finished tasks kept until the next part is written (every few seconds or tasks)."""

    def __init__(self, store: ResultsFolder) -> None:
        self.store, self.frames, self.tasks = store, [], []
        self.last = time.monotonic()

    def add(self, result: dict[str, Any]) -> None:
        self.frames += result["rows"]
        self.tasks.append({"run_id": self.store.run_id, **result["task"]})
        if len(self.tasks) >= FLUSH_TASKS or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.store.append("frames", self.frames)    # frames first: they are what is done
        self.store.append("tasks", self.tasks)
        self.frames, self.tasks = [], []
        self.last = time.monotonic()


def _failed_task(scan: SessionScan, start: int, stop: int, error: str) -> dict[str, Any]:
    now = time.time()
    return {"rows": [], "task": {
        "session_key": scan.key, "session_id": scan.session_id, "source": scan.source,
        "start": start, "stop": stop, "status": "failed", "error": error, "frames": 0,
        "worker": "", "started": now, "finished": now, "seconds": 0.0, "worker_rss_mb": 0.0,
        "worker_peak_rss_mb": 0.0, "model_sha256": ""}}


@dataclass(frozen=True)
class ArchiveJob:
    """Inputs, model and results folder of an archive replay, checked before any cluster."""

    paths: list[Path]
    model: ModelInfo
    store: ResultsFolder


def prepare_archive(inputs: list[str], model: str | Path, out: str | Path) -> ArchiveJob:
    """The job, or ArchiveError: inputs that name nothing, an unusable checkpoint, an output
    folder that holds another model's results (or anything but results)."""
    paths = expand_inputs(inputs)
    info = model_info(model)
    store = ResultsFolder(out)
    try:
        store.check_model(info.sha256)
    except ResultsFolderError as exc:
        raise ArchiveError(str(exc)) from exc
    return ArchiveJob(paths, info, store)


def replay_archive(client: Client, inputs: list[str], model: str | Path, out: str | Path,
                   **options: Any) -> dict[str, Any]:
    """prepare_archive, then run_archive (see both)."""
    return run_archive(client, prepare_archive(inputs, model, out), **options)


def run_archive(client: Client, job: ArchiveJob, state_dir: str | Path = ".micagent",
                frames_per_task: int = 256, console: Console | None = None,
                quiet: bool = False) -> dict[str, Any]:
    """Replay every session of the job on the client's cluster into its results folder;
    returns the summary (also written to RESULTS/summary.json). ArchiveError before any
    replay when the workers cannot load the model or the sessions' classes are not its."""
    console = console or Console(stderr=True)
    info, store = job.model, job.store
    try:
        client.register_plugin(ReplayModel(info.path, info.sha256,
                                           str(Path(state_dir).resolve())))
    except Exception as exc:  # noqa: BLE001 - whatever a worker raised while loading
        raise ArchiveError(f"the workers cannot load the model {info.path}: "
                           f"{type(exc).__name__}: {exc}") from exc
    scans = client.gather(client.map(scan_task, [str(p) for p in job.paths], pure=False))
    unique, duplicates = _deduplicate(scans)
    _check_classes(unique, info)
    store.create(info.sha256, info.path, info.class_names)
    store.append("sessions", _session_rows(store.run_id, unique, duplicates))
    done = store.done_ranges()
    work = [(scan, start, stop) for scan in unique if not scan.error
            for start, stop in plan_ranges(scan.frames, done.get(scan.key, set()),
                                           frames_per_task)]
    failed_scans = [s for s in unique if s.error]
    for scan in failed_scans:
        notice(console, f"cannot replay {scan.source}: {scan.error}", "red")
    for dup in duplicates:
        notice(console, f"{dup['source']}: same session as {dup['duplicate_of']}, replayed "
                        "once", "yellow")
    console.print(f"{len(unique) - len(failed_scans)} sessions, "
                  f"{sum(b - a for _, a, b in work)} frames to replay in {len(work)} tasks "
                  f"({sum(s.frames for s in unique) - sum(b - a for _, a, b in work)} "
                  "frames stored before)")
    _replay(client, work, store, console, quiet)
    return store.write_summary()


def _replay(client: Client, work: list[tuple[SessionScan, int, int]], store: ResultsFolder,
            console: Console, quiet: bool) -> None:
    futures = {client.submit(replay_task, scan, start, stop, pure=False,
                             key=f"replay-{short_key(scan.key)}-{start}-{stop}"):
               (scan, start, stop) for scan, start, stop in work}
    buffer = _Buffer(store)
    failed = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("frames"), TimeElapsedColumn(), console=console,
                        disable=quiet)
    bar = progress.add_task("replay", total=sum(b - a for _, a, b in work))
    try:
        with progress:
            for future in as_completed(futures):
                scan, start, stop = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after retries
                    result = _failed_task(scan, start, stop, f"{type(exc).__name__}: {exc}")
                buffer.add(result)
                if result["task"]["status"] == "failed":
                    failed += 1
                    notice(progress.console, f"{scan.source} frames {start}-{stop}: "
                                             f"{result['task']['error']}", "red")
                progress.update(bar, advance=stop - start,
                                description=f"replay ({failed} failed)" if failed else "replay")
                future.release()
    finally:
        buffer.flush()
