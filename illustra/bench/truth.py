"""Complete the benchmark truth: natural duplicates among the sources and near misses (issue #17).

The builder drops source images whose pixels are *exactly* identical, but the public sources also hold
pictures that are the same drawing in all but bytes: OpenMoji's colour and black renders of a white
square, openclipart drawings saved twice under two names, at two sizes. A careful person groups those, so
the truth must list them, or the detector is blamed for finding them. And precision is only measured
where it is hard when the truth names the *distinct* sources that come closest in pixels (two flags
that differ by a star, a cyclist with and without a hair bun).

The criterion is deliberately not the detector's (no hashes, no embeddings, no alignment search):

* every original (a source file, not an injected copy; photos excluded) is rendered on white at
  ``RENDER`` x ``RENDER`` px, stretched, with area resampling;
* candidate pairs are each render's ``NEIGHBOURS`` nearest renders in plain pixel space (exact
  L2 search at 16 px, FAISS flat index);
* on the 64 px renders, a pixel *differs* when any channel differs by more than ``PIXEL_TOLERANCE``
  (of 255); the share is taken over the pixels that are ink (not white) in either image, so a small
  line drawing on a big white canvas is not "99 % identical" to every other one;
* **natural duplicates**: aspect ratios within ``ASPECT_TOLERANCE``, at most ``NATURAL_SHARE`` of the
  ink differing, a mean difference of at most ``NATURAL_MEAN`` and no ``PATCH`` x ``PATCH`` patch whose
  mean difference exceeds ``NATURAL_PATCH``. Measured on the benchmark: a star on a flag or a tear on
  a face differs on 0.6 % of the ink with a worst patch of 0.25-0.38; two renders of one flag that
  differ only by compression on 0.03 % with 0.04. Pictures that are the same drawing shifted or
  rescaled inside the canvas are *not* caught by this (no alignment, on purpose);
* **near misses**: not natural duplicates, same aspect, and at most ``NEAR_MISS_SHARE`` of the ink
  differs (the rest of the picture is the same to the pixel).

Natural pairs join ``truth/duplicates.csv`` with transform ``natural`` (merged with any injected
group of either member); the builder's own groups stay in ``truth/duplicates_injected.csv``;
``truth/natural.csv`` and ``truth/near_miss.csv`` list the pairs with their measurements.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from illustra.bench.assemble import _write_csv

RENDER = 64
SEARCH = 16
NEIGHBOURS = 10
PIXEL_TOLERANCE = 24
WHITE = 250
ASPECT_TOLERANCE = 0.02
PATCH = 4
NATURAL_PATCH = 0.06
NATURAL_MEAN = 0.012
NATURAL_SHARE = 0.003
NEAR_MISS_SHARE = 0.15
CRITERION = {"render": RENDER, "search": SEARCH, "neighbours": NEIGHBOURS, "pixel_tolerance": PIXEL_TOLERANCE,
             "white": WHITE, "aspect_tolerance": ASPECT_TOLERANCE, "patch": PATCH,
             "natural_patch": NATURAL_PATCH, "natural_mean": NATURAL_MEAN, "natural_share": NATURAL_SHARE,
             "near_miss_share": NEAR_MISS_SHARE}


def render(path: Path) -> tuple[np.ndarray, float]:
    """(RENDER, RENDER, 3) uint8 on white, stretched, and the width/height ratio; (None, 0) if undecodable."""
    with Image.open(path) as image:
        image.load()
        ratio = image.width / max(image.height, 1)
        rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB").resize((RENDER, RENDER), Image.Resampling.BOX)), ratio


def compare(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair of renders (P, S, S, 3): share of ink pixels that differ, mean |a - b| and worst patch (0-1)."""
    a, b = a.astype(np.int16), b.astype(np.int16)
    gap = np.abs(a - b)
    differs = gap.max(-1) > PIXEL_TOLERANCE
    ink = (a.min(-1) < WHITE) | (b.min(-1) < WHITE)
    share = differs.sum((1, 2)) / np.maximum(ink.sum((1, 2)), 1)
    side = a.shape[1] // PATCH
    patches = gap.reshape(len(a), side, PATCH, side, PATCH, 3).mean((2, 4)).max((1, 2, 3))
    return share, gap.mean((1, 2, 3)) / 255, patches / 255


def originals(truth: Path) -> list[str]:
    """Paths of the source illustrations (injected copies and photos excluded)."""
    with open(truth / "sources.csv", encoding="utf-8") as handle:
        illustrations = [row["path"] for row in csv.DictReader(handle) if row["kind"] == "illustration"]
    copies = {row["path"] for row in _read(truth / "duplicates_injected.csv") if row["transform"] != "original"}
    return sorted(p for p in illustrations if p not in copies)


