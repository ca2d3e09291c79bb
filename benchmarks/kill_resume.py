"""Kill campaign: SIGKILL a 24-frame survey on the twin at seeded random points, resume each,
and check the frame accounting is exact: every planned tile recorded once (24 frames, unique
ids, sequence numbers 0..23 in order, one per planned position), status completed, the
session's outcome counting 24 recorded frames.

    python benchmarks/kill_resume.py [--kills 50] [--frames 24] [--seed 0] [--no-pipeline]

A kill point is a checkpoint step drawn over the whole session plus a delay of 0-40 ms after
that checkpoint appears (so kills land inside nodes, session-file writes and checkpoint writes
too), both from `random.Random(seed)`. Each run is a forked copy of this (already warm)
process that goes through `workflows.session_assembly.run_session`, what `micagent run` runs; the
parent SIGKILLs it, then resumes the session in a fresh fork as `micagent run --resume` does
(the CLI itself is killed and resumed by `tests/test_agent_resume.py`). The classifier is a small
untrained fusion model (ViT only): what is measured is the agent's crash safety.

Importable: `campaign(kills, seed, ...)` returns one `Trial` per kill (the fault campaign
reuses it); `table(trials, frames)` formats them.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

@dataclass
class Trial:
    """One kill and its resume."""

    index: int
    target_step: int          # the checkpoint count the kill waited for
    killed_at: int | None     # checkpoints saved when the process died (None: ended first)
    frames: int
    unique: int
    in_order: bool            # sequence numbers 0..n-1 in write order
    positions: int            # distinct stage positions among the frames
    status: str
    recorded: int | None      # the outcome's count
    seconds: float
    error: str = ""

    def exact(self, expected: int) -> bool:
        return (not self.error and self.frames == self.unique == self.positions == expected
                and self.in_order and self.status == "completed" and self.recorded == expected)


def steps_of(frames: int) -> int:
    """Checkpoints of a confident survey: input, start, connect, check_instrument, 5 per
    frame (plan, acquire, assess_quality, classify, record), the last plan, finish."""
    return 4 + 5 * frames + 2


def make_model(folder: Path) -> Path:
    """A small untrained fusion classifier (ViT only) for the twin's classes."""
    import torch

    from models.classifier import Classifier
    from models.config import FusionConfig
    from twins.classes import SEM_CLASSES

    torch.manual_seed(0)
    Classifier.create(FusionConfig.ablation("vit_only"), SEM_CLASSES).save(folder)
    return folder


def _fork(run) -> int:
    """Run `run()` in a forked process; its pid (the child exits 0, or 1 on an error)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run()
            code = 0
        finally:
            os._exit(code)
    return pid


def _run_session(config, classifier) -> None:
    from rich.console import Console

    from workflows.session_assembly import run_session

    run_session(config, Console(quiet=True), quiet=True, classifier=classifier)


def _kill_at(pid: int, ckpt: Path, step: int, delay: float, timeout: float) -> int | None:
    """SIGKILL `pid` `delay` s after the checkpoint holds `step` checkpoints; how many it held
    when the process was gone (None when the session ended first)."""
    from agent.checkpoint_store import steps_written

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return None
        if steps_written(ckpt) >= step:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return steps_written(ckpt) if os.WIFSIGNALED(status) else None
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise TimeoutError(f"the session did not reach checkpoint {step} in {timeout} s")


def trial(index: int, step: int, delay: float, frames: int, classifier, work: Path,
          pixels: int = 128, pipeline: bool = True, timeout: float = 600.0) -> Trial:
    """Run a survey, SIGKILL it at checkpoint `step` + `delay`, resume it, read the file."""
    from agent.config import RunConfig, checkpoint_path, registry_path
    from instruments.session_file.reader import SessionReader

    folder = work / f"trial-{index:03d}"
    config = RunConfig(session_id=f"kill-{index:03d}", out=str(folder / "session.h5"),
                       state_dir=str(folder / "state"), frames=frames, bank="none",
                       confidence=0.0, pipeline=pipeline,
                       imaging={"fov": 20e-6, "pixels": pixels, "dwell": 2e-6})
    t0 = time.perf_counter()
    try:
        pid = _fork(lambda: _run_session(config, classifier))
        killed_at = _kill_at(pid, checkpoint_path(config.out), step, delay, timeout)
        if killed_at is not None:
            stored = RunConfig.load(registry_path(config.state_dir, config.session_id))
            pid = _fork(lambda: _run_session(stored, classifier))
            _, status = os.waitpid(pid, 0)
            if os.WEXITSTATUS(status) != 0:
                raise RuntimeError(f"the resumed session exited {os.WEXITSTATUS(status)}")
        with SessionReader(config.out) as reader:
            records = reader.records()
            frame_ids = reader.frame_ids
            status_text = reader.provenance.get("status", "")
            outcome = reader.provenance.get("outcome") or {}
        return Trial(index, step, killed_at, len(records), len(set(frame_ids)),
                     [r.sequence for r in records] == list(range(len(records))),
                     len({(r.position.x, r.position.y) for r in records}), status_text,
                     (outcome.get("counts") or {}).get("recorded"),
                     time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a trial that breaks is a row of the table
        return Trial(index, step, None, 0, 0, False, 0, "", None, time.perf_counter() - t0,
                     f"{type(exc).__name__}: {exc}")


def campaign(kills: int = 50, seed: int = 0, frames: int = 24, work: Path | None = None,
             pixels: int = 128, pipeline: bool = True,
             progress: bool = False) -> list[Trial]:
    """`kills` trials at points drawn from `random.Random(seed)`: a checkpoint step over the
    whole session (1 .. steps_of(frames)) and a delay of 0-40 ms after it."""
    from models.classifier import Classifier

    work = Path(work or tempfile.mkdtemp(prefix="micagent-kill-"))
    classifier = Classifier.load(make_model(work / "model"))
    rng = random.Random(seed)
    trials = []
    for index in range(kills):
        step, delay = rng.randint(1, steps_of(frames)), rng.uniform(0.0, 0.04)
        result = trial(index, step, delay, frames, classifier, work, pixels, pipeline)
        trials.append(result)
        if progress:
            print(_row(result, frames), flush=True)
    return trials


HEADER = (f"{'#':>3} {'target':>6} {'killed':>6} {'frames':>6} {'unique':>6} {'order':>5} "
          f"{'places':>6} {'status':>10} {'counted':>7} {'s':>6}  exact")


def _row(t: Trial, frames: int) -> str:
    return (f"{t.index:>3} {t.target_step:>6} {t.killed_at if t.killed_at is not None else '-':>6}"
            f" {t.frames:>6} {t.unique:>6} {'yes' if t.in_order else 'no':>5} {t.positions:>6}"
            f" {t.status:>10} {t.recorded if t.recorded is not None else '-':>7}"
            f" {t.seconds:>6.1f}  {'yes' if t.exact(frames) else 'NO ' + t.error}")


def table(trials: list[Trial], frames: int) -> str:
    exact = sum(t.exact(frames) for t in trials)
    killed = sum(t.killed_at is not None for t in trials)
    return "\n".join([HEADER, *(_row(t, frames) for t in trials),
                      f"exact {exact}/{len(trials)} ({frames} frames, unique ids, sequence "
                      f"in order, one per position, status completed; {killed} of the "
                      f"{len(trials)} runs killed before their end)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", type=int, default=128)
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    print(HEADER, flush=True)
    trials = campaign(args.kills, args.seed, args.frames, args.work, args.pixels,
                      not args.no_pipeline, progress=True)
    print(table(trials, args.frames).splitlines()[-1])


if __name__ == "__main__":
    main()
