"""Keeping a session file readable across a kill in the middle of an HDF5 write.

HDF5 is not transactional. Two things narrow what a SIGKILL (or a power cut) can leave:
- `flush_only_cache`: the metadata cache writes nothing until the writer flushes (no
  evictions), so between flushes the file on disk stays as the last flush left it;
- `extend_to_file_end`: a kill inside a flush can leave metadata written past the end of
  allocation (EOA) the superblock records; HDF5 then refuses to read it ("addr overflow").
  `h5clear --increment` of the HDF5 tools mends that by moving the EOA to the file's real end
  (`H5Fincrement_filesize`). h5py does not wrap that call, so it is made here through ctypes,
  on the very HDF5 library h5py has loaded (an HDF5 id means nothing to another copy).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import h5py

# HDF5's H5C_incr__off, H5C_flash_incr__off, H5C_decr__off
_OFF = 0


def flush_only_cache(f: h5py.File) -> None:
    """Let `f`'s metadata cache write to disk only when the file is flushed (it grows between
    flushes instead; a session flushes after every frame, so it stays small)."""
    config = f.id.get_mdc_config()
    config.evictions_enabled = False
    config.incr_mode = config.flash_incr_mode = config.decr_mode = _OFF
    f.id.set_mdc_config(config)


@functools.cache
def _loaded_hdf5() -> ctypes.CDLL | None:
    """The HDF5 library h5py runs on, found among this process's mapped files (Linux), or
    None where it cannot be found or lacks the call."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)        # address perms offset device inode [path]
        path = fields[5] if len(fields) == 6 else ""
        name = Path(path).name
        if name.startswith("libhdf5") and not name.startswith("libhdf5_hl"):
            library = ctypes.CDLL(path)
            if hasattr(library, "H5Fincrement_filesize"):
                library.H5Fincrement_filesize.argtypes = [ctypes.c_int64, ctypes.c_uint64]
                library.H5Fincrement_filesize.restype = ctypes.c_int
                return library
    return None


def extend_to_file_end(f: h5py.File) -> bool:
    """Move `f`'s end of allocation to the end of the file on disk (what `h5clear
    --increment=0` does), so metadata a torn flush wrote past the recorded end can be read;
    False where the HDF5 call is not available or fails."""
    library = _loaded_hdf5()
    return library is not None and library.H5Fincrement_filesize(f.id.id, 0) >= 0


def is_past_end(exc: BaseException) -> bool:
    """Whether `exc` is HDF5 refusing an address past the recorded end of allocation."""
    return "addr overflow" in str(exc)
