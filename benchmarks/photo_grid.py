"""Photo robustness grid (issue #18): photo share x cut-out share, dev and test parts, ours vs two label-free anchors.

    python benchmarks/photo_grid.py build   --root work/photo_grid [--parts dev test]
    python benchmarks/photo_grid.py prepare --root work/photo_grid --encoder checkpoints/encoder.safetensors
    python benchmarks/photo_grid.py score   --root work/photo_grid --parts dev [--cells p50_c90 ...] [--set KEY=VALUE ...]
    python benchmarks/photo_grid.py score   --bench work/bench --work work/index --embeddings work/embeddings
    python benchmarks/photo_grid.py rules   --dump DIR   (after score --dump DIR: the views' combination rule)
    python benchmarks/photo_grid.py support --dump DIR [--root ...] [--embeddings E]   (the neighbour-support rule)
    python benchmarks/photo_grid.py promote --dump DIR [--root ...] [--embeddings E] [--csv F]   (neighbour promotion)

`build` makes one holdout folder per cell (`illustra bench holdout --photos P --cutouts C`): drawings of
icon styles the benchmark never uses, photos from OpenCV's sample pictures, P of the files photos and C
of those cut out onto white. `prepare` indexes and embeds each (the shipped encoder) and caches the photo
evidence (one decode per file). `score` runs the photo detector (configs/curation.yaml `photos:`, with
--set overrides) on every cell and prints P / R / F1 / ROC-AUC and the share of drawings flagged, beside:

- colour-map GMM: a two-component Gaussian mixture on three statistics of the 64 px cache (log count of
  distinct colours at 5 bits per channel, share of the 8 most common colours, share of neighbouring pixel
  pairs that differ); the component with more colours is 'photo';
- IsolationForest on 4x4x4 colour histograms of the 64 px cache (benchmarks/photos.py's baseline).

Design choices are made on the dev cells; the test cells are scored once. Results: --csv FILE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.mixture import GaussianMixture

from illustra.curation.photos import (
    PhotoSettings,
    combine_views,
    detect_photos,
    evidence_cache_path,
    nearest_others,
    neighbour_promotion,
    neighbour_support,
    photo_evidence,
    support_needed,
)
from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.manifest import load_manifest
from illustra.data.workspace import read_index_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import colour_histograms  # noqa: E402  benchmarks/photos.py: the same anchor, one definition

PHOTO_SHARES = (0.01, 0.07, 0.25, 0.50)
CUTOUT_SHARES = (0.0, 0.5, 0.9)


def cell_name(part: str, photos: float, cutouts: float) -> str:
    return f"{part}_p{round(photos * 100):02d}_c{round(cutouts * 100):02d}"


def cells(parts: list[str], only: list[str] | None) -> list[tuple[str, float, float]]:
    grid = [(part, p, c) for part in parts for p in PHOTO_SHARES for c in CUTOUT_SHARES]
    return [cell for cell in grid if not only or cell_name(*cell).split("_", 1)[1] in only or cell_name(*cell) in only]


def build(root: Path, grid: list[tuple[str, float, float]], workers: int) -> None:
    from illustra.bench.build import build_holdout

    for part, photos, cutouts in grid:
        record = build_holdout(root / cell_name(part, photos, cutouts), part=part, photos=photos, cutouts=cutouts,
                               workers=workers)
        print(f"{cell_name(part, photos, cutouts)}: {record.get('files')} files, {record.get('photos')} photos"
              f"{' (reused)' if record.get('reused') else ''}", flush=True)


def prepare(root: Path, grid: list[tuple[str, float, float]], encoder: str) -> None:
    for cell in grid:
        folder = root / cell_name(*cell)
        for argv in (["scan", str(folder / "training"), "--out", str(folder / "index")],
                     ["embed", "--data", str(folder / "training"), "--encoder", encoder,
                      "--out", str(folder / "embeddings"), "--work", str(folder / "index")]):
            subprocess.run(["illustra", *argv], check=True, stdout=subprocess.DEVNULL)
        manifest = load_manifest(folder / "embeddings" / "manifest.csv")
        evidence_for(folder / "training", folder / "index", manifest, PhotoSettings())
        print(f"{folder.name}: prepared ({len(manifest)} rows)", flush=True)


def evidence_for(data: Path, work: Path, manifest: pd.DataFrame, settings: PhotoSettings):
    fingerprint = read_index_info(work).get("fingerprint", "")
    return photo_evidence(data, manifest, settings, cache=evidence_cache_path(work, fingerprint, settings))


def colour_map_features(pixels: np.ndarray) -> np.ndarray:
    """(N, 3): log distinct colours, share of the 8 commonest colours, share of differing neighbours (64 px cache)."""
    images = np.asarray(pixels) // 8
    codes = (images[..., 0].astype(np.int32) * 1024 + images[..., 1] * 32 + images[..., 2])
    out = np.zeros((len(codes), 3))
    for i, code in enumerate(codes):
        _, counts = np.unique(code, return_counts=True)
        out[i, 0] = np.log(len(counts))
        out[i, 1] = np.sort(counts)[-8:].sum() / code.size
        out[i, 2] = ((code[:, 1:] != code[:, :-1]).mean() + (code[1:, :] != code[:-1, :]).mean()) / 2
    return out


def colour_map_gmm(pixels: np.ndarray) -> np.ndarray:
    """The anchor: posterior of the many-colour component of a 2-component GMM on colour_map_features."""
    features = colour_map_features(pixels)
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    mixture = GaussianMixture(2, random_state=0, n_init=3).fit(features)
    return mixture.predict_proba(features)[:, int(np.argmax(mixture.means_[:, 0]))]


def isolation_forest(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The second anchor: benchmarks/photos.py's IsolationForest on 4x4x4 colour histograms (calls, scores)."""
    hist = colour_histograms(pixels, np.arange(len(pixels)))
    forest = IsolationForest(random_state=0).fit(hist)
    return forest.predict(hist) < 0, -forest.score_samples(hist)


