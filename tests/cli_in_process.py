"""`micagent` run inside the test's own process (typer's CliRunner), for the steps of a test
that are about what a command does, not about its process: a resume after a kill, a run on a
peer. The worker has imported torch, timm and sidpy already, so such a run costs about 1 s
here against 15-20 s in a fresh Python. Steps whose point is the process itself (a SIGKILL, a
stop signal, what C libraries print to the terminal, one error line on the real stderr) stay
in a subprocess."""

from __future__ import annotations

from click.testing import Result
from typer.testing import CliRunner

from workflows.cli.app import app


def micagent_in_process(*args: str) -> Result:
    """Run `micagent ARGS` here; the result's exit_code, stdout, stderr and exception."""
    return CliRunner().invoke(app, list(args))


def explain(result: Result) -> str:
    """What went wrong in a failed in-process run: its output and the exception it raised."""
    return f"{result.output}\n{result.exception!r}"
