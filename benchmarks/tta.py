"""Test-time augmentation schemes on trained runs: macro-F1 per scheme, validation first (issue #16).

Reads fine-tuning run folders (split.csv + classifier.safetensors: `illustra finetune` outputs, the LOSO
runs of `benchmarks/leave_style_out.py`), predicts their validation rows (and, with --test, their test
rows) from the pixel cache under each scheme, and prints macro-F1 per run and scheme. No training.

A scheme is a set of views whose class probabilities are averaged. A view is the whole square or a crop
of it (side as a share of the square, centre in [-1, 1]), mirrored or not, resampled to the network's
input size either as evaluate.py does today (antialiased resize; whole square only) or as the training
views are made (one bilinear `grid_sample`, no antialiasing).

    python benchmarks/tta.py --work index ft_lr6 ft_lr6_s1 loso_lr6/*            # choose on validation
    python benchmarks/tta.py --work index --test --schemes flip whole+zoom90 ft_lr6 ...  # then score once
    python benchmarks/tta.py --rewrite ft_lr6/classifier.safetensors ../main/checkpoints/classifier.safetensors \
        --tta zoom                       # the chosen views into a trained classifier's metadata (weights untouched)

The schemes the shipped code knows (`illustra.finetune.model.eval_views`): flip = "flip_grid" here, zoom =
"whole+zoom90"; both with resample "grid". "none" and "flip" here are the resampling of weights written before
2026-11-27 ("resize").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from illustra.data.cache import CacheSpec, open_pixels
from illustra.finetune.model import TTA, check_views, crop_view, load_classifier
from illustra.ssl.augment import normalise, resize_batch, to_float
from illustra.weights import load_weights, save_weights

# view = (side, centre_x, centre_y, mirrored); side 1.0 at the centre = the whole square
WHOLE = [(1.0, 0.0, 0.0, False)]
CORNERS = [(0.9, x, y, False) for x in (-0.1, 0.1) for y in (-0.1, 0.1)]
SHIFTS = [(1.0, x, y, False) for x, y in ((-0.06, 0), (0.06, 0), (0, -0.06), (0, 0.06))]


def mirrored(views: list) -> list:
    return views + [(s, x, y, True) for s, x, y, _ in views]


SCHEMES = {  # name -> (views, resampling: "resize" = evaluate.py's antialiased resize | "grid" = as training)
    "none": (WHOLE, "resize"),
    "flip": (mirrored(WHOLE), "resize"),  # the shipped scheme
    "none_grid": (WHOLE, "grid"),
    "flip_grid": (mirrored(WHOLE), "grid"),
    "zoom90": (mirrored([(0.9, 0.0, 0.0, False)]), "grid"),
    "whole+zoom90": (mirrored(WHOLE + [(0.9, 0.0, 0.0, False)]), "grid"),
    "whole+zoom80": (mirrored(WHOLE + [(0.8, 0.0, 0.0, False)]), "grid"),
    "whole+corners90": (mirrored(WHOLE + CORNERS), "grid"),
    "whole+shifts": (mirrored(WHOLE + SHIFTS), "grid"),
    # both resamplings averaged: the grid views the network trained on, and the wider antialiased filter that thin
    # outline strokes (openmoji) survive better (RESULTS.md "Test-time views": LOSO openmoji -0.026 with grid)
    "flip+resize": (mirrored(WHOLE) + mirrored(WHOLE), ["grid", "grid", "resize", "resize"]),
    "zoom+resize": (mirrored(WHOLE + [(0.9, 0.0, 0.0, False)]) + mirrored(WHOLE), ["grid"] * 4 + ["resize"] * 2),
}


def view_batch(images: torch.Tensor, size: int, view: tuple, resampling: str) -> torch.Tensor:
    """[0, 1] squares (N, 3, S, S) -> one view of each at `size`."""
    side, cx, cy, mirror = view
    if resampling == "resize":
        assert (side, cx, cy) == (1.0, 0.0, 0.0), "resize resampling only makes the whole square"
        out = resize_batch(images, size)
        return out.flip(3) if mirror else out
    return crop_view(images, size, side, (cx, cy), mirror)


@torch.no_grad()
def probabilities(model, squares: torch.Tensor, size: int, scheme: str, batch: int = 256) -> np.ndarray:
    views, resampling = SCHEMES[scheme]
    resampling = [resampling] * len(views) if isinstance(resampling, str) else resampling
    out = []
    for start in range(0, len(squares), batch):
        images = to_float(squares[start:start + batch])
        total = sum(torch.softmax(model(normalise(view_batch(images, size, view, how))).float(), 1)
                    for view, how in zip(views, resampling))
        out.append(total / len(views))
    return torch.cat(out).numpy()


def score(run: Path, pixels, schemes: list[str], parts: list[str]) -> list[dict]:
    split = pd.read_csv(run / "split.csv")
    model, meta = load_classifier(run / "classifier.safetensors")
    size = int(meta["preprocessing"]["input_size"])
    rows = []
    for part in parts:
        chosen = split[split["split"] == part].sort_values("cache_row")
        squares = torch.from_numpy(np.asarray(pixels[chosen["cache_row"].to_numpy()]))
        truth = chosen["class_id"].to_numpy()
        for scheme in schemes:
            predicted = probabilities(model, squares, size, scheme).argmax(1)
            labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
            rows.append({"run": str(run), "part": part, "scheme": scheme, "images": len(chosen),
                         "macro_f1": round(float(f1_score(truth, predicted, average="macro", labels=labels,
                                                          zero_division=0)), 4)})
    return rows


def rewrite(source: Path, target: Path, tta: str) -> None:
    """Copy a classifier with its prediction views set to `tta`, resampled as the training views (weights untouched)."""
    check_views(tta, "grid")
    tensors, meta = load_weights(source)
    before = {key: meta["preprocessing"].get(key) for key in ("tta", "resample")}
    meta["preprocessing"] = {**meta["preprocessing"], "tta": tta, "resample": "grid",
                             "resize": "fit into cache square by policy (white padding), then bilinear grid_sample"}
    meta["training"] = {**meta["training"], "prediction_changed": {
        "from": before, "to": {"tta": tta, "resample": "grid"}, "by": "benchmarks/tta.py --rewrite",
        "note": "history val_macro_f1 was measured with the 'from' views"}}
    save_weights(target, tensors, meta)
    print(f"{target}: tta {before['tta']} -> {tta}, resample {before['resample'] or 'resize'} -> grid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="fine-tuning run folders (split.csv + classifier.safetensors)")
    parser.add_argument("--rewrite", nargs=2, type=Path, metavar=("SOURCE", "TARGET"),
                        help="write SOURCE's classifier to TARGET with --tta views instead of scoring")
    parser.add_argument("--tta", default="zoom", choices=TTA, help="the views --rewrite writes")
    parser.add_argument("--work", default="work/index", help="the index (pixel cache) the runs were trained from")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--test", action="store_true", help="also score the test rows (once, after choosing)")
    args = parser.parse_args()
    if args.rewrite:
        rewrite(*args.rewrite, args.tta)
        return
    if not args.runs:
        parser.error("give run folders to score, or --rewrite SOURCE TARGET")
    pixels = open_pixels(args.work, CacheSpec())
    parts = ["val", "test"] if args.test else ["val"]
    frame = pd.DataFrame([row for run in args.runs for row in score(run, pixels, args.schemes, parts)])
    table = frame.pivot_table(index=["part", "run"], columns="scheme", values="macro_f1")[args.schemes]
    pd.set_option("display.width", 250)
    print(table.to_string())
    for part in parts:
        mean = table.loc[part].mean()
        print(f"\nmean {part} macro-F1 per scheme (delta vs flip):")
        for scheme in args.schemes:
            print(f"  {scheme:18s} {mean[scheme]:.4f} ({mean[scheme] - mean['flip'] if 'flip' in mean else 0:+.4f})")


if __name__ == "__main__":
    main()
