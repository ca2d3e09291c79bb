"""Survey quality on the twin: what each escalation kind does to the final labels.

For every seed (a twin specimen of its own: regions, textures and scales the model has not
been trained on, except seed 0's), a survey of N tiles spread over the specimen is run by the
agent as `micagent run` runs it (default imaging, the offline adjudicator with one shared twin
demonstration bank), once per configuration of the context levers:

    off           rescans, adjudication and the eight views of an unsure frame (the default)
    one_view      off, an unsure frame classified as taken only (`--unsure-views 1`)
    neighbourhood + the sure frames of the same region pooled (agent/context_evidence.py)
    zoom_out      + a twice wider field at the same centre, classified and pooled
    both          + both
    relook        off + four looks at the frame's own field, centres shifted a quarter field
                  along the diagonals, averaged with the frame (agent/nodes/relook.py)

Per seed and configuration: final accuracy against the classifier alone (its prediction of
the stored frame) on the same frames; coverage (frames with a decided route); the share of
frames escalated, by kind; what each context route fixed and broke (classifier wrong ->
final right, and the reverse), and frames the classifier read right and surely whose final
label changed (must be 0); the adjudicator's accuracy on the frames it received against the
classifier's on the same frames; dose (peak e/nm^2 on the tile, from the guard's ledger) and
wall time per frame. Errors are listed per specimen region (classifier's reading -> truth).
The JSON also keeps each frame's confidence before context, whether the classifier alone, its
label then and its final label were right, its route, views, truth and final label and
whether it was relooked (`per_frame`), so a trigger threshold can be studied on one run.

    python -m benchmarks.survey_quality [--seeds 0-9] [--tiles 100] [--configs off,both]
        [--model CKPT] [--out survey_quality_run.md]
    python -m benchmarks.survey_quality --merge A.json B.json ...   # seeds run apart, one table

The table goes to `--out` (default: survey_quality_run.md in the current folder, the JSON
beside it), rewritten after every survey; benchmarks/results/survey_quality.md collects
measured runs by hand and is never written by the script.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agent.config import RunConfig  # noqa: E402
from agent.session import Session  # noqa: E402
from instruments.devices.dose_ledger import DoseLedger  # noqa: E402
from instruments.session_file.decision_record import (  # noqa: E402
    DECIDED_ROUTES,
    DecisionRecord,
)
from instruments.session_file.reader import SessionReader  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from twins.classes import SEM_CLASSES  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL, open_parts  # noqa: E402
from workflows.training.demonstration_bank import cached_bank  # noqa: E402

torch.set_num_threads(1)
CONFIGS = {"off": {}, "one_view": {"unsure_views": 1}, "neighbourhood": {"neighbourhood": True},
           "zoom_out": {"zoom_out": True}, "both": {"zoom_out": True, "neighbourhood": True},
           "relook": {"relook": True}}
CONTEXT_ROUTES = ("zoomed_out", "neighbourhood", "relooked")


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def run_survey(classifier: Classifier, model: str, seed: int, tiles: int,
               levers: dict[str, bool], work: Path) -> dict[str, Any]:
    """One survey; its records, ground truth, guard counters, regions and wall time. The
    model's folder is named so that its adjudicator measurement applies, as in a run."""
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / f"s{seed}-{uuid.uuid4()}.h5"),
                       state_dir=str(work / "state"), frames=tiles, seed=seed, model=model,
                       **levers)
    parts = open_parts(config, classifier, bank_for=lambda _c, clf: cached_bank(
        clf, work / "banks", "twin", per_class=8, seed=0))
    specimen = parts.microscope.inner.specimen
    session = Session(config, parts)
    t0 = time.perf_counter()
    final = session.run()
    wall = time.perf_counter() - t0
    counters = parts.microscope.counters()
    session.close()
    parts.microscope.close()
    with SessionReader(config.out) as reader:
        records, truths = reader.records(), [e.get("label") for e in reader.evaluations()]
    regions = [specimen.regions.index(specimen.region_at(r.position.x, r.position.y))
               for r in records]
    return {"records": records, "truths": truths, "regions": regions, "counters": counters,
            "wall_s": wall, "status": final["status"], "used": final["used"]}


