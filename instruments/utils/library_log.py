"""Library noise (warnings and prints of torch, torch_geometric, sidpy, pycroscopy, ...) goes
to a log file, not the user's terminal. Warnings raised by the project's own code are still
shown; everything else lands in the file `log_library_noise` names."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

LOGGER = logging.getLogger("micagent.libraries")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("agent", "instruments", "models", "twins", "workflows")
_terminal = warnings.showwarning


def is_project_file(filename: str) -> bool:
    """Whether `filename` is a module of this project (not of a library it uses)."""
    try:
        relative = Path(filename).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return False
    return relative.parts[0] in PROJECT_PACKAGES


def _show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if is_project_file(filename):
        _terminal(message, category, filename, lineno, file, line)
    else:
        LOGGER.warning("%s", warnings.formatwarning(message, category, filename, lineno,
                                                    line).rstrip())


def log_library_noise(path: str | Path) -> Path:
    """From now on, library warnings (and prints caught by `prints_to_log`) are appended to
    `path` instead of reaching the terminal; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    global _terminal
    if warnings.showwarning is not _show:      # keep what showed warnings until now
        _terminal = warnings.showwarning
    warnings.showwarning = _show
    return path


@contextlib.contextmanager
def prints_to_log(what: str) -> Iterator[None]:
    """Run a block whose library code prints to stdout (e.g. pycroscopy's per-dimension
    notes); what it printed goes to the log."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        yield
    if printed.getvalue().strip():
        LOGGER.info("%s printed: %s", what, printed.getvalue().strip())
