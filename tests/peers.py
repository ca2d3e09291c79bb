"""Peers: other projects' own servers, run unchanged as separate processes (see
../shared/peers/README.md). Where they are found:

- `MICAGENT_PEERS`: the folder of the peers' sources (default `../shared/peers` from the repo
  root). A clone without it cannot start them: the tests that need one skip, saying why.
- `MICAGENT_PEERS_VENV`: the virtualenv that runs DTMicroscope (default `.venv-peers` in the
  repo root), created by `.ci/peer_envs.sh`, which the README's test command runs first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twin_process import REPO, Served, served_process

PEERS = Path(os.environ.get("MICAGENT_PEERS") or REPO.parent / "shared" / "peers")
PEERS_VENV = Path(os.environ.get("MICAGENT_PEERS_VENV") or REPO / ".venv-peers")
DTM_STEM_SCRIPT = PEERS / "run_dtm_stem_server.py"


def dtm_peer_python() -> Path:
    """The interpreter that runs DTMicroscope's own server; skips the test where the peer's
    sources or its virtualenv are absent."""
    if not DTM_STEM_SCRIPT.is_file():
        pytest.skip(f"DTMicroscope's sources not found at {PEERS} (set MICAGENT_PEERS)")
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no DTMicroscope environment at {PEERS_VENV}: run .ci/peer_envs.sh "
                    "(or set MICAGENT_PEERS_VENV)")
    return python


@contextmanager
def served_dtm_stem() -> Iterator[Served]:
    """DTMicroscope's own STEM server (its MicroscopeServer class, one instance per
    connection) on a free port of 127.0.0.1, in its own environment."""
    python = dtm_peer_python()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV")}      # nothing of ours in its path
    with tempfile.TemporaryDirectory(prefix="dtm-peer-") as cwd, served_process(
            [str(python), str(DTM_STEM_SCRIPT), "--port", "0"], "dtm", cwd=Path(cwd),
            env=env) as served:
        served.name = "dtmicroscope"
        yield served
