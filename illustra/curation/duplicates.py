"""Exact and near duplicates: cheap candidates (pHash radius, FAISS on embeddings), one pixel-level check.

The pipeline is deliberately two-sided. Candidates come generously from two independent views of an
image — a 64-bit perceptual hash (computed from the pixel cache, searched with a FAISS binary index
within a Hamming radius) and the SSL embedding (FAISS inner-product kNN) — and a pair is only called a
duplicate after a pixel check on the cached images: both images are cut back to their content
rectangle, the small crop that best maps one onto the other is found from their ink profiles, and the
remaining difference after a gain/offset fit (brightness) must be small relative to the ink. That
check is what keeps two styles of one emoji, or colour vs line art, apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.fft import dct
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from illustra.config import build, yaml_defaults

GRAY = np.array([0.299, 0.587, 0.114], np.float32)
LOSSLESS = {"PNG", "BMP", "TIFF", "GIF", "WEBP_LOSSLESS"}


@dataclass(frozen=True)
@yaml_defaults("curation.yaml", "duplicates")
class DuplicateSettings:
    """Thresholds of the duplicate job; chosen on the benchmark truth (benchmarks/duplicates.py), then frozen."""

    hash_radius: int  # pHash candidates: Hamming distance <= this (of 64 bits)
    embedding_k: int  # FAISS neighbours per image on the SSL embeddings
    embedding_min_cosine: float
    blank_ink: float  # images with less ink than this are 'blank': never called duplicates
    prefilter: float  # cheap 8 px shift-tolerant difference; pairs above it are rejected
    max_crop: float  # largest border share the crop search tries, per side
    content_size: int  # side of the content square the residual is measured on
    refine_step: float  # local crop refinement step (0 = off) ...
    refine_band: float  # ... for pairs whose first residual is within this factor of the threshold
    max_residual: float  # relative residual that still counts as a duplicate (benchmarks/duplicates.py)
    batch_pairs: int

    @classmethod
    def from_dict(cls, raw: dict | None) -> DuplicateSettings:
        """Settings from a config mapping (unknown keys are an error)."""
        return build(cls, raw)

    def to_dict(self) -> dict:
        """Plain mapping, for the run record."""
        return asdict(self)


def gray(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, S, S) float32 luminance in 0-255."""
    return images.astype(np.float32) @ GRAY


def perceptual_hashes(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """64-bit pHash of every cached image (imagehash's algorithm: 32 px gray, DCT, 8x8 low band > median)."""
    codes = []
    for start in range(0, len(images), chunk):
        batch = gray(np.asarray(images[start:start + chunk]))
        side = batch.shape[1]
        if side != 32:
            batch = F.interpolate(torch.from_numpy(batch)[:, None], size=(32, 32), mode="area")[:, 0].numpy()
        low = dct(dct(batch, axis=1), axis=2)[:, :8, :8].reshape(len(batch), 64)
        codes.append(np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1))
    return np.concatenate(codes) if codes else np.zeros((0, 8), np.uint8)


def hash_candidates(codes: np.ndarray, radius: int) -> np.ndarray:
    """Pairs (i < j) whose hashes differ in at most `radius` bits (FAISS binary range search)."""
    if len(codes) < 2:
        return np.zeros((0, 2), np.int64)
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    limits, _, neighbours = index.range_search(np.ascontiguousarray(codes), radius + 1)  # radius is exclusive
    queries = np.repeat(np.arange(len(codes)), np.diff(limits.astype(np.int64)))
    return _ordered_pairs(queries, neighbours)


def embedding_candidates(embeddings: np.ndarray, k: int, min_cosine: float) -> np.ndarray:
    """Pairs (i < j) among each image's k nearest embeddings with cosine >= min_cosine (FAISS inner product)."""
    if len(embeddings) < 2:
        return np.zeros((0, 2), np.int64)
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, neighbours = index.search(vectors, min(k + 1, len(vectors)))
    queries = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
    close = scores.ravel() >= min_cosine
    return _ordered_pairs(queries[close], neighbours.ravel()[close])


