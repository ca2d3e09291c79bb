"""Run the Nion bridge (`python -m instruments.devices.bridges.nion`) as its own process in its own
environment (`.venv-nion`: numpy 2 and the Nion packages, none of micagent's dependencies),
on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from twin_process import REPO, start_announced

NION_PYTHON = REPO / ".venv-nion" / "bin" / "python"

needs_nion = pytest.mark.skipif(
    not NION_PYTHON.exists(),
    reason="no .venv-nion (created by .ci/peer_envs.sh, which the README's test command runs)")


@dataclass
class Bridge:
    process: subprocess.Popen
    uri: str
    output: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.uri.split("://")[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit code (the bridge must close the instrument and exit)."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)


def start_bridge(*args: str, port: int = 0) -> Bridge:
    """Start a bridge and return it once it has printed its READY line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a clone, nothing else
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [str(NION_PYTHON), "-m", "instruments.devices.bridges.nion", "--port", str(port), *args]
    process, lines, announced = start_announced(cmd, REPO, env)
    if announced is None:
        process.kill()
        raise RuntimeError(f"bridge did not start: {cmd}\n" + "\n".join(lines))
    return Bridge(process, announced.split()[1], lines)


@contextmanager
def running_bridge(*args: str) -> Iterator[Bridge]:
    bridge = start_bridge(*args)
    try:
        yield bridge
    finally:
        bridge.kill()
