"""Users see no library noise: `micagent run` keeps the warnings and prints of the libraries
it uses (torch_geometric's torch.jit.script FutureWarning, sidpy, pycroscopy) off the
terminal, in STATE_DIR/logs/SESSION_ID.log; the project's own warnings still show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from twin_process import REPO

from instruments.utils.library_log import LOGGER, log_library_noise, prints_to_log

pytestmark = pytest.mark.slow

WARNING_LINE = re.compile(r"Warning\b|warnings\.warn|warn\(")


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if WARNING_LINE.search(line)]


def test_micagent_run_prints_no_library_warnings(tmp_path):
    state = tmp_path / "state"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("micagent")), "run", "--frames", "2",
         "--pixels", "128", "--bank", "none", "--out", str(tmp_path / "s.h5"),
         "--state-dir", str(state)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
                 PYTHONWARNINGS="default"))      # every warning raised, none filtered
    assert result.returncode == 0, result.stdout + result.stderr
    assert noise(result.stdout) == [] and noise(result.stderr) == []
    session_id = re.search(r"session (\S+) ->", result.stdout).group(1)
    log = state / "logs" / f"{session_id}.log"
    assert log.is_file()                         # where the libraries' warnings went


def test_library_warnings_go_to_the_log_and_the_projects_own_to_the_terminal(tmp_path,
                                                                             capsys):
    library = str(Path(os.__file__).parent / "some_library.py")
    ours = str(REPO / "workflows" / "demonstrations.py")
    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        log = log_library_noise(tmp_path / "logs" / "x.log")
        warnings.warn_explicit("deprecated thing", FutureWarning, library, 7)
        warnings.warn_explicit("the cached bank is unreadable", UserWarning, ours, 9)
        with prints_to_log("a chatty reader"):
            print("You don't have igor2 installed.")
    for handler in LOGGER.handlers:
        handler.flush()
    text = log.read_text()
    assert "FutureWarning: deprecated thing" in text and "some_library.py:7" in text
    assert "a chatty reader printed: You don't have igor2 installed." in text
    assert "cached bank" not in text
    assert shown == ["the cached bank is unreadable"]        # the terminal's, as before
    assert "igor2" not in capsys.readouterr().out
