"""Dataset scanning: a folder of class sub-folders becomes a class list and per-file entries.

Class order is the natural sort of folder names (``L2_2 < L2_3 < L2_10``); plain string sort
would put ``L2_10`` before ``L2_2`` and silently permute class ids.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


def natural_key(text: str) -> tuple:
    """Sort key that compares digit runs as numbers: L2_2 < L2_3 < L2_10."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.casefold(), p) for p in parts if p != "")


def natural_sorted(names: list[str]) -> list[str]:
    """Names in natural order (the class order of every artefact)."""
    return sorted(names, key=natural_key)


@dataclass(frozen=True)
class FileEntry:
    """One candidate image file: its path relative to the data root and its class."""

    path: str  # relative, with '/'
    class_folder: str
    class_id: int


@dataclass
class DatasetScan:
    """Result of scanning a data root: classes in model order, files, and skipped paths."""

    root: Path
    classes: list[str]
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def _is_hidden(name: str) -> bool:
    """Hidden by Unix convention, or an OS-generated junk file."""
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini", "__MACOSX"}


def list_classes(root: Path) -> list[str]:
    """Class folder names of ``root`` in natural order (hidden folders excluded)."""
    return natural_sorted([d.name for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name)])


def scan_dataset(root: str | Path) -> DatasetScan:
    """List every file under the class folders of ``root``; hidden and stray files are reported."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    classes = list_classes(root)
    scan = DatasetScan(root=root, classes=classes)
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.is_file():
            reason = "hidden: hidden file" if _is_hidden(entry.name) else "outside_class: not inside a class folder"
            scan.skipped.append((entry.name, reason))
        elif entry.is_dir() and _is_hidden(entry.name):
            scan.skipped.append((entry.name + "/", "hidden: hidden folder, not scanned"))
    for class_id, folder in enumerate(classes):
        _scan_class(root, folder, class_id, scan)
    return scan


def _scan_class(root: Path, folder: str, class_id: int, scan: DatasetScan) -> None:
    """Walk one class folder recursively (sub-folders belong to the class)."""
    for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for d in [d for d in dirnames if _is_hidden(d)]:
            scan.skipped.append((f"{rel_dir}/{d}/", "hidden: hidden folder, not scanned"))
        dirnames[:] = natural_sorted([d for d in dirnames if not _is_hidden(d)])
        for name in natural_sorted(filenames):
            rel = f"{rel_dir}/{name}"
            if _is_hidden(name):
                scan.skipped.append((rel, "hidden: hidden file"))
            elif not os.path.isfile(os.path.join(dirpath, name)):
                scan.skipped.append((rel, "not_a_file: broken link or special file"))
            else:
                scan.files.append(FileEntry(rel, folder, class_id))
