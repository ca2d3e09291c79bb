"""Agent benchmarks on the twin (figures printed; ratios measured within one run).

1. Overhead: per-frame wall time spent outside the instrument's acquisition (quality,
   classification, routing, session-file write with flush, SQLite checkpoint per step) divided
   by the acquisition time, at 1024x1024 with a realistic frame time (the twin sleeps the scan
   time: pixels^2 x dwell + line overheads), with pipelining (the next tile is acquired while
   the current one is decided) and without, in the same run. Target <= 0.05.
2. Survey: a twin survey of N tiles (default 200) with the full policy (rescans, offline
   adjudication with the twin demonstration bank): final label accuracy against the twin's
   ground truth (target >= 0.99) and the fraction of frames escalated (target <= 0.10),
   against the classifier alone (its first prediction of every frame) in the same run.

    python -m benchmarks.agent_overhead [--model CKPT] [--frames 10] [--tiles 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from agent.config import RunConfig  # noqa: E402
from agent.session import Session, SessionParts  # noqa: E402
from benchmarks.session_timing import timed_run  # noqa: E402
from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope  # noqa: E402
from instruments.session_file.reader import SessionReader  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from twins.classes import SEM_CLASSES  # noqa: E402
from twins.faults import FaultSpec  # noqa: E402
from twins.microscope import TwinMicroscope  # noqa: E402
from workflows.session_assembly import BUNDLED_MODEL, open_parts  # noqa: E402
from workflows.training.demonstration_bank import cached_bank  # noqa: E402

torch.set_num_threads(1)


def overhead(classifier, frames: int, pixels: int, dwell: float, work: Path,
             pipeline: bool) -> dict:
    line_overhead = 1e-4
    scan_s = pixels * (pixels * dwell + line_overhead)
    twin = TwinMicroscope(seed=0, faults=FaultSpec(slow_seconds=scan_s))
    centres = twin.specimen.survey_centres(20e-6)[:frames]
    positions = [{"x": p.x, "y": p.y, "row": 0, "col": i} for i, p in enumerate(centres)]
    name = "pipelined" if pipeline else "serial"
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / f"overhead-{name}.h5"),
                       state_dir=str(work / "state"), frames=frames, pipeline=pipeline,
                       imaging={"fov": 20e-6, "pixels": pixels, "dwell": dwell})
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier,
                         survey_positions=positions)
    twin.move_stage(centres[0])
    twin.set_imaging(config.imaging_settings())
    classifier.classify([twin.acquire().image])   # warm texture cache and torch kernels
    run = timed_run(Session(config, parts))
    n, acquire, wall = run["frames"], run["acquire_s"], run["wall_s"]
    return {"frames": n, "scan_s": scan_s, "acquire_s_per_frame": acquire / n,
            "classify_s_per_frame": run["classify_s"] / n,
            "outside_s_per_frame": (wall - acquire) / n,
            "ratio": (wall - acquire) / acquire, "per_node_ms": run["per_node_ms"],
            "routes": sorted({str(r.route) for r in run["records"]}),
            "discarded": run["counts"].get("speculative_discarded", 0)}


def survey(model: str, tiles: int, work: Path, seed: int) -> dict:
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(work / "survey.h5"),
                       state_dir=str(work / "state"), frames=tiles, model=model, seed=seed,
                       imaging={"fov": 20e-6, "pixels": 256, "dwell": 2e-6})
    parts = open_parts(config)
    session = Session(config, parts)
    t0 = time.perf_counter()
    final = session.run()
    wall = time.perf_counter() - t0
    session.close()
    parts.microscope.close()
    with SessionReader(config.out) as reader:
        summary = reader.summary()
    return {"tiles": summary["frames"], "wall_s": wall, "status": final["status"],
            "accuracy_final": summary["accuracy"],
            "accuracy_classifier_alone": summary["accuracy_classifier"],
            "escalated_fraction": summary["escalations"] / summary["frames"],
            "routes": summary["route_counts"], "used": final["used"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--pixels", type=int, default=1024)
    parser.add_argument("--dwell", type=float, default=1e-6)
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-survey", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(f"no checkpoint at {args.model} (train one or pass --model)")
    classifier = Classifier.load(args.model, class_names=list(SEM_CLASSES))
    work = Path(tempfile.mkdtemp(prefix="micagent-bench-"))
    print(f"model {args.model} (sha256 {classifier.checkpoint_sha256})")
    ratios = {}
    for pipeline in (False, True):
        result = overhead(classifier, args.frames, args.pixels, args.dwell, work, pipeline)
        ratios[pipeline] = result["ratio"]
        print(f"overhead @ {args.pixels}x{args.pixels}, dwell {args.dwell:g} s, pipelining "
              f"{'on' if pipeline else 'off'} (scan {result['scan_s']:.3f} s): acquisition "
              f"{result['acquire_s_per_frame']:.3f} s/frame, outside acquisition "
              f"{result['outside_s_per_frame'] * 1e3:.1f} ms/frame (classify "
              f"{result['classify_s_per_frame'] * 1e3:.1f} ms), ratio {result['ratio']:.4f} "
              f"over {result['frames']} frames, routes {result['routes']}, speculative "
              f"frames discarded {result['discarded']}\n  per node, ms/frame (step incl. "
              f"checkpoint): {result['per_node_ms']}")
    print(f"overhead ratio: {ratios[True]:.4f} with pipelining, {ratios[False]:.4f} without "
          f"(target <= 0.05)")
    if args.skip_survey:
        return
    cached_bank(classifier, work / "state" / "banks", "twin", per_class=6, seed=args.seed)
    result = survey(args.model, args.tiles, work, args.seed)
    print(f"survey of {result['tiles']} twin tiles ({result['wall_s']:.0f} s, "
          f"{result['status']}): final accuracy {result['accuracy_final']:.4f} (target >= "
          f"0.99), classifier alone {result['accuracy_classifier_alone']:.4f}, escalated "
          f"{result['escalated_fraction']:.3f} (target <= 0.10); routes {result['routes']}; "
          f"used {result['used']}")


if __name__ == "__main__":
    main()
