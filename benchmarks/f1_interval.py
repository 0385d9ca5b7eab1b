"""How precise is a held-out test figure? Bootstrap intervals of macro- and micro-F1 from a run's test confusion matrix.

Reads `metrics.json` of `illustra finetune` runs (its `test_confusion`: rows true class, columns predicted),
resamples the test images with replacement (each image's (true, predicted) pair kept together) and prints
each run's macro-F1 and micro-F1 with a percentile interval: the part of a figure that is the test set's sampling
alone (which images happen to be in it), before any training-seed noise. With several runs, the mean and spread of
their macro-F1 (run-to-run noise) are printed too.

A confusion matrix holds counts, not which image fell where, so the difference between two runs on the same
images cannot be bootstrapped from it (that needs per-image predictions); this script does not attempt it.

    python benchmarks/f1_interval.py ft_bf16/metrics.json ft_bf16_s1/metrics.json [--draws 2000] [--level 0.95]

No training, no pixels: seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def f1_from_confusion(confusion: np.ndarray) -> tuple[float, float]:
    """(macro-F1 over the classes present in truth or prediction, micro-F1 = accuracy) of a confusion matrix.

    Classes with no true and no predicted image are left out of the macro mean, as sklearn's `f1_score` does with
    the labels it sees.
    """
    confusion = np.asarray(confusion, float)
    true_positive = np.diag(confusion)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=0)  # true + predicted images of each class
    seen = denominator > 0
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=seen)
    macro = float(f1[seen].mean()) if seen.any() else float("nan")
    total = confusion.sum()
    micro = float(true_positive.sum() / total) if total else float("nan")
    return macro, micro


def bootstrap_confusion(confusion: np.ndarray, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """(draws, 2) macro- and micro-F1 of confusion matrices resampled image by image (multinomial on the cells)."""
    confusion = np.asarray(confusion, np.int64)
    total = int(confusion.sum())
    rng = np.random.default_rng(seed)
    cells = rng.multinomial(total, (confusion / total).ravel(), size=draws)
    return np.array([f1_from_confusion(cell.reshape(confusion.shape)) for cell in cells])


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics.json of fine-tuning runs")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    macros = []
    for path in args.metrics:
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # a missing or broken file is named, and the other runs still print
            print(f"{path}: not readable as a run's metrics.json ({error}), skipped")
            continue
        if "test_confusion" not in metrics:
            print(f"{path}: no test confusion (trained on all images?), skipped")
            continue
        confusion = np.asarray(metrics["test_confusion"])
        if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.sum() <= 0:
            print(f"{path}: test confusion is not a non-empty square matrix, skipped")
            continue
        macro, micro = f1_from_confusion(confusion)
        drawn = bootstrap_confusion(confusion, args.draws, args.seed)
        (m_low, m_high), (u_low, u_high) = interval(drawn[:, 0], args.level), interval(drawn[:, 1], args.level)
        macros.append(macro)
        print(f"{path.parent.name:<24} test images {int(confusion.sum())}: macro-F1 {macro:.4f} "
              f"[{m_low:.3f}, {m_high:.3f}], micro-F1 {micro:.4f} [{u_low:.3f}, {u_high:.3f}] "
              f"({args.level:.0%} bootstrap, {args.draws} draws)")
    if len(macros) > 1:
        values = np.array(macros)
        print(f"over the {len(values)} runs: macro-F1 mean {values.mean():.4f}, range {values.min():.4f}-{values.max():.4f}"
              f", sd {values.std(ddof=1):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
