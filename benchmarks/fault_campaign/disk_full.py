"""Row `disk full`: `micagent run` on a real small filesystem (a tmpfs of a seeded size, 2-4 MB,
mounted for the run), with a seeded space margin (0: the disk fills in the middle of a write;
0.5 MB: the space check stops first). Each run must stop with status disk_full, one `error:`
line and no traceback, leave a readable file, and, once the filesystem is remounted larger,
`--resume` must record every frame exactly once. Needs permission to mount (root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.fault_campaign.common import REPO, Clock, Row

FRAMES = 16


def _cli(*args: str, margin_mb: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MICAGENT_DISK_MARGIN_MB": str(margin_mb)}
    return subprocess.run([sys.executable, "-m", "workflows", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900, check=False)


def _read(path: Path) -> tuple[str, list[int]] | None:
    """(status, sequences) of the session file, None when it cannot be read."""
    from instruments.session_file.reader import SessionReader
    try:
        with SessionReader(path) as reader:
            return reader.summary()["status"], [r.sequence for r in reader.records()]
    except Exception:  # noqa: BLE001 - unreadable is what the row counts
        return None


def _trial(work: Path, size_mb: int, margin_mb: float, row: Row) -> tuple[bool, bool]:
    """One stop and resume; (file readable after the stop, resume recorded every frame)."""
    disk = work / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)],
                   check=True, capture_output=True)
    try:
        out, state = disk / "s.h5", work / "state"
        stopped = _cli("run", "--frames", str(FRAMES), "--pixels", "128", "--out", str(out),
                       "--state-dir", str(state), "--quiet", margin_mb=margin_mb)
        errors = [x for x in stopped.stderr.splitlines() if x.startswith("error:")]
        if stopped.returncode != 1 or "Traceback" in stopped.stderr or len(errors) != 1 \
                or "disk_full" not in errors[0]:
            row.crashes += 1
            row.note(f"{size_mb} MB, margin {margin_mb}: exit {stopped.returncode}, "
                     f"{(stopped.stderr.strip().splitlines() or [''])[-1][:100]}")
        after_stop = _read(out)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        session_id = next((state / "sessions").glob("*.json")).stem
        resumed = _cli("run", "--resume", session_id, "--state-dir", str(state), "--quiet",
                       margin_mb=margin_mb)
        final = _read(out)
        sequences = final[1] if final else []
        row.lost += FRAMES - len(set(sequences))
        row.doubled += len(sequences) - len(set(sequences))
        complete = resumed.returncode == 0 and final is not None and final[0] == "completed" \
            and sequences == list(range(FRAMES))
        return after_stop is not None and after_stop[0] == "disk_full", complete
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def run(work: Path, runs: int, seed: int) -> Row:
    clock, row = Clock(), Row("disk full (tmpfs) + resume")
    probe = work / "probe"
    probe.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                      capture_output=True, check=False).returncode != 0:
        row.note("cannot mount a tmpfs here (not root?): row not run")
        row.good_after = "n/a"
        return row
    subprocess.run(["umount", str(probe)], check=False)
    rng = np.random.default_rng(seed)
    readable = resumable = 0
    for i in range(runs):
        size_mb, margin_mb = int(rng.integers(2, 5)), float(rng.choice([0.0, 0.5]))
        stopped_ok, resumed_ok = _trial(work / f"run{i}", size_mb, margin_mb, row)
        readable += stopped_ok
        resumable += resumed_ok
        row.cases += 1
    row.crashes += runs - readable
    row.good_after = f"{resumable}/{runs} resumed"
    row.note(f"{runs - readable} unreadable (or not disk_full) files after the stop; "
             f"{100 * resumable / runs:.0f} % resumable after space was freed, every frame once")
    row.seconds = clock()
    return row
