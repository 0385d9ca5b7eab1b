"""Representation quality of SSL encoders on the benchmark: kNN (k=20) and linear probe, vs random init.

    python benchmarks/ssl_quality.py --bench work/bench --work work/index \
        --encoders work/ssl_main/snapshots/*.safetensors work/ssl_main/encoder.safetensors

Split: the benchmark's illustrations (photos excluded), 80/20 at random **by source origin**, so
that a duplicate copy never sits on the other side of its original (the truth is used for this
evaluation only). Labels are the class folders. A randomly initialised encoder of the same
architecture as the first file is the baseline.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.manifest import load_manifest
from illustra.ssl.embed import embed_tensor
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.ssl.knn import knn_scores, linear_probe_scores
from illustra.ssl.pretrain import load_encoder


def labelled_split(bench: Path, manifest, test_share: float = 0.2, seed: int = 0):
    """(cache rows, labels, is_test) for illustrations, split by origin."""
    truth = {row["path"]: row for row in csv.DictReader(open(bench / "truth" / "sources.csv", encoding="utf-8"))}
    rows, labels, is_test = [], [], []
    for record in manifest[manifest["cache_row"] >= 0].itertuples():
        source = truth.get(record.path)
        if source is None or source["kind"] != "illustration":
            continue
        digest = hashlib.blake2b(f"{seed}:{source['origin']}".encode(), digest_size=8).digest()
        rows.append(record.cache_row)
        labels.append(record.class_id)
        is_test.append(int.from_bytes(digest, "little") / 2**64 < test_share)
    return np.array(rows), np.array(labels), np.array(is_test)


def evaluate(encoder, images: torch.Tensor, labels: np.ndarray, is_test: np.ndarray, input_size: int) -> dict:
    """kNN and linear-probe scores of one encoder on the split."""
    started = time.perf_counter()
    features = embed_tensor(encoder, images, input_size)
    embed_seconds = time.perf_counter() - started
    train, test = features[~is_test], features[is_test]
    scores = knn_scores(train, labels[~is_test], test, labels[is_test], k=20)
    scores.update(linear_probe_scores(train, labels[~is_test], test, labels[is_test]))
    scores["embed_images_per_second"] = len(images) / embed_seconds
    return scores


def main() -> None:
    """Print one row per encoder (random init first)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--encoders", nargs="+", required=True)
    parser.add_argument("--cache-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    manifest = load_manifest(args.work)
    rows, labels, is_test = labelled_split(args.bench, manifest)
    images = torch.from_numpy(np.ascontiguousarray(open_pixels(args.work, CacheSpec(args.cache_size))[rows]))
    print(f"illustrations: {len(rows)} ({(~is_test).sum()} train / {is_test.sum()} test, split by origin), "
          f"{len(set(labels))} classes")
    first, meta = load_encoder(args.encoders[0])
    architecture = meta["architecture"]
    candidates = [("random init", Encoder(EncoderConfig(**architecture)).eval(), architecture)]
    for path in args.encoders:
        encoder, meta = load_encoder(path)
        epochs = meta.get("training", {}).get("epochs", "?")
        candidates.append((f"{Path(path).name} (epoch {epochs})", encoder, meta["architecture"]))
    print("| encoder | kNN top-1 | kNN macro-F1 | probe top-1 | probe macro-F1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, encoder, arch in candidates:
        s = evaluate(encoder, images, labels, is_test, arch["input_size"])
        print(f"| {name} | {s['knn_top1']:.4f} | {s['knn_macro_f1']:.4f} | {s['probe_top1']:.4f} "
              f"| {s['probe_macro_f1']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