def scores(truth: np.ndarray, called: np.ndarray, score: np.ndarray) -> dict:
    drawings = ~truth
    return {"P": precision_score(truth, called, zero_division=0), "R": recall_score(truth, called, zero_division=0),
            "F1": f1_score(truth, called, zero_division=0),
            "AUC": roc_auc_score(truth, score) if 0 < truth.sum() < len(truth) else np.nan,
            "FP_rate": called[drawings].mean() if drawings.any() else np.nan}


def score_folder(name: str, data: Path, work: Path, embeddings_dir: Path, truth_dir: Path,
                 settings: PhotoSettings, anchors: bool, dump: Path | None = None,
                 without_photos: bool = False, subsample: float = 1.0, subsample_seed: int = 0) -> list[dict]:
    manifest = load_manifest(embeddings_dir / "manifest.csv")
    embeddings = np.load(embeddings_dir / "embeddings.npy")
    evidence = evidence_for(data, work, manifest, settings)
    truth = manifest["path"].isin(set(pd.read_csv(truth_dir / "photos.csv")["path"])).to_numpy()
    keep = np.ones(len(truth), bool)
    if without_photos:  # the folder's drawings alone: a folder with no photo at all
        keep &= ~truth
        name = f"{name}_nophoto"
    if subsample < 1:  # a smaller folder of the same mix: photos and drawings each kept at this share
        rng = np.random.default_rng(subsample_seed)
        for side in (truth, ~truth):
            rows = np.flatnonzero(side & keep)
            keep[rng.permutation(rows)[int(round(subsample * len(rows))):]] = False
        name = f"{name}_s{round(subsample * 100):02d}"
    if not keep.all():  # rows joined by position: statistics, patches and embeddings are subset alike
        position = np.cumsum(keep) - 1
        taken = keep[evidence.owner]
        evidence = evidence._replace(stats=evidence.stats[keep], patches=evidence.patches[taken],
                                     owner=position[evidence.owner[taken]])
        manifest, embeddings, truth = manifest[keep], embeddings[keep], truth[keep]
    started = time.perf_counter()
    result = detect_photos(evidence.stats, embeddings, settings, evidence.patches, evidence.owner)
    seconds = time.perf_counter() - started
    valid = result["photo_score"].notna().to_numpy()
    if dump is not None:  # per image: each view's output and the truth, to study decision rules without retraining
        dump.mkdir(parents=True, exist_ok=True)
        styles = pd.read_csv(truth_dir / "sources.csv").set_index("path")["style"]
        result.assign(path=manifest["path"].to_numpy(), truth=truth, style=manifest["path"].map(styles).to_numpy(),
                      texture_share=evidence.stats["texture_share"].to_numpy()).to_csv(dump / f"{name}.csv", index=False)
    rows = [{"cell": name, "method": "ours", "images": int(valid.sum()), "photos": int(truth[valid].sum()),
             **scores(truth[valid], result["is_photo"].to_numpy()[valid], result["photo_score"].to_numpy()[valid]),
             "seconds": round(seconds, 1)}]
    frame = result["frame_score"].to_numpy()[valid]
    vote = result["frame_vote"].fillna(0).to_numpy()[valid] if "frame_vote" in result else frame  # its say (+ anchors)
    rows.append({"cell": name, "method": "  frame view", **scores(truth[valid], vote > 0.5, frame)})
    if result["patch_logit"].notna().any():
        patch = result["patch_logit"].fillna(-99).to_numpy()
        called = patch > result["texture_boundary"].dropna().iloc[0]  # the folder's own boundary
        rows.append({"cell": name, "method": "  texture view", **scores(truth[valid], called[valid], patch[valid])})
    if anchors:
        pixels = open_pixels(work, CacheSpec())[manifest["cache_row"].to_numpy()[valid]]
        gmm = colour_map_gmm(pixels)
        rows.append({"cell": name, "method": "colour-map GMM", **scores(truth[valid], gmm > 0.5, gmm)})
        called, score = isolation_forest(pixels)
        rows.append({"cell": name, "method": "IsolationForest", **scores(truth[valid], called, score)})
    return rows