def _sure(record: DecisionRecord, confidence: float = 0.9) -> bool:
    p = record.prediction        # averaged over views: the frame as taken was unsure
    return p.views == 1 and (p.confidence or 0.0) >= confidence \
        and len(p.conformal_set) <= 1 and not (p.ood and p.ood.unknown)


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """The measured figures of one survey."""
    records, truths = run["records"], run["truths"]
    n = len(records)
    right = [r.label == t for r, t in zip(records, truths, strict=True)]
    alone = [r.classifier_label == t for r, t in zip(records, truths, strict=True)]
    decided = [ok for r, ok in zip(records, right, strict=True) if r.route in DECIDED_ROUTES]
    fallback = [a if str(r.route) == "unresolved" else ok
                for r, ok, a in zip(records, right, alone, strict=True)]
    by_route = Counter(str(r.route) for r in records)
    context = {route: {"frames": by_route.get(route, 0), "fixed": 0, "broke": 0}
               for route in CONTEXT_ROUTES}
    for record, ok, ok_alone in zip(records, right, alone, strict=True):
        if str(record.route) in context:
            entry = context[str(record.route)]
            entry["fixed"] += int(ok and not ok_alone)
            entry["broke"] += int(ok_alone and not ok)
    adjudicated = [(r.adjudication.answer.label == t, r.classifier_label == t)
                   for r, t in zip(records, truths, strict=True)
                   if r.adjudication and r.adjudication.answer]
    ledger = DoseLedger(run["counters"]["exposures"])
    errors = [{"region": g, "truth": t, "label": r.label, "classifier": r.classifier_label,
               "p": round(r.prediction.confidence or 0.0, 2), "route": str(r.route)}
              for r, t, g, ok in zip(records, truths, run["regions"], right, strict=True)
              if not ok]
    return {
        "frames": n, "status": run["status"],
        "final": sum(right) / n, "alone": sum(alone) / n,
        "final_fallback": sum(fallback) / n,
        "decided_accuracy": sum(decided) / len(decided) if decided else 0.0,
        "coverage": len(decided) / n,
        "escalated": {
            "rescan": sum(bool(r.rescans) for r in records) / n,
            "zoom_out": sum(bool(r.context and r.context.zoom_out) for r in records) / n,
            "relook": sum(bool(r.context and r.context.looks) for r in records) / n,
            "neighbourhood": by_route.get("neighbourhood", 0) / n,
            "adjudication": sum(bool(r.adjudication) for r in records) / n,
            "any": sum(bool(r.rescans or r.adjudication
                            or (r.context and (r.context.zoom_out or r.context.looks))
                            or str(r.route) == "neighbourhood") for r in records) / n},
        "context": context,
        "sure_right_changed": sum(_sure(r) and a and not ok
                                  for r, a, ok in zip(records, alone, right, strict=True)),
        "adjudicator": {"frames": len(adjudicated),
                        "adjudicator_right": sum(a for a, _ in adjudicated),
                        "classifier_right": sum(c for _, c in adjudicated)},
        "dose_peak_e_nm2": float(np.mean([ledger.peak(r.position.x, r.position.y,
                                                      r.settings.fov) for r in records])),
        "s_per_frame": run["wall_s"] / n, "routes": dict(by_route), "errors": errors,
        "per_frame": [{"p": round(r.prediction.confidence or 0.0, 4),
                       "alone": ok_alone, "before_context": r.prediction.label == t,
                       "final": ok, "route": str(r.route), "views": r.prediction.views,
                       "relooked": bool(r.context and r.context.looks),
                       "truth": t, "label": r.label}
                      for r, t, ok, ok_alone in zip(records, truths, right, alone,
                                                    strict=True)],
    }


