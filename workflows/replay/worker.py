"""What runs on a Dask worker during an archive replay: a worker plugin that loads the model
once per worker process and keeps it (with the demonstration banks it builds), and the two
task functions the client submits (scan a file, replay a frame range)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import socket
import time
from pathlib import Path
from typing import Any

import psutil
from distributed import Lock, WorkerPlugin, get_worker

from workflows.replay.task import SessionScan, replay_range, scan_session

PLUGIN_NAME = "micagent-replay-model"


class ModelMismatch(RuntimeError):
    """A worker read another checkpoint than the client at the same path."""


class ReplayModel(WorkerPlugin):
    """Loads the checkpoint when a worker starts (or joins later) and keeps it for every task
    that worker runs; a restarted worker loads it again. Checks the checkpoint hash the client
    computed, so a worker that sees another file at the same path refuses to start work."""

    name = PLUGIN_NAME

    def __init__(self, checkpoint: str, sha256: str, state_dir: str) -> None:
        self.checkpoint, self.sha256, self.state_dir = checkpoint, sha256, state_dir
        self.classifier: Any = None
        self.scratch: Path | None = None
        self._banks: dict[tuple[str | None, int], Any] = {}

    def setup(self, worker) -> None:
        from models.classifier import Classifier

        classifier = Classifier.load(self.checkpoint)
        if classifier.checkpoint_sha256 != self.sha256:
            raise ModelMismatch(f"worker {worker.address} reads another checkpoint at "
                                f"{self.checkpoint} (sha256 {classifier.checkpoint_sha256[:12]} "
                                f"!= {self.sha256[:12]})")
        self.classifier = classifier
        self.scratch = Path(worker.local_directory) / "micagent-replay"

    def bank(self, config, classifier: Any = None) -> Any:
        """The demonstration bank of a replay config, read from the cache under `state_dir`
        once per worker; the first worker to need it builds it while the others wait (a
        cluster-wide lock), so a shared state folder means one build for the cluster."""
        from workflows.training.demonstration_bank import session_bank

        key = (config.bank, config.seed)
        if key not in self._banks:
            with Lock(f"micagent-bank-{self.sha256}-{config.bank}-{config.seed}"):
                self._banks[key] = session_bank(self.classifier, self.state_dir, config.bank,
                                                config.seed)
        return self._banks[key]


def _plugin() -> ReplayModel:
    return get_worker().plugins[PLUGIN_NAME]


def scan_task(path: str) -> SessionScan:
    """Dask task: scan one input file."""
    return scan_session(path)


def _release_memory() -> None:
    """Return the memory a finished task freed to the system: without it glibc keeps the freed
    blocks of each session's objects (HDF5, torch, LangGraph); replaying session after session
    in one process, RSS crept without it and stayed flat with it (measured). Dask's
    documentation gives the same remedy for 'unmanaged memory'."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_rss_mb() -> float:
    """Peak resident memory of this worker process so far, in MB: VmHWM where /proc has it
    (getrusage's ru_maxrss would also count the parent processes it was forked from), else
    the current RSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return psutil.Process().memory_info().rss / 1e6


def replay_task(scan: SessionScan, start: int, stop: int) -> dict[str, Any]:
    """Dask task: replay frames [start, stop) of a scanned session on this worker's model.
    Returns {"rows": [...], "task": {...}}; a range that cannot be replayed comes back with
    no rows and its error (deterministic failures are not retried by Dask)."""
    plugin = _plugin()
    worker = get_worker()
    started = time.time()
    rows: list[dict[str, Any]] = []
    error = None
    try:
        rows = replay_range(scan, start, stop, plugin.classifier, plugin.bank,
                            plugin.checkpoint, plugin.state_dir, plugin.scratch)
    except Exception as exc:  # noqa: BLE001 - ReplayRangeError or any other: a failed row
        error = f"{type(exc).__name__}: {exc}"
    _release_memory()
    finished = time.time()
    return {"rows": rows, "task": {
        "session_key": scan.key, "session_id": scan.session_id, "source": scan.source,
        "start": start, "stop": stop, "status": "failed" if error else "done",
        "error": error, "frames": len(rows), "worker": f"{socket.gethostname()}"
        f"/{worker.address}", "started": started, "finished": finished,
        "seconds": finished - started, "worker_rss_mb": psutil.Process().memory_info().rss / 1e6,
        "worker_peak_rss_mb": _peak_rss_mb(),
        "model_sha256": plugin.sha256}}
