"""Row `SIGKILL + resume`: `benchmarks/kill_resume.py` (seeded SIGKILLs at random points of a
24-frame session, each resumed), run as it is on this checkout; its own verdict line decides."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from common import REPO, Clock, Row

SCRIPT = REPO / "benchmarks" / "kill_resume.py"


def run(work: Path, kills: int, seed: int) -> Row:
    clock, row = Clock(), Row("SIGKILL + resume")
    if not SCRIPT.exists():
        row.note(f"{SCRIPT.relative_to(REPO)} is not in this checkout: row not run")
        row.good_after = "n/a"
        return row
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--kills", str(kills),
                             "--seed", str(seed), "--work", str(work)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=3600)
    out = result.stdout.strip().splitlines()
    row.cases = kills
    if result.returncode != 0:
        row.crashes += 1
        row.note(f"exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1]}")
    exact = [m for line in out if (m := re.search(r"(\d+)\s*/\s*(\d+)\s+exact", line))]
    if exact:
        good, total = map(int, exact[-1].groups())
        row.lost = total - good
        row.note(f"{good}/{total} resumed exactly (24 frames, unique ids, completed)")
    row.note(out[-1] if out else "no output")
    row.seconds = clock()
    return row
