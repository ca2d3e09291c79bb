"""The fault campaign: every probe of the hardening issue, seeded, bounded and on loopback only,
printed as one table. Expected: 0 crashes, 0 frames lost or doubled, 0 secrets on disk, 0
faults missing from the session file, 0 envelope breaches, every good request answered after
each flood.

    OMP_NUM_THREADS=1 python -m benchmarks.fault_campaign.run            # full
    OMP_NUM_THREADS=1 python -m benchmarks.fault_campaign.run --scale 0.1

Sizes (full): 100 damaged files through every reading command, 1,000 instrument faults in one
long twin session, 200 adjudicator faults, 5 floods of 300 idle + 60 hostile connections on each
server, 50 SIGKILLs with resume (benchmarks/kill_resume.py, where present), 500 control
requests on each TEM-protocol server, 20 sessions under a beam current changed at the
console, 20 runs that fill a small tmpfs and resume once it is remounted larger
(root only)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.fault_campaign import (
    adjudicator,
    disk_full,
    envelope,
    files,
    instrument,
    resume,
    servers,
)
from benchmarks.fault_campaign.common import SECRET, Row, secret_hits, table

ROWS = ("files", "web", "dtm", "tem", "instrument", "adjudicator", "resume", "controls",
        "dose", "disk_full")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {ROWS}")
    parser.add_argument("--work", default=None, help="folder for the files (default: temp)")
    args = parser.parse_args(argv)

    def size(n: int) -> int:
        return max(1, int(round(n * args.scale)))

    warnings.simplefilter("ignore")
    from instruments.utils.redaction import install_log_redaction

    install_log_redaction()
    work = Path(args.work or tempfile.mkdtemp(prefix="micagent-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    log = logging.FileHandler(work / "campaign.log")
    logging.getLogger().addHandler(log)
    logging.getLogger().setLevel(logging.DEBUG)
    for noisy in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    runs = {
        "files": lambda w: files.run(w, size(100), args.seed),
        "web": lambda w: servers.web(w, max(2, size(5)), args.seed),
        "dtm": lambda w: servers.dtm(w, size(5), size(300), args.seed),
        "tem": lambda w: servers.tem(w, size(5), size(300), args.seed),
        "instrument": lambda w: instrument.run(w, size(1000), args.seed),
        "adjudicator": lambda w: adjudicator.run(w, size(200), args.seed),
        "resume": lambda w: resume.run(w, size(50), args.seed),
        "controls": lambda w: envelope.controls(w, size(500), args.seed),
        "dose": lambda w: envelope.dose(w, size(20), args.seed),
        "disk_full": lambda w: disk_full.run(w, size(20), args.seed),
    }
    rows: list[Row] = []
    started = time.monotonic()
    for name in chosen:
        folder = work / name
        folder.mkdir()
        print(f"[{time.monotonic() - started:6.0f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(runs[name](folder))
        except Exception as exc:  # noqa: BLE001 - a row that cannot run is a crash of the row
            row = Row(name, crashes=1)
            row.note(f"row failed: {type(exc).__name__}: {str(exc)[:150]}")
            rows.append(row)
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    log.close()
    leaks = secret_hits(work, SECRET)
    total = Row("all files of the campaign", cases=sum(1 for p in work.rglob("*")
                                                       if p.is_file()),
                secrets=len(leaks), seconds=time.monotonic() - started)
    for path in leaks[:5]:
        total.note(f"key found in {path.relative_to(work)}")
    print(table([*rows, total]))
    print(f"work folder: {work}")
    bad = sum(r.crashes + r.lost + r.doubled + r.secrets + r.unrecorded + r.breaches
              for r in [*rows, total])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
