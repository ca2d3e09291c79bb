"""Hunt efficiency on the twin: frames, stage travel, dose and time to find N targets, per
search strategy (agent/targeting.py).

Per seed (a twin specimen of its own) the search area is the one a hunt of `--frames` frames
searches from the stage's start (0, 0). Every class with at least N tiles in the area is
hunted in turn, N = `--n`. A visited tile counts as a hit where the twin's ground truth at its
centre is the target class: a perfect high-magnification classifier, so the figures compare
where the strategies look, not how well the model reads a frame. The `overview` strategy
takes its overview through the acquirer and the safety guard and scores the crops with the
real classifier (`--model`, default the bundled one); `active` fits scikit-learn's GP after
every frame. Wall time = frames x a 512^2 frame's acquisition (its scan at 2 us dwell plus
the twin's render, measured here) + overview frames + planning time. Misses: hunts that
did not find N within the area although it holds N.

    python -m benchmarks.hunt_efficiency [--seeds 0-3] [--frames 100] [--n 5]
        [--out benchmarks/results/hunt_efficiency.md]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from agent.acquirer import Acquirer
from agent.targeting import (
    STRATEGIES,
    choose_next,
    rank,
    score_candidates,
    search_area,
    spiral_order,
    stage_bounds,
    take_overview,
)
from instruments.devices.frame import ImagingSettings
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from twins.microscope import TwinMicroscope

FOV = 20e-6
E = 1.602176634e-19


def electrons(settings: ImagingSettings) -> float:
    """Electrons one frame delivers."""
    return settings.beam_current * settings.dwell * settings.pixels ** 2 / E


def frame_time(twin: TwinMicroscope, settings: ImagingSettings, repeats: int = 3) -> float:
    """Median seconds the twin takes to acquire one frame with `settings`."""
    twin.set_imaging(settings)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        twin.acquire()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def walk(order: list[dict[str, Any]], hit: Any, n: int) -> dict[str, float]:
    """Frames and travel until `n` hits along a fixed order."""
    found, travel, here = 0, 0.0, (0.0, 0.0)
    for count, p in enumerate(order, 1):
        travel += math.hypot(p["x"] - here[0], p["y"] - here[1])
        here = (p["x"], p["y"])
        found += hit(p)
        if found >= n:
            return {"frames": count, "travel": travel, "found": found}
    return {"frames": len(order), "travel": travel, "found": found}


def active_walk(candidates: list[dict[str, Any]], hit: Any, n: int
                ) -> tuple[dict[str, float], list[float]]:
    chosen, outcomes, here, travel, costs = [], [], (0.0, 0.0), 0.0, []
    while sum(outcomes) < n:
        t0 = time.perf_counter()
        index = choose_next(candidates, chosen, outcomes, here, FOV)
        costs.append(time.perf_counter() - t0)
        if index is None:
            break
        p = candidates[index]
        travel += math.hypot(p["x"] - here[0], p["y"] - here[1])
        here = (p["x"], p["y"])
        chosen.append(index)
        outcomes.append(float(hit(p)))
    return {"frames": len(chosen), "travel": travel, "found": sum(outcomes)}, costs


def run(seeds: list[int], frames: int, n: int, model: str | None) -> dict[str, Any]:
    from models.classifier import Classifier
    from workflows.session_assembly import BUNDLED_MODEL

    classifier = Classifier.load(model or BUNDLED_MODEL)
    imaging = ImagingSettings(fov=FOV, pixels=512, dwell=2e-6)
    rows, choice_costs, overview_costs = [], [], []
    render = frame_time(TwinMicroscope(seed=seeds[0]), imaging)
    t_frame = render + imaging.pixels ** 2 * imaging.dwell
    for seed in seeds:
        twin = TwinMicroscope(seed=seed)
        acquirer = Acquirer(GuardedMicroscope(twin, SafetyEnvelope()))
        acquirer.connect(imaging)
        candidates = search_area((0.0, 0.0), FOV, frames, stage_bounds(acquirer))
        labels = {(p["row"], p["col"]): twin.specimen.label_at(p["x"], p["y"])
                  for p in candidates}
        t0 = time.perf_counter()
        overview = take_overview(acquirer, imaging, candidates)
        t_overview = time.perf_counter() - t0
        overview_e = sum(electrons(f.settings) for f in overview.frames)
        for target, present in Counter(labels.values()).items():
            if present < n or target not in classifier.class_names:
                continue

            def hit(p: dict[str, Any], target: str = target,
                    labels: dict[tuple[int, int], str] = labels) -> bool:
                return labels[(p["row"], p["col"])] == target

            objective = {"kind": "hunt", "classes": [target], "target": n}
            t0 = time.perf_counter()
            scores = score_candidates(classifier, overview, candidates, FOV, objective)
            ranked = rank(candidates, scores, (0.0, 0.0))
            t_score = time.perf_counter() - t0
            overview_costs.append(t_score)
            results = {"grid": (walk(candidates, hit, n), 0.0, 0.0, 0.0),
                       "spiral": (walk(spiral_order(candidates, (0.0, 0.0)), hit, n), 0.0,
                                  0.0, 0.0),
                       "overview": (walk(ranked, hit, n), t_overview + t_score, overview_e,
                                    len(overview.frames))}
            active, costs = active_walk(candidates, hit, n)
            choice_costs.extend(costs)
            results["active"] = (active, sum(costs), 0.0, 0.0)
            for strategy, (res, planning, extra_e, extra_frames) in results.items():
                rows.append({"seed": seed, "target": target, "present": present,
                             "strategy": strategy, **res,
                             "dose_e": res["frames"] * electrons(imaging) + extra_e,
                             "wall_s": (res["frames"] + extra_frames) * t_frame + planning,
                             "miss": res["found"] < n})
    return {"rows": rows, "t_frame": t_frame, "render_s": render,
            "choice_costs": choice_costs, "overview_costs": overview_costs}


def table(result: dict[str, Any], seeds: list[int], frames: int, n: int) -> str:
    rows = result["rows"]
    grid = statistics.median(r["frames"] for r in rows if r["strategy"] == "grid")
    grid_mean = statistics.mean(r["frames"] for r in rows if r["strategy"] == "grid")
    lines = [
        "# Hunt efficiency on the twin", "",
        f"Scale (2 shared CPU cores): seeds {seeds[0]}-{seeds[-1]}, search area of {frames} "
        f"tiles ({FOV * 1e6:g} um) from (0, 0), N = {n}, every class with >= N tiles in the "
        f"area ({sum(r['strategy'] == 'grid' for r in rows)} hunts). Hits from the twin's "
        "ground truth; overview scores from the bundled classifier on overview crops.", "",
        "| strategy | median frames to N | vs grid | mean frames to N | vs grid | median "
        "travel (um) | median dose (1e9 e) | median wall (s) | misses |",
        "|---|---|---|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        med = statistics.median(r["frames"] for r in mine)
        mean = statistics.mean(r["frames"] for r in mine)
        lines.append(
            f"| {strategy} | {med:g} | {med / grid:.2f} | {mean:.1f} | {mean / grid_mean:.2f} | "
            f"{statistics.median(r['travel'] for r in mine) * 1e6:.0f} | "
            f"{statistics.median(r['dose_e'] for r in mine) / 1e9:.2f} | "
            f"{statistics.median(r['wall_s'] for r in mine):.2f} | "
            f"{sum(r['miss'] for r in mine)} |")
    best = min(STRATEGIES, key=lambda s: (
        statistics.median(r["frames"] for r in rows if r["strategy"] == s),
        statistics.mean(r["frames"] for r in rows if r["strategy"] == s)))
    lines += ["", f"Best by median frames to N (then mean): {best}. The median ratio cannot "
              f"fall below N / grid's median = {n / grid:.2f} at this scale (no strategy "
              "finds N in fewer than N frames)."]
    choice = statistics.median(result["choice_costs"])
    score = statistics.median(result["overview_costs"])
    lines += [
        "", f"One 512^2 frame's acquisition: {result['t_frame'] * 1e3:.0f} ms (scan at 2 us "
        f"dwell, plus {result['render_s'] * 1e3:.0f} ms of the twin's rendering).",
        f"Planning per choice: active {choice * 1e3:.2f} ms (median over "
        f"{len(result['choice_costs'])} choices, "
        f"{choice / result['t_frame'] * 100:.2f} % of a 512^2 frame); overview "
        f"scoring {score * 1e3:.0f} ms once per hunt "
        f"({score / frames / result['t_frame'] * 100:.1f} % of a frame per tile of the area; "
        "plus the overview's own frames).",
        "", "Per hunt (frames to N):", "", "| seed | target | present | "
        + " | ".join(STRATEGIES) + " |", "|---|---|---|" + "---|" * len(STRATEGIES)]
    for i in range(0, len(rows), len(STRATEGIES)):
        group = rows[i:i + len(STRATEGIES)]
        lines.append(f"| {group[0]['seed']} | {group[0]['target']} | {group[0]['present']} | "
                     + " | ".join(f"{r['frames']}{'*' if r['miss'] else ''}" for r in group)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="benchmarks/results/hunt_efficiency.md")
    args = parser.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    np.seterr(all="ignore")
    result = run(seeds, args.frames, args.n, args.model)
    text = table(result, seeds, args.frames, args.n)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