def decision_rules(dump: Path) -> pd.DataFrame:
    """Each combination rule of the two views, scored on every dumped folder (no retraining: the views are fixed).

    `frame > f or (logit > t and texture_share >= g)`: f is the frame view's threshold, t moves the texture
    view's boundary, g asks the texture view's call for some measured foreground texture as well.
    """
    rows = []
    for path in sorted(dump.glob("*.csv")):
        table = pd.read_csv(path)
        table = table[table["photo_score"].notna()]
        truth = table["truth"].to_numpy(bool)
        frame = table["frame_score"].fillna(0).to_numpy()
        logit = table["patch_logit"].fillna(-np.inf).to_numpy()
        share = table["texture_share"].fillna(0).to_numpy()
        for f in (0.5, 0.7, 0.9, 0.97):
            for t in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0):
                for g in (0.0, 0.02, 0.05):
                    called = (frame > f) | ((logit > t) & (share >= g))
                    rows.append({"folder": path.stem, "f": f, "t": t, "g": g,
                                 **scores(truth, called, np.where(called, 1, 0))})
    return pd.DataFrame(rows)


SUPPORT_RULES = [{"min_support": m, "support_lift": 0.0} for m in (0.1, 0.2, 0.3, 0.4)] + [
    {"min_support": floor, "support_lift": lift, "max_support": cap}
    for lift in (1.0, 1.5, 2.0) for floor in (0.1, 0.2) for cap in (0.3, 0.4, 0.5)]


def dumped_folders(dump: Path, root: Path, embeddings: Path | None):
    """Per dumped folder (`score --dump`): its name, table (judged rows), SSL vectors in table order, truth, frame
    votes, and the calls before the support check (None where only the anchors were called) with the folder's
    texture boundary."""
    for path in sorted(dump.glob("*.csv")):
        table = pd.read_csv(path)
        table = table[table["photo_score"].notna()].reset_index(drop=True)
        folder = embeddings if path.stem == "bench" else root / "_".join(path.stem.split("_")[:3]) / "embeddings"
        manifest = load_manifest(folder / "manifest.csv")
        position = pd.Series(np.arange(len(manifest)), index=manifest["path"].to_numpy())
        vectors = np.load(folder / "embeddings.npy")[position[table["path"]].to_numpy()]
        vote = table["frame_vote"].to_numpy(float)
        before, boundary = None, np.nan
        if table["texture_boundary"].notna().any():
            boundary = table["texture_boundary"].dropna().iloc[0]
            before = np.nan_to_num(combine_views(vote, table["patch_logit"].to_numpy(float), boundary=boundary)) > 0.5
        yield path.stem, table, vectors, table["truth"].to_numpy(bool), vote, before, boundary


