"""The `micagent` command line. Each command is a function in a `workflows/cli/cmd_*.py` module
(which knows nothing of this one); here they are registered under their names.

Commands load lazily: a command's module (and torch, LangGraph, h5py behind it) is imported
only when that command runs or shows its own help, so `micagent --help` and `--version`
answer at once (benchmarks/cli_startup.py measures it). The list `micagent --help` shows
comes from COMMANDS, whose one-line summaries are also each command's short help.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

import click
import typer
from typer.core import TyperGroup

from instruments.utils.redaction import install_log_redaction

# name: (module under workflows/cli, function, the one line `micagent --help` shows)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("cmd_inspect", "inspect", "Summarise a session file: frames, labels, routes, "
                                          "escalations, approvals, status."),
    "export": ("cmd_inspect", "export", "Export every frame as a PNG or TIFF image."),
    "report": ("cmd_report", "report", "Write a session report, or an archive replay report."),
    "train": ("cmd_train", "train_cmd", "Train the fusion classifier (or fit the few-shot "
                                        "head)."),
    "evaluate": ("cmd_train", "evaluate_cmd", "Accuracy, per-class scores, confusion, "
                                              "calibration and conformal sets of a model."),
    "ablate": ("cmd_train", "ablate_cmd", "Train and evaluate the full model, the papers' "
                                          "ablations and the baselines."),
    "fit-ood": ("cmd_train", "fit_ood_cmd", "Fit a checkpoint's out-of-distribution score "
                                            "without retraining it."),
    "fit-probe": ("cmd_train", "fit_probe_cmd", "Fit a second opinion on the stem's pooled "
                                                "features, blended with the fusion head."),
    "measure-adjudicators": ("cmd_train", "measure_adjudicators_cmd",
                             "Measure each adjudicator on unsure held-out frames against "
                             "the classifier; store it with the model."),
    "describe": ("cmd_train", "describe_cmd", "Class descriptions by zero-shot prompting of "
                                              "an LLM."),
    "select-confounding": ("cmd_train", "select_confounding_cmd",
                           "Ambiguous micrographs and their few-shot adjudicator labels."),
    "run": ("cmd_run", "run", "Run an acquisition session (no arguments: a survey on the "
                              "embedded twin)."),
    "replay": ("cmd_replay", "replay", "Run stored sessions' frames through the current "
                                       "model and policy and report what changed."),
}
TWIN_COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("cmd_twin_serve", "serve", "Serve a digital-twin microscope until interrupted."),
    "dataset": ("cmd_twin_dataset", "twin_dataset", "Write a labelled image dataset from "
                                                    "the SEM twin."),
}
TWIN_HELP = "Digital-twin microscopes: serve them, export datasets."
# plain click help: wrapped to the terminal, never cut with an ellipsis as rich's panels are
_HELP_STYLE = {"rich_markup_mode": None, "context_settings": {"max_content_width": 120}}


def _typer(**kw: object) -> typer.Typer:
    return typer.Typer(add_completion=False, **_HELP_STYLE, **kw)


def _registered(app: typer.Typer, table: dict[str, tuple[str, str, str]],
                names: list[str]) -> typer.Typer:
    for name in names:
        module, function, summary = table[name]
        command = getattr(importlib.import_module(f"workflows.cli.{module}"), function)
        app.command(name, short_help=summary)(command)
    return app


def _load(name: str) -> click.Command:
    """The click command `name`, its module imported now."""
    if name == "twin":
        twin = _typer(name="twin", help=TWIN_HELP, no_args_is_help=True)
        return typer.main.get_command(_registered(twin, TWIN_COMMANDS, list(TWIN_COMMANDS)))
    return typer.main.get_command(_registered(_typer(), COMMANDS, [name]))


class LazyGroup(TyperGroup):
    """micagent's commands, each imported when it is run or asked for its help; the command
    list of `micagent --help` is drawn from the summaries alone."""

    listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, "twin"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in (*COMMANDS, "twin"):
            return None
        if self.listing:
            summary = TWIN_HELP if cmd_name == "twin" else COMMANDS[cmd_name][2]
            return click.Command(cmd_name, short_help=summary)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = _load(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


def software_version() -> str:
    try:
        return version("micagent")
    except PackageNotFoundError:          # a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"micagent {software_version()}")
        raise typer.Exit()


app = typer.Typer(name="micagent", help="Autonomous acquisition agent for electron microscopes.",
                  no_args_is_help=True, add_completion=False, cls=LazyGroup, **_HELP_STYLE)


@app.callback()
def _start(show_version: bool = typer.Option(False, "--version", is_eager=True,
                                             callback=_print_version,
                                             help="Print micagent's version and exit.")
           ) -> None:
    """Autonomous acquisition agent for electron microscopes."""
    install_log_redaction()            # every log line of every command passes the filter
