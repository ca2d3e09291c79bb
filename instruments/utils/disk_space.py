"""Free space on the session's filesystem: a check before each frame (its size plus a margin),
a reserve file that is given back so the closing writes always find room, and the one test of
whether an exception means "the disk is full" (an OSError with ENOSPC, HDF5's errno 28 text,
SQLite's SQLITE_FULL), wherever it sits in the exception chain."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

MARGIN_ENV = "MICAGENT_DISK_MARGIN_MB"
DEFAULT_MARGIN = 4 * 2**20      # covers the checkpoint WAL's growth and the closing writes
RESERVE_BYTES = 2**20       # given back when the disk fills, so the file can be closed
_FULL_TEXT = ("no space left on device", "errno = 28", "database or disk is full",
              "disk quota exceeded")


class DiskFull(OSError):
    """Too little free space to store the next frame safely; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


def margin_bytes() -> int:
    """The free space kept beyond a frame's own size ($MICAGENT_DISK_MARGIN_MB, else 4 MB)."""
    text = os.environ.get(MARGIN_ENV)
    if text is None:
        return DEFAULT_MARGIN
    try:
        return max(0, int(float(text) * 2**20))
    except ValueError:
        raise ValueError(f"{MARGIN_ENV} must be a number of megabytes, got {text!r}") from None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its
    nearest existing parent)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def require_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Raise DiskFull unless `need` bytes plus the margin are free where `path` lives."""
    free, want = free_bytes(path), need + margin_bytes()
    if free < want:
        raise DiskFull(f"disk full: {free / 2**20:.1f} MB free at {Path(path).parent}, "
                       f"{want / 2**20:.1f} MB needed for {what}")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or anything it was raised from, reports a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) \
                == sqlite3.SQLITE_FULL:
            return True
        if any(text in str(exc).lower() for text in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Reserve:
    """A preallocated file of RESERVE_BYTES: `release` frees its space for the closing writes
    when the disk fills; `restore` takes it again when a resumed session starts."""

    def __init__(self, path: str | os.PathLike, size: int = RESERVE_BYTES) -> None:
        self.path, self.size = Path(path), size

    def restore(self) -> None:
        """Preallocate the reserve (no error when the disk cannot hold it: the frame check
        stops the session before anything else is written)."""
        if self.path.exists() and self.path.stat().st_size >= self.size:
            return
        if free_bytes(self.path) < 2 * self.size:      # leave a tiny disk to the check
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError:
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