def withdrawn(vectors: np.ndarray, before: np.ndarray, vote: np.ndarray, settings: PhotoSettings) -> np.ndarray:
    """The calls left after the support check (`neighbour_support` against `support_needed`)."""
    support = neighbour_support(vectors, before, settings.support_neighbours)
    needed = support_needed(int(before.sum()), len(before), settings)
    return before & ~((support < needed) & ~(np.nan_to_num(vote) > 0.5))


def support_rules(dump: Path, root: Path, embeddings: Path | None) -> pd.DataFrame:
    """Each neighbour-support rule (`SUPPORT_RULES`), scored on every dumped folder without rerunning the views.

    The support check only withdraws texture-view-only calls after both views have run, so the calls before it
    (`frame_vote`, `patch_logit`, `texture_boundary` of the dump) and the folder's SSL embeddings give every
    rule's calls exactly. A folder where only the anchors were called keeps its calls.
    """
    rows = []
    for name, table, vectors, truth, vote, before, _ in dumped_folders(dump, root, embeddings):
        for rule in SUPPORT_RULES:
            called = table["photo_score"].to_numpy(float) > 0.5
            if before is not None:
                called = withdrawn(vectors, before, vote, PhotoSettings(**{"max_support": 1.0, **rule}))
            rows.append({"folder": name, **{"max_support": np.nan, **rule},
                         **scores(truth, called, called.astype(float))})
    return pd.DataFrame(rows)


PROMOTE_RULES = [{"promote_support": 0.0}] + [
    {"promote_support": floor, "promote_lift": lift, "promote_margin": margin}
    for lift in (2.0, 3.0) for floor in (0.4, 0.45, 0.5) for margin in (1.5, 2.0, 2.5, 3.0, 4.0, 6.0)]


