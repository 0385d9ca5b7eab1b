"""The manifest: one row per file under the data root, the spine every stage reads and extends.

Stored as UTF-8 CSV: readable and diffable by a person, opened by any tool, and no extra
dependency (Parquet would need pyarrow, ~100 MB). At 25,000 rows it is a few MB and loads in a
fraction of a second; bulky per-image data (pixels, embeddings) lives in aligned ``.npy`` files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

MANIFEST_FILE = "manifest.csv"

# Columns written by `index_dataset`; later stages append their own.
BASE_COLUMNS = {
    "path": str,  # relative to the data root, '/' separated
    "file_id": str,  # stable id: hash of `path` (illustra.data.workspace); every artefact joins on it
    "class_folder": str,
    "class_id": int,  # position of class_folder in natural order; -1 outside any class
    "bytes": int,
    "mtime_ns": int,
    "file_hash": str,  # blake2b-128 of the file bytes
    "status": str,  # ok | warning | error
    "reason": str,  # "code: detail" for warning and error rows
    "format": str,
    "mode": str,  # colour mode in the file, before conversion to RGB
    "width": int,
    "height": int,
    "n_frames": int,
    "pixel_hash": str,  # blake2b-128 of the decoded RGB pixels (exact-duplicate key)
    "cache_row": int,  # row in the pixel cache; -1 when the file did not load
}
STRING_COLUMNS = [name for name, kind in BASE_COLUMNS.items() if kind is str]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers never see it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600
    os.replace(tmp, path)


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Save the manifest CSV atomically."""
    path = Path(path)
    atomic_write_text(path, manifest.to_csv(index=False))
    return path


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest CSV: string columns as strings (empty, not NaN), empty numeric cells as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    frame = pd.read_csv(path, dtype={c: str for c in STRING_COLUMNS}, keep_default_na=False, na_values=[""])
    present = [c for c in STRING_COLUMNS if c in frame]
    frame[present] = frame[present].fillna("")
    return frame


def usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows whose pixels loaded (status ok or warning) and sit in a class."""
    return manifest[(manifest["cache_row"] >= 0) & (manifest["class_id"] >= 0)]


def problems(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows that could not be used or carry a warning, as (path, status, reason)."""
    return manifest.loc[manifest["status"] != "ok", ["path", "status", "reason"]]
