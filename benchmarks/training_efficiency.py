"""CPU (or GPU) efficiency of the training loops: images/s and FLOP rate as a share of a float32 matmul.

For each loop (SimCLR pretraining, fine-tuning) the public function is called twice on the same
synthetic pixels, once stopping after `--warmup` steps and once after `--warmup + --steps`; the
difference of the two wall times is the cost of `--steps` real steps (batching, augmentation,
forward, backward, optimiser, EMA), free of the per-run set-up, validation and checkpoint that
both calls share. FLOPs per training image come from torch's FlopCounterMode on one
forward + backward of the same network; the matmul rate is a float32 (2048 x 2048) product timed
in the same process, so the share is comparable between machines and commits.

    python benchmarks/training_efficiency.py [--steps 12] [--channels-last] [--bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from illustra.finetune.train import FinetuneConfig, finetune
from illustra.ssl.pretrain import PretrainConfig, SimCLR, pretrain

PRE = {"cache_size": 64, "cache_policy": "letterbox", "input_size": 32}


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 8) -> float:
    """Float32 matmul rate (GFLOP/s) on this device, best of three timings."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            c = a @ b
        c.sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e9


def train_flops_per_image(model: torch.nn.Module, views_per_image: int, size: int, batch: int = 16) -> float:
    """Forward + backward FLOPs of one training image (all its views)."""
    x = torch.randn(batch * views_per_image, 3, size, size)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).float().pow(2).mean().backward()
    return counter.get_total_flops() / batch


def timed(call, *args) -> float:
    """Seconds that call(*args) takes."""
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="steps both calls run before the timed ones")
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images (64 px)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last on the CPU too")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (precision_cpu=bf16)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, 64, 64, 3), dtype=np.uint8)
    labels = rng.integers(0, 20, args.images)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    matmul = matmul_gflops(device)
    print(f"float32 matmul: {matmul:.1f} GFLOP/s on {device} — torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{platform.machine()}, {torch.get_num_threads()} threads", flush=True)

    layout = {"channels_last_cpu": True} if args.channels_last else {}
    layout["precision_cpu"] = "bf16" if args.bf16 else "fp32"
    ssl = replace(PretrainConfig(), knn_every=0, **layout)
    ft = FinetuneConfig(mode="scratch", imbalance="none", **layout)
    classes = [f"L2_{i}" for i in range(20)]
    loops = {
        "pretrain (SimCLR, 2 views)": (
            ssl.batch_size, train_flops_per_image(SimCLR(ssl), 2, ssl.encoder.input_size),
            lambda out, steps: pretrain(pixels, labels, out, ssl, PRE, progress=False, max_steps=steps)),
        "finetune (full, EMA)": (
            ft.batch_size, _finetune_flops(ft, len(classes)),
            lambda out, steps: finetune(pixels, labels, pixels[:64], labels[:64], classes, out, ft, PRE, None,
                                        progress=False, max_steps=steps)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (batch, flops, run) in loops.items():
            short = timed(run, Path(tmp) / f"{name[:4]}-a", args.warmup)
            long = timed(run, Path(tmp) / f"{name[:4]}-b", args.warmup + args.steps)
            seconds = max(long - short, 1e-9)
            images = args.steps * batch / seconds
            gflops = images * flops / 1e9
            print(f"{name:<28} {images:7.1f} images/s  {flops / 1e6:6.0f} MFLOP/image  {gflops:6.1f} GFLOP/s  "
                  f"= {100 * gflops / matmul:4.0f} % of matmul  ({args.steps} steps of {batch}, {seconds:.1f} s)",
                  flush=True)


def _finetune_flops(config: FinetuneConfig, classes: int) -> float:
    from illustra.finetune.model import Classifier
    from illustra.ssl.encoder import Encoder

    return train_flops_per_image(Classifier(Encoder(config.encoder), classes), 1, config.encoder.input_size)


if __name__ == "__main__":
    main()
