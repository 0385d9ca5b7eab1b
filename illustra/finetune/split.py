"""Stratified train/val/test split of the cleaned manifest, by duplicate group so that no group straddles splits."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_manifest(manifest: pd.DataFrame, seed: int = 0, val: float = 0.15, test: float = 0.15,
                   group_column: str = "dup_group") -> pd.Series:
    """'train' | 'val' | 'test' per row: per class, whole groups are assigned in a seeded random order."""
    rng = np.random.default_rng(seed)
    groups = manifest[group_column] if group_column in manifest else pd.Series(-1, index=manifest.index)
    unit = np.where(groups.to_numpy() >= 0, "g" + groups.astype(str), "r" + manifest.index.astype(str))
    split = pd.Series("train", index=manifest.index)
    for _, rows in manifest.groupby("class_folder"):
        units = pd.unique(unit[manifest.index.get_indexer(rows.index)])
        order = rng.permutation(units)
        n_test, n_val = int(round(len(order) * test)), int(round(len(order) * val))
        if len(order) >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        chosen = {u: "test" for u in order[:n_test]} | {u: "val" for u in order[n_test:n_test + n_val]}
        for index in rows.index:
            split[index] = chosen.get(unit[manifest.index.get_loc(index)], "train")
    return split


def leaking_groups(manifest: pd.DataFrame, split: pd.Series, group_column: str = "dup_group") -> list[int]:
    """Duplicate groups with members in more than one split (should be empty)."""
    grouped = pd.DataFrame({"group": manifest[group_column], "split": split})
    grouped = grouped[grouped["group"] >= 0]
    counts = grouped.groupby("group")["split"].nunique()
    return counts[counts > 1].index.tolist()
