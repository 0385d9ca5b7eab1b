"""Curation checks as a registry (in the spirit of cleanvision's issue managers).

Each check is one class: `fit(context)` returns columns for every manifest row, always
`<name>_score` (0-1, higher = more surely this issue) and `is_<name>`, plus its own detail columns.
`CHECKS` lists them in order; the cleaned set, the per-row decision, the summary counts and the
problem list are all derived from the registry in `illustra.curation.run`, so adding a check is one
class here (or in its own module), one entry in `CHECKS` and its block in configs/curation.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from illustra.curation.duplicates import find_duplicates, ink_share
from illustra.curation.photos import (
    detect_photos,
    evidence_cache_path,
    no_photo_columns,
    photo_evidence,
    texture_step_count,
)
from illustra.data.workspace import read_index_info
from illustra.train.loop import tensorboard_writer


@dataclass
class Context:
    """What a check may read: the folder, the manifest (positional index), pixels, embeddings, settings."""

    data: Path
    work: Path
    out: Path
    manifest: pd.DataFrame
    pixels: np.ndarray
    embeddings: np.ndarray
    classes: list[str]
    settings: object  # CurationSettings
    shared: dict = field(default_factory=dict)  # what a check hands to outputs and reports (e.g. duplicate pairs)


def decide_label_conflicts(manifest: pd.DataFrame) -> pd.Series:
    """A cross-class duplicate group keeps its keeper only if the keeper's class is the group's strict majority."""
    ambiguous = pd.Series(False, index=manifest.index)
    conflicted = manifest[manifest["dup_label_conflict"].astype(bool)]
    for _, group in conflicted.groupby("dup_group"):
        votes = group["class_folder"].value_counts()
        keeper = group[group["dup_keep"].astype(bool)]
        strict = len(votes) == 1 or votes.iloc[0] > votes.iloc[1]
        if keeper.empty or not strict or keeper["class_folder"].iloc[0] != votes.index[0]:
            ambiguous[group.index] = True
    return ambiguous


class Check:
    """One kind of issue. Subclasses set `name`, `drop_setting`, `job` and implement `fit`."""

    name = ""
    drop_setting = ""   # the CurationSettings flag that takes flagged rows out of the cleaned set ("" = always)
    job = ""            # the `--only` job that runs it ("" = always runs)

    def fit(self, context: Context) -> pd.DataFrame:
        raise NotImplementedError

    def skipped(self, context: Context) -> pd.DataFrame:
        """Columns when the check's job is not run: nothing flagged."""
        return pd.DataFrame({f"{self.name}_score": np.nan, f"is_{self.name}": False}, index=context.manifest.index)

    def reasons(self, columns: pd.DataFrame) -> pd.Series:
        """The decision text of each flagged row."""
        return pd.Series(f"drop: {self.name}", index=columns.index)


class BlankCheck(Check):
    """Almost no ink: an empty canvas tells nothing about its class (and is never a duplicate)."""

    name, drop_setting = "blank", "drop_blank"

    def fit(self, context: Context) -> pd.DataFrame:
        manifest, limit = context.manifest, context.settings.duplicates.blank_ink
        usable = np.flatnonzero(manifest["cache_row"].to_numpy() >= 0)
        ink = np.full(len(manifest), np.nan)
        ink[usable] = ink_share(np.asarray(context.pixels[manifest["cache_row"].to_numpy()[usable]]))
        score = np.clip(1 - ink / (2 * limit), 0, 1)  # 0.5 at the threshold, 1 for a white canvas
        return pd.DataFrame({"blank_score": score, "is_blank": np.nan_to_num(ink, nan=1.0) < limit, "ink_share": ink},
                            index=manifest.index)

    def reasons(self, columns: pd.DataFrame) -> pd.Series:
        return pd.Series("drop: blank image", index=columns.index)


class DuplicateCheck(Check):
    """Exact and near copies: one keeper per group; groups whose labels disagree leave the set."""

    name, drop_setting = "duplicate", "drop_duplicates"

    def fit(self, context: Context) -> pd.DataFrame:
        columns, pairs = find_duplicates(context.manifest, context.pixels, context.embeddings,
                                         context.settings.duplicates)
        context.shared["duplicate_pairs"] = pairs
        with_labels = context.manifest[["class_folder"]].join(columns)
        columns["label_ambiguous"] = decide_label_conflicts(with_labels)
        settings = context.settings.duplicates
        # a pair's closeness to the decision: the larger of its global residual and its worst patch, each over
        # its threshold (1 = on the threshold); a row's score follows its closest pair, 0.5 at the threshold
        ratio = np.maximum(pairs["residual"].to_numpy(float) / max(settings.max_residual, 1e-9),
                           pairs["worst_patch"].to_numpy(float) / max(settings.max_patch, 1e-9)
                           if "worst_patch" in pairs else 0.0)
        per_pair = pd.DataFrame({"a": pairs["a"], "b": pairs["b"], "ratio": ratio})
        closest = pd.concat([per_pair[["a", "ratio"]].rename(columns={"a": "row"}),
                             per_pair[["b", "ratio"]].rename(columns={"b": "row"})]).groupby("row")["ratio"].min()
        nearest = closest.reindex(columns.index).to_numpy(float)
        columns["duplicate_score"] = np.where(np.isnan(nearest), 0.0, np.clip(1 - nearest / 2, 0, 1))
        columns["is_duplicate"] = ~columns["dup_keep"].astype(bool) | columns["label_ambiguous"].astype(bool)
        return columns

    def reasons(self, columns: pd.DataFrame) -> pd.Series:
        return pd.Series(np.where(columns["dup_keep"].astype(bool), "drop: duplicate group with conflicting labels",
                                  "drop: duplicate"), index=columns.index)


class PhotoCheck(Check):
    """Photographs crawled in among the drawings (label-free; illustra.curation.photos)."""

    name, drop_setting, job = "photo", "drop_photos", "photos"

    def fit(self, context: Context) -> pd.DataFrame:
        settings = context.settings.photos
        with tqdm(total=len(context.manifest), desc="photo statistics + patches", unit="img", leave=False) as bar:
            fingerprint = read_index_info(context.work).get("fingerprint", "")  # an unchanged index decodes nothing
            cache = evidence_cache_path(context.work, fingerprint, settings) if fingerprint else None
            evidence = photo_evidence(context.data, context.manifest, settings, bar, cache=cache)
        writer = tensorboard_writer(context.out) if settings.texture_view else None
        upper = texture_step_count(len(evidence.patches), settings) * max(1, settings.texture_rounds)  # may end sooner
        with tqdm(total=upper, desc="texture view", unit="step", leave=False) as bar:
            columns = detect_photos(evidence.stats, context.embeddings, settings, evidence.patches, evidence.owner,
                                    bar, writer)
            bar.total = bar.n  # a skipped second round (rare photos) ends the bar at 100 %, not half way
            bar.refresh()
            context.shared["texture_view_steps"] = int(bar.n)  # steps run, every round together (0: it did not run)
        if writer is not None:
            writer.close()
        return evidence.stats.join(columns)

    def skipped(self, context: Context) -> pd.DataFrame:
        return no_photo_columns(context.manifest.index)

    def reasons(self, columns: pd.DataFrame) -> pd.Series:
        return pd.Series("drop: photo", index=columns.index)


CHECKS: tuple[Check, ...] = (BlankCheck(), DuplicateCheck(), PhotoCheck())  # decision priority: first wins
