"""A user's bad input ends in one plain `error:` line on stderr, exit code 2, never a traceback:
exception text often ends in `[path]`, which rich would read as a closing markup tag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from workflows.terminal import fail, one_line

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _micagent(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "workflows", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def _bad_inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    random_bytes = folder / "random[1].h5"          # brackets in the name as well
    random_bytes.write_bytes(rng.bytes(5000))
    corrupt = folder / "corrupt.h5"
    with h5py.File(corrupt, "w") as f:
        f["x"] = np.arange(1000.0)
    corrupt.write_bytes(corrupt.read_bytes()[:1500])
    nan_only = folder / "nan.h5"
    with h5py.File(nan_only, "w") as f:
        f["image"] = np.full((64, 64), np.nan, dtype=np.float32)
    (folder / "a_folder.h5").mkdir()
    return {"random": random_bytes, "corrupt": corrupt, "nan": nan_only,
            "missing": folder / "missing.h5", "directory": folder / "a_folder.h5"}


def _assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "Warning" not in line and "warnings.warn" not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr


@pytest.mark.parametrize("kind", ["random", "corrupt", "nan", "missing", "directory"])
def test_replay_of_an_unreadable_input_is_one_error_line(tmp_path: Path, kind: str) -> None:
    path = _bad_inputs(tmp_path)[kind]
    before = path.read_bytes() if path.is_file() else None
    result = _micagent("replay", str(path), "--state-dir", str(tmp_path / "state"),
                       cwd=tmp_path)
    _assert_one_line_error(result)
    assert str(path) in result.stderr
    if before is not None:
        assert path.read_bytes() == before


def test_run_into_an_existing_foreign_file_is_one_error_line(tmp_path: Path) -> None:
    foreign = tmp_path / "theirs[v2].h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(10)
    before = foreign.read_bytes()
    result = _micagent("run", "--out", str(foreign), "--frames", "1", "--quiet",
                       "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    _assert_one_line_error(result)
    assert "not a micagent session" in result.stderr
    assert foreign.read_bytes() == before


def test_the_error_printer_folds_lines_and_masks_keys(capsys, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    exit_ = fail("first [bold]line[/]\nsecond sk-test-0123456789abcdef [x.h5]")
    assert exit_.exit_code == 2
    err = capsys.readouterr().err
    assert err == "error: first [bold]line[/] second [redacted] [x.h5]\n"
    assert one_line("  a\n\n b ") == "a b"


def test_a_session_damaged_inside_is_one_error_line_for_every_reading_command(
        tmp_path: Path) -> None:
    """Damage past the superblock (a broken object header, a chunk that decodes short) is met
    only when the data is read: inspect, export and report still answer with one line."""
    from test_session_file import make_frame, make_record
    from typer.testing import CliRunner

    from instruments.session_file.writer import SessionWriter
    from workflows.cli.app import app

    good = tmp_path / "good.h5"
    with SessionWriter(good, {"session_id": "damaged"}) as writer:
        for i in range(3):
            frame = make_frame(i)
            writer.write_frame(frame, make_record(frame, "Fibres"))
    data = good.read_bytes()
    rng = np.random.default_rng(7)
    runner = CliRunner()
    for case in range(8):        # 8 fixed damages, 3 met when read: a report takes ~2 s
        damaged = bytearray(data)
        start = int(rng.integers(0, len(data) - 4096))
        damaged[start:start + 4096] = rng.bytes(4096)
        path = tmp_path / f"damaged{case}.h5"
        path.write_bytes(bytes(damaged))
        for args in (["inspect", str(path)], ["export", str(path), str(tmp_path / "x")],
                     ["report", str(path), "--out", str(tmp_path / "r")]):
            result = runner.invoke(app, args)
            assert result.exception is None or isinstance(result.exception, SystemExit), \
                (case, args[0], result.exception)
            if result.exit_code:
                lines = [x for x in result.stderr.splitlines() if x.strip()]
                assert result.exit_code == 2 and len(lines) == 1, (case, args[0], lines)
                assert lines[0].startswith("error: "), lines


@pytest.mark.parametrize("kind", ["random", "missing", "nan"])
def test_twin_serve_with_an_unreadable_data_file_is_one_error_line(tmp_path: Path,
                                                                    kind: str) -> None:
    path = _bad_inputs(tmp_path)[kind]
    result = _micagent("twin", "serve", "--protocol", "dtm", "--port", "0", "--data",
                       str(path), cwd=tmp_path)
    _assert_one_line_error(result)
    assert "cannot serve the twin" in result.stderr
