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

On DTMicroscope's own server (`--dtm`, the functions after `main`): NSID images it serves,
frames to the first N windows of the most frequent label, overview against grid, written to
benchmarks/results/hunt_efficiency_dtm.md:

    python -m benchmarks.hunt_efficiency --dtm [--seeds 0-3] [--n 5]
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
from benchmarks import dtm_peer
from instruments.devices.frame import ImagingSettings, StagePosition
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




# --- DTMicroscope's own server (issue 26, benchmark point 5's DTM part) ------------------
DTM_MOSAIC = 4           # twin frames a side of the NSID image DTMicroscope serves
DTM_FRAME_PX = 256       # pixels a side of each (4 x 64 px windows of FOV each)


def twin_nsid(path: Path, seed: int) -> dict[tuple[int, int], str]:
    """An NSID image of a twin specimen (DTM_MOSAIC^2 frames of 4 tiles' FOV, 2 us dwell)
    around (0, 0); returns the twin's ground truth at each 64 px window's centre."""
    from twins.stem_nsid import write_image_nsid

    twin = TwinMicroscope(seed=seed)
    span, pixel = 4 * FOV, 4 * FOV / DTM_FRAME_PX
    twin.set_imaging(ImagingSettings(fov=span, pixels=DTM_FRAME_PX, dwell=2e-6))
    side = DTM_MOSAIC * DTM_FRAME_PX
    image, x0 = np.zeros((side, side), np.float32), -DTM_MOSAIC * span / 2
    for r in range(DTM_MOSAIC):
        for c in range(DTM_MOSAIC):
            twin.move_stage(StagePosition(x0 + (c + 0.5) * span, x0 + (r + 0.5) * span))
            image[r * DTM_FRAME_PX:(r + 1) * DTM_FRAME_PX,
                  c * DTM_FRAME_PX:(c + 1) * DTM_FRAME_PX] = twin.acquire().image
    write_image_nsid(path, image, pixel, "SE", "counts")
    tiles = side // 64
    return {(r, c): twin.specimen.label_at(x0 + (c + 0.5) * FOV, x0 + (r + 0.5) * FOV)
            for r in range(tiles) for c in range(tiles)}


def dtm_hunt(address: str, path: Path, classifier: Any, n: int
             ) -> tuple[list[dict[str, Any]], dict[tuple[int, int], str | None]]:
    """One NSID file served by DTMicroscope's server: every window read by the classifier
    (label = its top class, none where OOD flags it); the most frequent label, and the rarest
    with at least N windows, each hunted with the overview strategy (the served image binned,
    crops scored) and with the grid. The rows, and the labels."""
    from agent.overview import OverviewTiles
    from instruments.devices.dtm_client import DTMicroscopeClient

    host, port = address.rsplit(":", 1)
    client = DTMicroscopeClient(host, int(port), timeout=120)
    client.initialize_microscope("STEM")
    client.register_data(str(path))
    tiles = OverviewTiles(GuardedMicroscope(client, SafetyEnvelope()), tile_px=64)
    candidates = tiles.positions()
    predictions = classifier.classify([tiles.frame(p, 0).image for p in candidates])
    labels = {(p["row"], p["col"]): None if (q.ood or {}).get("unknown")
              else classifier.class_names[int(np.argmax(q.probabilities))]
              for p, q in zip(candidates, predictions, strict=True)}
    counts = Counter(v for v in labels.values() if v).most_common()
    targets = {"most frequent": counts[0]}
    rare = [c for c in counts if c[1] >= n and c[0] != counts[0][0]]
    if rare:
        targets["rarest with >= N"] = rare[-1]
    overview = tiles.targeting_overview()
    start = (tiles.overview.stage.x, tiles.overview.stage.y)
    out = []
    for which, (target, present) in targets.items():
        def hit(p: dict[str, Any], target: str = target) -> bool:
            return labels[(p["row"], p["col"])] == target

        t0 = time.perf_counter()
        objective = {"kind": "hunt", "classes": [target], "target": n}
        scores = score_candidates(classifier, overview, candidates, tiles.tile_fov, objective)
        ranked = rank(candidates, scores, start)
        out.append({"which": which, "tiles": len(candidates), "target": target,
                    "present": present, "scoring_s": time.perf_counter() - t0,
                    "grid": walk(candidates, hit, n), "overview": walk(ranked, hit, n)})
    client.close()
    return out, labels


