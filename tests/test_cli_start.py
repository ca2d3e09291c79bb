"""How `micagent` starts: `--help` and `--version` import none of the heavy libraries; bad
arguments, objectives and envelopes are refused before the model loads or a file is written;
a start that fails later (model, instrument, approval page, full disk) leaves only the
session file with its reason, or nothing where the disk has no room for it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_disk_full import small_filesystem
from typer.testing import CliRunner

import workflows.session_assembly as assembly
from agent.config import RunConfig, registry_path
from instruments.session_file.reader import SessionReader
from instruments.utils.child_python import ROOT
from workflows.cli.app import COMMANDS, app

pytestmark = pytest.mark.slow

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


def test_a_model_without_graph_branch_and_the_vlm_module_load_neither_library(
        plumbing_checkpoint: Path) -> None:
    """torch_geometric (about 5 s to import) is loaded by a model with a graph branch, and
    openai by a VLM adjudicator when it is built, not by every start (the session imports
    the VLM module)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "import agent.adjudication.openai_vlm\n"
            "from models.classifier import Classifier\n"
            f"Classifier.load({str(plumbing_checkpoint)!r})\n"
            "print('loaded:', ' '.join(m for m in ('torch_geometric', 'openai') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=240, check=True).stdout
    assert out.splitlines()[-1].strip() == "loaded:"


def test_the_command_list_names_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, (_, _, summary) in COMMANDS.items():
        assert f"{name} {summary}" in text
    assert "…" not in result.output


@pytest.fixture
def events(monkeypatch) -> list[str]:
    """What the start did, in order: the parts opened or not, the model loaded or not."""
    seen: list[str] = []
    for name in ("open_parts", "_load_classifier"):
        real = getattr(assembly, name)

        def step(*args, _name=name, _real=real, **kw):
            seen.append(_name)
            return _real(*args, **kw)
        monkeypatch.setattr(assembly, name, step)
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


def listing(folder: Path) -> list[str]:
    """Every file and folder under `folder`, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def failed_start(out: Path, state: Path, *args: str) -> str:
    """Run a start that fails; its one error line."""
    result = CliRunner().invoke(app, ["run", "--frames", "2", "--pixels", "64", *args,
                                      "--out", str(out), "--state-dir", str(state)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: session failed to start: ")
    return line


def assert_reason_recorded(out: Path, words: str) -> None:
    with SessionReader(out) as reader:
        summary = reader.summary()
    assert summary["status"] == "failed" and words in summary["reason"]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory) -> Path:
    """A state folder that outlives one start."""
    return tmp_path_factory.mktemp("state")


def test_a_start_that_fails_leaves_only_the_session_file_with_its_reason(
        tmp_path: Path, events: list[str]) -> None:
    out, state = tmp_path / "s.h5", tmp_path / "state"
    line = failed_start(out, state, "--model", str(tmp_path / "no-model"))
    assert "no-model" in line
    assert events == ["open_parts", "_load_classifier"]
    assert listing(tmp_path) == ["s.h5"]          # no log, no registry entry, no state folder
    assert_reason_recorded(out, "no-model")


def test_a_model_that_fails_to_load_leaves_only_the_session_file(tmp_path: Path) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"class_names": ["a", "b"]}')
    (model / "model.safetensors").write_bytes(b"not a tensor file")
    failed_start(tmp_path / "s.h5", tmp_path / "state", "--model", str(model))
    assert listing(tmp_path) == ["broken", "broken/config.json", "broken/model.safetensors",
                                 "s.h5"]
    assert_reason_recorded(tmp_path / "s.h5", "cannot use model")


def test_an_unreachable_instrument_is_said_before_the_model_loads_and_leaves_only_the_file(
        tmp_path: Path, closed_port: int, events: list[str]) -> None:
    line = failed_start(tmp_path / "s.h5", tmp_path / "state",
                        "--instrument", f"dtm://127.0.0.1:{closed_port}")
    assert "cannot open instrument" in line
    assert events == ["open_parts"]
    assert listing(tmp_path) == ["s.h5"]
    assert_reason_recorded(tmp_path / "s.h5", "cannot open instrument")


def test_a_busy_approval_port_leaves_only_the_session_file(
        tmp_path: Path, shared_state: Path) -> None:
    before = listing(shared_state)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        failed_start(tmp_path / "s.h5", shared_state, "--approve", "uncertain", "--ui", "web",
                     "--port", str(port))
    assert listing(tmp_path) == ["s.h5"]            # no checkpoint, no work folder
    assert listing(shared_state) == before          # no log, nothing to resume


def test_a_full_disk_at_start_leaves_nothing(tmp_path: Path, shared_state: Path) -> None:
    before = listing(shared_state)
    with small_filesystem(tmp_path / "tiny", "64k") as disk:
        line = failed_start(disk / "s.h5", shared_state)
        assert "disk full" in line and line.endswith("free space, then start again")
        assert listing(disk) == []                  # no partial file, reserve or work folder
    assert listing(shared_state) == before


def test_another_tools_file_at_out_is_refused_before_the_model_loads(
        tmp_path: Path, events: list[str]) -> None:
    theirs = tmp_path / "theirs.h5"
    with h5py.File(theirs, "w") as f:
        f["data"] = np.arange(10)
    before = theirs.read_bytes()
    line = failed_start(theirs, tmp_path / "state")
    assert "not a micagent session" in line
    assert events == []                          # nothing opened, no model loaded
    assert listing(tmp_path) == ["theirs.h5"] and theirs.read_bytes() == before


@pytest.fixture(scope="module")
def unattended_session(tmp_path_factory, shared_state: Path) -> tuple[str, Path]:
    """A two-frame session run with --approve none: its id and file."""
    out = tmp_path_factory.mktemp("unattended") / "s.h5"
    result = CliRunner().invoke(app, ["run", "--frames", "2", "--pixels", "64", "--quiet",
                                      "--out", str(out), "--state-dir", str(shared_state)])
    assert result.exit_code == 0, result.output
    with SessionReader(out) as reader:
        return reader.summary()["session_id"], out


def test_a_model_that_trusts_no_adjudicator_makes_no_demonstration_bank(
        unattended_session: tuple[str, Path], shared_state: Path) -> None:
    """The bundled model's measurement trusts no adjudicator (its adjudication.json), so no
    frame can be adjudicated: the twin's demonstrations are neither rendered nor embedded."""
    assert not (shared_state / "banks").exists()


def test_resuming_an_unattended_session_on_the_web_page_needs_an_approval_mode(
        unattended_session: tuple[str, Path], shared_state: Path, events: list[str]) -> None:
    session_id, out = unattended_session
    before = listing(out.parent)
    result = CliRunner().invoke(app, ["run", "--resume", session_id, "--ui", "web",
                                      "--state-dir", str(shared_state)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line == (f"error: --ui web answers approvals, but session {session_id} was saved "
                    "with --approve none: add --approve uncertain (a human decides the unsure "
                    "frames) or --approve all")
    assert events == [] and listing(out.parent) == before


def test_resume_with_an_approval_mode_opens_the_approval_page_and_keeps_the_mode(
        unattended_session: tuple[str, Path], shared_state: Path) -> None:
    session_id, _ = unattended_session
    result = CliRunner().invoke(app, ["run", "--resume", session_id, "--approve", "uncertain",
                                      "--ui", "web", "--quiet", "--state-dir",
                                      str(shared_state)])
    assert result.exit_code == 0, result.output
    assert "approval page: http://127.0.0.1:" in result.stderr
    saved = RunConfig.load(registry_path(shared_state, session_id))
    assert saved.approve == "uncertain"
