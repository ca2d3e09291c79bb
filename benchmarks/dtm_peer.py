"""DTMicroscope's own STEM server (../shared/peers, run in .venv-peers) for the benchmarks: a
process on a free port of 127.0.0.1, stopped by its process id."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DTM_SCRIPT = REPO.parent / "shared" / "peers" / "run_dtm_stem_server.py"
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"


def available() -> bool:
    """Whether the peer's sources and its environment are here."""
    return DTM_SCRIPT.is_file() and PEERS_PYTHON.exists()


@contextmanager
def served_dtm(work: Path) -> Iterator[str]:
    """The server's HOST:PORT while it runs (its working folder `work`); SystemExit where it
    does not start."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen([str(PEERS_PYTHON), str(DTM_SCRIPT), "--port", "0"], cwd=work,
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()         # "READY PYRO:...@127.0.0.1:PORT"
        if not ready.startswith("READY"):
            raise SystemExit(f"DTMicroscope's server did not start: {ready!r}")
        yield ready.split("@")[1].strip()
    finally:
        server.terminate()
        server.wait(30)
