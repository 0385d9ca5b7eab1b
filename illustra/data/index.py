"""The decode-once pass: scan a data root, read and decode every file once, write manifest + cache.

Each file is read once; its bytes give the file hash, its decode gives header properties, the
pixel hash and the cached square. Files unchanged since the last run (same size and mtime) are
not decoded again: their manifest row and cached pixels are carried over.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from illustra.data.cache import CacheSpec, cache_file, create_pixels, fit_square
from illustra.data.imageio import DEFAULT_MAX_PIXELS, load_image
from illustra.data.manifest import BASE_COLUMNS, MANIFEST_FILE, atomic_write_text, load_manifest, save_manifest
from illustra.data.scan import FileEntry, scan_dataset
from illustra.data.workspace import INDEX_INFO_FILE, check_data_root, file_id_of, index_fingerprint


@dataclass(frozen=True)
class IndexSettings:
    """Everything that decides the content of the manifest and the cache."""

    cache: CacheSpec = CacheSpec()
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 0  # 0: one per CPU core

    def fingerprint(self) -> dict:
        """The settings that make an old cache reusable when unchanged."""
        return {"size": self.cache.size, "policy": self.cache.policy, "max_pixels": self.max_pixels}


@dataclass
class IndexResult:
    """The manifest, where it was written, and how long decoding took."""

    manifest: pd.DataFrame
    classes: list[str]
    work_dir: Path
    decoded: int
    reused: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Decode + cache throughput over the files actually decoded."""
        return self.decoded / self.seconds if self.seconds > 0 and self.decoded else 0.0


