"""Refusal with the bundled SEM model: in-distribution survey tiles kept, foreign frames refused.

As a user would run it (`run_session`, the bundled model with its OOD fit, its adjudicator
measurement and training reference, no demonstration bank):
1. The default `micagent run` (twin seed 0, 36 tiles): frames flagged `unknown`, final accuracy
   against the classifier alone (twin truth), routes.
2. In-distribution survey tiles of held-out twin seeds (0, 6, 7, 8, 9; the OOD thresholds were
   calibrated on seeds 1-5), first TILES survey positions at the default run settings:
   share flagged unknown (target < 1 %).
3. Nion's STEM simulator through the bridge (its own process and environment), every sample
   (0 flake, 1 amorphous, 2 combined) at two fields of view (100 nm, and 1 um, the simulator's
   largest, at the edge of the 1-100 um the model was taught): frames given an SEM class
   (target 0).
4. Atomic-resolution STEM HAADF images (MoS2, graphene; twins/stem_nsid.py) written as NSID and
   served by DTMicroscope's own STEM server (`dtm://HOST:PORT?data=FILE.h5`, 64 px tiles):
   frames given an SEM class (target 0).
5. The adjudicator measurement stored with the model (`adjudication.json`).

    python -m benchmarks.refusal [--tiles 48] [--frames 4] [--model CKPT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from agent.adjudication.trust import TRUST_FILE  # noqa: E402
from agent.config import RunConfig  # noqa: E402
from benchmarks import dtm_peer  # noqa: E402
from benchmarks.nion_overhead import start_bridge  # noqa: E402
from instruments.devices.frame import ImagingSettings  # noqa: E402
from instruments.session_file.decision_record import DECIDED_ROUTES  # noqa: E402
from instruments.session_file.reader import SessionReader  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from twins.stem_nsid import MATERIALS, write_stem_nsid  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL, run_session  # noqa: E402
from workflows.training.held_out import survey_tiles  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

HELD_OUT_SEEDS = [0, 6, 7, 8, 9]
NION_ENVELOPE = {"fov": [1e-9, 1.1e-6], "stage_x": [-5e-7, 5e-7], "stage_y": [-5e-7, 5e-7]}
torch.set_num_threads(1)


def session(work: Path, name: str, model: Path, **kw) -> tuple[list, list]:
    """Run one session with `model`; its records and the twin's truths."""
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / f"{name}.h5"),
                       state_dir=str(work / "state"), bank="none", model=str(model), **kw)
    run_session(config, Console(quiet=True), quiet=True)
    with SessionReader(config.out) as reader:
        return reader.records(), reader.evaluations()


def tally(records: list, class_names: list[str], totals: list[int], where: str) -> None:
    """Print how many of a session's frames got an SEM class, and why the others did not;
    add to `totals` [frames, with an SEM class]."""
    n = sum(r.label in class_names for r in records)
    totals[0], totals[1] = totals[0] + len(records), totals[1] + n
    print(f"{where}: {n} of {len(records)} frames given an SEM class; routes "
          f"{[r.route.value for r in records]}, OOD {[r.prediction.ood.method for r in records]}")


def default_run(work: Path, model: Path) -> None:
    t0 = time.perf_counter()
    records, truths = session(work, "default", model)
    truth = [t.get("label") for t in truths]
    final = np.mean([r.label == t for r, t in zip(records, truth, strict=True)])
    alone = np.mean([r.classifier_label == t for r, t in zip(records, truth, strict=True)])
    routes: dict[str, int] = {}
    for r in records:
        routes[str(r.route.value)] = routes.get(str(r.route.value), 0) + 1
    unknown = sum(r.route.value == "unknown" for r in records)
    decided = [(r.label, t) for r, t in zip(records, truth, strict=True)
               if r.label and r.route in DECIDED_ROUTES]
    print(f"default run (twin seed 0, {len(records)} tiles, {time.perf_counter() - t0:.0f} s): "
          f"flagged unknown {unknown}; final accuracy {final:.3f} (no label counts as wrong), "
          f"on the {len(decided)} decided frames "
          f"{np.mean([a == b for a, b in decided]):.3f}; classifier alone {alone:.3f}; "
          f"routes {routes}")


