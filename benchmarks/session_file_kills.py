"""SIGKILL a process in the middle of writing a session file; how often does the file still
resume, with every frame the writer had returned from?

    python -m benchmarks.session_file_kills [--trials 150] [--seed 0] [--pixels 128]

Each trial forks a child that appends frames through `SessionWriter` as fast as it can (with an
incident every 3rd frame and a provenance update every 5th, as a session does), and the parent
SIGKILLs it after a delay drawn from 0.2-1.0 s, so kills land inside frame writes, provenance
writes and HDF5 flushes. The parent then resumes the file with a new `SessionWriter`. Printed:
files that did not resume (a typed error), and resumed files holding fewer frames than the
child had reported written (it reports each returned `write_frame` on a pipe).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from instruments.devices.frame import Frame, ImagingSettings, StagePosition
from instruments.session_file.decision_record import DecisionRecord
from instruments.session_file.layout import SessionFileError
from instruments.session_file.writer import SessionWriter


def _frame(i: int, pixels: int) -> Frame:
    image = np.random.default_rng(i).random((pixels, pixels), dtype=np.float32)
    return Frame(image=image, instrument_id="bench",
                 settings=ImagingSettings(fov=1e-5, pixels=pixels, dwell=1e-6),
                 stage=StagePosition(x=1e-6 * i, y=0.0), sequence=i)


def _write_until_killed(path: Path, pixels: int, report: int) -> None:
    writer = SessionWriter(path, {"session_id": "bench"})
    i = 0
    while True:
        frame = _frame(i, pixels)
        writer.write_frame(frame, DecisionRecord(frame_id=frame.frame_id, sequence=i))
        os.write(report, b".")
        if i % 3 == 0:
            writer.record_incident("bench", f"incident {i}")
        if i % 5 == 0:
            writer.update_provenance(outcome={"written": i + 1})
        i += 1


def trial(path: Path, delay: float, pixels: int) -> tuple[str, int, int]:
    """('resumed' | the error, frames the child wrote, frames the file holds)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _write_until_killed(path, pixels, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    written = 0
    while chunk := os.read(read_end, 65536):
        written += len(chunk)
    os.close(read_end)
    try:
        with SessionWriter(path, {"session_id": "bench"}) as writer:
            return "resumed", written, len(writer.frame_ids())
    except SessionFileError as exc:
        return f"{type(exc).__name__}: {exc}", written, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", type=int, default=128)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failed, short, frames = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trials):
            path = Path(tmp) / f"kill{i}.h5"
            outcome, written, held = trial(path, rng.uniform(0.2, 1.0), args.pixels)
            frames += written
            if outcome != "resumed":
                failed.append(outcome)
            elif held < written:
                short += 1
            path.unlink()
    print(f"kills: {args.trials} (seed {args.seed}, {args.pixels} px frames, "
          f"{frames} frames written in all)")
    print(f"files that did not resume: {len(failed)}")
    for error in failed:
        print(f"  {error}")
    print(f"resumed files missing a frame the writer had returned: {short}")


if __name__ == "__main__":
    main()
