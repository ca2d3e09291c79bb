"""Row `SIGKILL + resume`: `benchmarks/kill_resume.py` (seeded SIGKILLs at random points of a
24-frame session, each resumed), run as it is on this checkout. Per trial: frames lost (fewer
than 24 unique), doubled (more frames than unique ids), or otherwise not exact (order, status)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.fault_campaign.common import REPO, Clock, Row

SCRIPT = REPO / "benchmarks" / "kill_resume.py"


def run(work: Path, kills: int, seed: int, frames: int = 24) -> Row:
    clock, row = Clock(), Row("SIGKILL + resume")
    if not SCRIPT.exists():
        row.note(f"{SCRIPT.relative_to(REPO)} is not in this checkout: row not run")
        row.good_after = "n/a"
        return row
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--kills", str(kills),
                             "--frames", str(frames), "--seed", str(seed), "--work", str(work)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=7200)
    out = result.stdout.strip().splitlines()
    row.cases = kills
    if result.returncode != 0:
        row.crashes += 1
        row.note(f"exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1]}")
    for line in out:                  # "#  target killed frames unique order places status ..."
        cells = line.split()
        if len(cells) > 5 and cells[0].isdigit() and cells[3].isdigit() and cells[4].isdigit():
            got, unique = int(cells[3]), int(cells[4])
            row.doubled += got - unique
            row.lost += max(frames - unique, 0)
            if not line.rstrip().endswith("yes"):
                row.crashes += got == unique == frames     # e.g. out of order, not completed
                row.note(f"trial {cells[0]}: {line.split('  ')[-1].strip()[:100]}")
    summary = [m for line in out if (m := re.search(r"exact\s+(\d+)\s*/\s*(\d+)", line))]
    if summary:
        row.note(out[-1])
    else:
        row.crashes += 1
        row.note("no summary line from kill_resume.py")
    row.seconds = clock()
    return row
