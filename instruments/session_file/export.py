"""Export the frames of a session (or any NSID) file as images: 8-bit PNG or float32 TIFF.

Files are named `<index>_<label>_<frame uuid>.<ext>` in frame order (a session's final label;
`unlabelled` where a human skipped the frame or the file is NSID data from another tool); each
carries the label, route, frame id, pixel size and stage position (PNG text chunks, TIFF
ImageDescription JSON + resolution tags).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from instruments.devices.frame import Frame
from instruments.devices.replay import ReplayExhausted, ReplayMicroscope, ReplaySourceError
from instruments.session_file.layout import NotASessionFile, SessionFileError
from instruments.session_file.reader import SessionReader
from instruments.utils import atomic_file
from instruments.utils.image8 import MIN_MAX, to_uint8

FORMATS = ("png", "tiff")


class ExportError(SessionFileError):
    """The frames cannot be exported (unreadable input, unwritable output folder)."""


UNLABELLED = "unlabelled"


def _decisions(source: str | os.PathLike) -> dict[str, dict[str, str | None]]:
    """Frame id -> its final label and route, for a session file; {} for other NSID files."""
    try:
        with SessionReader(source) as reader:
            return {row.frame_id: {"label": row.label, "route": row.route}
                    for row in reader.rows()}
    except NotASessionFile:
        return {}


def _file_label(label: str | None) -> str:
    """A label as part of a file name: letters, digits, `-` and `_` kept, the rest `_`."""
    named = re.sub(r"[^A-Za-z0-9_-]+", "_", label or "").strip("_")
    return named or UNLABELLED


def _description(frame: Frame, decision: dict[str, str | None]) -> dict:
    return {"label": decision.get("label"), "route": decision.get("route"),
            "frame_id": frame.frame_id, "sequence": frame.sequence,
            "instrument_id": frame.instrument_id, "pixel_size_m": frame.settings.pixel_size,
            "stage_m": frame.stage.as_dict(), "settings": frame.settings.as_dict(),
            "timestamp": frame.timestamp}


def _write_png(frame: Frame, path: Path, decision: dict[str, str | None]) -> None:
    info = PngInfo()
    for key, value in _description(frame, decision).items():
        info.add_text(key, json.dumps(value))
    with atomic_file.atomic_path(path) as tmp:
        Image.fromarray(to_uint8(frame.image, MIN_MAX), mode="L").save(tmp, pnginfo=info)


def _write_tiff(frame: Frame, path: Path, decision: dict[str, str | None]) -> None:
    pixels_per_cm = 0.01 / frame.settings.pixel_size
    with atomic_file.atomic_path(path) as tmp:
        tifffile.imwrite(tmp, frame.image.astype(np.float32),
                         description=json.dumps(_description(frame, decision)), metadata=None,
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
    decisions = _decisions(source)
    written: list[Path] = []
    try:
        for index in range(len(replay)):
            try:
                frame = replay.acquire()
            except ReplayExhausted:
                break
            except ReplaySourceError as exc:
                raise ExportError(str(exc), os.fspath(source)) from exc
            decision = decisions.get(frame.frame_id, {})
            path = out / (f"{index:06d}_{_file_label(decision.get('label'))}_{frame.frame_id}."
                          f"{'png' if fmt == 'png' else 'tif'}")
            try:
                writer(frame, path, decision)
            except OSError as exc:
                raise ExportError(f"cannot write {path.name}: {exc}", str(out)) from exc
            written.append(path)
    finally:
        replay.close()
    return written
