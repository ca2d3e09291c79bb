"""The scripted-operator learning session replayed offline with taught neighbours, for variants
of the rule: the survey frames of benchmarks/teach_operator_sweep.py (twin seed S, 20 um FOV,
256 px, spread), their raw stem features computed once, then the session's loop with the
product's own parts: the neighbours of a frame (agent/context_evidence.neighbours, in the
learned head's space), the policy's ruling on them (agent.policy.rule_on_taught) and the memory
of taught frames (context_evidence.remembered). Answers come from the twin's truth.

Variants: the recall (radius, similarity, memory), which frames recorded under their
neighbours' label are passed on (all, or those the head's top-1 agrees with: the product),
self-training (those frames added to the support set, as if the human had named them), the
head's OOD threshold (models/fewshot_head.OOD_QUANTILE, set for the run), the learning
gate before 2026-12-06 (a class short of examples sent every frame to the human), taught
neighbours that wait for the gate (before 2026-12-07: a frame the gate held back went to the
human whatever its neighbours said), and the head's conformal threshold cross-validated over
images (before 2026-12-07) or over stage blocks of another width.

Printed per variant, as benchmarks/teach_operator_sweep.py prints it, plus the frames decided
by taught neighbours and by the head with their accuracy.

    python -m benchmarks.teach_neighbours_sweep [--frames 300] [--seeds 0,1,2]
                                                [--variants 'off;product']
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from agent import context_evidence
from agent.context_evidence import TAUGHT_FRAMES, Recall
from agent.learning import LEARN_ALPHA, STAGE_BLOCK_FIELDS, stage_block
from agent.policy import RoutePolicy, Ruling, learned_enough, rule_on_taught
from benchmarks.teach_operator import reach
from benchmarks.teach_operator_sweep import FOV, LEARN_MIN, constants, guess, survey_frames
from instruments.devices.frame import ImagingSettings
from instruments.session_file.decision_record import (
    ContextRecord,
    DecisionRecord,
    OodVerdict,
    Position,
    PredictionRecord,
    QualityRecord,
)
from models.fewshot_head import OOD_QUANTILE, SupportSet

POLICY = RoutePolicy(approve="uncertain", learn_min=LEARN_MIN, neighbourhood=True)


@dataclass(frozen=True)
class Variant:
    name: str
    recall: Recall | None = TAUGHT_FRAMES      # None: no taught neighbours
    pass_on: str = "agree"                     # agree | all
    self_training: bool = False
    ood_quantile: float = OOD_QUANTILE         # the head's OOD threshold quantile
    hold_every_frame: bool = False             # a class short of examples holds back every
                                               # frame (before 2026-12-06), not only its own
    while_learning: bool = True                # taught neighbours decide the frames the
                                               # learning gate holds back (since 2026-12-07)
    block_fields: float | None = STAGE_BLOCK_FIELDS   # the head's conformal threshold
                                               # cross-validated over stage blocks this many
                                               # fields wide (since 2026-12-07); None: over
                                               # images


VARIANTS = [Variant("off", recall=None), Variant("product"),
            Variant("pass every neighbour-decided frame on", pass_on="all"),
            Variant("radius 5", recall=Recall(5.0, 0.5, 64)),
            Variant("similarity 0.7", recall=Recall(7.5, 0.7, 64)),
            Variant("memory 1000", recall=Recall(7.5, 0.5, 1000)),
            Variant("self-training", self_training=True),
            Variant("OOD quantile 0.8", ood_quantile=0.8),
            Variant("OOD quantile 0.95", ood_quantile=0.95),
            Variant("an under-taught class holds back every frame", hold_every_frame=True),
            Variant("neighbours wait for the learning gate", while_learning=False),
            Variant("image folds", block_fields=None),
            Variant("stage blocks of 5 fields", block_fields=5.0),
            Variant("stage blocks of 20 fields", block_fields=20.0)]


def may_decide(taught: dict[str, int], label: str, variant: Variant) -> bool:
    """The policy's learning gate (agent.policy.learned_enough), or the earlier one."""
    if variant.hold_every_frame:
        return len(taught) >= 2 and min(taught.values()) >= LEARN_MIN
    return learned_enough(taught, LEARN_MIN, label)


