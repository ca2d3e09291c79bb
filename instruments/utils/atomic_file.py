"""Writing a file so that a kill at any moment leaves either the old file or the whole new one:
write a temporary name in the same folder, fsync it, rename it over the target, fsync the
folder. Every cache and derived file of the project is written this way."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from instruments.utils.redaction import redact


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                      # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path` with the same suffix (writers that infer a format keep it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on normal exit it is fsynced and renamed to `path`,
    on an exception it is removed and `path` is untouched. Works for a file or a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        for item in ([tmp] if tmp.is_file() else sorted(tmp.rglob("*")) + [tmp]):
            if item.is_file():
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
            else:
                _fsync_dir(item)
        if tmp.is_dir() and path.is_dir():          # os.replace cannot replace a folder
            old = temporary_name(path)
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """`data` at `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """`text` at `path`, atomically, through the redaction filter (no key reaches a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(redact(text), encoding=encoding)
