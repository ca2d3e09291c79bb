"""Run a server in a separate process for tests, on a free port of 127.0.0.1, stopped when the
block ends: our twin (`twins.serve` run as `__main__` out of the working directory's reach, see
instruments/utils/child_python.py, or the `micagent twin serve` CLI), or a peer's own server
(see tests/peers.py). Each announces itself with a line `READY ... <address>`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from instruments.utils.child_python import module_command

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


@dataclass
class Served:
    process: subprocess.Popen
    protocol: str                # the instrument URI scheme: dtm or tem
    address: str
    output: list[str] = field(default_factory=list)
    name: str = ""               # which server, for tests that run one suite on several

    @property
    def host(self) -> str:
        return self.address.rsplit("@", 1)[-1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def uri(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def drain_until_ready(stream, lines: list[str], ready: threading.Event) -> None:
    """Collect a child's output lines; set `ready` at its READY line (or when it ends)."""
    for line in stream:
        lines.append(line.rstrip("\n"))
        if line.startswith("READY "):
            ready.set()
    ready.set()


def start_announced(cmd: list[str], cwd: Path, env: dict[str, str]
                    ) -> tuple[subprocess.Popen, list[str], str | None]:
    """Start `cmd` and wait up to START_TIMEOUT_S for its `READY ...` line: the process, its
    output lines (still being collected) and that line, or None when it never came."""
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()
    threading.Thread(target=drain_until_ready, args=(process.stdout, lines, ready),
                     daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.05):
        if time.monotonic() > deadline or process.poll() is not None:
            break
    return process, lines, next((line for line in lines if line.startswith("READY ")), None)


@contextmanager
def served_process(cmd: list[str], protocol: str, cwd: Path = REPO,
                   env: dict[str, str] | None = None) -> Iterator[Served]:
    """Start `cmd` and yield it once it prints `READY ... <address>` (the last word)."""
    env = dict(env if env is not None else os.environ, OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    process, lines, announced = start_announced(cmd, cwd, env)
    try:
        if announced is None:
            raise RuntimeError(f"server did not start: {cmd}\n" + "\n".join(lines))
        yield Served(process, protocol, announced.split()[-1], lines)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@contextmanager
def served_twin(protocol: str, faults: str = "", seed: int = 0, data: str | None = None,
                via_cli: bool = False, data_root: str | None = None, cwd: Path = REPO,
                extra: tuple[str, ...] = (), env: dict[str, str] | None = None
                ) -> Iterator[Served]:
    """Start a twin server process in `cwd` and yield it once it announces its address; a dtm
    server registers files under `data_root` (default: the temporary folder, where tests
    write); `extra`: further options of `twins.serve`; `env`: its environment (default:
    ours)."""
    entry = ([str(Path(sys.executable).with_name("micagent")), "twin", "serve"] if via_cli
             else module_command("twins.serve"))
    cmd = [*entry, "--protocol", protocol, "--host", "127.0.0.1",
           "--port", "0", "--seed", str(seed)]
    if faults:
        cmd += ["--faults", faults]
    if data:
        cmd += ["--data", data]
    if protocol == "dtm":
        cmd += ["--data-root", data_root or tempfile.gettempdir()]
    with served_process([*cmd, *extra], protocol, cwd=cwd, env=env) as served:
        yield served