def promote_rules(dump: Path, root: Path, embeddings: Path | None) -> pd.DataFrame:
    """Each neighbour-promotion rule (`PROMOTE_RULES`), scored on every dumped folder without rerunning the views.

    As `support_rules`: the calls before the support check come from the dump, the shipped support rule withdraws
    its calls, and each rule then promotes (`neighbour_promotion`); exact, because both steps only read the views'
    outputs and the folder's SSL embeddings.
    """
    rows = []
    for name, table, vectors, truth, vote, before, boundary in dumped_folders(dump, root, embeddings):
        called = table["photo_score"].to_numpy(float) > 0.5
        if before is not None:
            called = withdrawn(vectors, before, vote, PhotoSettings())
            margin = table["patch_logit"].to_numpy(float) - boundary
            others = nearest_others(vectors, PhotoSettings().support_neighbours)
        for rule in PROMOTE_RULES:
            final = called
            if before is not None:
                rule_settings = replace(PhotoSettings(), **rule)
                final = called | neighbour_promotion(vectors, called, margin, rule_settings, others)[0]
            rows.append({"folder": name, **{"promote_lift": np.nan, "promote_margin": np.nan, **rule},
                         **scores(truth, final, final.astype(float))})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["build", "prepare", "score", "rules", "support", "promote"])
    parser.add_argument("--root", type=Path, default=Path("work/photo_grid"))
    parser.add_argument("--parts", nargs="+", default=["dev"], choices=["dev", "test"])
    parser.add_argument("--cells", nargs="*", help="only these cells, e.g. p50_c90 or dev_p50_c90")
    parser.add_argument("--encoder", default="checkpoints/encoder.safetensors")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="photo settings override")
    parser.add_argument("--no-anchors", action="store_true", help="skip the two anchors (faster design loops)")
    parser.add_argument("--bench", type=Path, help="score a benchmark folder (BENCH/training, BENCH/truth) instead")
    parser.add_argument("--work", type=Path, help="with --bench: its index folder")
    parser.add_argument("--embeddings", type=Path, help="with --bench: its embeddings folder")
    parser.add_argument("--csv", type=Path, help="append the result rows to this CSV")
    parser.add_argument("--without-photos", action="store_true",
                        help="score each folder's drawings alone (a folder with no photo: only FP counts)")
    parser.add_argument("--subsample", type=float, default=1.0,
                        help="score a random share of each folder (photos and drawings alike): a smaller folder, same mix")
    parser.add_argument("--subsample-seed", type=int, default=0)
    parser.add_argument("--dump", type=Path, help="write each folder's per-image outputs here (CELL.csv)")
    args = parser.parse_args(argv)
    grid = cells(args.parts, args.cells)
    if args.command == "build":
        build(args.root, grid, args.workers)
        return 0
    if args.command == "rules":  # study the combination rule on dumped dev folders
        table = decision_rules(args.dump)
        summary = table.groupby(["f", "t", "g"]).agg(min_F1=("F1", "min"), mean_F1=("F1", "mean"),
                                                 max_FP=("FP_rate", "max"), mean_FP=("FP_rate", "mean"))
        print(summary.sort_values("min_F1", ascending=False).head(25).round(4).to_string())
        best = summary["min_F1"].idxmax()
        print(f"best by the smallest F1 over the folders: f={best[0]} t={best[1]} g={best[2]}")
        chosen = table[(table["f"] == best[0]) & (table["t"] == best[1]) & (table["g"] == best[2])]
        print(chosen.round(3).to_string(index=False))
        return 0
    if args.command == "support":  # study the neighbour-support rule on dumped folders
        table = support_rules(args.dump, args.root, args.embeddings)
        keys = ["min_support", "support_lift", "max_support"]
        summary = table.fillna({"max_support": -1}).groupby(keys).agg(
            mean_F1=("F1", "mean"), cells_095=("F1", lambda f: int((f >= 0.95).sum())), mean_FP=("FP_rate", "mean"))
        print(summary.sort_values("mean_F1", ascending=False).round(4).to_string())
        return 0
    if args.command == "promote":  # study the neighbour-promotion rule on dumped folders
        table = promote_rules(args.dump, args.root, args.embeddings)
        if args.csv:
            table.to_csv(args.csv, index=False)
        keys = ["promote_support", "promote_lift", "promote_margin"]
        summary = table.fillna({"promote_lift": -1, "promote_margin": -1}).groupby(keys).agg(
            mean_F1=("F1", "mean"), cells_095=("F1", lambda f: int((f >= 0.95).sum())), mean_FP=("FP_rate", "mean"))
        print(summary.sort_values("mean_F1", ascending=False).round(4).to_string())
        return 0
    if args.command == "prepare":
        prepare(args.root, grid, args.encoder)
        return 0
    settings = PhotoSettings()
    for item in args.set:
        key, value = item.split("=", 1)
        settings = replace(settings, **{key: yaml.safe_load(value)})
    rows = []
    targets = ([("bench", args.bench / "training", args.work, args.embeddings, args.bench / "truth")] if args.bench else
               [(cell_name(*c), args.root / cell_name(*c) / "training", args.root / cell_name(*c) / "index",
                 args.root / cell_name(*c) / "embeddings", args.root / cell_name(*c) / "truth") for c in grid])
    for name, data, work, embeddings_dir, truth_dir in targets:
        cell_rows = score_folder(name, data, work, embeddings_dir, truth_dir, settings, not args.no_anchors,
                                 args.dump, args.without_photos, args.subsample, args.subsample_seed)
        for row in cell_rows:
            print(f"{row['cell']:<14} {row['method']:<16} P {row['P']:.3f} R {row['R']:.3f} F1 {row['F1']:.3f} "
                  f"AUC {row['AUC']:.3f} FP {row['FP_rate']:.4f}"
                  + (f"  ({row['images']} images, {row['photos']} photos, {row['seconds']} s)" if "images" in row else ""),
                  flush=True)
        rows += cell_rows
    table = pd.DataFrame(rows).assign(settings=json.dumps(args.set))
    ours = table[table["method"] == "ours"]
    print(f"ours: min F1 {ours['F1'].min():.3f}, mean F1 {ours['F1'].mean():.3f}, "
          f"max FP rate {ours['FP_rate'].max():.4f} over {len(ours)} folders")
    if args.csv:
        table.to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