def _ordered_pairs(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Unique (i < j) pairs from two index arrays (self pairs and -1 dropped)."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    valid = (second >= 0) & (first != second)
    pairs = np.stack([np.minimum(first, second), np.maximum(first, second)], 1)[valid]
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


def ink_share(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean darkness (1 - value/255) of each cached image: ~0 for blank (all-white) images."""
    out = [1 - np.asarray(images[s:s + chunk], np.float32).mean((1, 2, 3)) / 255 for s in range(0, len(images), chunk)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def content_squares(images: np.ndarray, widths: np.ndarray, heights: np.ndarray, size: int) -> torch.Tensor:
    """Ink (1 - RGB) of each image's content rectangle in the letterboxed cache, stretched to size x size."""
    cache = images.shape[1]
    scale = cache / np.maximum(np.maximum(widths, heights), 1)
    content_w = np.clip(np.round(widths * scale), 1, cache) / cache  # share of the cache square
    content_h = np.clip(np.round(heights * scale), 1, cache) / cache
    theta = torch.zeros(len(images), 2, 3)
    theta[:, 0, 0] = torch.from_numpy(content_w.astype(np.float32))
    theta[:, 1, 1] = torch.from_numpy(content_h.astype(np.float32))
    ink = 1 - torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    grid = F.affine_grid(theta, (len(images), 3, cache, cache), align_corners=False)
    full = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.interpolate(full, size=(size, size), mode="area")


def _crop_grid(max_crop: float, step: float = 0.01) -> torch.Tensor:
    """Every (start, end) border pair to try along one axis; negative = the other image is the crop."""
    values = torch.arange(-max_crop, max_crop + 1e-9, step)
    return torch.cartesian_prod(values, values)  # (G, 2)


def _best_axis_crop(profile_a: torch.Tensor, profile_b: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Per pair, the (start, end) border shares that best map A's ink profile onto B's; (P, 2)."""
    profile_a, profile_b = _standardise(profile_a), _standardise(profile_b)  # brightness-proof
    length = profile_a.shape[1]
    u = (torch.arange(length) + 0.5) / length  # B's sample positions in 0-1
    positions = grid[:, :1] + u[None] * (1 - grid[:, :1] - grid[:, 1:])  # (G, L) in A's coordinates
    x = (positions * length - 0.5).clamp(0, length - 1)
    low = x.floor().long()
    high = (low + 1).clamp(max=length - 1)
    weight = x - low
    sampled = profile_a[:, low] * (1 - weight) + profile_a[:, high] * weight  # (P, G, L)
    inside = ((positions >= 0) & (positions <= 1)).float()
    error = ((sampled * inside - profile_b[:, None]).abs()).mean(2)
    return grid[error.argmin(1)]


def _standardise(profile: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit spread per row, so a gain/offset change does not move the best crop."""
    centred = profile - profile.mean(1, keepdim=True)
    return centred / (centred.abs().mean(1, keepdim=True) + 1e-4)


def _warp(ink: torch.Tensor, crop_x: torch.Tensor, crop_y: torch.Tensor) -> torch.Tensor:
    """Resample ink so that its [start, 1 - end] region fills the square (outside = white)."""
    theta = torch.zeros(len(ink), 2, 3)
    theta[:, 0, 0] = 1 - crop_x[:, 0] - crop_x[:, 1]
    theta[:, 0, 2] = crop_x[:, 0] - crop_x[:, 1]
    theta[:, 1, 1] = 1 - crop_y[:, 0] - crop_y[:, 1]
    theta[:, 1, 2] = crop_y[:, 0] - crop_y[:, 1]
    grid = F.affine_grid(theta, ink.shape, align_corners=False)
    return F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _refined_residual(a: torch.Tensor, b: torch.Tensor, crop_x: torch.Tensor, crop_y: torch.Tensor,
                      step: float) -> torch.Tensor:
    """Smallest residual over a local 3^4 grid of crops around the profile estimate (sub-pixel alignment)."""
    best = _gain_offset_residual(_warp(a, crop_x, crop_y), b)
    offsets = torch.cartesian_prod(*[torch.tensor([-step, 0.0, step])] * 4)
    for offset in offsets:
        if not offset.abs().sum():
            continue
        warped = _warp(a, crop_x + offset[:2], crop_y + offset[2:])
        best = torch.minimum(best, _gain_offset_residual(warped, b))
    return best


def _gain_offset_residual(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |target - (g * source + o)| per pair, g and o fitted per channel (brightness shifts)."""
    mean_s, mean_t = source.mean((2, 3), keepdim=True), target.mean((2, 3), keepdim=True)
    centred = source - mean_s
    gain = (centred * (target - mean_t)).mean((2, 3), keepdim=True) / (centred.pow(2).mean((2, 3), keepdim=True) + 1e-4)
    gain = gain.clamp(0.8, 1.25)  # a brightness shift, not an arbitrary re-colouring
    return (target - (gain * centred + mean_t)).abs().mean((1, 2, 3))


def pair_residuals(content: torch.Tensor, pairs: np.ndarray, settings: DuplicateSettings) -> np.ndarray:
    """Relative residual of every pair after the best small crop and a gain/offset fit (0 = identical).

    The crop comes from the ink profiles; pairs near the threshold get a local sub-pixel refinement.
    The residual is divided by the target's own contrast, so dark photos and white drawings compare fairly.
    """
    grid = _crop_grid(settings.max_crop)
    out = []
    for start in range(0, len(pairs), settings.batch_pairs):
        chunk = torch.from_numpy(pairs[start:start + settings.batch_pairs])
        a, b = content[chunk[:, 0]], content[chunk[:, 1]]
        crop_x = _best_axis_crop(a.mean((1, 2)), b.mean((1, 2)), grid)
        crop_y = _best_axis_crop(a.mean((1, 3)), b.mean((1, 3)), grid)
        spread = (b - b.mean((2, 3), keepdim=True)).abs().mean((1, 2, 3)).clamp_min(1e-3)  # structure, not darkness
        residual = _gain_offset_residual(_warp(a, crop_x, crop_y), b) / spread
        near = (residual > settings.max_residual) & (residual <= settings.max_residual * settings.refine_band)
        if settings.refine_step > 0 and near.any():
            refined = _refined_residual(a[near], b[near], crop_x[near], crop_y[near], settings.refine_step)
            residual[near] = torch.minimum(residual[near], refined / spread[near])
        out.append(residual.numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def coarse_difference(images: np.ndarray, pairs: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Cheap prefilter: mean |A - B| at 8 px, the best of 3x3 one-pixel shifts (0-1 scale)."""
    small = F.interpolate(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255,
                          size=(8, 8), mode="area")
    out = []
    for start in range(0, len(pairs), chunk):
        p = torch.from_numpy(pairs[start:start + chunk])
        a, b = small[p[:, 0]], small[p[:, 1]]
        best = None
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.roll(b, (dy, dx), (2, 3))
                diff = (a[..., 1:7, 1:7] - shifted[..., 1:7, 1:7]).abs().mean((1, 2, 3))
                best = diff if best is None else torch.minimum(best, diff)
        out.append(best.numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def connected_groups(count: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item from duplicate pairs (connected components); -1 for items in no pair."""
    if len(pairs) == 0:
        return np.full(count, -1)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    in_pair = np.zeros(count, bool)
    in_pair[pairs.ravel()] = True
    _, dense = np.unique(labels[in_pair], return_inverse=True)
    groups = np.full(count, -1)
    groups[in_pair] = dense
    return groups


def keeper_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """The stated keep rule as sort keys: largest resolution, then lossless format, then path."""
    return pd.DataFrame({
        "pixels": -(manifest["width"].fillna(0) * manifest["height"].fillna(0)),
        "lossy": ~manifest["format"].fillna("").str.upper().isin(LOSSLESS),
        "path": manifest["path"],
    }, index=manifest.index)


def find_duplicates(manifest: pd.DataFrame, pixels: np.ndarray, embeddings: np.ndarray | None,
                    settings: DuplicateSettings = DuplicateSettings()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Duplicate columns for every manifest row, and the confirmed pairs with how each was found.

    Rows: `dup_group` (-1 = unique), `dup_keep`, `dup_reason`, `dup_label_conflict` (blank images, which
    `illustra.curation.checks.BlankCheck` flags, are never candidates).
    Pairs: `a, b` (manifest row numbers), `kind` (exact | near), `source` (pixels | hash | embedding | both),
    `residual`.
    """
    usable = np.flatnonzero(manifest["cache_row"].to_numpy() >= 0)
    images = np.asarray(pixels[manifest["cache_row"].to_numpy()[usable]])
    ink = ink_share(images)
    blank = ink < settings.blank_ink
    hashed = hash_candidates(perceptual_hashes(images), settings.hash_radius)
    embedded = (embedding_candidates(embeddings[usable], settings.embedding_k, settings.embedding_min_cosine)
                if embeddings is not None else np.zeros((0, 2), np.int64))
    exact = _exact_pairs(manifest["pixel_hash"].to_numpy()[usable])
    candidates = _ordered_pairs(*np.concatenate([hashed, embedded, exact]).T) if len(hashed) + len(embedded) + len(
        exact) else np.zeros((0, 2), np.int64)
    candidates = candidates[~blank[candidates[:, 0]] & ~blank[candidates[:, 1]]]
    source = _candidate_source(candidates, hashed, embedded, exact, len(usable))
    is_exact = np.isin(_pair_keys(candidates, len(usable)), _pair_keys(exact, len(usable)))
    residual = np.zeros(len(candidates), np.float32)  # identical pixels: residual 0
    check = ~is_exact
    coarse = coarse_difference(images, candidates[check])
    survivors = np.flatnonzero(check)[coarse <= settings.prefilter]
    residual[np.flatnonzero(check)] = np.inf
    if len(survivors):
        rows = manifest.iloc[usable]
        content = content_squares(images, rows["width"].to_numpy(float), rows["height"].to_numpy(float),
                                  settings.content_size)
        residual[survivors] = pair_residuals(content, candidates[survivors], settings)
    confirmed = residual <= settings.max_residual
    pairs = pd.DataFrame({"a": usable[candidates[confirmed, 0]], "b": usable[candidates[confirmed, 1]],
                          "kind": np.where(is_exact[confirmed], "exact", "near"),
                          "source": source[confirmed], "residual": residual[confirmed]})
    columns = _row_columns(manifest, pairs)
    return columns, pairs


def _exact_pairs(pixel_hashes: np.ndarray) -> np.ndarray:
    """Pairs of rows whose decoded pixels are identical (same pixel hash)."""
    frame = pd.DataFrame({"hash": pixel_hashes, "row": np.arange(len(pixel_hashes))})
    pairs = [np.stack([rows.iloc[0] * np.ones(len(rows) - 1, np.int64), rows.iloc[1:].to_numpy()], 1)
             for _, rows in frame.groupby("hash")["row"] if len(rows) > 1]
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), np.int64)


def _pair_keys(pairs: np.ndarray, count: int) -> np.ndarray:
    """One integer per (i, j) pair, for set operations."""
    return pairs[:, 0].astype(np.int64) * count + pairs[:, 1] if len(pairs) else np.zeros(0, np.int64)


def _candidate_source(candidates: np.ndarray, hashed: np.ndarray, embedded: np.ndarray, exact: np.ndarray,
                      count: int) -> np.ndarray:
    """Which candidate generator proposed each pair: both | hash | embedding | pixels (identical pixels only)."""
    keys = _pair_keys(candidates, count)
    in_hash = np.isin(keys, _pair_keys(hashed, count))
    in_emb = np.isin(keys, _pair_keys(embedded, count))
    return np.where(in_hash & in_emb, "both", np.where(in_hash, "hash", np.where(in_emb, "embedding", "pixels")))


def _row_columns(manifest: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per-row duplicate columns from confirmed pairs: group, keeper by the stated rule, reason, conflicts."""
    columns = pd.DataFrame(index=manifest.index)
    groups = connected_groups(len(manifest), pairs[["a", "b"]].to_numpy())
    columns["dup_group"] = groups
    columns["dup_keep"] = True
    columns["dup_reason"] = ""
    columns["dup_label_conflict"] = False
    order = keeper_order(manifest)
    for group, members in pd.Series(manifest.index[groups >= 0]).groupby(groups[groups >= 0]):
        rows = members.to_numpy()
        ranked = order.loc[rows].sort_values(["pixels", "lossy", "path"]).index
        keeper = ranked[0]
        classes = manifest.loc[rows, "class_folder"].unique()
        conflict = len(classes) > 1
        columns.loc[rows, "dup_keep"] = False
        columns.loc[keeper, "dup_keep"] = True
        columns.loc[rows, "dup_label_conflict"] = conflict
        keeper_path = manifest.at[keeper, "path"]
        columns.loc[ranked[1:], "dup_reason"] = f"duplicate of {keeper_path}"
        columns.loc[keeper, "dup_reason"] = (f"kept for group {group} (largest, then lossless, then path)"
                                             + (f"; label conflict across {', '.join(sorted(classes))}" if conflict else ""))
    return columns
