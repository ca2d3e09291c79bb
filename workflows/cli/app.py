"""The `micagent` command line. Each command is a function in a `workflows/cli/cmd_*.py` module
(which knows nothing of this one); here they are registered under their names."""

from __future__ import annotations

import typer

from instruments.utils.redaction import install_log_redaction
from workflows.cli import (
    cmd_inspect,
    cmd_replay,
    cmd_report,
    cmd_run,
    cmd_train,
    cmd_twin_dataset,
    cmd_twin_serve,
)

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


for name, command in (("inspect", cmd_inspect.inspect), ("export", cmd_inspect.export),
                      ("report", cmd_report.report), ("train", cmd_train.train_cmd),
                      ("evaluate", cmd_train.evaluate_cmd), ("ablate", cmd_train.ablate_cmd),
                      ("fit-ood", cmd_train.fit_ood_cmd), ("describe", cmd_train.describe_cmd),
                      ("select-confounding", cmd_train.select_confounding_cmd),
                      ("run", cmd_run.run), ("replay", cmd_replay.replay)):
    app.command(name)(command)
twin_app.command("serve")(cmd_twin_serve.serve)
twin_app.command("dataset")(cmd_twin_dataset.twin_dataset)
