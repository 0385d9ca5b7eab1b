"""Prediction speed of classifier weights on this machine, NCHW against channels_last (what `for_inference` picks).

    python benchmarks/inference_speed.py --work WORK [--count 256] [--weights W ...]

Takes the first COUNT squares of WORK's 64 px pixel cache and predicts them with each file's own views (tta,
resampling), once with the model in NCHW and once in channels_last; prints images/s, the largest probability
difference and the share of equal predicted classes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from illustra.data.cache import CacheSpec, open_pixels
from illustra.finetune.model import load_classifier, predict_as_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--weights", nargs="+", default=["checkpoints/classifier.safetensors",
                                                         "checkpoints/classifier_gpu.safetensors"])
    args = parser.parse_args()
    squares = torch.from_numpy(np.array(open_pixels(args.work, CacheSpec(64))[:args.count]))
    for path in args.weights:
        model, meta = load_classifier(path)
        results = {}
        for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            model = model.to(memory_format=fmt)
            predict_as_trained(model, squares[:32], meta["preprocessing"])  # warm-up
            started = time.perf_counter()
            results[name] = predict_as_trained(model, squares, meta["preprocessing"])
            print(f"{path}: {name:<13} {len(squares) / (time.perf_counter() - started):7.1f} images/s", flush=True)
        first, second = results.values()
        print(f"{path}: max |probability difference| {np.abs(first - second).max():.1e}, same class "
              f"{np.mean(first.argmax(1) == second.argmax(1)):.3f}")


if __name__ == "__main__":
    main()
