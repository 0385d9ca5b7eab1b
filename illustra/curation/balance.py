"""Imbalance plans: manifest columns that fine-tuning consumes (sampler weights or loss weights), never file copies."""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ("none", "over", "under", "weights")


def class_counts(manifest: pd.DataFrame, classes: list[str]) -> pd.Series:
    """Images per class folder in model order (0 for an empty class)."""
    return manifest["class_folder"].value_counts().reindex(classes, fill_value=0)


def class_weights(counts: pd.Series) -> pd.Series:
    """Loss weight per class, N / (K * n_c): the mean weight over the data is 1."""
    present = counts[counts > 0]
    return (present.sum() / (len(present) * present)).reindex(counts.index, fill_value=0.0)


def balance_columns(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per-row plan columns: `class_weight` (loss weighting) and `sample_weight` (sampler, equal class mass)."""
    counts = class_counts(manifest, classes)
    weights = class_weights(counts)
    folder = manifest["class_folder"]
    return pd.DataFrame({"class_weight": folder.map(weights).to_numpy(float),
                         "sample_weight": (1.0 / folder.map(counts)).to_numpy(float)}, index=manifest.index)


def epoch_indices(labels: np.ndarray, plan: str, rng: np.random.Generator) -> np.ndarray:
    """Row positions of one training epoch under a plan: none, over (up to largest), under (down to smallest)."""
    if plan in ("none", "weights"):
        return rng.permutation(len(labels))
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    target = max(map(len, groups)) if plan == "over" else min(map(len, groups))
    if plan not in ("over", "under"):
        raise ValueError(f"unknown imbalance plan {plan!r}; one of {PLANS}")
    picks = [rng.choice(g, target, replace=len(g) < target) for g in groups]
    return rng.permutation(np.concatenate(picks))


def epoch_class_mass(counts: pd.Series, plan: str) -> pd.Series:
    """What the model sees of each class in one epoch under a plan: draws (none / over / under) or, for
    `weights`, the loss mass n_c * w_c. The same rule as `epoch_indices` and `class_weights` (tested)."""
    present = counts[counts > 0]
    if plan == "none":
        mass = counts.astype(float)
    elif plan == "over":
        mass = pd.Series(float(present.max()), index=counts.index)
    elif plan == "under":
        mass = pd.Series(float(present.min()), index=counts.index)
    elif plan == "weights":
        mass = counts * class_weights(counts)
    else:
        raise ValueError(f"unknown imbalance plan {plan!r}; one of {PLANS}")
    return mass.where(counts > 0, 0.0)


def imbalance_summary(before: pd.Series, after: pd.Series) -> pd.DataFrame:
    """Counts per class before/after cleaning, with the imbalance ratio in the frame's attrs."""
    table = pd.DataFrame({"before": before, "after": after})
    table.attrs["ratio_before"] = float(before.max() / max(before[before > 0].min(), 1))
    table.attrs["ratio_after"] = float(after.max() / max(after[after > 0].min(), 1))
    return table
