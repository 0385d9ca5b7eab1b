"""`illustra curate`: every curation job against one manifest and one set of embeddings, written to one folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from illustra.config import build, yaml_defaults
from illustra.curation.balance import balance_columns, class_counts, epoch_class_mass
from illustra.curation.checks import CHECKS, Context
from illustra.curation.duplicates import DuplicateSettings
from illustra.curation.photos import PhotoSettings
from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.index import read_classes
from illustra.data.manifest import save_manifest
from illustra.data.workspace import index_identity
from illustra.ssl.jobs import embed_folder

JOBS = ("duplicates", "photos", "report")  # --only: duplicates (and blank) always run


@dataclass
@yaml_defaults("curation.yaml")
class CurationSettings:
    """Everything the curate command needs besides paths (configs/curation.yaml)."""

    duplicates: DuplicateSettings
    photos: PhotoSettings
    drop_photos: bool
    drop_duplicates: bool
    drop_blank: bool
    imbalance_plan: str  # the plan the report shows; "" = fine-tuning's (configs/finetune.yaml `imbalance`)

    @classmethod
    def from_dict(cls, raw: dict | None) -> CurationSettings:
        """Settings from the YAML mapping (nested duplicates / photos; unknown keys are an error)."""
        return build(cls, raw)


def clean_mask(manifest: pd.DataFrame, settings: CurationSettings) -> pd.Series:
    """Rows the cleaned training set keeps: usable, and flagged by no check whose drop setting is on."""
    keep = manifest["cache_row"] >= 0
    for check in CHECKS:
        if not check.drop_setting or getattr(settings, check.drop_setting):
            keep &= ~manifest[f"is_{check.name}"].astype(bool)
    return keep


def curate(data: str | Path, out: str | Path, work: str | Path, encoder: str | Path,
           settings: CurationSettings = CurationSettings(), spec: CacheSpec = CacheSpec(),
           jobs: tuple[str, ...] = JOBS) -> dict:
    """Run the curation jobs; write manifest.csv, duplicates.csv, photos.csv, problems.csv, clean.csv, report.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.perf_counter(), {}
    manifest, _ = embed_folder(data, encoder, out / "embeddings", work, spec)
    embeddings = np.load(out / "embeddings" / "embeddings.npy")
    pixels, classes = open_pixels(work, spec), read_classes(work)
    timings["index+embed"] = time.perf_counter() - started
    context = Context(Path(data), Path(work), out, manifest.reset_index(drop=True), pixels, embeddings, classes,
                      settings)
    manifest = context.manifest
    for check in CHECKS:  # each adds <name>_score, is_<name> and its detail columns
        step = time.perf_counter()
        columns = check.fit(context) if not check.job or check.job in jobs else check.skipped(context)
        manifest = manifest.join(columns)
        context.manifest = manifest
        timings[check.name] = time.perf_counter() - step
    pairs = context.shared.get("duplicate_pairs", pd.DataFrame(columns=["a", "b", "kind", "source", "residual"]))

    manifest["clean"] = clean_mask(manifest, settings)
    manifest = manifest.join(balance_columns(manifest[manifest["clean"]], classes).reindex(manifest.index))
    manifest["decision"] = _decision(manifest)
    _write_outputs(out, manifest, pairs)
    summary = _summary(manifest, classes, pairs, timings, started, settings.imbalance_plan or _finetune_plan())
    summary["texture_view_steps"] = context.shared.get("texture_view_steps")  # None: the photo job did not run
    if summary["texture_view_steps"] is not None and "texture_example" in manifest:  # what the first net was taught
        example = manifest["texture_example"].fillna(-1).to_numpy()
        summary["texture_examples"] = {"photos": int((example == 1).sum()), "drawings": int((example == 0).sum()),
                                       "drawings_from": "calm foregrounds" if manifest["texture_calm_examples"].fillna(
                                           False).astype(bool).any() else "frame view"}
    (out / "curation.json").write_text(json.dumps({**summary, "index": index_identity(work), "settings": {
        "duplicates": settings.duplicates.to_dict(), "photos": settings.photos.to_dict()}}, indent=2), encoding="utf-8")
    if "report" in jobs:
        from illustra.curation.report import write_report

        step = time.perf_counter()
        write_report(out / "report.html", manifest, pixels, embeddings, pairs, classes, summary, data)
        summary["seconds"]["report"] = round(time.perf_counter() - step, 1)
    return summary


