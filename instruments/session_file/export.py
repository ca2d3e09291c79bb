"""Export the frames of a session (or any NSID) file as images: 8-bit PNG or float32 TIFF.

Files are named `<index>_<frame uuid>.<ext>` in frame order; each carries the frame id, pixel
size and stage position (PNG text chunks, TIFF ImageDescription JSON + resolution tags).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from instruments.devices.frame import Frame
from instruments.devices.replay import ReplayExhausted, ReplayMicroscope, ReplaySourceError
from instruments.session_file.layout import SessionFileError
from instruments.utils import atomic_file
from instruments.utils.image8 import MIN_MAX, to_uint8

FORMATS = ("png", "tiff")


class ExportError(SessionFileError):
    """The frames cannot be exported (unreadable input, unwritable output folder)."""


def _description(frame: Frame) -> dict:
    return {"frame_id": frame.frame_id, "sequence": frame.sequence,
            "instrument_id": frame.instrument_id, "pixel_size_m": frame.settings.pixel_size,
            "stage_m": frame.stage.as_dict(), "settings": frame.settings.as_dict(),
            "timestamp": frame.timestamp}


def _write_png(frame: Frame, path: Path) -> None:
    info = PngInfo()
    for key, value in _description(frame).items():
        info.add_text(key, json.dumps(value))
    with atomic_file.atomic_path(path) as tmp:
        Image.fromarray(to_uint8(frame.image, MIN_MAX), mode="L").save(tmp, pnginfo=info)


def _write_tiff(frame: Frame, path: Path) -> None:
    pixels_per_cm = 0.01 / frame.settings.pixel_size
    with atomic_file.atomic_path(path) as tmp:
        tifffile.imwrite(tmp, frame.image.astype(np.float32),
                         description=json.dumps(_description(frame)), metadata=None,
                         resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")


def export_frames(source: str | os.PathLike, out_dir: str | os.PathLike,
                  fmt: str = "png") -> list[Path]:
    """Write every frame of `source` into `out_dir` (created if missing); returns the paths."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create output folder: {exc}", str(out)) from exc
    if not os.access(out, os.W_OK):
        raise ExportError("output folder is not writable", str(out))
    try:
        replay = ReplayMicroscope(source)
    except ReplaySourceError as exc:
        raise ExportError(str(exc), os.fspath(source)) from exc
    writer = _write_png if fmt == "png" else _write_tiff
    written: list[Path] = []
    try:
        for index in range(len(replay)):
            try:
                frame = replay.acquire()
            except ReplayExhausted:
                break
            except ReplaySourceError as exc:
                raise ExportError(str(exc), os.fspath(source)) from exc
            path = out / f"{index:06d}_{frame.frame_id}.{'png' if fmt == 'png' else 'tif'}"
            try:
                writer(frame, path)
            except OSError as exc:
                raise ExportError(f"cannot write {path.name}: {exc}", str(out)) from exc
            written.append(path)
    finally:
        replay.close()
    return written