def _record(index: int, position: np.ndarray, label: str, flagged: bool) -> DecisionRecord:
    return DecisionRecord(frame_id=str(index), position=Position(x=position[0], y=position[1]),
                          settings=ImagingSettings(fov=FOV),
                          prediction=PredictionRecord(label=label, ood=OodVerdict(
                              unknown=flagged)),
                          quality=QualityRecord(ok=True))


def session(features: np.ndarray, truths: list[str], positions: np.ndarray,
            variant: Variant) -> dict:
    """The session's loop on precomputed frame features, with the variant's neighbours."""
    support, head, memory = SupportSet(), None, []
    asked, alone, source = [], [], []
    for index, (raw, truth, position) in enumerate(zip(features, truths, positions,
                                                       strict=True)):
        label, flagged, single = (guess(head, support, raw, False) if head is not None
                                  else ("unknown", False, False))
        record = _record(index, position, label, flagged)
        ready = may_decide(support.counts(), label, variant)
        ruling = Ruling(step="record" if ready and single and not flagged else "approve",
                        label=label, source="classifier" if ready else "learning",
                        route="confident" if ready else None)
        if (variant.recall is not None and head is not None
                and (ready or variant.while_learning)):
            near = context_evidence.neighbours(memory, record, raw, variant.recall,
                                               head.normalise)
            record = record.model_copy(update={"context": ContextRecord(
                neighbours=[kept for _, kept in near])})
            ruling = rule_on_taught(POLICY, record, ruling)
        ask = ruling["step"] == "approve"
        by_neighbours = not ask and ruling["route"] == "neighbourhood"
        decided = truth if ask else ruling["label"]       # the human answers the truth
        asked.append(ask)
        alone.append((("unknown" if flagged else label) if ask else decided) == truth)
        source.append("asked" if ask else "neighbours" if by_neighbours else "head")
        if ask or (by_neighbours and variant.self_training):
            block = ("" if variant.block_fields is None else
                     stage_block(position[0], position[1], FOV, variant.block_fields))
            support = support.add(raw.astype(np.float32), decided, block)
            head = support.fit(0, LEARN_ALPHA) if len(support.class_names) >= 2 else None
        keep = ask or (by_neighbours and (variant.pass_on == "all" or decided == label))
        if variant.recall is not None:
            recorded = record.model_copy(update={"label": decided})
            memory = context_evidence.remembered(memory, recorded, raw, keep, variant.recall)
    asked, alone, source = np.array(asked), np.array(alone), np.array(source)
    return {**reach(asked, alone),
            **{kind: (int((source == kind).sum()), float(alone[source == kind].mean())
                      if (source == kind).any() else None)
               for kind in ("neighbours", "head")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None,
                        help="names of the variants to run, separated by ';' (default: all)")
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if args.variants is None
              or v.name in args.variants.split(";")]
    print("| seed | variant | answers | 0.95 reached (frame, answers) | best 50-frame window "
          "| by taught neighbours: frames, accuracy | by the head: frames, accuracy |")
    print("|---|---|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        t0 = time.perf_counter()
        features, truths, positions = survey_frames(args.frames, seed)
        took = time.perf_counter() - t0
        for variant in chosen:
            with constants({"OOD_QUANTILE": variant.ood_quantile}):
                r = session(features, truths, positions, variant)
            cells = [f"{n}, {a:.3f}" if a is not None else "0" for n, a in
                     (r["neighbours"], r["head"])]
            print(f"| {seed} | {variant.name} | {r['answers']} | {r['reached'] or 'never'} "
                  f"| {r['best']:.2f} | {cells[0]} | {cells[1]} |", flush=True)
        print(f"(seed {seed}: stem features of {len(truths)} frames in {took:.0f} s)")


if __name__ == "__main__":
    main()
