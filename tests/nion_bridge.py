"""Run the Nion bridge (`instruments.devices.bridges.nion` as `__main__`, isolated from the
working directory and given this clone's path: instruments/utils/child_python.py) as its own
process in its own environment (`.venv-nion`: numpy 2 and the Nion packages, none of
micagent's dependencies), on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from twin_process import REPO, start_announced

from instruments.utils.child_python import module_command

NION_PYTHON = REPO / ".venv-nion" / "bin" / "python"

needs_nion = pytest.mark.skipif(
    not NION_PYTHON.exists(),
    reason="no .venv-nion (created by .ci/peer_envs.sh, which the README's test command runs)")


@dataclass
class Bridge:
    process: subprocess.Popen
    uri: str
    temporary: Path
    output: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.uri.split("://")[1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL, and remove the bridge's temporary folder (a killed bridge cannot)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        shutil.rmtree(self.temporary, ignore_errors=True)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit code (the bridge must close the instrument and exit)."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)


def start_bridge(*args: str, port: int = 0, cwd: Path = REPO) -> Bridge:
    """Start a bridge in `cwd` and return it once it has printed its READY line. Its
    temporary files go to a folder of its own (`Bridge.temporary`)."""
    cmd = module_command("instruments.devices.bridges.nion", "--port", str(port), *args,
                         python=NION_PYTHON)
    temporary = Path(tempfile.mkdtemp(prefix="nion-bridge-test-"))
    process, lines, announced = start_announced(cmd, cwd, {**os.environ, "TMPDIR": str(temporary)})
    if announced is None:
        process.kill()
        shutil.rmtree(temporary, ignore_errors=True)
        raise RuntimeError(f"bridge did not start: {cmd}\n" + "\n".join(lines))
    return Bridge(process, announced.split()[1], temporary, lines)


@contextmanager
def running_bridge(*args: str, cwd: Path = REPO) -> Iterator[Bridge]:
    bridge = start_bridge(*args, cwd=cwd)
    try:
        yield bridge
    finally:
        bridge.kill()
