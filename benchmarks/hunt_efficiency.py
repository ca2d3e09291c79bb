"""Hunt efficiency on the twin: frames, stage travel, dose and time to find N targets, per
search strategy (agent/targeting.py), and the classes an exploration sees per frame.

Per seed (a twin specimen of its own) the search area is the smallest square from the start
(0, 0) holding >= N tiles of every class (benchmarks/hunt_scene.py), and each class is the
target in turn, N = `--n`. A visited tile counts as a hit where the twin's ground truth at its
centre is the target class: a perfect high-magnification classifier, so the figures compare
where the strategies look, not how well the model reads a frame. `overview` and the `active`
variants that read it take the overview through the acquirer and the safety guard (its
frames count as frames, with their dose and time) and read the crops with the real
classifier (`--model`, default the bundled one; cached under `--cache`). Wall time =
high-magnification frames x a 512^2 frame's acquisition (scan at 2 us dwell plus the twin's
render, measured here) + the overview's frames and crop reading + planning time. Misses:
hunts that did not find N within the area although it holds N.

    python -m benchmarks.hunt_efficiency [--seeds 0-19] [--classes A,B] [--n 5]
        [--cache runs/hunt_cache] [--out benchmarks/results/hunt_efficiency.md]

On DTMicroscope's own server (`--dtm`, the functions after `main`): NSID images it serves,
frames to the first N windows of the most frequent label, overview against grid, written to
benchmarks/results/hunt_efficiency_dtm.md:

    python -m benchmarks.hunt_efficiency --dtm [--seeds 0-3] [--n 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from agent.targeting import (
    choose_next,
    crop_features,
    objective_scores,
    rank,
    read_crops,
    spiral_order,
)
from benchmarks import dtm_peer
from benchmarks.hunt_scene import Scene, build, electrons
from instruments.devices.frame import ImagingSettings, StagePosition
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
from twins.microscope import TwinMicroscope

FOV = 20e-6
ACTIVE = {"active xy": (False, False), "active xy+prior": (True, False),
          "active xy+prior+embedding": (True, True)}
"""The surrogate's inputs per active variant: (the overview's score as prior mean, the
crops' embedding features); `active xy` takes no overview."""
STRATEGIES = ("grid", "spiral", "overview", *ACTIVE)
EXPLORE_FRAMES = (10, 25, 50)


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


def active_walk(candidates: list[dict[str, Any]], outcome: Any, stop: Any,
                choose: Any = choose_next) -> tuple[dict[str, float], list[float], list[int]]:
    """A surrogate's walk (`choose`, choose_next's signature): outcome(p, chosen) per visit,
    until stop(outcomes) or no tile is left; (frames, travel, found), the seconds per choice
    and the tiles chosen."""
    chosen: list[int] = []
    outcomes: list[float] = []
    here, travel, costs = (0.0, 0.0), 0.0, []
    while not stop(outcomes):
        t0 = time.perf_counter()
        index = choose(candidates, chosen, outcomes, here, FOV)
        costs.append(time.perf_counter() - t0)
        if index is None:
            break
        p = candidates[index]
        travel += math.hypot(p["x"] - here[0], p["y"] - here[1])
        here = (p["x"], p["y"])
        outcomes.append(float(outcome(p, chosen)))
        chosen.append(index)
    return {"frames": len(chosen), "travel": travel, "found": sum(outcomes)}, costs, chosen


def inputs(scene: Scene, scores: np.ndarray, features: np.ndarray, variant: str
           ) -> list[dict[str, Any]]:
    """The candidates as the plan of `variant` holds them (agent/search_plan.py)."""
    with_prior, with_features = ACTIVE[variant]
    out = []
    for i, p in enumerate(scene.candidates):
        q = dict(p)
        if with_prior:
            q["prior"] = float(scores[i])
        if with_features:
            q["features"] = features[i].tolist()
        out.append(q)
    return out


