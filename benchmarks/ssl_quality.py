"""Representation quality of SSL encoders on the benchmark: kNN (k=20) and linear probe, vs random init.

kNN is on features centred on the bank's mean (CL2N, `illustra.ssl.knn.centre`; the project's kNN since
2026-12-07), with the plain read-out of the L2-normalised features beside it ("plain", every kNN figure
recorded before that date).

    python benchmarks/ssl_quality.py --bench work/bench --work work/index \
        --encoders work/ssl_main/snapshots/*.safetensors work/ssl_main/encoder.safetensors [--loso]
    python benchmarks/ssl_quality.py --bench work/bench --work work/index --encoders E.safetensors --readouts
    python benchmarks/ssl_quality.py ... --encoders E.safetensors --loso --balanced-vote
    python benchmarks/ssl_quality.py ... --encoders E.safetensors --loso --embed-sizes 32 40 48

`--embed-sizes` embeds every encoder at each of these input sizes instead of its training size (FixRes,
Touvron et al. 2019: random-resized crops show objects larger in training than the whole image does at
test time, so a CNN may read a test image best at a somewhat larger size).

`--balanced-vote` adds the kNN with each class's votes divided by its share of the bank (the
fine-tuning's imbalance fix applied to the vote): how much of the kNN's macro-F1 gap is the bank's
imbalance rather than the representation.

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
from illustra.experiments.loso import HOLDOUTS
from illustra.ssl.embed import embed_tensor
from illustra.ssl.encoder import Encoder, EncoderConfig
from illustra.ssl.knn import knn_scores, linear_probe_scores
from illustra.ssl.pretrain import load_encoder


def labelled_split(bench: Path, manifest, test_share: float = 0.2, seed: int = 0):
    """(cache rows, labels, is_test, styles) for illustrations, split by origin."""
    truth = {row["path"]: row for row in csv.DictReader(open(bench / "truth" / "sources.csv", encoding="utf-8"))}
    rows, labels, is_test, styles = [], [], [], []
    for record in manifest[manifest["cache_row"] >= 0].itertuples():
        source = truth.get(record.path)
        if source is None or source["kind"] != "illustration":
            continue
        digest = hashlib.blake2b(f"{seed}:{source['origin']}".encode(), digest_size=8).digest()
        rows.append(record.cache_row)
        labels.append(record.class_id)
        styles.append(source["style"])
        is_test.append(int.from_bytes(digest, "little") / 2**64 < test_share)
    return np.array(rows), np.array(labels), np.array(is_test), np.array(styles)


def loso_knn(features: np.ndarray, labels: np.ndarray, styles: np.ndarray, balanced: bool = False,
             centred: bool = True) -> dict[str, float]:
    """kNN macro-F1 per held-out style group, the bank holding the other styles only (centred on its mean)."""
    scores = {}
    for holdout, members in HOLDOUTS.items():
        held = np.isin(styles, members)
        scores[holdout] = knn_scores(features[~held], labels[~held], features[held], labels[held], k=20,
                                     balanced=balanced, centred=centred)["knn_macro_f1"]
    return scores


def evaluate(encoder, images: torch.Tensor, labels: np.ndarray, is_test: np.ndarray, input_size: int,
             styles: np.ndarray | None = None, balanced_vote: bool = False) -> dict:
    """kNN and linear-probe scores of one encoder on the split; with `styles`, kNN leave-one-style-out too."""
    started = time.perf_counter()
    features = embed_tensor(encoder, images, input_size)
    embed_seconds = time.perf_counter() - started
    train, test = features[~is_test], features[is_test]
    scores = knn_scores(train, labels[~is_test], test, labels[is_test], k=20)
    scores["plain_knn_macro_f1"] = knn_scores(train, labels[~is_test], test, labels[is_test], k=20,
                                              centred=False)["knn_macro_f1"]
    scores.update(linear_probe_scores(train, labels[~is_test], test, labels[is_test]))
    scores["embed_images_per_second"] = len(images) / embed_seconds
    if balanced_vote:
        scores["balanced_knn_macro_f1"] = knn_scores(train, labels[~is_test], test, labels[is_test], k=20,
                                                     balanced=True)["knn_macro_f1"]
    if styles is not None:  # the bank holds the other styles only: does the representation carry across styles?
        per_style = loso_knn(features, labels, styles)
        scores.update({f"loso_{holdout}": value for holdout, value in per_style.items()})
        scores["loso_knn_macro_f1"] = float(np.mean(list(per_style.values())))
        scores["plain_loso_knn_macro_f1"] = float(np.mean(list(loso_knn(features, labels, styles,
                                                                        centred=False).values())))
        if balanced_vote:
            scores["balanced_loso_knn_macro_f1"] = float(np.mean(list(loso_knn(features, labels, styles, True).values())))
    return scores


@torch.no_grad()
def readout_features(encoder, images: torch.Tensor, input_size: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Other read-outs of one encoder: the final stage (what ships), the stage before it, both, each with its flip."""
    from illustra.ssl.augment import normalise, resize_batch, to_float

    per_stage = len(encoder.body) // encoder.config.stages
    unit = torch.nn.functional.normalize
    parts: dict[str, list] = {"final": [], "stage before": [], "both": [], "final +flip": [], "stage before +flip": [],
                              "both +flip": []}
    encoder.eval()
    for start in range(0, len(images), batch_size):
        batch = normalise(resize_batch(to_float(images[start:start + batch_size]), input_size))
        outputs = []
        for view in (batch, batch.flip(3)):
            hidden, pooled = encoder.stem(view), []
            for index, block in enumerate(encoder.body):
                hidden = block(hidden)
                if (index + 1) % per_stage == 0:
                    pooled.append(hidden.mean((2, 3)))
            final, before = unit(pooled[-1], dim=1), unit(pooled[-2], dim=1)
            outputs.append({"final": final, "stage before": before, "both": unit(torch.cat([before, final], 1), dim=1)})
        for name in ("final", "stage before", "both"):
            parts[name].append(outputs[0][name])
            parts[f"{name} +flip"].append(unit(outputs[0][name] + outputs[1][name], dim=1))
    return {name: torch.cat(chunks).numpy() for name, chunks in parts.items()}