def decided_mean(rows: list[dict[str, Any]]) -> float:
    """Accuracy over the decided frames of several surveys, pooled."""
    decided = sum(r["coverage"] * r["frames"] for r in rows)
    return sum(r["decided_accuracy"] * r["coverage"] * r["frames"] for r in rows) / decided \
        if decided else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def markdown(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace,
             model: str, sha: str) -> str:
    configs = list(results)
    seeds = sorted({s for r in results.values() for s in r})
    lines = ["# Survey quality on the twin (issue 24)", "",
             f"`python -m benchmarks.survey_quality --seeds {args.seeds} --tiles {args.tiles} "
             f"--configs {args.configs}`; model `{model}` (sha256 {sha[:12]}); "
             "default imaging (20 um, 256 px, 2 us), offline adjudicator, one twin "
             "demonstration bank (seed 0) for all seeds.", "",
             "## Final accuracy per seed (classifier alone in brackets, same frames)", "",
             "| seed | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for seed in seeds:
        cells = [f"{results[c][seed]['final']:.3f} ({results[c][seed]['alone']:.3f})"
                 if seed in results[c] else "-" for c in configs]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "## Over the seeds each configuration ran", "",
              "| config | seeds | final | alone | seeds final >= alone | final, unresolved "
              "-> classifier's label | seeds >= alone so | coverage | accuracy over decided "
              "| escalated (any) | "
              "rescan | zoom-out | relook | neighbourhood | adjudication | sure & right "
              "changed | dose peak e/nm^2 | s/frame |", "|---|" + "---|" * 17]
    for c in configs:
        rows = [results[c][s] for s in seeds if s in results[c]]
        frames = sum(r["frames"] for r in rows)

        def mean(key: str, rows=rows, frames=frames) -> float:
            return sum(r[key] * r["frames"] for r in rows) / frames

        def esc(kind: str, rows=rows, frames=frames) -> str:
            return _pct(sum(r["escalated"].get(kind, 0.0) * r["frames"] for r in rows) / frames)

        lines.append(
            f"| {c} | {len(rows)} | {mean('final'):.4f} | {mean('alone'):.4f} | "
            f"{sum(r['final'] >= r['alone'] for r in rows)}/{len(rows)} | "
            f"{mean('final_fallback'):.4f} | "
            f"{sum(r['final_fallback'] >= r['alone'] for r in rows)}/{len(rows)} | "
            f"{_pct(mean('coverage'))} | {decided_mean(rows):.4f} | {esc('any')} | "
            f"{esc('rescan')} | {esc('zoom_out')} | {esc('relook')} | "
            f"{esc('neighbourhood')} | {esc('adjudication')} | "
            f"{sum(r['sure_right_changed'] for r in rows)} | {mean('dose_peak_e_nm2'):.1f} | "
            f"{mean('s_per_frame'):.2f} |")
    lines += ["", "## What each context route did (frames it decided: fixed / broke against "
              "the classifier alone)", "", "| config | route | frames | fixed | broke |",
              "|---|---|---|---|---|"]
    for c in configs:
        for route in CONTEXT_ROUTES:
            total = {k: sum(r["context"].get(route, {}).get(k, 0) for r in results[c].values())
                     for k in ("frames", "fixed", "broke")}
            if total["frames"]:
                lines.append(f"| {c} | {route} | {total['frames']} | {total['fixed']} | "
                             f"{total['broke']} |")
    lines += ["", "## Adjudicator on the frames it received", "",
              "| config | frames | adjudicator right | classifier right |", "|---|---|---|---|"]
    for c in configs:
        adj = {k: sum(r["adjudicator"][k] for r in results[c].values())
               for k in ("frames", "adjudicator_right", "classifier_right")}
        lines.append(f"| {c} | {adj['frames']} | {adj['adjudicator_right']} | "
                     f"{adj['classifier_right']} |")
    last = configs[1] if len(configs) > 1 else configs[0]
    lines += ["", f"## Errors per region ({last}; region index in the seed's specimen)",
              "", "| seed | region | truth | classifier -> final (p, route) |", "|---|---|---|---|"]
    for seed in sorted(results[last]):
        grouped: dict[tuple[int, str], list[str]] = {}
        for e in results[last][seed]["errors"]:
            grouped.setdefault((e["region"], e["truth"]), []).append(
                f"{e['classifier']} -> {e['label']} ({e['p']}, {e['route']})")
        for (region, truth), items in sorted(grouped.items()):
            lines.append(f"| {seed} | {region} | {truth} | {'; '.join(items)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--tiles", type=int, default=100)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default="survey_quality_run.md")
    parser.add_argument("--merge", nargs="+", help="JSON results of runs to put in one table")
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, Any] = {}
        for path in args.merge:
            runs = json.loads(Path(path).read_text())
            meta = runs.pop("_run")
            for config, seeds in runs.items():
                merged.setdefault(config, {}).update({int(s): r for s, r in seeds.items()})
        args.tiles = meta.get("tiles", args.tiles)
        args.seeds = ",".join(map(str, sorted(next(iter(merged.values())))))
        write(merged, args, meta["model"], meta["sha256"])
        return
    classifier = Classifier.load(args.model, class_names=list(SEM_CLASSES))
    configs = args.configs.split(",")
    results: dict[str, dict[int, dict[str, Any]]] = {c: {} for c in configs}
    # the first two configurations on every seed first, then the others: a run cut short
    # still compares them seed by seed (the figures are written after every survey)
    with tempfile.TemporaryDirectory(prefix="micagent-survey-quality-") as sessions:
        for seed, name in [(s, c) for group in (configs[:2], configs[2:])
                           for s in _seeds(args.seeds) for c in group]:
            result = figures(run_survey(classifier, str(Path(args.model).resolve()), seed,
                                        args.tiles, CONFIGS[name], Path(sessions)))
            results[name][seed] = result
            print(f"seed {seed} {name}: final {result['final']:.3f} alone "
                  f"{result['alone']:.3f} escalated {result['escalated']} context "
                  f"{result['context']} {result['s_per_frame']:.2f} s/frame", flush=True)
            write(results, args, args.model, classifier.checkpoint_sha256 or "", quiet=True)
    write(results, args, args.model, classifier.checkpoint_sha256 or "")


def write(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace, model: str,
          sha: str, quiet: bool = False) -> None:
    """The table (`args.out`) and the figures beside it as JSON."""
    text = markdown({c: r for c, r in results.items() if r}, args, model, sha)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"_run": {"model": model, "sha256": sha, "tiles": args.tiles},
         **{c: {str(s): r for s, r in v.items()} for c, v in results.items()}}, indent=1))
    if not quiet:
        print(text)


if __name__ == "__main__":
    main()