def run_dtm(seeds: list[int], n: int, model: str | None, work: Path) -> list[dict[str, Any]]:
    """The DTM rows: per twin seed an NSID image (and the real PTO scan of ../shared where
    present), served by DTMicroscope's own server started from ../shared/peers."""
    from models.classifier import Classifier
    from workflows.session_assembly import BUNDLED_MODEL

    if not dtm_peer.available():
        raise SystemExit("DTMicroscope's sources (../shared/peers) or .venv-peers absent")
    classifier = Classifier.load(model or BUNDLED_MODEL)
    rows = []
    with dtm_peer.served_dtm(work) as address:
        for seed in seeds:
            path = work / f"twin{seed}.h5"
            truth = twin_nsid(path, seed)
            found, labels = dtm_hunt(address, path, classifier, n)
            named = {k: v for k, v in truth.items() if v in classifier.class_names}
            agree = sum(labels[k] == v for k, v in named.items()) / max(1, len(named))
            rows += [{**row, "dataset": f"twin seed {seed}", "agree": agree} for row in found]
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "nsid" / \
            "PTO_Funakubo0001.h5"
        if shared.is_file():
            copy = work / shared.name                 # the server opens files r+
            copy.write_bytes(shared.read_bytes())
            rows += [{**row, "dataset": "PTO scan (AFM, ../shared)", "agree": None}
                     for row in dtm_hunt(address, copy, classifier, n)[0]]
    return rows


def dtm_table(rows: list[dict[str, Any]], n: int, command: str, commit: str) -> str:
    lines = [
        "# Hunt efficiency on DTMicroscope's own server", "",
        f"Command: `{command}` on commit {commit}.", "",
        "DTMicroscope's STEM server (../shared/peers, its own environment) serves each NSID "
        "file; micagent's client registers it and reads `get_overview_image` through the "
        "safety guard. Its 64 px windows are the high-magnification frames; the overview "
        "strategy scores each window's crop of the served image binned to at most 256 px a "
        "side (agent/overview.py `targeting_overview`) with the bundled classifier and OOD, "
        "best first; the grid visits the windows row-major. Labels: the bundled classifier's "
        "own reading of every full-resolution window (top class; none where OOD flags it), "
        "the target its most frequent label; so the figures compare where the strategies look, "
        "not how well the model reads a frame. Twin files: a 1024 px image of a twin "
        "specimen (16 x 16 windows of 20 um), with the share of windows whose label matches "
        "the twin's ground truth at the window's centre (among windows whose truth is one of "
        f"the model's classes, not bare substrate). N = {n}.", "",
        "| dataset | windows | label | target | present | grid frames to N | overview frames to N "
        "| overview / grid | label = truth | scoring (s) |", "|---" * 10 + "|"]
    for r in rows:
        g, o = r["grid"]["frames"], r["overview"]["frames"]
        agree = "-" if r["agree"] is None else f"{r['agree']:.0%}"
        lines.append(f"| {r['dataset']} | {r['tiles']} | {r['which']} | {r['target']} | "
                     f"{r['present']} | {g} "
                     f"| {o} | {o / g:.2f} | {agree} | {r['scoring_s']:.2f} |")
    lines.append("")
    for which in ("most frequent", "rarest with >= N"):
        ratios = [r["overview"]["frames"] / r["grid"]["frames"] for r in rows
                  if r["which"] == which]
        if ratios:
            lines.append(f"Median overview / grid, {which} label: "
                         f"{statistics.median(ratios):.2f} over {len(ratios)} files.")
    lines += ["", "Frames to N count only the high-magnification windows; the overview is "
              "served once (no extra beam: the server serves a stored dataset)."]
    return "\n".join(lines) + "\n"


def dtm_main(argv: list[str]) -> None:
    """`python -m benchmarks.hunt_efficiency --dtm [--seeds 0-3] [--n 5]`."""
    import subprocess
    import tempfile

    parser = argparse.ArgumentParser(description="hunt efficiency on DTMicroscope's server")
    parser.add_argument("--dtm", action="store_true")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="benchmarks/results/hunt_efficiency_dtm.md")
    args = parser.parse_args(argv)
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory(prefix="hunt-dtm-") as work:
        rows = run_dtm(seeds, args.n, args.model, Path(work))
    text = dtm_table(rows, args.n, "python -m benchmarks.hunt_efficiency " + " ".join(argv),
                     commit)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    import sys

    if "--dtm" in sys.argv:
        dtm_main(sys.argv[1:])
    else:
        main()
