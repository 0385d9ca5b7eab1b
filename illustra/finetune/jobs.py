"""Folder-level jobs behind `illustra finetune`, `illustra evaluate` and `illustra predict` (plain functions)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, f1_score

from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.imageio import load_image
from illustra.data.index import read_classes
from illustra.data.manifest import load_manifest, save_manifest
from illustra.data.scan import scan_dataset
from illustra.data.workspace import WorkspaceError, read_index_info, remap_to_index
from illustra.errors import UserError
from illustra.finetune.model import adapt_batchnorm, load_classifier, predict_as_trained, prepare
from illustra.finetune.split import leaking_groups, split_manifest
from illustra.finetune.train import CLASSIFIER, FinetuneConfig, finetune
from illustra.ssl.jobs import preprocessing_of
from illustra.train.device import distributed, pick_device

ADAPT_BN_MIN_IMAGES = 200  # below this, AdaBN statistics are noise: 12 images of 2 classes cost 0.42 micro-F1 (RESULTS.md)


class UnknownClassError(ValueError):
    """An evaluation folder whose name the model does not know."""


def split_table(curation: str | Path, seed: int = 0, val: float = 0.15, test: float = 0.15) -> pd.DataFrame:
    """The cleaned manifest of a curation run with a `split` column (train / val / test, no group leakage)."""
    clean = load_manifest(Path(curation) / "clean.csv").reset_index(drop=True)
    clean["split"] = split_manifest(clean, seed, val, test)
    leaks = leaking_groups(clean, clean["split"])
    if leaks:
        raise RuntimeError(f"duplicate groups straddle splits: {leaks[:5]}")
    return clean


DATA_VARIANTS = {"duplicates": ("removed", "kept"), "photos": ("removed", "kept", "random-drop")}


def training_table(curation: str | Path, split_seed: int = 0, duplicates: str = "removed", photos: str = "removed",
                   seed: int = 0) -> pd.DataFrame:
    """The clean split, with curation decisions undone on the train side only (val / test stay clean and fixed).

    duplicates="kept" adds back every dropped copy whose group is not in val / test (no leakage);
    photos="kept" adds back the detected photos; photos="random-drop" adds them back, then drops the
    same number of random train rows: the control that tells "removing photos" from "removing images".
    """
    if duplicates not in DATA_VARIANTS["duplicates"] or photos not in DATA_VARIANTS["photos"]:
        raise ValueError(f"unknown data variant duplicates={duplicates!r} photos={photos!r}; known: {DATA_VARIANTS}")
    table = split_table(curation, split_seed)
    if duplicates == "removed" and photos == "removed":
        return table
    manifest = load_manifest(Path(curation) / "manifest.csv").reset_index(drop=True)
    held_out = set(table.loc[(table["split"] != "train") & (table["dup_group"] >= 0), "dup_group"])
    usable = manifest[(manifest["cache_row"] >= 0) & ~manifest["is_blank"].astype(bool) & ~manifest["clean"].astype(bool)
                      & ~manifest["dup_group"].isin(held_out)]
    is_photo = usable["is_photo"].astype(bool)
    extra = []
    if duplicates == "kept":
        extra.append(usable[~is_photo])
    added_photos = usable[is_photo] if duplicates == "kept" else usable[is_photo & usable["dup_keep"].astype(bool)]
    if photos != "removed":
        extra.append(added_photos)
    table = pd.concat([table, *[rows.assign(split="train") for rows in extra]], ignore_index=True)
    if photos == "random-drop":
        train = table.index[table["split"] == "train"].to_numpy()
        dropped = np.random.default_rng(seed).choice(train, size=min(len(added_photos), len(train)), replace=False)
        table = table.drop(index=dropped).reset_index(drop=True)
    return table


def resolved_input_size(config: FinetuneConfig, encoder: str | Path | None) -> int:
    """The input size a run trains and predicts at: the override, else scratch config, else the encoder's."""
    if config.input_size:
        return int(config.input_size)
    if config.mode == "scratch" or encoder is None:
        return config.encoder.input_size
    from illustra.weights import read_metadata

    return int(read_metadata(encoder)["architecture"]["input_size"])


