"""A full disk loses nothing: on a real small filesystem (a tmpfs mounted for the test) `micagent
run` stops with status disk_full, one `error:` line with the resume hint and a readable file;
once space is freed, `--resume` records every frame exactly once. The run that meets the full
disk is a process of its own (what reaches its terminal is checked, HDF5's C library
included); the resume runs in the test's process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_in_process import explain, micagent_in_process

from instruments.session_file.reader import SessionReader
from instruments.utils.disk_space import MARGIN_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FRAMES = 6


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `folder`; the test is skipped, with the reason printed, where this
    process may not mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def grow(folder: Path, size: str) -> None:
    """Free space: the same filesystem, remounted larger (files kept)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def micagent(*args: str, margin_mb: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), MARGIN_ENV: str(margin_mb)}
    return subprocess.run([sys.executable, "-m", "workflows", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600, check=False)


def status_and_sequences(path: Path) -> tuple[str, list[int]]:
    with SessionReader(path) as reader:
        return reader.summary()["status"], [r.sequence for r in reader.records()]


@pytest.mark.parametrize("margin_mb", [0, 0.5], ids=["disk-fills-mid-write", "space-check"])
def test_full_disk_stops_disk_full_and_resume_records_every_frame(
        tmp_path: Path, margin_mb: float, plumbing_checkpoint: Path, monkeypatch):
    with small_filesystem(tmp_path / "small", "2m") as disk:
        out, state = disk / "session.h5", tmp_path / "state"
        run = ["run", "--frames", str(FRAMES), "--pixels", "128", "--out", str(out),
               "--model", str(plumbing_checkpoint), "--bank", "none", "--state-dir", str(state),
               "--quiet"]
        stopped = micagent(*run, margin_mb=margin_mb)
        assert stopped.returncode == 1, stopped.stderr
        assert "Traceback" not in stopped.stderr
        errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "disk_full" in errors[0] and "--resume" in errors[0]
        status, sequences = status_and_sequences(out)
        assert status == "disk_full"
        assert len(sequences) < FRAMES

        grow(disk, "64m")
        session_id = next((state / "sessions").glob("*.json")).stem
        monkeypatch.setenv(MARGIN_ENV, str(margin_mb))
        resumed = micagent_in_process("run", "--resume", session_id, "--state-dir",
                                      str(state), "--quiet")
        assert resumed.exit_code == 0, explain(resumed)
        status, sequences = status_and_sequences(out)
        assert status == "completed"
        assert sequences == list(range(FRAMES))
        assert list((disk / "session.h5.work" / "frames").iterdir()) == []


def test_sqlite_and_hdf5_full_disk_errors_are_recognised(tmp_path: Path):
    import sqlite3

    import h5py
    import numpy as np

    from instruments.utils.disk_space import is_disk_full

    with small_filesystem(tmp_path / "tiny", "1m") as disk:
        conn = sqlite3.connect(disk / "db.sqlite")
        conn.execute("CREATE TABLE t (b BLOB)")
        with pytest.raises(sqlite3.Error) as sqlite_full:
            for _ in range(64):
                conn.execute("INSERT INTO t VALUES (?)", (bytes(64 * 1024),))
                conn.commit()
        conn.close()
        assert is_disk_full(sqlite_full.value)
        (disk / "db.sqlite").unlink()

        with pytest.raises(Exception) as hdf5_full:  # noqa: PT011 - h5py's type varies
            with h5py.File(disk / "f.h5", "w") as f:
                f["x"] = np.ones(1_000_000)
        assert is_disk_full(hdf5_full.value)
