"""Representation quality without training a classifier: cosine kNN, and a linear probe."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score


def centre(bank: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the bank's mean feature from bank and queries, then L2-normalise both (CL2N).

    The pooled features of a ReLU network share one large mean direction, so their raw cosine similarities
    are all high and the mean, not the content, decides much of a ranking. Centring on the bank's mean
    removes it (SimpleShot, Wang et al. 2019, "CL2N"). Only the bank is used: no label and no query."""
    mean = bank.mean(0, keepdims=True)

    def unit(features: np.ndarray) -> np.ndarray:
        shifted = np.asarray(features, np.float32) - mean
        return (shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    return unit(bank), unit(queries)


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int = 20,
                temperature: float = 0.07, balanced: bool = False, centred: bool = True) -> np.ndarray:
    """Weighted cosine kNN (InstDisc-style vote, weight exp(sim / T)).

    `centred` (the project's kNN since 2026-12-07): features centred on the bank's mean and L2-normalised
    (`centre`); without it, the features as given, which must be L2-normalised (the read-out before).
    On the benchmark the centred kNN reads +0.05 to +0.08 macro-F1 for the `cpu` SimCLR encoders, +0.025 for the
    `gpu` one and +0.03 at random init (benchmarks/RESULTS.md, "kNN on centred features").
    `balanced` divides each class's votes by its share of the bank, so that a large class does not win
    by its size alone (the imbalance fix of the fine-tuning, applied to the vote)."""
    if centred and len(bank):
        bank, queries = centre(bank, queries)
    classes = int(max(bank_labels.max(), 0)) + 1
    scale = None
    if balanced:
        counts = np.bincount(bank_labels[bank_labels >= 0], minlength=classes).astype(np.float32)
        scale = torch.from_numpy(np.where(counts > 0, counts.mean() / np.maximum(counts, 1), 0.0).astype(np.float32))
    def tensor(array: np.ndarray, dtype) -> torch.Tensor:  # a copy only where the input is a read-only view, etc.
        return torch.from_numpy(np.require(array, dtype, ["C", "W"]))

    bank_t, query_t, labels_t = tensor(bank, np.float32), tensor(queries, np.float32), tensor(bank_labels, np.int64)
    predictions = []
    for start in range(0, len(query_t), 1024):
        similarity = query_t[start:start + 1024] @ bank_t.T
        top, index = similarity.topk(min(k, len(bank_t)), dim=1)
        votes = torch.zeros(len(top), classes)
        votes.scatter_add_(1, labels_t[index], (top / temperature).exp())
        predictions.append((votes if scale is None else votes * scale).argmax(1))
    return torch.cat(predictions).numpy()


def knn_scores(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray, k: int = 20,
               balanced: bool = False, centred: bool = True) -> dict:
    """kNN top-1 accuracy and macro-F1 (`balanced`: votes divided by the class's share of the bank;
    `centred`: on features centred on the bank's mean, see `knn_predict`)."""
    predicted = knn_predict(train, train_y, test, k, balanced=balanced, centred=centred)
    return {"knn_top1": float((predicted == test_y).mean()),
            "knn_macro_f1": float(f1_score(test_y, predicted, average="macro"))}


def linear_probe_scores(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray) -> dict:
    """Macro-F1 of a logistic-regression probe on frozen features (standardised)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000, C=1.0)
    probe.fit((train - mean) / std, train_y)
    predicted = probe.predict((test - mean) / std)
    return {"probe_top1": float((predicted == test_y).mean()),
            "probe_macro_f1": float(f1_score(test_y, predicted, average="macro"))}


def monitor_split(count: int, bank_size: int = 4000, query_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (bank, query) index split for the training-time monitor."""
    order = np.random.default_rng(12345).permutation(count)
    queries = order[: min(query_size, count // 5)]
    bank = order[len(queries): len(queries) + bank_size]
    return bank, queries


def knn_monitor(encoder, data: torch.Tensor, labels: np.ndarray, config, device) -> dict:
    """kNN (k from config) on a labelled slice of the training images: a cheap progress signal."""
    from illustra.ssl.embed import embed_tensor

    known = np.flatnonzero(labels >= 0)
    if len(known) < 50:
        return {}
    bank, queries = monitor_split(len(known))
    bank, queries = known[bank], known[queries]
    features = embed_tensor(encoder, data[np.concatenate([bank, queries])], config.encoder.input_size, device)
    scores = knn_scores(features[: len(bank)], labels[bank], features[len(bank):], labels[queries], config.knn_k)
    plain = knn_scores(features[: len(bank)], labels[bank], features[len(bank):], labels[queries], config.knn_k,
                       centred=False)
    scores.update({f"{key}_plain": value for key, value in plain.items()})  # the read-out before 2026-12-07
    encoder.train()
    return {key: round(value, 4) for key, value in scores.items()}