def _decision(manifest: pd.DataFrame) -> pd.Series:
    """One human-readable decision per row (why it is in or out of the cleaned set), from the registry:
    unreadable first, then the first check (in CHECKS order) that flags the row."""
    decision = pd.Series("keep", index=manifest.index)
    for check in reversed(CHECKS):  # earlier checks win
        flagged = manifest[f"is_{check.name}"].astype(bool)
        decision[flagged] = check.reasons(manifest[flagged])
    decision[manifest["cache_row"] < 0] = "drop: unreadable"
    decision[manifest["clean"].astype(bool)] = "keep"
    return decision


def _write_outputs(out: Path, manifest: pd.DataFrame, pairs: pd.DataFrame) -> None:
    """The files the issue names, all paths relative to DATA."""
    save_manifest(manifest, out / "manifest.csv")
    grouped = manifest[manifest["dup_group"] >= 0]
    duplicates = pd.DataFrame({"path": grouped["path"], "file_id": grouped["file_id"], "group": grouped["dup_group"],
                               "keep": grouped["dup_keep"],
                               "reason": grouped["dup_reason"], "label_conflict": grouped["dup_label_conflict"]})
    duplicates.sort_values(["group", "keep"], ascending=[True, False]).to_csv(out / "duplicates.csv", index=False)
    ids = manifest["file_id"].to_numpy()
    pair_table = pairs.assign(a=manifest["path"].to_numpy()[pairs["a"]], b=manifest["path"].to_numpy()[pairs["b"]],
                              a_id=ids[pairs["a"]], b_id=ids[pairs["b"]])
    pair_table.to_csv(out / "duplicate_pairs.csv", index=False)
    photo_columns = ["path", "file_id", "photo_score", "is_photo", "photo_anchor", "frame_score", "patch_logit",
                     "texture_boundary", "texture_example", "texture_calm_examples", "photo_support",
                     "photo_support_needed", "photo_promoted"]
    manifest[[c for c in photo_columns if c in manifest]].to_csv(out / "photos.csv", index=False, float_format="%.4f")
    problem_rows = manifest.loc[manifest["cache_row"] < 0, ["path", "reason"]]
    blank = manifest[manifest["is_blank"].astype(bool)][["path"]].assign(reason="blank: almost no ink (< 0.2 % dark)")
    pd.concat([problem_rows, blank]).to_csv(out / "problems.csv", index=False)
    save_manifest(manifest[manifest["clean"]], out / "clean.csv")


def _finetune_plan() -> str:
    """The imbalance plan fine-tuning will apply (configs/finetune.yaml under the device profile)."""
    from illustra.config import load_config

    return str(load_config("finetune.yaml", section="finetune").get("imbalance", "none"))


def _summary(manifest: pd.DataFrame, classes: list[str], pairs: pd.DataFrame, timings: dict, started: float,
             plan: str = "none") -> dict:
    """Counts and timings of one curation run."""
    clean = manifest[manifest["clean"]]
    before = class_counts(manifest[manifest["cache_row"] >= 0], classes)
    after = class_counts(clean, classes)
    seen = epoch_class_mass(after, plan)
    return {
        "files": len(manifest), "usable": int((manifest["cache_row"] >= 0).sum()),
        "blank": int(manifest["is_blank"].sum()),
        "flagged": {check.name: int(manifest[f"is_{check.name}"].sum()) for check in CHECKS},
        "duplicate_groups": int(manifest.loc[manifest["dup_group"] >= 0, "dup_group"].nunique()),
        "duplicate_copies_dropped": int((~manifest["dup_keep"].astype(bool)).sum()),
        "label_conflict_groups": int(manifest.loc[manifest["dup_label_conflict"].astype(bool), "dup_group"].nunique()),
        "label_ambiguous_rows": int(manifest["label_ambiguous"].sum()),
        "duplicate_pairs": {str(k): int(v) for k, v in pairs["kind"].value_counts().items()},
        "photos": int(manifest["is_photo"].sum()), "clean": len(clean),
        "photo_anchors": (int(manifest["photo_anchor"].astype(bool).sum())
                          if manifest["photo_score"].notna().any() else None),  # None: the photo job did not run
        "class_counts_before": before.to_dict(), "class_counts_after": after.to_dict(),
        "imbalance_before": round(float(before.max() / max(before[before > 0].min(), 1)), 2),
        "imbalance_after": round(float(after.max() / max(after[after > 0].min(), 1)), 2),
        "imbalance_plan": plan, "imbalance_as_trained": round(float(seen.max() / max(seen[seen > 0].min(), 1e-9)), 2),
        "class_mass_per_epoch": {k: round(float(v), 1) for k, v in seen.items()},
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": time.perf_counter() - started}.items()},
    }
