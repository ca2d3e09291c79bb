"""Archive replay throughput: 40 twin sessions of 24 frames through the bundled model.

Rows, all measured in one run on this machine:
  loop        a plain loop over `micagent replay FILE --json` (one process per file, as a user
              would script it), on the first --loop-files files
  in-process  the same replay_range calls in one process, model loaded once, no Dask
  dask N      `micagent replay` on an embedded LocalCluster of N worker processes, all sessions;
              wall time including cluster start and model loads, and the steady rate between
              the first task's start and the last task's end
Also: RSS of each worker after its first and last tasks (flat across the archive?), the
scheduler's cost per task (no-op tasks), and the HDF5 read cost per stored frame: the inputs
of the 10,000-session estimate in benchmarks/results/replay_scale.md.

    OMP_NUM_THREADS=1 python -m benchmarks.replay_scale [--sessions 40 --frames 24]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from instruments.session_file.reader import SessionReader  # noqa: E402
from instruments.utils.child_python import module_command  # noqa: E402
from twins.recorded_sessions import write_twin_session  # noqa: E402
from workflows.replay.archive import WORKER_CONFIG, replay_archive  # noqa: E402
from workflows.replay.store import ResultsFolder  # noqa: E402

BUNDLED = ROOT / "models" / "bundled" / "sem_twin"


def make_archive(folder: Path, sessions: int, frames: int, pixels: int) -> list[Path]:
    """The archive (files already there from an earlier run of the script are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"session_{i:04d}.h5" for i in range(sessions)]
    return [p if p.exists() else write_twin_session(p, frames, seed=i, pixels=pixels)
            for i, p in enumerate(paths)]


def loop_over_cli(files: list[Path], state: Path) -> dict:
    """`micagent replay FILE --json`, one process per file."""
    t0 = time.perf_counter()
    frames = 0
    for path in files:
        out = subprocess.run(module_command("workflows", "replay", str(path), "--json",
                                            "--state-dir", str(state)),
                             capture_output=True, text=True, check=True)
        frames += json.loads(out.stdout.strip().splitlines()[-1])["frames"]
    seconds = time.perf_counter() - t0
    return {"files": len(files), "frames": frames, "seconds": seconds,
            "frames_per_s": frames / seconds}


def in_process(files: list[Path], state: Path, scratch: Path) -> dict:
    """replay_range over the files in this process (model and bank loaded once)."""
    from models.classifier import Classifier
    from workflows.replay.task import replay_range, scan_session
    from workflows.training.demonstration_bank import session_bank

    t0 = time.perf_counter()
    classifier = Classifier.load(BUNDLED)
    banks: dict = {}

    def bank_for(config, _classifier):
        key = (config.bank, config.seed)
        if key not in banks:
            banks[key] = session_bank(classifier, state, config.bank, config.seed)
        return banks[key]

    loaded = time.perf_counter()
    frames = 0
    for path in files:
        scan = scan_session(path)
        frames += len(replay_range(scan, 0, scan.frames, classifier, bank_for, str(BUNDLED),
                                   state, scratch))
    end = time.perf_counter()
    return {"files": len(files), "frames": frames, "load_s": loaded - t0,
            "seconds": end - loaded, "frames_per_s": frames / (end - loaded)}


def dask_run(files: list[Path], workers: int, out: Path, state: Path) -> dict:
    t0 = time.perf_counter()
    with dask.config.set(WORKER_CONFIG), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host="127.0.0.1", dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        summary = replay_archive(client, [str(f) for f in files], BUNDLED, out,
                                 state_dir=state, quiet=True)
    wall = time.perf_counter() - t0
    tasks = sorted(ResultsFolder(out).table("tasks").to_pylist(), key=lambda t: t["finished"])
    rss: dict[str, list[float]] = {}
    for task in tasks:
        rss.setdefault(task["worker"], []).append(task["worker_rss_mb"])
    info = summary["throughput"]
    return {"workers": workers, "frames": summary["frames"], "wall_s": wall,
            "cluster_start_s": started - t0, "frames_per_s_wall": summary["frames"] / wall,
            "steady_s": info["wall_s"], "frames_per_s_steady": info["frames_per_s"],
            "rss_mb_first_last": {w.rsplit("/", 1)[-1]: (v[0], v[-1])
                                       for w, v in rss.items()},
            "failed": summary["sessions"].get("failed", 0)}


def _noop(i: int) -> int:
    return i


def scheduler_cost(tasks: int = 2000) -> dict:
    """Seconds per task of submitting and gathering no-op tasks on 2 local workers."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(_noop, range(10)))
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        seconds = time.perf_counter() - t0
    return {"tasks": tasks, "ms_per_task": 1e3 * seconds / tasks}


def hdf5_read_cost(files: list[Path]) -> dict:
    t0 = time.perf_counter()
    frames = nbytes = 0
    for path in files:
        with SessionReader(path) as reader:
            for frame in reader.iter_frames():
                frames += 1
                nbytes += frame.image.nbytes
            reader.records()
    seconds = time.perf_counter() - t0
    return {"frames": frames, "ms_per_frame": 1e3 * seconds / frames,
            "mb_per_frame": nbytes / frames / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--loop-files", type=int, default=4)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--work", default=None, help="folder for the archive and results")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="replay_scale_"))
    report: dict = {"load_average_start": os.getloadavg(), "cores": os.cpu_count()}
    t0 = time.perf_counter()
    files = make_archive(work / "archive", args.sessions, args.frames, args.pixels)
    report["archive"] = {"sessions": len(files), "frames": args.sessions * args.frames,
                         "pixels": args.pixels, "write_s": time.perf_counter() - t0}
    state = work / "state"
    print(json.dumps(report), flush=True)
    report["hdf5_read"] = hdf5_read_cost(files[:8])
    report["loop"] = loop_over_cli(files[:args.loop_files], state)      # builds the bank cache
    print(json.dumps({"loop": report["loop"]}), flush=True)
    report["in_process"] = in_process(files[:args.loop_files], state, work / "scratch")
    print(json.dumps({"in_process": report["in_process"]}), flush=True)
    for n in map(int, args.workers.split(",")):
        report[f"dask_{n}"] = dask_run(files, n, work / f"results_{n}", state)
        print(json.dumps({f"dask_{n}": report[f"dask_{n}"]}), flush=True)
    report["scheduler"] = scheduler_cost()
    report["load_average_end"] = os.getloadavg()
    runs = [report[f"dask_{n}"] for n in map(int, args.workers.split(","))]
    if len(runs) >= 2:
        report["speedup_steady"] = runs[-1]["frames_per_s_steady"] / runs[0][
            "frames_per_s_steady"]
        report["speedup_wall"] = runs[-1]["frames_per_s_wall"] / runs[0]["frames_per_s_wall"]
    report["dask_vs_loop_wall"] = runs[-1]["frames_per_s_wall"] / report["loop"][
        "frames_per_s"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
