"""Photo detection vs the benchmark truth: ours (stats + HDBSCAN + label-free rule) vs IsolationForest on colour histograms.

    python benchmarks/photos.py --bench work/bench --curation work/curation --work work/index [--sensitivity]
    python benchmarks/photos.py --bench work/holdout_test --curation work/holdout_test_curation --work work/holdout_test_index
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from illustra.curation.photos import STAT_COLUMNS, PhotoSettings, detect_photos
from illustra.data.cache import open_pixels
from illustra.data.manifest import load_manifest


def colour_histograms(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """4x4x4 RGB histogram of each cached image (the baseline's features)."""
    images = np.asarray(pixels[rows]) // 64
    codes = (images[..., 0] * 16 + images[..., 1] * 4 + images[..., 2]).reshape(len(rows), -1).astype(np.int64)
    return np.stack([np.bincount(c, minlength=64) for c in codes]) / codes.shape[1]


def line(name: str, truth: np.ndarray, predicted: np.ndarray, score: np.ndarray, seconds: float) -> str:
    """One result line."""
    return (f"{name:<44} P {precision_score(truth, predicted):.3f}  R {recall_score(truth, predicted):.3f}  "
            f"F1 {f1_score(truth, predicted):.3f}  AUC {roc_auc_score(truth, score):.4f}  "
            f"{1000 * seconds / len(truth):.2f} ms/image")


def by_style(manifest: pd.DataFrame, bench: Path, flagged: np.ndarray) -> str:
    """Share flagged as photo per truth style: recall for photo styles, false-positive rate for drawings."""
    styles = manifest[["path"]].merge(pd.read_csv(bench / "truth" / "sources.csv")[["path", "style"]],
                                      on="path", how="left")["style"].fillna("?").to_numpy()
    parts = [f"{style} {flagged[styles == style].mean():.3f} of {(styles == style).sum()}" for style in sorted(set(styles))]
    return "  flagged as photo, by style: " + ", ".join(parts)


def main() -> None:
    """Score both detectors on one benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench", default="work/bench")
    parser.add_argument("--curation", default="work/curation")
    parser.add_argument("--work", default="work/index")
    parser.add_argument("--sensitivity", action="store_true", help="also sweep the self-training knobs")
    args = parser.parse_args()
    manifest = load_manifest(Path(args.curation) / "manifest.csv")
    truth = manifest["path"].isin(set(pd.read_csv(Path(args.bench) / "truth" / "photos.csv")["path"])).to_numpy()
    embeddings = np.load(Path(args.curation) / "embeddings" / "embeddings.npy")
    print(f"images {len(manifest)}, photos in truth {truth.sum()}")
    ours = manifest["is_photo"].astype(bool).to_numpy()
    print(line("ours as run by `illustra curate`", truth, ours, manifest["photo_score"].to_numpy(), 0))
    print(by_style(manifest, Path(args.bench), ours))
    if "frame_score" in manifest and manifest["patch_logit"].notna().any():  # each view of that run on its own
        frame = manifest["frame_vote" if "frame_vote" in manifest else "frame_score"].fillna(0).to_numpy()
        patch = manifest["patch_logit"].fillna(-99).to_numpy()
        print(line("  its frame view alone (stats + embedding; frame-filling images and anchors)", truth, frame > 0.5,
                   frame, 0))
        print(by_style(manifest, Path(args.bench), frame > 0.5))
        boundary = (manifest["texture_boundary"].dropna().iloc[0] if "texture_boundary" in manifest
                    and manifest["texture_boundary"].notna().any() else PhotoSettings().texture_threshold)
        print(line(f"  its texture view alone (patch CNN, boundary {boundary:+.2f})", truth, patch > boundary, patch, 0))
        sweep = [f"{t:+.1f}: {f1_score(truth, (frame > 0.5) | (patch > t)):.3f}" for t in (-1, -0.5, 0, 0.5, 1, 1.5, 2, 3)]
        print("  F1 by texture_threshold (same run, views re-combined): " + ", ".join(sweep))
    stats = manifest[list(STAT_COLUMNS)]
    variants = {
        "statistics only (HDBSCAN + GMM rule, no embedding)": (None, PhotoSettings(self_training_rounds=0)),
        "statistics + embedding PCA 8 joined into HDBSCAN": (embeddings, PhotoSettings(embedding_components=8,
                                                                                        self_training_rounds=0)),
        "frame view: statistics rule + self-training (stats + emb)": (embeddings, PhotoSettings()),
    }
    if args.sensitivity:  # how much the self-training result depends on its knobs
        for rounds in (1, 2, 3):
            for confidence in (0.8, 0.9, 0.95, 0.98):
                for components in (8, 16, 32):
                    variants[f"self-training r{rounds} c{confidence} pca{components}"] = (embeddings, PhotoSettings(
                        self_training_rounds=rounds, self_training_confidence=confidence,
                        self_training_components=components))
    for name, (emb, settings) in variants.items():
        started = time.perf_counter()
        result = detect_photos(stats, emb, settings)
        print(line(name, truth, result["is_photo"].to_numpy(), result["photo_score"].to_numpy(),
                   time.perf_counter() - started), flush=True)
    started = time.perf_counter()
    hist = colour_histograms(open_pixels(args.work), manifest["cache_row"].to_numpy())
    forest = IsolationForest(random_state=0).fit(hist)
    score = -forest.score_samples(hist)
    seconds = time.perf_counter() - started
    print(line("IsolationForest colour histogram (predict)", truth, forest.predict(hist) < 0, score, seconds))
    top = score >= np.quantile(score, 1 - ours.mean())
    print(line("IsolationForest, flagged as many as ours", truth, top, score, seconds))


if __name__ == "__main__":
    main()
