"""Representation quality without training a classifier: cosine kNN, and a linear probe."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int = 20,
                temperature: float = 0.07, balanced: bool = False) -> np.ndarray:
    """Weighted cosine kNN (InstDisc-style vote, weight exp(sim / T)) on L2-normalised features.

    `balanced` divides each class's votes by its share of the bank, so that a large class does not win
    by its size alone (the imbalance fix of the fine-tuning, applied to the vote)."""
    classes = int(max(bank_labels.max(), 0)) + 1
    scale = None
    if balanced:
        counts = np.bincount(bank_labels[bank_labels >= 0], minlength=classes).astype(np.float32)
        scale = torch.from_numpy(np.where(counts > 0, counts.mean() / np.maximum(counts, 1), 0.0).astype(np.float32))
    bank_t, query_t = torch.from_numpy(bank), torch.from_numpy(queries)
    labels_t = torch.from_numpy(bank_labels).long()
    predictions = []
    for start in range(0, len(query_t), 1024):
        similarity = query_t[start:start + 1024] @ bank_t.T
        top, index = similarity.topk(min(k, len(bank_t)), dim=1)
        votes = torch.zeros(len(top), classes)
        votes.scatter_add_(1, labels_t[index], (top / temperature).exp())
        predictions.append((votes if scale is None else votes * scale).argmax(1))
    return torch.cat(predictions).numpy()


def knn_scores(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray, k: int = 20,
               balanced: bool = False) -> dict:
    """kNN top-1 accuracy and macro-F1 (`balanced`: votes divided by the class's share of the bank)."""
    predicted = knn_predict(train, train_y, test, k, balanced=balanced)
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
    encoder.train()
    return {key: round(value, 4) for key, value in scores.items()}