def curation_index(curation: str | Path) -> dict:
    """The index a curation was made from (work folder, data folder, fingerprint), as curation.json records it."""
    path = Path(curation) / "curation.json"
    if not path.exists():
        raise WorkspaceError(f"{curation} is not a curation folder (no curation.json): run `illustra curate` first")
    return json.loads(path.read_text(encoding="utf-8")).get("index") or {}


def _added_since(curation: str | Path, work: Path) -> int:
    """Usable images in the current index that the curation never saw."""
    seen = set(load_manifest(Path(curation) / "manifest.csv")["file_id"])
    current = load_manifest(work)
    return int(((current["cache_row"] >= 0) & ~current["file_id"].isin(seen)).sum())


def finetune_folder(curation: str | Path, out: str | Path, work: str | Path | None, config: FinetuneConfig,
                    encoder: str | Path | None, spec: CacheSpec = CacheSpec(), resume: bool = False,
                    progress: bool = True, final_on_all: bool = False, max_steps: int | None = None,
                    table: pd.DataFrame | None = None, log=print) -> dict:
    """Split the cleaned set, fine-tune on train (val for monitoring), score test once; write RUN/*.

    `table` (a manifest with a `split` column, e.g. from `training_table`) replaces the default clean split.
    With `final_on_all`, train on train+val+test (the shipped model): the test score is then not reported.
    `work` defaults to the index the curation was made from. Pixels are found by `file_id` in the
    current index, never by the curation's row positions: images deleted or changed since are dropped
    (and said), a curation of another data folder is an error.
    """
    started = time.perf_counter()  # the budget's clock: loading counts against it
    out = Path(out)
    made_from = curation_index(curation)
    work = Path(work or made_from.get("work") or "work/index")
    rank, _ = distributed()  # under torchrun every rank trains on its share; rank 0 writes and scores
    table = split_table(curation, config.seed, config.val_share, config.test_share) if table is None else table
    remapped = remap_to_index(table, work, made_from)
    if remapped.kept == 0:
        raise WorkspaceError(f"none of the {len(table)} images of {curation} is in the index {work} any more: "
                             "re-run `illustra curate`")
    if remapped.kept < len(table) and rank == 0:
        log(remapped.message())
    if remapped.stale and rank == 0:
        added = _added_since(curation, work)
        if added:
            log(f"{added} images were added to the folder since the curation and are not used: re-run "
                "`illustra curate` to include them")
    table = remapped.table
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_manifest(table, out / "split.csv")
    classes = read_classes(work)
    pixels = open_pixels(work, spec)
    parts = {name: table[table["split"] == name] for name in ("train", "val", "test")}
    train = table if final_on_all else parts["train"]

    def arrays(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(rows["cache_row"].to_numpy(), kind="stable")
        return np.asarray(pixels[rows["cache_row"].to_numpy()[order]]), rows["class_id"].to_numpy()[order]

    train_x, train_y = arrays(train)
    val_x, val_y = arrays(parts["val"])
    input_size = resolved_input_size(config, encoder)
    if input_size > spec.size:
        raise ValueError(f"input_size {input_size} is larger than the {spec.size} px pixel cache")
    # evaluate.py predicts the same way: these views, resampled as the training views are (model.RESAMPLE)
    preprocessing = {**preprocessing_of(spec, input_size), "tta": config.tta, "resample": "grid",
                     "resize": "fit into cache square by policy (white padding), then bilinear grid_sample"}
    summary = finetune(train_x, train_y, val_x, val_y, classes, out, config, preprocessing,
                       encoder, resume=resume, progress=progress, max_steps=max_steps, budget_clock=started)
    summary["split_sizes"] = {k: len(v) for k, v in parts.items()}
    summary["index"] = {"work": str(work), "fingerprint": read_index_info(work).get("fingerprint", ""),
                        "curation_fingerprint": made_from.get("fingerprint", ""), "stale": remapped.stale,
                        "kept": remapped.kept, "missing": remapped.missing,
                        "changed": remapped.changed, "unreadable": remapped.unreadable}
    if rank != 0:
        return summary
    if not final_on_all:
        test_x, test_y = arrays(parts["test"])
        model, _ = load_classifier(out / CLASSIFIER, pick_device())
        predicted = predict_as_trained(model, torch.from_numpy(test_x), preprocessing).argmax(1)
        labels = list(range(len(classes)))
        present = sorted(set(test_y.tolist()) | set(predicted.tolist()))  # as evaluate.py: classes seen or predicted
        summary["test_macro_f1"] = float(f1_score(test_y, predicted, average="macro", labels=present, zero_division=0))
        summary["test_micro_f1"] = float(f1_score(test_y, predicted, average="micro"))
        summary["test_per_class_f1"] = dict(zip(classes, f1_score(test_y, predicted, average=None, labels=labels,
                                                                   zero_division=0).tolist()))
        summary["test_confusion"] = confusion_matrix(test_y, predicted, labels=labels).tolist()
    (out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def collect_folder(data: str | Path, known: list[str]) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """(paths, class ids by folder name, skipped (path, reason)) of an evaluation tree; unknown folders are an error."""
    scan = scan_dataset(data)
    unknown = [folder for folder in scan.classes if folder not in known]
    if unknown:
        raise UnknownClassError(f"class folder(s) the model does not know: {', '.join(unknown)} "
                                f"(the model knows {len(known)}: {', '.join(known)})")
    index = {name: i for i, name in enumerate(known)}
    return ([f.path for f in scan.files], [index[f.class_folder] for f in scan.files], list(scan.skipped))


def decode_files(meta: dict, root: Path, paths: list[str]) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """uint8 squares of every readable file (as the model was trained), their positions, (path, reason) for the rest."""
    images, readable, bad = [], [], []
    for position, path in enumerate(paths):
        result = load_image(root / path)
        if result.image is None:
            bad.append((path, result.reason))
        else:
            images.append(prepare([result.image], meta["preprocessing"]))
            readable.append(position)
    size = int(meta["preprocessing"]["cache_size"])
    return (torch.cat(images) if images else torch.zeros((0, size, size, 3), dtype=torch.uint8)), readable, bad


def predict_files(model, meta: dict, root: Path, paths: list[str], batch: int = 256
                  ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Probabilities of every readable file, the positions that were read, and (path, reason) for the rest."""
    from tqdm import tqdm

    probabilities, readable, bad = [], [], []
    preprocessing = meta["preprocessing"]
    bar = tqdm(total=len(paths), desc="classify", unit="img", leave=False, disable=len(paths) <= batch)
    for start in range(0, len(paths), batch):  # decoded a batch at a time: memory stays flat on a large folder
        squares, positions, failed = decode_files(meta, root, paths[start:start + batch])
        bar.update(min(batch, len(paths) - start))
        bad += failed
        if positions:
            probabilities.append(predict_as_trained(model, squares, preprocessing))
            readable += [start + position for position in positions]
    bar.close()
    classes = len(meta["classes"])
    return (np.concatenate(probabilities) if probabilities else np.zeros((0, classes))), readable, bad


def evaluate_folder(data: str | Path, weights: str | Path, adapt_bn: bool = False) -> dict:
    """Classify every image of a class-folder tree; the report's numbers, keyed as in `--json`.

    `adapt_bn`: re-estimate the batch-norm statistics on this folder's images first (AdaBN)."""
    started = time.perf_counter()
    model, meta = load_classifier(weights, pick_device())
    classes = list(meta["classes"])
    paths, labels, skipped = collect_folder(data, classes)
    if not paths:
        raise UserError(f"no image under the class folders of {data} ({len(skipped)} files outside them): expected "
                        f"{data}/<class folder>/<image files>, with class folders named as in training "
                        f"({', '.join(classes[:3])}, ...)")
    if adapt_bn:  # all squares in memory (uint8, ~12 KB each at 64 px): the statistics need every image first
        squares, readable, bad = decode_files(meta, Path(data), paths)
        preprocessing = meta["preprocessing"]
        model = adapt_batchnorm(model, squares, int(preprocessing["input_size"]),
                                resample=preprocessing.get("resample", "resize"))
        probabilities = predict_as_trained(model, squares, preprocessing)
    else:
        probabilities, readable, bad = predict_files(model, meta, Path(data), paths)
    if not readable:
        raise UserError(f"none of the {len(paths)} files under {data} could be read as an image")
    y_true = np.asarray(labels)[readable]
    y_pred = probabilities.argmax(1) if len(readable) else np.zeros(0, int)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    names = [classes[i] for i in present]
    report = classification_report(y_true, y_pred, labels=present, target_names=names, digits=4, zero_division=0) \
        if len(y_true) else "no readable images\n"
    per_class = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0) if len(y_true) else []
    seconds = time.perf_counter() - started
    return {
        "report": report, "classes": classes, "labels": present,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)) if len(y_true) else 0.0,
        "micro_f1": float(f1_score(y_true, y_pred, average="micro")) if len(y_true) else 0.0,
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)) if len(y_true) else 0.0,
        "per_class": {name: float(v) for name, v in zip(names, per_class)},
        "folder_classes": sorted(set(y_true.tolist())),
        "macro_f1_folder_classes": float(f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true.tolist())),
                                                  zero_division=0)),
        "images": len(paths), "evaluated": int(len(y_true)),
        "unreadable": [{"path": p, "reason": r} for p, r in bad],
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "confusion": confusion_matrix(y_true, y_pred, labels=present).tolist() if len(y_true) else [],
        "predictions": [{"path": paths[i], "true": classes[t], "predicted": classes[p], "probability": round(float(q), 4)}
                        for i, t, p, q in zip(readable, y_true.tolist(), y_pred.tolist(),
                                              probabilities.max(1).tolist() if len(readable) else [])],
        "seconds": round(seconds, 2), "images_per_second": round(len(paths) / max(seconds, 1e-9), 1),
        "adapted_batchnorm": bool(adapt_bn),
        "warnings": [f"--adapt-bn re-estimated the batch-norm statistics from only {len(y_true)} images: too few for "
                     f"stable statistics (at least {ADAPT_BN_MIN_IMAGES}, spread over the classes, are needed); these "
                     "scores may be far worse than without --adapt-bn"] if adapt_bn and len(y_true) < ADAPT_BN_MIN_IMAGES
        else [],
    }


def confusion_figure(matrix, names: list[str], title: str):
    """A labelled confusion-matrix figure (counts written in the non-empty cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(names), 1 + 0.45 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    return fig


def save_confusion(result: dict, path: str | Path) -> None:
    """Confusion matrix of an evaluation as a PNG."""
    import matplotlib.pyplot as plt

    names = [result["classes"][i] for i in result["labels"]]
    fig = confusion_figure(result["confusion"], names, f"macro F1 {result['macro_f1']:.4f}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def predict_paths(weights: str | Path, images: list[str]) -> list[dict]:
    """Top class and probability for each image path (unreadable files carry their reason)."""
    model, meta = load_classifier(weights, pick_device())
    probabilities, readable, bad = predict_files(model, meta, Path("."), images)
    reasons = dict(bad)
    out, row = [], {p: i for i, p in enumerate(readable)}
    for position, path in enumerate(images):
        if position in row:
            p = probabilities[row[position]]
            out.append({"path": path, "class": meta["classes"][int(p.argmax())], "probability": float(p.max())})
        else:
            out.append({"path": path, "error": reasons.get(path, "unreadable")})
    return out