def source_pairs(training: Path, paths: list[str]) -> tuple[list[tuple], dict]:
    """Measured nearest-render pairs: (i, j, share, mean difference, worst patch, same_aspect), decode counts."""
    renders, ratios, failed = [], [], 0
    for path in paths:
        try:
            pixels, ratio = render(training / path)
        except (OSError, ValueError):
            pixels, ratio, failed = np.full((RENDER, RENDER, 3), 255, np.uint8), 0.0, failed + 1
        renders.append(pixels)
        ratios.append(ratio)
    renders = np.stack(renders) if renders else np.zeros((0, RENDER, RENDER, 3), np.uint8)
    ratios = np.array(ratios)
    small = renders.reshape(len(renders), SEARCH, RENDER // SEARCH, SEARCH, RENDER // SEARCH, 3).mean((2, 4))
    vectors = np.ascontiguousarray(small.reshape(len(renders), -1), np.float32)
    import faiss  # here, not at import: building the fixture needs no FAISS (a bare GPU machine has none)

    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    _, neighbours = index.search(vectors, min(NEIGHBOURS + 1, len(vectors)))
    first = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
    second = neighbours.ravel()
    keep = (second >= 0) & (second != first)
    pairs = np.unique(np.sort(np.stack([first[keep], second[keep]], 1), 1), axis=0)
    share, mean, patch = compare(renders[pairs[:, 0]], renders[pairs[:, 1]])
    aspect = np.abs(np.log(np.maximum(ratios[pairs[:, 0]], 1e-6) / np.maximum(ratios[pairs[:, 1]], 1e-6)))
    same = (aspect <= np.log1p(ASPECT_TOLERANCE)) & (ratios[pairs[:, 0]] > 0) & (ratios[pairs[:, 1]] > 0)
    rows = [(int(i), int(j), float(s), float(m), float(w), bool(a))
            for (i, j), s, m, w, a in zip(pairs, share, mean, patch, same)]
    return rows, {"originals": len(paths), "undecodable": failed, "candidate_pairs": len(rows)}


def complete_truth(bench: str | Path) -> dict:
    """Write the completed truth files under BENCH/truth (idempotent); returns the counts."""
    bench = Path(bench)
    truth = bench / "truth"
    injected = truth / "duplicates_injected.csv"
    if not injected.exists():
        injected.write_bytes((truth / "duplicates.csv").read_bytes())
    paths = originals(truth)
    measured, counts = source_pairs(bench / "training", paths)
    natural = [r for r in measured if r[5] and r[2] <= NATURAL_SHARE and r[3] <= NATURAL_MEAN and r[4] <= NATURAL_PATCH]
    groups = merge_groups(_read(injected), [(paths[i], paths[j]) for i, j, *_ in natural])
    _write_csv(truth / "duplicates.csv", ["path", "group", "transform"], groups)
    header = ["path_a", "path_b", "differing_share", "mean_difference", "worst_patch"]
    natural_rows = [[paths[i], paths[j], f"{s:.4f}", f"{m:.4f}", f"{w:.4f}"] for i, j, s, m, w, _ in natural]
    _write_csv(truth / "natural.csv", header, natural_rows)
    group_of = {row[0]: row[1] for row in groups}
    near = [r for r in measured if r[5] and r[2] <= NEAR_MISS_SHARE
            and group_of.get(paths[r[0]], -1) != group_of.get(paths[r[1]], -2)]
    near_rows = [[paths[i], paths[j], f"{s:.4f}", f"{m:.4f}", f"{w:.4f}"]
                 for i, j, s, m, w, _ in sorted(near, key=lambda r: (r[2], r[3]))]
    _write_csv(truth / "near_miss.csv", header, near_rows)
    summary = {**counts, "criterion": CRITERION, "natural_pairs": len(natural_rows),
               "natural_files_added": sum(1 for row in groups if row[2] == "natural"),
               "groups": len({row[1] for row in groups}), "near_miss_pairs": len(near_rows)}
    record_path = truth / "build.json"
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record["truth_completion"] = summary
        record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def merge_groups(injected: Iterable[dict], natural: list[tuple[str, str]]) -> list[list]:
    """Rows (path, group, transform): injected groups joined by natural pairs (union-find), renumbered."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    transform, first_group = {}, {}
    for row in injected:
        transform[row["path"]] = row["transform"]
        group = int(row["group"])
        first_group.setdefault(group, row["path"])
        parent.setdefault(row["path"], row["path"])
        parent[find(row["path"])] = find(first_group[group])
    for a, b in natural:
        transform.setdefault(a, "natural")
        transform.setdefault(b, "natural")
        parent[find(a)] = find(b)
    members: dict[str, list[str]] = {}
    for path in transform:
        members.setdefault(find(path), []).append(path)
    ordered = sorted(members.values(), key=lambda m: min(m))
    return [[path, number, transform[path]] for number, group in enumerate(ordered) for path in sorted(group)]


def _read(path: Path) -> list[dict]:
    """Rows of a CSV with a header (empty when the file is missing)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
