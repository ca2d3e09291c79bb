"""The active surrogate's library, measured: scikit-learn's GP with a fixed kernel (what
agent/targeting.py `choose_next` uses) against BoTorch's SingleTaskGP with its hyperparameters
fitted by maximum likelihood (`fit_gpytorch_mll`) at every choice, on the same hunts, inputs,
prior mean and upper-confidence-bound-less-travel rule (benchmarks/hunt_efficiency.py's
scenes and walks).

BoTorch is not a dependency: install it beside the pins to run this, e.g.
    pip install --target runs/botorch-site --no-deps botorch==0.18.1 gpytorch==1.15.2 \\
        linear_operator==0.6.1 pyre-extensions typing-inspect mypy_extensions
    PYTHONPATH=$PWD:$PWD/runs/botorch-site python -m benchmarks.gp_libraries --seeds 0-4
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import agent.targeting as targeting
from benchmarks.hunt_efficiency import ACTIVE, FOV, active_walk, inputs
from benchmarks.hunt_scene import build
from instruments.devices.frame import ImagingSettings


def botorch_choose(candidates: list[dict[str, Any]], chosen: list[int],
                   outcomes: list[float], here: tuple[float, float], fov: float
                   ) -> int | None:
    """choose_next's rule with BoTorch's SingleTaskGP (fitted) as the surrogate."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    left = [i for i in range(len(candidates)) if i not in set(chosen)]
    if not left or len(chosen) < 2:       # BoTorch needs two points to standardise
        return targeting.choose_next(candidates, chosen, outcomes, here, fov)
    x, prior = targeting.surrogate_inputs(candidates, fov)
    xy = np.array([[p["x"], p["y"]] for p in candidates]) / fov
    travel = np.hypot(xy[left, 0] - here[0] / fov, xy[left, 1] - here[1] / fov)
    y = np.asarray(outcomes, dtype=np.float64)
    if prior is None:
        prior = np.full(len(candidates), float(y.mean()))
    fit = targeting.training_set(chosen, y)
    seen = np.asarray(chosen)[fit]
    train_x = torch.as_tensor(x[seen], dtype=torch.float64)
    train_y = torch.as_tensor(y[fit] - prior[seen], dtype=torch.float64).unsqueeze(-1)
    train_y = train_y + 1e-6 * torch.arange(len(seen), dtype=torch.float64).unsqueeze(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SingleTaskGP(train_x, train_y)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        with torch.no_grad():
            post = model.posterior(torch.as_tensor(x[left], dtype=torch.float64))
    mean = post.mean.squeeze(-1).numpy()
    std = post.variance.clamp_min(0).sqrt().squeeze(-1).numpy()
    utility = prior[left] + mean + targeting.UCB_BETA * std - targeting.TRAVEL_COST * travel
    return left[int(np.argmax(utility))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--cache", default="runs/hunt_cache")
    parser.add_argument("--cap", type=int, default=300, help="choices before giving up")
    parser.add_argument("--variants", default="active xy,active xy+prior+embedding")
    args = parser.parse_args()
    from models.classifier import Classifier
    from workflows.session_assembly import BUNDLED_MODEL

    classifier = Classifier.load(BUNDLED_MODEL)
    imaging = ImagingSettings(fov=FOV, pixels=512, dwell=2e-6)
    lo, _, hi = args.seeds.partition("-")
    frames: dict[tuple[str, str], list[int]] = {}
    costs: dict[tuple[str, str], list[float]] = {}
    for seed in range(int(lo), int(hi or lo) + 1):
        scene = build(seed, imaging, args.n, classifier, Path(args.cache))
        features = targeting.crop_features(scene.readings.embeddings)
        for target in classifier.class_names:
            if scene.labels.count(target) < args.n:
                continue
            truth = {(p["row"], p["col"]): lab for p, lab in zip(scene.candidates,
                                                                  scene.labels, strict=True)}
            scores = targeting.objective_scores(scene.readings,
                                                {"kind": "hunt", "classes": [target]})
            for variant in args.variants.split(","):
                cands = inputs(scene, scores, features, variant)
                for library, choose in (("scikit-learn", targeting.choose_next),
                                        ("botorch", botorch_choose)):
                    res, spent, _ = active_walk(
                        cands, lambda p, _c, t=target, g=truth: g[(p["row"], p["col"])] == t,
                        lambda o: sum(o) >= args.n or len(o) >= args.cap, choose)
                    frames.setdefault((variant, library), []).append(int(res["frames"]))
                    costs.setdefault((variant, library), []).extend(spent)
        print(f"seed {seed} done", flush=True)
    print("| inputs | library | median high-mag frames to N | mean | given up | "
          "median ms per choice | "
          "p95 ms |\n|---|---|---|---|---|---|---|")
    for (variant, library), got in frames.items():
        spent = costs[(variant, library)]
        print(f"| {variant} ({ACTIVE[variant]}) | {library} | {statistics.median(got):g} | "
              f"{statistics.mean(got):.1f} | {sum(g >= args.cap for g in got)} | "
              f"{statistics.median(spent) * 1e3:.1f} | "
              f"{np.percentile(spent, 95) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
