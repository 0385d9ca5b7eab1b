"""Speed of the photo detector's texture view (patch CNN training) on this machine's device, and a sanity check.

    python benchmarks/texture_speed.py [--steps 300]

Synthetic 32 px patches: photo-like (smooth field + sensor noise) vs drawing-like (flat fills with edges).
Prints the device, ms per training step (batch 128, JPEG round trips included) and accuracy on fresh patches.
The real-data figures of the texture view are in benchmarks/RESULTS.md (benchmarks/photos.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from illustra.curation.texture import fit_texture_net, patch_logits
from illustra.train.device import pick_device


def synthetic_patches(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half photo-like, half drawing-like uint8 patches, with labels 1 / 0."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 32
    patches, labels = [], []
    for i in range(count):
        base = rng.uniform(40, 220, 3) + rng.uniform(-40, 40, 3) * np.stack([x, y, x * y], 2).transpose(2, 0, 1).T
        if i % 2 == 0:
            patch = base + rng.normal(0, rng.uniform(3, 10), base.shape)
        else:
            patch = np.broadcast_to(rng.uniform(0, 255, 3), base.shape).copy()
            cut = rng.integers(4, 28)
            patch[:, cut:] = rng.uniform(0, 255, 3)
            patch[:, cut - 1:cut + 1] = 20
        patches.append(patch.clip(0, 255).astype(np.uint8))
        labels.append(1 - i % 2)
    return np.stack(patches), np.array(labels)


def main() -> None:
    """Time the training and check it learns."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (native-bf16 CPUs)")
    args = parser.parse_args()
    patches, labels = synthetic_patches(8000, seed=0)
    started = time.perf_counter()
    model = fit_texture_net(patches, labels, steps=args.steps, cpu_bf16=args.bf16)
    seconds = time.perf_counter() - started
    fresh, truth = synthetic_patches(2000, seed=1)
    accuracy = float(((patch_logits(model, fresh) > 0) == truth).mean())
    precision = " bf16" if args.bf16 else ""
    print(f"device {pick_device()}{precision}: {1000 * seconds / args.steps:.1f} ms/step over {args.steps} steps "
          f"(batch 128); accuracy on fresh patches {accuracy:.3f}")


if __name__ == "__main__":
    main()
