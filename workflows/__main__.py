"""`python -m workflows` runs the micagent CLI."""

from workflows.cli.app import app

app()
