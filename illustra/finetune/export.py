"""`illustra export RUN --to DIR`: a fine-tuning run's split as class-folder trees the user can check.

The run's `split.csv` says which cleaned image went to train, val and test. Export writes
`DIR/{train,val,test}/<class folder>/<file>` as hard links to the user's files (copies with `copy=True`,
or where a link is impossible, e.g. across file systems) plus `DIR/{train,val,test}.csv`, so that

    python evaluate.py --data DIR/test --weights RUN/classifier.safetensors

reproduces the run's held-out figures on the user's own data: the submission contract, checkable by
anyone. The user's files are only ever read; DIR may not lie inside the data folder.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from illustra.data.manifest import load_manifest
from illustra.data.workspace import read_index_info
from illustra.errors import UserError

SPLITS = ("train", "val", "test")


def data_root_of(run: Path) -> Path:
    """The data folder a fine-tuning run's images come from (through the index its metrics record)."""
    metrics = run / "metrics.json"
    if not metrics.exists():
        raise UserError(f"{run} is not a finished fine-tuning run (no metrics.json): run `illustra finetune` first")
    work = json.loads(metrics.read_text(encoding="utf-8")).get("index", {}).get("work")
    if not work:
        raise UserError(f"{metrics} does not record the index its images came from; re-run `illustra finetune`")
    return Path(read_index_info(work)["data_root"])


def export_split(run: str | Path, to: str | Path, copy: bool = False) -> dict:
    """Write the run's train / val / test images as class-folder trees under `to`; returns the counts."""
    run, to = Path(run), Path(to)
    table_path = run / "split.csv"
    if not table_path.exists():
        raise UserError(f"{run} has no split.csv: export needs a fine-tuning run made by `illustra finetune`")
    table = load_manifest(table_path)
    data = data_root_of(run).resolve()
    target = to.resolve()
    if target == data or data in target.parents:
        raise UserError(f"--to {to} lies inside the data folder {data}: choose a folder outside it "
                        "(the user's folder is never written to)")
    for split in SPLITS:
        if (to / split).exists() and any((to / split).iterdir()):
            raise UserError(f"{to / split} already holds files: export into a new or empty folder")
    counts = {split: 0 for split in SPLITS}
    missing, copied = [], 0
    for split in SPLITS:
        rows = table[table["split"] == split]
        listed = []
        for path, folder, file_id in zip(rows["path"], rows["class_folder"], rows["file_id"]):
            source = data / path
            if not source.is_file():
                missing.append(path)
                continue
            destination = to / split / folder / Path(path).name
            destination.parent.mkdir(parents=True, exist_ok=True)
            copied += _place(source, destination, copy)
            listed.append([f"{folder}/{Path(path).name}", folder, path, file_id])
        counts[split] = len(listed)
        _write_csv(to / f"{split}.csv", ["path", "class_folder", "source_path", "file_id"], listed)
    if missing:
        raise UserError(f"{len(missing)} images of the split are gone from {data} (first: {missing[0]}); "
                        "the exported folders are incomplete - re-run curation and fine-tuning")
    return {"to": str(to), "counts": counts, "links": sum(counts.values()) - copied, "copies": copied,
            "data": str(data)}


def _place(source: Path, destination: Path, copy: bool) -> int:
    """Hard-link (or copy) one file; 1 when it was copied."""
    if not copy:
        try:
            os.link(source, destination)
            return 0
        except OSError:  # another file system, or links not allowed: a copy keeps the export whole
            pass
    shutil.copy2(source, destination)
    return 1


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV with a header row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
