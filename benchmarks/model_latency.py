"""Parameter counts and per-frame latency of the fusion model variants on one CPU thread.

Usage: OMP_NUM_THREADS=1 python benchmarks/model_latency.py [--repeats 5] [--steps 1 2 4]

For ViT-only, HNF-only (HNF + linear head), the full model (ViT + HNF + text + LMM + MHA),
the full model without attention (no_mha) and without the pretrained stem (no_stem, raw
pixels), and the stem alone (EfficientNet-Lite0 to stride 32, the share of every stem model's
time), it prints trainable parameters and the median inference time (CPU and wall) per frame at
batch 1 and batch 48 (frames/s batched = 1000 / wall b=48): eval mode, no_grad, inputs
already preprocessed, the frozen text encoder's token states cached before timing (as in
deployment). The full model is then timed
for each RK4 grid size in --steps (the papers do not fix the grid): the trade-off of ODE
accuracy against time. Targets: full model <= 50 ms per frame at batch 1, >= 40 frames/s batched.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.config import FusionConfig
from models.fusion import FusionClassifier
from models.stem import PretrainedStem

CLASSES = 10
DESCRIPTIONS = [f"Technical description of nanomaterial category {i}: structure, synthesis, "
                "properties, surface modification and applications. " * 8 for i in range(CLASSES)]


def variants(steps: int) -> dict[str, FusionConfig]:
    return {
        "vit_only": FusionConfig.ablation("vit_only", n_classes=CLASSES),
        "hnf_only": FusionConfig(n_classes=CLASSES, use_vit=False, use_text=False,
                                 use_lmm=False, ode_steps=steps),
        "full": FusionConfig.ablation("full", n_classes=CLASSES, ode_steps=steps),
        "no_mha": FusionConfig.ablation("no_mha", n_classes=CLASSES, ode_steps=steps),
        "no_stem": FusionConfig.ablation("no_stem", n_classes=CLASSES, ode_steps=steps),
    }


def per_frame_ms(model: torch.nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) per frame of inference at this batch size."""
    images = torch.randn(batch, 1, 224, 224)
    cpu, wall = [], []
    with torch.no_grad():
        model(images[:1])  # warm-up (also fills the text cache)
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            model(images)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return 1000.0 * statistics.median(cpu) / batch, 1000.0 * statistics.median(wall) / batch


def train_step_ms(model: FusionClassifier, batch: int) -> float:
    """CPU ms per frame of one forward + backward pass (training mode)."""
    images = torch.randn(batch, model.config.in_chans, 224, 224)
    labels = torch.randint(0, CLASSES, (batch,))
    model.train()
    start = time.process_time()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    elapsed = time.process_time() - start
    model.eval()
    return 1000.0 * elapsed / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("ms per frame; cpu = process CPU time (one thread: the uncontended wall time), "
          "wall = elapsed time on this (possibly shared) machine")
    print(f"{'variant':<10}{'RK4 steps':>10}{'params':>10}{'cpu b=1':>9}{'wall b=1':>10}"
          f"{'cpu b=48':>10}{'wall b=48':>11}{'train cpu b=48':>16}")
    default_steps = FusionConfig().ode_steps
    rows = [(name, default_steps, cfg) for name, cfg in variants(default_steps).items()]
    rows += [("full", s, variants(s)["full"]) for s in args.steps if s != default_steps]
    for name, steps, config in rows:
        model = FusionClassifier(config, DESCRIPTIONS if config.text_on else None).eval()
        b1 = per_frame_ms(model, 1, args.repeats)
        b48 = per_frame_ms(model, 48, max(1, args.repeats // 2))
        train = train_step_ms(model, 48)
        shown = steps if config.use_hnf and config.baseline is None else "-"
        print(f"{name:<10}{shown!s:>10}{model.count_parameters():>10,}{b1[0]:>9.1f}{b1[1]:>10.1f}"
              f"{b48[0]:>10.1f}{b48[1]:>11.1f}{train:>16.1f}", flush=True)
    stem = PretrainedStem().eval()
    b1, b48 = per_frame_ms(stem, 1, args.repeats), per_frame_ms(stem, 48, args.repeats // 2)
    print(f"{'stem':<10}{'-':>10}{0:>10,}{b1[0]:>9.1f}{b1[1]:>10.1f}{b48[0]:>10.1f}"
          f"{b48[1]:>11.1f}{'-':>16}  (frozen; included in every row but no_stem)")


if __name__ == "__main__":
    main()
