"""Small files stored beside a checkpoint's weights (risk control, adjudication reference):
read one when the checkpoint has it, with one typed error naming the file when it is bad."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_sidecar(folder: str | Path, name: str, parse: Callable[[Path], T],
                 unreadable: type[Exception],
                 failures: tuple[type[BaseException], ...]) -> T | None:
    """`parse(path)` of the file `name` in the checkpoint folder; None where there is no such
    file; `unreadable` naming the file where `parse` raises one of `failures`."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        return parse(path)
    except failures as exc:
        raise unreadable(f"cannot read {path}: {exc}") from exc