def hunt_scene(scene: Scene, classes: list[str], n: int, imaging: ImagingSettings,
               t_frame: float, costs: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Every strategy's hunt for each class the scene holds N of."""
    rows, features = [], crop_features(scene.readings.embeddings)
    labels = {(p["row"], p["col"]): label for p, label in zip(scene.candidates, scene.labels,
                                                               strict=True)}
    for target in classes:
        present = scene.labels.count(target)
        if present < n:
            continue

        def hit(p: dict[str, Any], target: str = target) -> bool:
            return labels[(p["row"], p["col"])] == target

        t0 = time.perf_counter()
        scores = objective_scores(scene.readings, {"kind": "hunt", "classes": [target]})
        ranked = rank(scene.candidates, scores, (0.0, 0.0))
        t_rank = time.perf_counter() - t0
        over = (scene.overview_frames, scene.overview_e,
                scene.overview_s + scene.reading_s + t_rank)
        results = {"grid": (walk(scene.candidates, hit, n), (0, 0.0, 0.0)),
                   "spiral": (walk(spiral_order(scene.candidates, (0.0, 0.0)), hit, n),
                              (0, 0.0, 0.0)),
                   "overview": (walk(ranked, hit, n), over)}
        for variant, (with_prior, _) in ACTIVE.items():
            res, spent, _ = active_walk(inputs(scene, scores, features, variant),
                                        lambda p, _c: hit(p),
                                        lambda o: sum(o) >= n)
            costs.setdefault(variant, []).extend(spent)
            extra = over if with_prior else (0, 0.0, 0.0)
            results[variant] = (res, (extra[0], extra[1], extra[2] + sum(spent)))
        for strategy, (res, (extra_frames, extra_e, extra_s)) in results.items():
            rows.append({"seed": scene.seed, "target": target, "present": present,
                         "strategy": strategy, "highmag": res["frames"],
                         "frames": res["frames"] + extra_frames, "travel": res["travel"],
                         "dose_e": res["frames"] * electrons(imaging) + extra_e,
                         "wall_s": res["frames"] * t_frame + extra_s,
                         "miss": res["found"] < n})
    return rows


def explore_scene(scene: Scene) -> list[dict[str, Any]]:
    """Distinct classes (substrate excepted) seen in the first EXPLORE_FRAMES frames: the
    grid against `explore`'s surrogate (outcome: the frame shows a class not seen yet),
    on coordinates alone and with the crops' embedding features."""
    limit = max(EXPLORE_FRAMES)
    features = crop_features(scene.readings.embeddings)
    labels = scene.labels
    index = {(p["row"], p["col"]): i for i, p in enumerate(scene.candidates)}
    orders = {"grid": list(range(min(limit, len(labels))))}
    for variant, with_features in (("active xy", False), ("active xy+embedding", True)):
        cands = [{**p, **({"features": features[i].tolist()} if with_features else {})}
                 for i, p in enumerate(scene.candidates)]

        def new_class(p: dict[str, Any], chosen: list[int]) -> bool:
            label = labels[index[(p["row"], p["col"])]]
            return label != "substrate" and label not in {labels[i] for i in chosen}

        orders[variant] = active_walk(cands, new_class, lambda o: len(o) >= limit)[2]
    rows = []
    for variant, order in orders.items():
        seen = {k: len({labels[i] for i in order[:k]} - {"substrate"}) for k in EXPLORE_FRAMES}
        rows.append({"seed": scene.seed, "strategy": variant, **seen})
    return rows


def run(seeds: list[int], classes: list[str] | None, n: int, model: str | None,
        cache: Path) -> dict[str, Any]:
    from models.classifier import Classifier
    from workflows.session_assembly import BUNDLED_MODEL

    classifier = Classifier.load(model or BUNDLED_MODEL)
    classes = classes or list(classifier.class_names)
    imaging = ImagingSettings(fov=FOV, pixels=512, dwell=2e-6)
    render = frame_time(TwinMicroscope(seed=seeds[0]), imaging)
    t_frame = render + imaging.pixels ** 2 * imaging.dwell
    rows, explore, costs, scenes = [], [], {}, []
    for seed in seeds:
        t0 = time.perf_counter()
        scene = build(seed, imaging, n, classifier, cache)
        rows += hunt_scene(scene, classes, n, imaging, t_frame, costs)
        explore += explore_scene(scene)
        scenes.append(scene)
        print(f"seed {seed}: area {scene.side}x{scene.side} tiles, "
              f"{scene.overview_frames} overview frames, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return {"rows": rows, "explore": explore, "t_frame": t_frame, "render_s": render,
            "costs": costs, "scenes": scenes}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(result: dict[str, Any], command: str, n: int) -> str:
    rows, scenes = result["rows"], result["scenes"]
    grid = [r for r in rows if r["strategy"] == "grid"]
    g_med, g_mean = _median(grid, "frames"), statistics.mean(r["frames"] for r in grid)
    sides = sorted({s.side for s in scenes})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    lines = [
        "# Hunt efficiency on the twin", "", f"`{command}` on commit {commit}.", "",
        f"{len(scenes)} seeds, N = {n}, {len(grid)} hunts (every class, each seed). Search "
        "area: the smallest square from the start (0, 0) holding >= N tiles of each of the "
        f"10 classes ({', '.join(str(s) for s in sides)} tiles a side; the whole specimen "
        "is 100, and a smaller area would leave classes unhuntable). Hits from the twin's "
        "ground truth; overview scores from the bundled classifier on overview crops. "
        "Frames to N count the overview's frames (256^2 px each, at the twin's widest FOV, "
        "100 um); `high-mag` counts only the 512^2 frames.", "",
        "| strategy | median frames to N | vs grid | mean | vs grid | median high-mag | "
        "median travel (mm) | median dose (1e9 e) | median wall (s) | misses |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        med, mean = _median(mine, "frames"), statistics.mean(r["frames"] for r in mine)
        lines.append(
            f"| {strategy} | {med:g} | {med / g_med:.2f} | {mean:.1f} | {mean / g_mean:.2f} | "
            f"{_median(mine, 'highmag'):g} | {_median(mine, 'travel') * 1e3:.2f} | "
            f"{_median(mine, 'dose_e') / 1e9:.2f} | {_median(mine, 'wall_s'):.1f} | "
            f"{sum(r['miss'] for r in mine)} |")
    best = min(STRATEGIES, key=lambda s: (
        _median([r for r in rows if r["strategy"] == s], "frames"),
        statistics.mean(r["frames"] for r in rows if r["strategy"] == s)))
    lines += ["", f"Best by median frames to N (then mean): {best}."]
    t_frame = result["t_frame"]
    lines += ["", f"One 512^2 frame's acquisition: {t_frame * 1e3:.0f} ms (scan at 2 us "
              f"dwell, plus {result['render_s'] * 1e3:.0f} ms of the twin's rendering)."]
    for variant, spent in result["costs"].items():
        med = statistics.median(spent)
        lines.append(f"Planning per choice, {variant}: median {med * 1e3:.2f} ms, p95 "
                     f"{np.percentile(spent, 95) * 1e3:.2f} ms over {len(spent)} choices "
                     f"({med / t_frame * 100:.2f} % of a 512^2 frame).")
    reading = statistics.median(s.reading_s / len(s.candidates) for s in scenes)
    lines.append(f"Reading the overview's crops (once per area, CPU, 1 thread): median "
                 f"{reading * 1e3:.0f} ms a crop ({reading / t_frame * 100:.1f} % of a "
                 "512^2 frame per tile of the area).")
    lines += ["", f"Explore: distinct classes seen in the first {EXPLORE_FRAMES} high-mag "
              "frames (median over seeds; the active variants' outcome is a frame showing "
              "a class not seen yet).", "",
              "| strategy | " + " | ".join(f"{k} frames" for k in EXPLORE_FRAMES) + " |",
              "|---|" + "---|" * len(EXPLORE_FRAMES)]
    for strategy in dict.fromkeys(r["strategy"] for r in result["explore"]):
        mine = [r for r in result["explore"] if r["strategy"] == strategy]
        lines.append(f"| {strategy} | " + " | ".join(
            f"{statistics.median(r[k] for r in mine):g}" for k in EXPLORE_FRAMES) + " |")
    lines += ["", "Per hunt (frames to N, overview frames included; * a miss):", "",
              "| seed | target | present | " + " | ".join(STRATEGIES) + " |",
              "|---|---|---|" + "---|" * len(STRATEGIES)]
    for i in range(0, len(rows), len(STRATEGIES)):
        group = rows[i:i + len(STRATEGIES)]
        lines.append(f"| {group[0]['seed']} | {group[0]['target']} | {group[0]['present']} | "
                     + " | ".join(f"{r['frames']}{'*' if r['miss'] else ''}" for r in group)
                     + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--classes", default="", help="comma-separated; default every class")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--model", default=None)
    parser.add_argument("--cache", default="runs/hunt_cache")
    parser.add_argument("--out", default="benchmarks/results/hunt_efficiency.md")
    args = parser.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    classes = [c for c in args.classes.split(",") if c] or None
    np.seterr(all="ignore")
    result = run(seeds, classes, args.n, args.model, Path(args.cache))
    command = "python -m benchmarks.hunt_efficiency " + " ".join(
        f"--{k} {v}" for k, v in (("seeds", args.seeds), ("classes", args.classes),
                                  ("n", args.n)) if v)
    text = table(result, command, args.n)
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
        scores = objective_scores(read_crops(classifier, overview, candidates, tiles.tile_fov),
                                  objective)
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
