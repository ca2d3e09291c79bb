"""`python -m workflows` runs the micagent CLI."""

from workflows.cli import app

app()
