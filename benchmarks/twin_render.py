"""Twin render rate: frames/s of TwinMicroscope.acquire at 256/512/1024 px on one core.

Run: OMP_NUM_THREADS=1 python benchmarks/twin_render.py [--frames N]
Target: >= 20 frames/s at 1024 px (in focus). Also reports a defocused case (blur path), an
insulating region at high dose (charging path) and the one-off texture build per region.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

from instruments.devices.frame import ImagingSettings, StagePosition  # noqa: E402
from twins.microscope import TwinMicroscope  # noqa: E402


def rate(scope: TwinMicroscope, settings: ImagingSettings, frames: int) -> float:
    scope.set_imaging(settings)
    scope.acquire()  # warm: texture pyramids built and cached
    start = time.perf_counter()
    for _ in range(frames):
        scope.acquire()
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    scope = TwinMicroscope(seed=0)
    spec = scope.specimen
    start = time.perf_counter()
    for index in range(10):
        spec.tiles(index)
    build = (time.perf_counter() - start) / 10

    def centre(label: str) -> tuple[StagePosition, float]:
        r = next(r for r in spec.regions if r.label == label)
        return StagePosition((r.x0 + r.x1) / 2, (r.y0 + r.y1) / 2), r.z

    print(f"texture build: {build * 1e3:.0f} ms per region (once, cached)")
    print(f"{'pixels':>6} {'in focus':>12} {'defocus 20um':>14} {'charging':>12}   (frames/s)")
    for n in (256, 512, 1024):
        pos, z = centre("Particles")
        scope.move_stage(pos)
        focus = rate(scope, ImagingSettings(fov=20e-6, pixels=n, dwell=1e-6, defocus=z),
                     args.frames)
        blurred = rate(scope, ImagingSettings(fov=20e-6, pixels=n, dwell=1e-6,
                                              defocus=z + 20e-6), args.frames)
        pos, z = centre("Powder")
        scope.move_stage(pos)
        charged = rate(scope, ImagingSettings(fov=2e-6, pixels=n, dwell=10e-6, defocus=z),
                       args.frames)
        print(f"{n:>6} {focus:>12.1f} {blurred:>14.1f} {charged:>12.1f}")


if __name__ == "__main__":
    main()
