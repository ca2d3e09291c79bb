"""Session-file write throughput: SessionWriter vs raw h5py dataset writes, one run.

Usage: OMP_NUM_THREADS=1 python benchmarks/session_write.py [--frames 40] [--size 1024]
       [--repeats 3] [--dir DIR]

Appends `--frames` float32 frames of size x size to a fresh file, flushing after every frame,
three ways, each repeated `--repeats` times in alternation (median kept):
  raw       h5py `create_dataset(data=image)` + `flush()` per frame (no metadata at all);
  pynsid    pyNSID `write_nsid_dataset` of the frame's sidpy Dataset (`frame_to_dataset`: the
            NSID content SessionWriter writes) + `flush()` (the NSID layout alone, no decision
            record, no crash protocol);
  session   `SessionWriter.write_frame(frame, record)`: the same NSID dataset written by
            `instruments.session_file.nsid_writer` (an H5Ocopy of the template of that dataset
            structure,
            the image data, the attribute values that differ, the dimension scales) + the
            frame/record/evaluation JSON attributes + `micagent_complete` + flush (what a
            session really does; writer open and close included);
  floor     a lower bound for any writer of this layout: one H5Ocopy of a whole stored frame
            (a Channel group SessionWriter wrote into an in-memory file: its 10 groups,
            3 datasets and 72 attributes) + the image data + `flush()` per frame; no
            per-frame values at all, so it does less work than a correct writer must.
Prints frames/s and MB/s of each and the ratios to raw. Target: session >= 0.8 of raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import dask
import h5py
import numpy as np
from h5py import h5d, h5o, h5s
from pyNSID.io.hdf_io import write_nsid_dataset

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.layout import MEASUREMENT_GROUP, NSID_GROUP, channel_name
from instruments.session_file.writer import SessionWriter, frame_to_dataset

CLASSES = ["Biological", "Fibres", "Films_Coated_Surface", "MEMS_devices_and_electrodes",
           "Nanowires", "Particles", "Patterned_surface", "Porous_Sponge", "Powder", "Tips"]


def make_frames(n: int, size: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    images = [rng.random((size, size), dtype=np.float32) for _ in range(4)]
    return [Frame(images[i % 4], "bench", ImagingSettings(pixels=size),
                  StagePosition(x=i * 1e-5), sequence=i,
                  original_metadata={"hv": 5000.0, "detector_gain": 1.5},
                  evaluation={"label": CLASSES[i % 10]}) for i in range(n)]


def make_record(frame: Frame) -> DecisionRecord:
    probs = np.full(len(CLASSES), 0.02)
    probs[frame.sequence % 10] = 0.82
    return DecisionRecord.model_validate({"frame_id": frame.frame_id, "sequence": frame.sequence,
            "position": {"x": frame.stage.x, "y": frame.stage.y}, "tile": None,
            "prediction": {"label": CLASSES[frame.sequence % 10], "confidence": 0.82,
                           "probabilities": dict(zip(CLASSES, probs.tolist(), strict=True)),
                           "top_k": [[CLASSES[frame.sequence % 10], 0.82]],
                           "conformal_set": [CLASSES[frame.sequence % 10]], "entropy": 0.9,
                           "lmm_label": None},
            "label": CLASSES[frame.sequence % 10], "route": "confident", "rescans": [],
            "quality": {"sharpness": 1.0, "snr": 10.0, "drift_px": 0.1, "ok": True},
            "adjudication": None, "human": None,
            "timings": {"acquire_s": 0.5, "classify_s": 0.05, "total_s": 0.6}})


def run_raw(path: Path, frames: list[Frame]) -> float:
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        for i, frame in enumerate(frames):
            f.create_dataset(f"frame_{i:06d}", data=frame.image)
            f.flush()
    return time.perf_counter() - start


def run_pynsid(path: Path, frames: list[Frame]) -> float:
    start = time.perf_counter()
    with h5py.File(path, "w") as f, dask.config.set(scheduler="synchronous"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        measurement = f.create_group("Measurement_000")
        for i, frame in enumerate(frames):
            group = measurement.create_group(f"Channel_{i:06d}")
            write_nsid_dataset(frame_to_dataset(frame), group, main_data_name="Image")
            f.flush()
    return time.perf_counter() - start


def run_session(path: Path, frames: list[Frame]) -> float:
    records = [make_record(f) for f in frames]
    start = time.perf_counter()
    writer = SessionWriter(path, {"session_id": "bench"})
    for frame, record in zip(frames, records, strict=True):
        writer.write_frame(frame, record)
    writer.close("completed")
    return time.perf_counter() - start


def run_floor(path: Path, frames: list[Frame]) -> float:
    stored = path.with_name(path.stem + "_template.h5")
    run_session(stored, frames[:1])
    with h5py.File(stored, "r") as src:
        template = h5py.File(f"floor-{path.stem}.h5", "w", driver="core", backing_store=False)
        src.copy(src[f"{MEASUREMENT_GROUP}/{channel_name(0)}"], template, "frame")
    os.remove(stored)
    image = f"{NSID_GROUP}/{NSID_GROUP}".encode()
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        measurement = f.create_group(MEASUREMENT_GROUP)
        for i, frame in enumerate(frames):
            name = channel_name(i).encode()
            h5o.copy(template.id, b"frame", measurement.id, name)
            channel = h5py.h5g.open(measurement.id, name)
            h5d.open(channel, image).write(h5s.ALL, h5s.ALL, frame.image)
            f.flush()
    elapsed = time.perf_counter() - start
    template.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder for the test files (default: tmp)")
    args = parser.parse_args()

    frames = make_frames(args.frames, args.size)
    mb = args.frames * args.size * args.size * 4 / 1e6
    runners: dict[str, Callable[[Path, list[Frame]], float]] = {
        "raw": run_raw, "pynsid": run_pynsid, "session": run_session, "floor": run_floor}
    times: dict[str, list[float]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run_session(Path(tmp) / "warmup.h5", make_frames(2, args.size))   # imports, caches
        for rep in range(args.repeats):
            for name, run in runners.items():
                path = Path(tmp) / f"{name}_{rep}.h5"
                # fresh frame ids per repeat so the session writer never sees a duplicate
                batch = [Frame(f.image, f.instrument_id, f.settings, f.stage, f.sequence,
                               original_metadata=f.original_metadata,
                               evaluation=f.evaluation) for f in frames]
                times[name].append(run(path, batch))
                os.remove(path)

    print(f"{args.frames} frames of {args.size}x{args.size} float32 "
          f"({mb:.1f} MB), flush per frame, median of {args.repeats}")
    fps = {}
    for name, values in times.items():
        t = statistics.median(values)
        fps[name] = args.frames / t
        print(f"  {name:8s} {fps[name]:8.1f} frames/s {mb / t:9.1f} MB/s "
              f"{t / args.frames * 1e3:7.2f} ms/frame")
    print(f"ratio session/raw    = {fps['session'] / fps['raw']:.3f}  (target >= 0.8)")
    print(f"ratio pynsid/raw     = {fps['pynsid'] / fps['raw']:.3f}")
    print(f"ratio session/pynsid = {fps['session'] / fps['pynsid']:.3f}")
    print(f"ratio floor/raw      = {fps['floor'] / fps['raw']:.3f}  (copy of a stored frame + "
          f"pixels: the most any copying writer of this layout can reach)")


if __name__ == "__main__":
    main()
