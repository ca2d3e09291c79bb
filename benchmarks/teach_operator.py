"""Scripted operator on the twin: `micagent run --learn --model none --approve uncertain
--ui web`, every question answered from the twin's truth (twins/scripted_operator.py) through
the web page's API, until the survey ends.

Printed from the session file (truth stored per frame by the twin):
- per block of 50 frames: the share of frames the human was asked about, and the unattended
  accuracy in it (what the agent would have recorded with nobody there: its label where it
  decided alone, by the head or by taught neighbours; on a frame it asked about, the head's
  top-1 class, or unknown where its OOD test flagged the frame; the head's plain top-1 beside
  it);
- the number of human answers given until the unattended accuracy over the last 50 frames
  first reached 0.95 (target: at most 50), or that it never did;
- the refit time of the head (models/fewshot_head.py `SupportSet.fit`, what each answer costs)
  on the session's own support set at every size it had (target < 1 s), median and maximum.

    python -m benchmarks.teach_operator [--frames 300] [--seed 0] [--learn-min 3]
                                        [--no-neighbourhood]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.foreign_folder import ENV, REPO
from instruments.session_file.decision_record import Route
from instruments.session_file.reader import SessionReader
from instruments.utils.child_python import module_command
from models.fewshot_head import SupportSet
from twins.scripted_operator import TwinOperator, WebOperator

URL = re.compile(r"approval page: (http://127\.0\.0\.1:\d+/\?token=[\w-]{32,})")
FOV = 20e-6
WINDOW = 50
TARGET = 0.95


def run_session(work: Path, frames: int, seed: int, learn_min: int,
                neighbourhood: bool = True) -> tuple[Path, float]:
    """The learning session's file and its wall seconds (the operator answering)."""
    out, log = work / "teach.h5", work / "stderr.log"
    command = module_command("workflows", "run", "--learn", "--model", "none", "--approve",
                             "uncertain", "--ui", "web", "--frames", str(frames),
                             "--seed", str(seed),
                             "--neighbourhood" if neighbourhood else "--no-neighbourhood",
                             "--learn-min", str(learn_min), "--out", str(out),
                             "--state-dir", str(work / "state"), "--quiet")
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=err)
    while not (found := URL.search(log.read_text(errors="replace"))):
        if proc.poll() is not None:
            raise SystemExit(f"the session ended before its approval page:\n{log.read_text()}")
        time.sleep(0.2)
    operator = WebOperator(found.group(1), TwinOperator(seed=seed), FOV).start()
    code = proc.wait()
    operator.stop()
    if code or operator.errors:
        raise SystemExit(f"session exit {code}, operator errors {operator.errors}:\n"
                         f"{log.read_text()}")
    return out, time.perf_counter() - t0


def reach(asked: np.ndarray, alone: np.ndarray) -> dict:
    """Answers given, the best unattended accuracy over WINDOW consecutive frames (None:
    fewer frames), and where it first reached TARGET: (frame, answers by then), or None."""
    windows = [alone[i - WINDOW + 1:i + 1].mean() for i in range(WINDOW - 1, len(alone))]
    reached = next((i for i, w in enumerate(windows) if w >= TARGET), None)
    return {"answers": int(asked.sum()), "best": max(windows) if windows else None,
            "reached": None if reached is None else
            (reached + WINDOW, int(asked[:reached + WINDOW].sum()))}


def unattended(record) -> str | None:
    """The label the agent would have recorded with nobody to ask: the recorded one where it
    decided alone (the head's, or its taught neighbours'), else the head's verdict."""
    if record.human is None:
        return record.label
    prediction = record.prediction
    if prediction.ood is not None and prediction.ood.unknown:
        return "unknown"
    return prediction.label


def figures(path: Path) -> dict:
    with SessionReader(path) as reader:
        records, truths = reader.records(), [e["label"] for e in reader.evaluations()]
    asked = np.array([r.human is not None for r in records])
    alone = np.array([unattended(r) == t for r, t in zip(records, truths, strict=True)])
    top1 = np.array([r.prediction.label == t for r, t in zip(records, truths, strict=True)])
    target = reach(asked, alone)
    blocks = [{"frames": f"{s + 1}-{min(s + WINDOW, len(records))}",
               "asked": asked[s:s + WINDOW].mean(), "unattended": alone[s:s + WINDOW].mean(),
               "top1": top1[s:s + WINDOW].mean()}
              for s in range(0, len(records), WINDOW)]
    decided = ~asked
    by_neighbours = np.array([r.route == Route.NEIGHBOURHOOD for r in records])
    return {"by_neighbours": int(by_neighbours.sum()),
            "by_neighbours_accuracy": float(alone[by_neighbours].mean())
            if by_neighbours.any() else None,
            "by_head": int((decided & ~by_neighbours).sum()),
            "by_head_accuracy": float(alone[decided & ~by_neighbours].mean())
            if (decided & ~by_neighbours).any() else None,
            "frames": len(records), "answers": target["answers"],
            "classes": sorted(set(truths)),
            "reached_at_frame": target["reached"] and target["reached"][0],
            "answers_until": target["reached"] and target["reached"][1],
            "alone_accuracy": float(alone[decided].mean()) if decided.any() else None,
            "alone_frames": int(decided.sum()), "blocks": blocks,
            "best_window": target["best"]}


def refit_seconds(model: Path) -> list[float]:
    """Seconds of one refit at every support-set size the session had (2 classes on)."""
    support = SupportSet.load(model)
    out = []
    for n in range(1, len(support) + 1):
        part = SupportSet(support.features[:n], support.labels[:n], support.groups[:n])
        if len(part.class_names) < 2:
            continue
        t0 = time.perf_counter()
        part.fit()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learn-min", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-neighbourhood", action="store_true",
                        help="the session without its taught neighbours (run --no-neighbourhood)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="micagent_teach_"))
    work.mkdir(parents=True, exist_ok=True)
    path, wall = run_session(work, args.frames, args.seed, args.learn_min,
                             not args.no_neighbourhood)
    result = figures(path)
    refits = refit_seconds(Path(f"{path}.model"))
    print(f"session {path}: {result['frames']} frames, {wall:.0f} s wall, "
          f"{len(result['classes'])} classes seen: {', '.join(result['classes'])}")
    print("| frames | asked | unattended accuracy | top-1 |")
    print("|---|---|---|---|")
    for b in result["blocks"]:
        print(f"| {b['frames']} | {b['asked']:.2f} | {b['unattended']:.2f} | {b['top1']:.2f} |")
    if result["answers_until"] is None:
        print(f"unattended accuracy over the last {WINDOW} frames never reached {TARGET} "
              f"({result['answers']} answers given; best window "
              f"{'-' if result['best_window'] is None else format(result['best_window'], '.2f')})")
    else:
        print(f"unattended accuracy over the last {WINDOW} frames reached {TARGET} at frame "
              f"{result['reached_at_frame']}, after {result['answers_until']} human answers")
    if result["alone_accuracy"] is not None:
        print(f"frames decided alone: {result['alone_frames']}, accuracy "
              f"{result['alone_accuracy']:.3f}")
    for kind, words in (("by_neighbours", "by taught neighbours (route neighbourhood)"),
                        ("by_head", "by the head")):
        if result[f"{kind}_accuracy"] is not None:
            print(f"  {words}: {result[kind]}, accuracy {result[f'{kind}_accuracy']:.3f}")
    print(f"refit of the head: {len(refits)} refits, median {np.median(refits):.3f} s, "
          f"max {max(refits):.3f} s (support set up to {result['answers']} examples)")


if __name__ == "__main__":
    main()
