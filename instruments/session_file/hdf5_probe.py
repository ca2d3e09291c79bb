"""Refusing an HDF5 file whose metadata the HDF5 library never finishes reading.

A damaged file can send the HDF5 library into a loop that does not return: a zeroed block in
a session file did, in an attribute read (HDF5 2.0.0 / h5py 3.16), at full CPU inside C code
that no signal or thread of the reading process can interrupt. Before a command reads a file
a user gives it, `check_metadata_finishes` walks every group, dataset and attribute of the
file in a child process (this module run as `__main__` on FILE, read-only, isolated from the
working directory: `instruments.utils.child_python`) under a time limit. A walk that ends,
whatever it met, lets the command read the file (and report any damage itself); a walk that
does not end is killed and the file refused as damaged; a child that exits with an error (it
could not import, or crashed) refuses the file too, with the child's last words. The limit is
60 s + 10 s per GB; `MICAGENT_HDF5_PROBE_LIMIT_S` replaces the 60 s (slow file systems).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from instruments.devices.errors import MicagentError
from instruments.utils.child_python import module_command

PROBE_MODULE = "instruments.session_file.hdf5_probe"
BASE_LIMIT_S = 60.0
LIMIT_S_PER_GB = 10.0


class ProbeRefused(MicagentError, RuntimeError):
    """The probe did not see the file's metadata walk end normally."""


class MetadataNeverFinishes(ProbeRefused):
    """The HDF5 library did not finish reading the file's metadata within the limit."""


class ProbeFailed(ProbeRefused):
    """The probe's child exited with an error: it could not import or it crashed."""


def check_metadata_finishes(path: str | Path, limit_s: float | None = None) -> None:
    """Raise `MetadataNeverFinishes` when walking `path`'s metadata does not end within
    `limit_s` (default: see the module), `ProbeFailed` when the walk's process exits with an
    error. Anything but a regular file passes unchecked."""
    path = Path(path)
    if not path.is_file():
        return
    if limit_s is None:
        base = float(os.environ.get("MICAGENT_HDF5_PROBE_LIMIT_S") or BASE_LIMIT_S)
        limit_s = base + LIMIT_S_PER_GB * path.stat().st_size / 1e9
    try:
        child = subprocess.run(module_command(PROBE_MODULE, str(path)),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MetadataNeverFinishes(
            f"the HDF5 library did not finish reading the metadata of {path} within "
            f"{limit_s:.0f} s (a damaged object header loops it)") from exc
    if child.returncode != 0:
        said = child.stderr.decode(errors="replace").strip().splitlines()
        raise ProbeFailed(f"the HDF5 probe of {path} exited with code {child.returncode}"
                          + (f": {said[-1]}" if said else ""))


def walk_metadata(path: str | Path) -> None:
    """Open `path` read-only and read every attribute of every object, going on past errors."""
    import h5py

    def attributes(obj) -> None:
        try:
            names = list(obj.attrs)
        except Exception:  # noqa: BLE001 - damage is the reader's to report, not the walk's
            return
        for name in names:
            try:
                obj.attrs[name]
            except Exception:  # noqa: BLE001
                pass

    def walk(group) -> None:
        attributes(group)
        try:
            names = list(group)
        except Exception:  # noqa: BLE001
            return
        for name in names:
            try:
                child = group[name]
            except Exception:  # noqa: BLE001
                continue
            if isinstance(child, h5py.Group):
                walk(child)
            else:
                attributes(child)

    try:
        with h5py.File(path, "r") as f:
            walk(f)
    except Exception:  # noqa: BLE001 - a file that does not open is the reader's to report
        pass


if __name__ == "__main__":
    walk_metadata(sys.argv[1])
