"""The `micagent` command line: thin typer commands."""
