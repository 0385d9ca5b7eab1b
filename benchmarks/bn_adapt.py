"""Batch-norm re-estimation on the evaluated images (AdaBN): macro-F1 with and without, per trained run.

Reads fine-tuning run folders (each with split.csv and classifier.safetensors, e.g. the LOSO runs of
an experiment plan: OUT/runs/NAME/loso/<style>/), scores their test rows from the pixel cache as
trained, then again after `adapt_batchnorm` on those same (unlabelled) test images. No training.

    python benchmarks/bn_adapt.py --work work/index work/exp/runs/baseline-s0/loso/*
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from illustra.data.cache import CacheSpec, open_pixels
from illustra.finetune.model import adapt_batchnorm, load_classifier, predict_as_trained


def score(run: Path, pixels) -> dict:
    """Test macro-F1 of one run folder as trained and with AdaBN (labels as in fine-tuning: present or predicted)."""
    split = pd.read_csv(run / "split.csv")
    test = split[split["split"] == "test"]
    model, meta = load_classifier(run / "classifier.safetensors")
    preprocessing = meta["preprocessing"]
    size, resample = int(preprocessing["input_size"]), preprocessing.get("resample", "resize")
    squares = torch.from_numpy(np.asarray(pixels[np.sort(test["cache_row"].to_numpy())]))
    truth = test.sort_values("cache_row")["class_id"].to_numpy()
    row = {"run": str(run), "test_images": len(test)}
    adapted = adapt_batchnorm(model, squares, size, resample=resample)
    for name, evaluated in (("as_trained", model), ("adapted", adapted)):
        predicted = predict_as_trained(evaluated, squares, preprocessing).argmax(1)
        labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
        row[f"macro_f1_{name}"] = round(float(f1_score(truth, predicted, average="macro", labels=labels,
                                                       zero_division=0)), 4)
    row["delta"] = round(row["macro_f1_adapted"] - row["macro_f1_as_trained"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="fine-tuning run folders (split.csv + classifier.safetensors)")
    parser.add_argument("--work", default="work/index", help="the index (pixel cache) the runs were trained from")
    args = parser.parse_args()
    pixels = open_pixels(args.work, CacheSpec())
    frame = pd.DataFrame([score(run, pixels) for run in args.runs])
    print(frame.to_string(index=False))
    print(f"mean macro-F1: as trained {frame['macro_f1_as_trained'].mean():.4f}, "
          f"batch-norm re-estimated {frame['macro_f1_adapted'].mean():.4f} ({frame['delta'].mean():+.4f})")


if __name__ == "__main__":
    main()
