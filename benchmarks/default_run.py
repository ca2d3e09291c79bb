"""The README's figures for `micagent run` with no arguments (36 tiles on the embedded twin,
bundled model, offline adjudicator): run it as a user would, in an empty working folder, then
read its session file: final-label accuracy, the classifier's own accuracy, routes, escalations
and wall time. Prints them and writes them at the top of results/default_run.md with the commit
they were measured on (earlier measurements are kept below). Options after `--` go to `micagent
run` (a candidate checkpoint, a policy switch) and the figures are then printed only, not
written.

    python -m benchmarks.default_run [-- --model CKPT --zoom-out]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from instruments.session_file.reader import SessionReader
from instruments.utils.child_python import ROOT, module_command

RESULTS = Path(__file__).resolve().parent / "results" / "default_run.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def commit() -> str:
    """The commit measured, `+ changes` where the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           text=True, capture_output=True, check=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


def default_run(work: Path, options: list[str]) -> tuple[Path, float]:
    """`micagent run OPTIONS` in `work`; its session file and the command's wall seconds."""
    t0 = time.perf_counter()
    done = subprocess.run(module_command("workflows", "run", *options), cwd=work, env=ENV,
                          text=True, capture_output=True, check=True)
    wall = time.perf_counter() - t0
    sessions = sorted(work.rglob("*.h5"))
    if len(sessions) != 1:
        raise RuntimeError(f"expected one session file in {work}, found {sessions}:\n"
                           f"{done.stdout}")
    return sessions[0], wall


def main() -> None:
    options = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    measured_on = commit()
    with tempfile.TemporaryDirectory(prefix="micagent-default-run-") as folder:
        session, wall = default_run(Path(folder), options)
        with SessionReader(session) as reader:
            summary, rows = reader.summary(), reader.rows()
    routes = Counter(summary["routes"])
    lines = [
        (f"`micagent run {' '.join(options)}`" if options else
         "`micagent run` with no arguments") + f", on commit {measured_on}, one thread:",
        f"- frames: {summary['frames']}; final-label accuracy {summary['accuracy']:.3f}, "
        f"classifier alone {summary['accuracy_classifier']:.3f} "
        f"({summary['scored_frames']} frames with twin ground truth)",
        f"- decided frames (a route that names a class or unknown): {summary['decided']}, "
        f"coverage {summary['coverage']:.3f}, accuracy over them "
        f"{summary['accuracy_decided']:.3f}",
        "- each frame not recorded under the final label's truth: " + "; ".join(
            f"{r.route} {r.predicted} -> {r.label} (truth {r.truth}, p {r.confidence or 0:.2f})"
            for r in rows if r.label != r.truth),
        "- routes: " + ", ".join(f"{route} {n}" for route, n in routes.most_common()),
        f"- escalated: {summary['escalations']} ("
        + ", ".join(f"{kind} {n}" for kind, n in summary["escalation_counts"].items()) + ")",
        f"- wall time of the command: {wall:.0f} s (start, model load, 36 tiles, close)",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if options:
        return
    title = "# Default run\n\n"
    earlier = (RESULTS.read_text(encoding="utf-8").removeprefix(title)
               if RESULTS.exists() else "")
    RESULTS.write_text(title + text + ("\nBefore:\n\n" + earlier if earlier else ""),
                       encoding="utf-8")


if __name__ == "__main__":
    main()
