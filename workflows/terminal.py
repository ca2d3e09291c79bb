"""The one way the CLI tells a user something went wrong (or needs attention): a single plain
line on stderr, never parsed as rich markup (exception text often ends in `[path]`), with API
keys and tokens redacted."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.text import Text

from instruments.utils.redaction import redact


def one_line(message: object) -> str:
    """The message as one redacted line (newlines folded, surrounding blanks dropped)."""
    return " ".join(redact(str(message)).split())


def fail(message: object, code: int = 2) -> typer.Exit:
    """Print `error: MESSAGE` on stderr and return the Exit for the caller to raise."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


# What h5py and the readers raise on a file damaged past its superblock (a broken object
# header, a chunk that decodes short, ...): read errors, as opposed to bugs.
DAMAGED = (OSError, KeyError, ValueError, RuntimeError, EOFError, IndexError)


def file_error(exc: BaseException, reading: object, writing: object = None) -> typer.Exit:
    """The Exit for an error while reading `reading` (or writing into `writing`): an OSError
    that names a file is a write (or permission) problem, anything else a damaged input."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and writing is not None:
        return fail(f"cannot write to {writing}: {exc}")
    return fail(f"cannot read {reading}: the file is damaged ({type(exc).__name__}: {exc})")


def notice(console: Console, message: object, style: str = "") -> None:
    """Print text that may hold user data (paths, labels, answers) as plain text in a style."""
    console.print(Text(redact(str(message)), style=style), soft_wrap=True)


def json_text(value: object) -> str:
    """A `--json` answer: indented for a person where stdout is a terminal, one line for a
    pipe or a file (what scripts read line by line)."""
    return json.dumps(value, indent=2 if sys.stdout.isatty() else None)