def encoder_bench_parser() -> argparse.ArgumentParser:
    """The arguments every encoder benchmark on the benchmark split takes (here and in knn_readout.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--encoders", nargs="+", required=True)
    parser.add_argument("--cache-size", type=int, default=64)
    return parser


def main() -> None:
    """Print one row per encoder (random init first)."""
    parser = encoder_bench_parser()
    parser.add_argument("--loso", action="store_true", help="also kNN leave-one-style-out (bank: the other styles)")
    parser.add_argument("--readouts", action="store_true",
                        help="instead: kNN of other read-outs of the first encoder (stage before the last, both, flips)")
    parser.add_argument("--balanced-vote", action="store_true",
                        help="also the kNN with class-balanced votes (and its LOSO mean with --loso)")
    parser.add_argument("--embed-sizes", nargs="+", type=int, default=None,
                        help="embed at each of these input sizes (a row each) instead of the training size")
    args = parser.parse_args()
    torch.manual_seed(0)
    manifest = load_manifest(args.work)
    rows, labels, is_test, styles = labelled_split(args.bench, manifest)
    images = torch.from_numpy(np.ascontiguousarray(open_pixels(args.work, CacheSpec(args.cache_size))[rows]))
    print(f"illustrations: {len(rows)} ({(~is_test).sum()} train / {is_test.sum()} test, split by origin), "
          f"{len(set(labels))} classes")
    first, meta = load_encoder(args.encoders[0])
    architecture = meta["architecture"]
    if args.readouts:
        print("| read-out (centred on the bank's mean) | kNN top-1 | kNN macro-F1 | kNN LOSO mean |")
        print("| --- | ---: | ---: | ---: |")
        for name, features in readout_features(first, images, architecture["input_size"]).items():
            scores = knn_scores(features[~is_test], labels[~is_test], features[is_test], labels[is_test], k=20)
            loso = np.mean(list(loso_knn(features, labels, styles).values()))
            print(f"| {name} | {scores['knn_top1']:.4f} | {scores['knn_macro_f1']:.4f} | {loso:.4f} |", flush=True)
        return
    candidates = [("random init", Encoder(EncoderConfig(**architecture)).eval(), architecture)]
    for path in args.encoders:
        encoder, meta = load_encoder(path)
        epochs = meta.get("training", {}).get("epochs", "?")
        name = "/".join(Path(path).parts[-2:])  # the run folder tells runs apart
        candidates.append((f"{name} (epoch {epochs})", encoder, meta["architecture"]))
    styled = styles if args.loso else None
    loso_head = (" | kNN LOSO " + " | ".join(HOLDOUTS) + " | kNN LOSO mean | kNN LOSO mean, plain"
                 if args.loso else "")
    balanced_head = (" | kNN macro-F1, balanced vote" + (" | kNN LOSO mean, balanced vote" if args.loso else "")
                     if args.balanced_vote else "")
    extra = ((len(HOLDOUTS) + 2) if args.loso else 0) + ((1 + args.loso) if args.balanced_vote else 0)
    print(f"| encoder | kNN top-1 | kNN macro-F1 | kNN macro-F1, plain | probe top-1 | probe macro-F1{loso_head}"
          f"{balanced_head} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * extra)
    sized = [(f"{name} at {size} px" if args.embed_sizes else name, encoder, size)
             for name, encoder, arch in candidates for size in (args.embed_sizes or [arch["input_size"]])]
    for name, encoder, size in sized:
        s = evaluate(encoder, images, labels, is_test, size, styled, args.balanced_vote)
        loso = ("".join(f" | {s[f'loso_{h}']:.4f}" for h in HOLDOUTS) + f" | {s['loso_knn_macro_f1']:.4f}"
                f" | {s['plain_loso_knn_macro_f1']:.4f}" if args.loso else "")
        balanced = (f" | {s['balanced_knn_macro_f1']:.4f}" + (f" | {s['balanced_loso_knn_macro_f1']:.4f}" if args.loso else "")
                    if args.balanced_vote else "")
        print(f"| {name} | {s['knn_top1']:.4f} | {s['knn_macro_f1']:.4f} | {s['plain_knn_macro_f1']:.4f} "
              f"| {s['probe_top1']:.4f} "
              f"| {s['probe_macro_f1']:.4f}{loso}{balanced} |", flush=True)


if __name__ == "__main__":
    main()
