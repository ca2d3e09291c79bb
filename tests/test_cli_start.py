"""How `micagent` starts: `--help` and `--version` import none of the heavy libraries; bad
arguments, objectives and envelopes are refused before the model loads or a file is written;
a start that fails later leaves only the session file with its reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import workflows.session_assembly as assembly
from instruments.session_file.reader import SessionReader
from instruments.utils.child_python import ROOT
from workflows.cli.app import COMMANDS, app

HEAVY = ("torch", "langgraph", "h5py")
PROBE = ("import sys; sys.path.insert(0, {root!r}); from workflows.cli.app import app\n"
         "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('heavy:', ' '.join(m for m in {heavy} if m in sys.modules))")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_help_and_version_import_no_heavy_library(args: list[str]) -> None:
    code = PROBE.format(root=str(ROOT), heavy=HEAVY)
    out = subprocess.run([sys.executable, "-I", "-c", code, *args], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.splitlines()[-1].strip() == "heavy:"
    if args == ["--version"]:
        assert out.startswith("micagent ")


def test_the_command_list_names_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, (_, _, summary) in COMMANDS.items():
        assert f"{name} {summary}" in text
    assert "…" not in result.output


@pytest.fixture
def events(monkeypatch) -> list[str]:
    """What the start did, in order: the parts (model, instrument) opened or not."""
    seen: list[str] = []
    real = assembly.open_parts

    def open_parts(*args, **kw):
        seen.append("open_parts")
        return real(*args, **kw)
    monkeypatch.setattr(assembly, "open_parts", open_parts)
    return seen


@pytest.mark.parametrize("args, message", [
    (["--objective", "hunt:Banana"], "unknown class Banana; the model knows "),
    (["--fov", "1"], "imaging settings: FOV 1 m outside envelope"),
    (["--ui", "web"], "--ui web answers approvals, but --approve is none"),
    (["--approve", "web"], "--approve web is spelled --approve uncertain --ui web"),
    (["--limit", "fov=oops"], "envelope fov: expected [min, max]"),
])
def test_bad_input_is_refused_before_the_model_loads_and_writes_nothing(
        tmp_path: Path, events: list[str], args: list[str], message: str) -> None:
    out, state = tmp_path / "s.h5", tmp_path / "state"
    result = CliRunner().invoke(app, ["run", *args, "--out", str(out),
                                      "--state-dir", str(state)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert events == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_start_that_fails_leaves_only_the_session_file_with_its_reason(
        tmp_path: Path, events: list[str]) -> None:
    out, state = tmp_path / "s.h5", tmp_path / "state"
    result = CliRunner().invoke(app, ["run", "--model", str(tmp_path / "no-model"),
                                      "--out", str(out), "--state-dir", str(state)])
    assert result.exit_code == 2 and "session failed to start" in result.stderr
    assert events == ["open_parts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "state"]
    assert not (state / "sessions").exists()           # nothing to resume
    with SessionReader(out) as reader:
        summary = reader.summary()
    assert summary["status"] == "failed" and "no-model" in summary["reason"]