def _blake(data: bytes) -> str:
    """Short, fast content hash (blake2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _empty_row() -> dict:
    """A manifest row with every base column empty ('' or -1)."""
    return {name: ("" if kind is str else -1) for name, kind in BASE_COLUMNS.items()}


def _stat_row(root: Path, entry: FileEntry) -> dict:
    """Manifest row with path, class and file-system facts; decode columns still empty."""
    row = _empty_row()
    row.update(path=entry.path, file_id=file_id_of(entry.path), class_folder=entry.class_folder,
               class_id=entry.class_id, n_frames=0)
    try:
        stat = os.stat(root / entry.path)
        row.update(bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
    except OSError:
        pass
    return row


def decode_file(task: tuple[str, dict, CacheSpec, int]) -> tuple[dict, np.ndarray | None]:
    """Read, hash and decode one file; fill its manifest row and return its cached square."""
    root, row, spec, max_pixels = task
    path = Path(root) / row["path"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {**row, "status": "error", "reason": f"unreadable: {exc.strerror or exc}"}, None
    row = {**row, "file_hash": _blake(data), "bytes": len(data)}
    result = load_image(data, name=row["path"], max_pixels=max_pixels, draft_size=2 * spec.size)
    row.update(status=result.status, reason=result.reason)
    if result.info is not None:
        info = result.info
        row.update(format=info.format, mode=info.mode, width=info.width, height=info.height, n_frames=info.n_frames)
    if not result.loaded:
        return row, None
    image = result.image
    row["pixel_hash"] = _blake(f"{image.width}x{image.height}".encode() + image.tobytes())
    return row, fit_square(image, spec)


def _previous(work_dir: Path, settings: IndexSettings) -> tuple[dict[str, dict], np.ndarray | None]:
    """Rows and pixels of the last run, when its settings match; else nothing."""
    info_path, manifest_path = work_dir / INDEX_INFO_FILE, work_dir / MANIFEST_FILE
    pixels_path = cache_file(work_dir, settings.cache)
    if not (info_path.exists() and manifest_path.exists() and pixels_path.exists()):
        return {}, None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("settings") != settings.fingerprint():
            return {}, None
        old = load_manifest(manifest_path)[list(BASE_COLUMNS)]
        pixels = np.load(pixels_path, mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return {}, None
    return {row["path"]: row for row in old.to_dict("records")}, pixels


def ordered_map(func, tasks: list, workers: int, min_tasks: int = 64, chunksize: int = 16) -> Iterator:
    """func over tasks, results in order, in worker processes when there is enough work to pay for them
    (the one process pool of the decode passes: the index and the photo evidence)."""
    if workers <= 1 or len(tasks) < min_tasks:
        yield from map(func, tasks)
        return
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(func, tasks, chunksize=chunksize)


def index_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    settings: IndexSettings = IndexSettings(),
    *,
    progress: bool = True,
) -> IndexResult:
    """Scan ``data_root``, decode new or changed files once, write manifest.csv and the cache."""
    root, work_dir = Path(data_root), Path(work_dir)
    scan = scan_dataset(root)
    check_data_root(work_dir, root)  # one index per data folder: never overwrite another folder's
    work_dir.mkdir(parents=True, exist_ok=True)
    old_rows, old_pixels = _previous(work_dir, settings)
    rows = [_stat_row(root, entry) for entry in scan.files]
    spec = settings.cache
    tmp_path = cache_file(work_dir, spec).with_suffix(".npy.tmp")
    pixels = create_pixels(tmp_path, len(rows), spec)
    tasks, reused = [], 0
    for index, row in enumerate(rows):
        old = old_rows.get(row["path"])
        if old is not None and (old["bytes"], old["mtime_ns"]) == (row["bytes"], row["mtime_ns"]):
            if old["cache_row"] >= 0:
                pixels[index] = old_pixels[old["cache_row"]]
                old = {**old, "cache_row": index}
            rows[index] = {**old, "class_folder": row["class_folder"], "class_id": row["class_id"]}
            reused += 1
        else:
            tasks.append((index, (str(root), row, spec, settings.max_pixels)))
    started = time.perf_counter()
    workers = settings.workers or os.cpu_count() or 1
    results = ordered_map(decode_file, [task for _, task in tasks], workers)
    bar = tqdm(results, total=len(tasks), desc="decode", unit="img", disable=not progress, leave=False)
    for (index, _), (row, square) in zip(tasks, bar):
        if square is not None:
            pixels[index] = square
            row["cache_row"] = index
        rows[index] = row
    seconds = time.perf_counter() - started
    pixels.flush()
    del pixels, old_pixels
    os.replace(tmp_path, cache_file(work_dir, spec))
    manifest = _with_skipped(pd.DataFrame(rows, columns=list(BASE_COLUMNS)), scan.skipped)
    save_manifest(manifest, work_dir / MANIFEST_FILE)
    _write_info(work_dir, scan.root, scan.classes, settings, manifest, len(tasks), reused, seconds)
    return IndexResult(manifest, scan.classes, work_dir, len(tasks), reused, seconds)


def _with_skipped(manifest: pd.DataFrame, skipped: list[tuple[str, str]]) -> pd.DataFrame:
    """Append hidden and stray files as error rows, so nothing silently vanishes."""
    if not skipped:
        return manifest
    extra = pd.DataFrame(
        [{**_empty_row(), "path": p, "file_id": file_id_of(p), "status": "error", "reason": r} for p, r in skipped],
        columns=list(BASE_COLUMNS),
    )
    return pd.concat([manifest, extra], ignore_index=True)


def _write_info(
    work_dir: Path, root: Path, classes: list[str], settings: IndexSettings,
    manifest: pd.DataFrame, decoded: int, reused: int, seconds: float,
) -> None:
    """Record classes (model order), settings and counts next to the manifest."""
    info = {
        "data_root": str(root.resolve()),
        "classes": classes,
        "settings": settings.fingerprint(),
        "fingerprint": index_fingerprint(manifest, settings.fingerprint()),
        "cache_file": settings.cache.file_name,
        "files": int(len(manifest)),
        "status_counts": {k: int(v) for k, v in manifest["status"].value_counts().items()},
        "decoded": decoded,
        "reused": reused,
        "decode_seconds": round(seconds, 3),
    }
    atomic_write_text(work_dir / INDEX_INFO_FILE, json.dumps(info, indent=2, ensure_ascii=False))


def recorded_settings(work_dir: str | Path) -> IndexSettings | None:
    """The settings the work folder was last indexed with (so later stages keep what `scan --set` chose)."""
    path = Path(work_dir) / INDEX_INFO_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["settings"]
        return IndexSettings(CacheSpec(int(recorded["size"]), recorded["policy"]), int(recorded["max_pixels"]))
    except (KeyError, ValueError, TypeError):
        return None


def read_classes(work_dir: str | Path) -> list[str]:
    """Class folder names, in model order, recorded by the last index run."""
    info = json.loads((Path(work_dir) / INDEX_INFO_FILE).read_text(encoding="utf-8"))
    return list(info["classes"])
