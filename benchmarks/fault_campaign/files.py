"""Row `files`: corrupt, truncated, random, NaN-only, empty, missing and folder inputs through
every command that reads a session file (inspect, inspect --json, export, report, replay; on a
sample also run --out and twin serve --data, a server in its own process that must either
refuse the file or start). A crash is an uncaught exception or a traceback; every refusal must
be one `error:` line, and no input may change."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from typer.testing import CliRunner

from benchmarks.fault_campaign.common import Clock, Row, small_classifier
from instruments.utils.child_python import module_command

KINDS = ("truncate", "overwrite", "zero_block", "bit_flips", "random", "empty", "nan_only",
         "plain_hdf5", "missing", "directory")


def _session(work: Path) -> Path:
    """A real 3-frame session on the embedded twin."""
    from agent.config import RunConfig
    from workflows.session_assembly import run_session

    config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / "good.h5"), frames=3,
                       state_dir=str(work / "state"), bank="none",
                       imaging={"fov": 20e-6, "pixels": 64, "dwell": 2e-6})
    run_session(config, Console(quiet=True), quiet=True, classifier=small_classifier())
    return Path(config.out)


def corrupt(good: bytes, kind: str, path: Path, rng: np.random.Generator) -> Path:
    """Write one damaged input of `kind` at `path` (or make it a folder / leave it missing)."""
    data = bytearray(good)
    if kind == "truncate":
        path.write_bytes(bytes(data[: int(rng.integers(1, len(data)))]))
    elif kind in ("overwrite", "zero_block"):
        start = int(rng.integers(0, len(data) - 1))
        size = int(rng.integers(1, min(65536, len(data) - start) + 1))
        data[start:start + size] = (rng.bytes(size) if kind == "overwrite" else bytes(size))
        path.write_bytes(bytes(data))
    elif kind == "bit_flips":
        for at in rng.integers(0, len(data), size=64):
            data[int(at)] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
    elif kind == "random":
        path.write_bytes(rng.bytes(int(rng.integers(1, 200_000))))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "nan_only":
        with h5py.File(path, "w") as f:
            f["image"] = np.full((64, 64), np.nan, dtype=np.float32)
    elif kind == "plain_hdf5":
        with h5py.File(path, "w") as f:
            f["data"] = rng.random(100)
    elif kind == "directory":
        path.mkdir()
    return path


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _commands(path: Path, out: Path, index: int) -> list[list[str]]:
    commands = [["inspect", str(path)], ["inspect", str(path), "--json"],
                ["export", str(path), str(out / "export")],
                ["report", str(path), "--out", str(out / "report")],
                ["replay", str(path), "--state-dir", str(out / "state")]]
    if index % 10 == 0:                 # loads the bundled model: a sample is enough
        commands.append(["run", "--out", str(path), "--frames", "1", "--bank", "none",
                         "--quiet", "--state-dir", str(out / "state")])
    return commands


def _serve(path: Path, row: Row, kind: str) -> None:
    """`micagent twin serve --protocol dtm --data PATH`: READY, or one error line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(module_command("workflows", "twin", "serve", "--protocol", "dtm",
                                           "--port", "0", "--data", str(path)), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=path.parent)
    first = proc.stdout.readline()
    if first.startswith("READY"):
        proc.kill()
        proc.wait(timeout=30)
        return
    _, err = proc.communicate(timeout=120)
    errors = [x for x in err.splitlines() if x.strip() and "Warning" not in x
              and "warn(" not in x]
    if proc.returncode != 2 or len(errors) != 1 or "Traceback" in err:
        row.crashes += 1
        row.note(f"{kind} twin serve --data: exit {proc.returncode}, {len(errors)} lines")


def run(work: Path, n_files: int, seed: int) -> Row:
    from workflows.cli.app import app

    clock, row = Clock(), Row("files through every command")
    good = _session(work).read_bytes()
    rng = np.random.default_rng(seed)
    runner = CliRunner()
    for i in range(n_files):
        kind = KINDS[i % len(KINDS)]
        case = work / f"case{i:03d}"
        case.mkdir()
        path = corrupt(good, kind, case / f"in[{kind}].h5", rng)
        before = _digest(path)
        for args in _commands(path, case, i):
            row.cases += 1
            result = runner.invoke(app, args, catch_exceptions=True)
            text = result.output
            if (result.exception is not None and not isinstance(result.exception, SystemExit)) \
                    or "Traceback" in text or result.exit_code not in (0, 1, 2):
                row.crashes += 1
                row.note(f"{kind} {args[0]}: exit {result.exit_code} "
                         f"{type(result.exception).__name__}: {str(result.exception)[:80]}")
                continue
            errors = [line for line in result.stderr.splitlines()
                      if line.strip() and "Warning" not in line and "warn(" not in line]
            if result.exit_code != 0 and (len(errors) != 1 or not errors[0].startswith("error:")):
                row.crashes += 1
                row.note(f"{kind} {args[0]}: {len(errors)} stderr lines, not one error line")
        if i % 25 == 0:
            row.cases += 1
            _serve(path, row, kind)
        if _digest(path) != before:
            row.lost += 1
            row.note(f"{kind}: the input changed")
    row.seconds = clock()
    return row
