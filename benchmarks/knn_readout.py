"""How to read an SSL encoder for kNN, chosen on a dev split (issue #16): pooling x centring x square root x k.

    python benchmarks/knn_readout.py --bench work/bench --work work/index --encoders E1.safetensors E2.safetensors

The choice is made on the TRAINING part of `ssl_quality.py`'s split by origin, split again by origin (seed 1)
into a dev bank and dev queries, so that `ssl_quality.py`'s test part is not used to choose. Read-outs:
- pooling of the last stage: average (what the encoder outputs), generalised mean (p = 3), average ++ max;
- centred: the dev bank's mean feature subtracted before L2 normalisation (CL2N, SimpleShot, Wang et al. 2019);
- square root of the (non-negative, post-ReLU) features before that (power normalisation);
- k = 10 and 20 of the weighted cosine vote (`illustra.ssl.knn`, temperature 0.07).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ssl_quality import encoder_bench_parser, labelled_split

from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.manifest import load_manifest
from illustra.ssl.augment import normalise, resize_batch, to_float
from illustra.ssl.knn import knn_scores
from illustra.ssl.pretrain import load_encoder

POOLS = ("average", "gem", "average+max")


@torch.no_grad()
def pooled(encoder, images: torch.Tensor, input_size: int, pool: str, batch_size: int = 64) -> np.ndarray:
    """Last-stage feature maps pooled one way (raw: not normalised)."""
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        hidden = encoder.body(encoder.stem(normalise(resize_batch(to_float(images[start:start + batch_size]),
                                                                  input_size))))  # the encoder, before its pool
        if pool == "average":
            out.append(hidden.mean((2, 3)))
        elif pool == "gem":
            out.append(hidden.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3))
        else:
            out.append(torch.cat([hidden.mean((2, 3)), hidden.amax((2, 3))], 1))
    return torch.cat(out).float().numpy()


def dev_knn(features: np.ndarray, labels: np.ndarray, bank: np.ndarray, queries: np.ndarray, k: int,
            centred: bool, root: bool) -> float:
    """Dev kNN macro-F1 of one read-out (centring on the dev bank's mean happens inside `knn_scores`)."""
    x = np.sqrt(np.maximum(features, 0)) if root else features
    x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return knn_scores(x[bank], labels[bank], x[queries], labels[queries], k=k, centred=centred)["knn_macro_f1"]


def main() -> None:
    """Print one row per encoder, pooling, centring and square root."""
    args = encoder_bench_parser().parse_args()
    manifest = load_manifest(args.work)
    rows, labels, is_test, _ = labelled_split(args.bench, manifest)
    _, _, dev_query, _ = labelled_split(args.bench, manifest, seed=1)
    bank, queries = ~is_test & ~dev_query, ~is_test & dev_query
    images = torch.from_numpy(np.ascontiguousarray(open_pixels(args.work, CacheSpec(args.cache_size))[rows]))
    print(f"dev split of the training part by origin: bank {bank.sum()}, queries {queries.sum()} "
          f"(the test part, {is_test.sum()}, unused)")
    print("| encoder | pooling | centred | sqrt | dev kNN macro-F1, k 10 | k 20 |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for path in args.encoders:
        encoder, meta = load_encoder(path)
        name = "/".join(Path(path).parts[-2:])
        for pool in POOLS:
            features = pooled(encoder, images, meta["architecture"]["input_size"], pool)
            for centred in (False, True):
                for root in (False, True):
                    scores = [dev_knn(features, labels, bank, queries, k, centred, root) for k in (10, 20)]
                    print(f"| {name} | {pool} | {'yes' if centred else 'no'} | {'yes' if root else 'no'} "
                          f"| {scores[0]:.4f} | {scores[1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
