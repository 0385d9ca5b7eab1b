"""Duplicate detection vs the benchmark truth: ours (cache pHash + FAISS + aligned pixel check) vs plain imagehash.

    python benchmarks/duplicates.py --bench work/bench --work work/index --embeddings work/embeddings [--sweep]

Prints pairwise precision/recall (pairs implied by the predicted groups vs the truth groups, the truth
completed with natural duplicates by `illustra.bench.truth`), recall per transform, the share of
`truth/near_miss.csv` pairs wrongly grouped, images/s of both methods, and FAISS search time on
10k / 100k / 1M synthetic vectors. `--sweep` prints the grid of the two decision thresholds from one
alignment (the frozen values in configs/curation.yaml were chosen from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from illustra.curation.duplicates import (
    DuplicateSettings,
    connected_groups,
    embedding_candidates,
    find_duplicates,
    hash_candidates,
)
from illustra.data.cache import open_pixels
from illustra.data.manifest import load_manifest


def group_pairs(groups: np.ndarray) -> set[tuple[int, int]]:
    """Every (i < j) pair inside each group id >= 0."""
    pairs: set[tuple[int, int]] = set()
    for group in np.unique(groups[groups >= 0]):
        pairs |= set(itertools.combinations(np.flatnonzero(groups == group).tolist(), 2))
    return pairs


def truth_pairs(bench: Path, paths: pd.Series) -> tuple[set[tuple[int, int]], dict[tuple[int, int], str]]:
    """Truth duplicate pairs as manifest rows, with the transform pair that made each."""
    truth = pd.read_csv(bench / "truth" / "duplicates.csv")
    row = {path: i for i, path in enumerate(paths)}
    pairs, kinds = set(), {}
    for _, group in truth.groupby("group"):
        members = sorted((row[p], t) for p, t in zip(group["path"], group["transform"]))
        for (a, ta), (b, tb) in itertools.combinations(members, 2):
            pairs.add((a, b))
            kinds[(a, b)] = "/".join(sorted({ta, tb} - {"original"}) or ["original"]) or "original"
    return pairs, kinds


def near_miss_pairs(bench: Path, paths: pd.Series) -> set[tuple[int, int]]:
    """Distinct sources that come closest in pixels (truth/near_miss.csv) as manifest rows."""
    table = bench / "truth" / "near_miss.csv"
    if not table.exists():
        return set()
    near = pd.read_csv(table)
    row = {path: i for i, path in enumerate(paths)}
    return {tuple(sorted((row[a], row[b]))) for a, b in zip(near["path_a"], near["path_b"]) if a in row and b in row}


def score(predicted: set, truth: set) -> tuple[float, float]:
    """Pairwise precision and recall."""
    hit = len(predicted & truth)
    return hit / max(len(predicted), 1), hit / max(len(truth), 1)


def plain_imagehash(data: Path, paths: pd.Series, radius: int) -> tuple[np.ndarray, float]:
    """The library way: decode each file, imagehash.phash, all pairs within `radius`; (groups, seconds)."""
    started = time.perf_counter()
    hashes = np.stack([imagehash.phash(Image.open(data / p)).hash.ravel() for p in paths])
    pairs = []
    for i in range(len(hashes)):  # all pairs, vectorised per row
        distance = (hashes[i + 1:] != hashes[i]).sum(1)
        pairs += [(i, i + 1 + j) for j in np.flatnonzero(distance <= radius)]
    seconds = time.perf_counter() - started
    return connected_groups(len(paths), np.array(pairs, np.int64).reshape(-1, 2)), seconds


def faiss_timing(dim: int = 256, k: int = 10, counts: tuple[int, ...] = (10_000, 100_000),
                 exact_up_to: int = 100_000) -> list[str]:
    """Candidate search time (every vector queried) with the detector's own functions, exact and HNSW.

    Synthetic vectors (unit 256-d, 64-bit codes); the exact searches are quadratic and are skipped above
    `exact_up_to`. The detector switches to HNSW above `duplicates.exact_search_max` images.
    """
    lines, rng = [], np.random.default_rng(0)
    for count in counts:
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        codes = rng.integers(0, 256, (count, 8), dtype=np.uint8)
        cells = []
        for label, exact_max in (("exact", count), ("HNSW", 0)):
            if label == "exact" and count > exact_up_to:
                cells.append("exact: skipped (quadratic)")
                continue
            started = time.perf_counter()
            embedding_candidates(vectors, k, 0.8, exact_max=exact_max)
            middle = time.perf_counter()
            hash_candidates(codes, 12, exact_max=exact_max)
            cells.append(f"{label}: embedding kNN {middle - started:.1f} s, pHash {time.perf_counter() - middle:.1f} s")
        lines.append(f"candidate search {count:>8} images: " + "; ".join(cells))
    return lines


def sweep(manifest, pixels, embeddings, settings, truth: set, near: set) -> None:
    """P / R / near-miss share over a grid of the two thresholds, from one alignment of every candidate."""
    loose = dataclasses.replace(settings, max_residual=float("inf"), max_patch=float("inf"),
                                max_colour_shift=float("inf"))
    _, pairs = find_duplicates(manifest, pixels, embeddings, loose)
    for max_residual in (0.06, 0.075, 0.09, 0.12, 0.16):
        for max_patch in (0.025, 0.03, 0.035, 0.04, 0.045, 0.05):
            kept = pairs[(pairs["residual"] <= max_residual) & (pairs["worst_patch"] <= max_patch)
                         & (pairs["colour_shift"] <= settings.max_colour_shift)]
            predicted = group_pairs(connected_groups(len(manifest), kept[["a", "b"]].to_numpy()))
            p, r = score(predicted, truth)
            print(f"sweep max_residual {max_residual:<6} max_patch {max_patch:<7} P {p:.4f} R {r:.4f} "
                  f"near-miss grouped {len(near & predicted) / max(len(near), 1):.4f}")


def main() -> None:
    """Run both methods on one benchmark and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench", default="work/bench")
    parser.add_argument("--work", default="work/index")
    parser.add_argument("--embeddings", default="work/embeddings")
    parser.add_argument("--plain-radius", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--false-out", help="CSV of the false pairs (for looking at them)")
    parser.add_argument("--sweep", action="store_true", help="grid of max_residual x max_patch from one alignment")
    parser.add_argument("--faiss-counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--faiss-only", action="store_true", help="only the candidate-search timing")
    args = parser.parse_args()
    if args.faiss_only:
        for line in faiss_timing(counts=tuple(args.faiss_counts)):
            print(line, flush=True)
        return
    bench = Path(args.bench)
    manifest, pixels = load_manifest(args.work), open_pixels(args.work)
    embeddings = np.load(Path(args.embeddings) / "embeddings.npy")
    truth, kinds = truth_pairs(bench, manifest["path"])
    near = near_miss_pairs(bench, manifest["path"])
    settings = DuplicateSettings()
    started = time.perf_counter()
    columns, _ = find_duplicates(manifest, pixels, embeddings, settings)
    ours_seconds = time.perf_counter() - started
    predicted = group_pairs(columns["dup_group"].to_numpy())
    precision, recall = score(predicted, truth)
    count = len(manifest)
    print(f"images {count}; truth pairs {len(truth)}; near-miss pairs {len(near)}")
    print(f"ours  (cache pHash r<={settings.hash_radius} + FAISS kNN + aligned check residual <= "
          f"{settings.max_residual}, worst patch <= {settings.max_patch}): "
          f"P {precision:.4f}  R {recall:.4f}  {ours_seconds:.1f} s  {count / ours_seconds:.0f} images/s "
          f"(pixel cache already built by `illustra scan`)")
    wrong = len(near & predicted)
    print(f"   near-miss pairs wrongly grouped {wrong}/{len(near)} = {wrong / max(len(near), 1):.4f}")
    for kind in sorted(set(kinds.values())):
        members = {p for p, k in kinds.items() if k == kind}
        found = len(members & predicted)
        print(f"   recall {kind:<22} {found:>4}/{len(members):<4} = {found / len(members):.3f}")
    false = predicted - truth
    print(f"   false pairs {len(false)} (listed in --false-out)")
    if args.false_out:
        paths = manifest["path"].to_numpy()
        pd.DataFrame(sorted(false), columns=["a", "b"]).assign(path_a=lambda f: paths[f["a"]],
                                                              path_b=lambda f: paths[f["b"]]).to_csv(args.false_out, index=False)
    if args.sweep:
        sweep(manifest, pixels, embeddings, settings, truth, near)
    if not args.skip_plain:
        data = bench / "training"
        for radius in args.plain_radius:
            groups, seconds = plain_imagehash(data, manifest["path"], radius)
            p, r = score(group_pairs(groups), truth)
            print(f"plain imagehash.phash per file + all pairs <= {radius}: P {p:.4f}  R {r:.4f}  "
                  f"{seconds:.1f} s  {count / seconds:.0f} images/s")
    for line in faiss_timing(counts=tuple(args.faiss_counts)):
        print(line)


if __name__ == "__main__":
    main()
