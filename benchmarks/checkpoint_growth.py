"""How the checkpoint database of a session grows with its length: twin surveys of N frames
(small frames, the bundled model) and, for each, the frames recorded, the wall time, the
database's size on disk, its checkpoint rows, the size of the latest checkpoint and the time to
serialise it (paid at every graph step).
A bounded store keeps the rows and the latest checkpoint flat as N grows.

    OMP_NUM_THREADS=1 python -m benchmarks.checkpoint_growth [--frames 50,200]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from instruments.utils.child_python import module_command


def measure(frames: int, pixels: int, work: Path) -> dict:
    out = work / f"survey-{frames}.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run(module_command("workflows", "run", "--frames", str(frames),
                                  "--pixels", str(pixels), "--out", str(out), "--state-dir",
                                  str(work / "state"), "--quiet"), env=env, check=True, cwd=work,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    from agent.config import checkpoint_path
    from agent.graph import open_checkpointer
    from instruments.session_file.reader import SessionReader

    with SessionReader(out) as reader:
        recorded = reader.summary()["frames"]

    path = checkpoint_path(out)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        kind, blob = conn.execute("SELECT type, checkpoint FROM checkpoints "
                                  "ORDER BY checkpoint_id DESC LIMIT 1").fetchone()
    serde = open_checkpointer(path).serde
    checkpoint = serde.loads_typed((kind, blob))
    t0 = time.perf_counter()
    for _ in range(5):
        serde.dumps_typed(checkpoint)
    dumps_ms = (time.perf_counter() - t0) / 5 * 1e3
    return {"frames": frames, "recorded": recorded, "wall_s": wall,
            "db_mb": path.stat().st_size / 1e6, "rows": rows, "latest_kb": len(blob) / 1e3,
            "dumps_ms": dumps_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="50,200", help="comma-separated session lengths")
    parser.add_argument("--pixels", type=int, default=64)
    args = parser.parse_args()
    print(f"{'frames':>7} {'recorded':>9} {'wall s':>8} {'db MB':>8} {'rows':>6} {'latest KB':>10} "
          f"{'serialise ms':>13}")
    with tempfile.TemporaryDirectory(prefix="micagent-ckpt-") as tmp:
        for frames in (int(f) for f in args.frames.split(",")):
            m = measure(frames, args.pixels, Path(tmp))
            print(f"{m['frames']:>7} {m['recorded']:>9} {m['wall_s']:>8.1f} {m['db_mb']:>8.2f} "
                  f"{m['rows']:>6} {m['latest_kb']:>10.1f} {m['dumps_ms']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
