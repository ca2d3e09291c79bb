"""Agent overhead on Nion's STEM simulator behind the bridge: per-frame wall time spent outside
the instrument's acquisition (stage move, settings, quality, classification, routing,
session-file write with flush, SQLite checkpoint per step) divided by the acquisition time as
the agent sees it (the bridge's recording plus the frame's transport), at 512x512 and 4 us
dwell (about 1.05 s of scan per frame, paced in real time by the simulator). Target <= 0.05.
Both the pipelined survey (the next tile acquired while the current one is decided, the
default) and the sequential one (`--no-pipeline`) are measured in one run.

The bridge runs in its own process and environment (`.venv-nion`, see .ci/peer_envs.sh); the
agent in this one, with the bundled model, as `micagent run --instrument tem://...` would.
Rescans are off (`--max-rescans 0`) so that every acquisition is a frame's first; with them on
(`--max-rescans 2`), the rescans' acquisitions count as acquisition too.

    python -m benchmarks.nion_overhead [--frames 10] [--pixels 512] [--dwell 4e-6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from agent.config import RunConfig  # noqa: E402
from agent.session import Session  # noqa: E402
from benchmarks.session_timing import timed_run  # noqa: E402
from instruments.utils.child_python import module_command  # noqa: E402
from workflows.session_assembly import open_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def start_bridge(sample: int) -> tuple[subprocess.Popen, str]:
    python = REPO / ".venv-nion" / "bin" / "python"
    if not python.exists():
        raise SystemExit("no .venv-nion: run .ci/peer_envs.sh first")
    process = subprocess.Popen(module_command("instruments.devices.bridges.nion", "--port", "0",
                                              "--sample", str(sample), python=python),
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise SystemExit(f"bridge did not start: {line!r}")
    return process, line.split()[1]


def measure(uri: str, frames: int, pixels: int, dwell: float, fov: float, rescans: int,
            pipeline: bool, work: Path) -> dict:
    config = RunConfig(session_id=str(uuid.uuid4()), instrument=uri,
                       out=str(work / f"nion-{pipeline}.h5"), state_dir=str(work / "state"),
                       frames=frames, bank="none", max_rescans=rescans, pipeline=pipeline,
                       imaging={"fov": fov, "pixels": pixels, "dwell": dwell,
                                "detector": None},
                       envelope={"fov": [1e-9, 1e-6], "stage_x": [-5e-7, 5e-7],
                                 "stage_y": [-5e-7, 5e-7]})
    parts = open_parts(config)
    parts.classifier.classify([parts.microscope.inner.acquire_image("HAADF")])  # warm kernels
    run = timed_run(Session(config, parts))
    parts.microscope.close()
    n, acquire, wall = run["frames"], run["acquire_s"], run["wall_s"]
    return {"frames": n, "status": run["final"]["status"],
            "acquire_s_per_frame": acquire / n, "classify_s_per_frame": run["classify_s"] / n,
            "outside_s_per_frame": (wall - acquire) / n, "ratio": (wall - acquire) / acquire,
            "per_node_ms": run["per_node_ms"],
            "routes": sorted({str(r.route) for r in run["records"]})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--dwell", type=float, default=4e-6)
    parser.add_argument("--fov", type=float, default=100e-9)
    parser.add_argument("--sample", type=int, default=2)
    parser.add_argument("--max-rescans", type=int, default=0)
    args = parser.parse_args()
    process, uri = start_bridge(args.sample)
    try:
        work = Path(tempfile.mkdtemp(prefix="micagent-nion-bench-"))
        results = {mode: measure(uri, args.frames, args.pixels, args.dwell, args.fov,
                                 args.max_rescans, mode == "pipelined", work)
                   for mode in ("pipelined", "sequential")}
    finally:
        process.terminate()
        process.wait(30)
    print(f"Nion simulator via the bridge ({uri}), {args.pixels}x{args.pixels}, dwell "
          f"{args.dwell:g} s (scan {args.pixels ** 2 * args.dwell:.3f} s):")
    for mode, result in results.items():
        print(f"  {mode}: {result['frames']} frames, {result['status']}: acquisition "
              f"{result['acquire_s_per_frame']:.3f} s/frame, outside acquisition "
              f"{result['outside_s_per_frame'] * 1e3:.1f} ms/frame (classify "
              f"{result['classify_s_per_frame'] * 1e3:.1f} ms), ratio {result['ratio']:.4f} "
              f"(target <= 0.05); routes {result['routes']}\n    per node, ms/frame (step "
              f"incl. checkpoint): {result['per_node_ms']}")


if __name__ == "__main__":
    main()
