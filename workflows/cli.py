"""The `micagent` command line. Each command lives in its own `workflows/cmd_*.py` module,
which imports `app` (or `twin_app`) from here and registers itself with a decorator; the
modules are listed in COMMAND_MODULES."""

from __future__ import annotations

import importlib

import typer

from instruments.redaction import install_log_redaction

app = typer.Typer(
    name="micagent",
    help="Autonomous acquisition agent for electron microscopes.",
    no_args_is_help=True,
    add_completion=False,
)
twin_app = typer.Typer(help="Digital-twin microscopes: serve them, export datasets.",
                       no_args_is_help=True)
app.add_typer(twin_app, name="twin")


@app.callback()
def _start() -> None:
    """Autonomous acquisition agent for electron microscopes."""
    install_log_redaction()            # every log line of every command passes the filter

COMMAND_MODULES: tuple[str, ...] = (
    "cmd_inspect",
    "cmd_twin_serve",
    "cmd_twin_dataset",
    "cmd_report",
    "cmd_train",
    "cmd_run",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"workflows.{_name}")