def held_out_survey(clf: Classifier, model: Path, tiles: int) -> None:
    frames, seed_of = survey_tiles(clf, model, HELD_OUT_SEEDS, tiles, None)
    taken = {"fov": ImagingSettings().fov, "detector": ImagingSettings().detector}
    scores = clf.ood.score(frames.embeddings, frames.pooled)
    flagged = np.array([clf.ood.record(s, taken)["unknown"] for s in scores])
    per_seed = {s: int(flagged[seed_of == s].sum()) for s in HELD_OUT_SEEDS}
    print(f"held-out survey tiles (twin seeds {HELD_OUT_SEEDS}, {tiles} each, default "
          f"settings): flagged unknown {flagged.sum()} of {len(flagged)} "
          f"({flagged.mean():.2%}; target < 1 %), per seed {per_seed}")


def nion(work: Path, model: Path, frames: int, class_names: list[str]) -> None:
    totals = [0, 0]
    for sample, name in enumerate(("flake", "amorphous", "combined")):
        process, uri = start_bridge(sample)     # exits where .venv-nion is absent
        try:
            for fov in (100e-9, 1e-6):
                records, _ = session(work, f"nion-{sample}-{fov:g}", model, instrument=uri,
                                     frames=frames, envelope=NION_ENVELOPE,
                                     imaging={"fov": fov, "pixels": 256, "dwell": 1e-6,
                                              "detector": None})
                tally(records, class_names, totals, f"Nion {name}, FOV {fov:g} m")
        finally:
            process.terminate()
            process.wait(30)
    print(f"Nion, all samples: {totals[1]} of {totals[0]} frames given an SEM class "
          "(target 0)")


def dtm_stem(work: Path, model: Path, frames: int, class_names: list[str]) -> None:
    if not dtm_peer.available():
        print("DTMicroscope: peer sources (../shared/peers) or .venv-peers absent: skipped")
        return
    totals = [0, 0]
    with dtm_peer.served_dtm(work) as address:
        for material in MATERIALS:
            path = work / f"{material}.h5"
            write_stem_nsid(path, material, side=256)
            records, _ = session(work, f"dtm-{material}", model, frames=frames,
                                 instrument=f"dtm://{address}?data={path}")
            tally(records, class_names, totals,
                  f"DTMicroscope STEM server, {material} HAADF (NSID, 0.4 A pixels)")
    print(f"DTMicroscope STEM data: {totals[1]} of {totals[0]} tiles given an SEM class "
          "(target 0)")


def adjudicators(model: Path) -> None:
    record = json.loads((model / TRUST_FILE).read_text())
    n, of = record["unsure_frames"]["test"]
    for name, m in record["adjudicators"].items():
        print(f"adjudicator {name} (stored with the model): on the {n} unsure frames of the "
              f"{of} held-out test images it answered {m['answered']} (abstained "
              f"{m['abstained']}) with accuracy {m['accuracy']:.3f}; the classifier on the "
              f"same frames {m['classifier_accuracy']:.3f} (on all {n}: "
              f"{m['classifier_accuracy_all']:.3f}); rule {record['rule']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=48, help="survey tiles per seed")
    parser.add_argument("--frames", type=int, default=4, help="frames per foreign session")
    parser.add_argument("--dtm-frames", type=int, default=16)
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    args = parser.parse_args()
    model = args.model.resolve()
    clf = Classifier.load(model)
    print(f"model {model} (sha256 {clf.checkpoint_sha256[:12]}), OOD "
          f"{clf.ood.meta()['method']}: {json.dumps(clf.ood.meta())}")
    with tempfile.TemporaryDirectory(prefix="micagent-refusal-") as tmp:
        work = Path(tmp)
        adjudicators(model)
        default_run(work, model)
        held_out_survey(clf, model, args.tiles)
        nion(work, model, args.frames, clf.class_names)
        dtm_stem(work, model, args.dtm_frames, clf.class_names)


if __name__ == "__main__":
    main()
