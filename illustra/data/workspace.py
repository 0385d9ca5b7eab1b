"""The workspace: which data folder an index belongs to, and artefacts joined to it by `file_id`, never by position.

Every manifest row has a `file_id` (a hash of its path relative to the data root: stable across
re-scans, new when a file is renamed) and every index records its data folder and a fingerprint
of (file_id, pixel_hash, cache_row) for all rows. A later stage that reads a table made from an
older index (a curation, a split) does not trust its `cache_row`: `remap_to_index` joins the table
to the current index by `file_id`, keeps only images whose decoded pixels are unchanged, and says
what it dropped; a table from another data folder stops with one sentence naming what to re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from illustra.errors import UserError

INDEX_INFO_FILE = "index.json"


class WorkspaceError(UserError, RuntimeError):
    """An artefact that does not belong to the index it is read with (one sentence for the user)."""


def file_id_of(relative_path: str) -> str:
    """Stable id of a file: blake2b-64 of its '/'-separated path relative to the data root."""
    return hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).hexdigest()


def index_fingerprint(manifest: pd.DataFrame, settings: dict) -> str:
    """What an index is: every row's id, decoded pixels and cache position, and the cache settings."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=16)
    for file_id, pixel_hash, row in zip(manifest["file_id"], manifest["pixel_hash"], manifest["cache_row"]):
        digest.update(f"{file_id}:{pixel_hash}:{row}\n".encode())
    return digest.hexdigest()


def read_index_info(work: str | Path) -> dict:
    """index.json of a work folder (clear error when there is none)."""
    path = Path(work) / INDEX_INFO_FILE
    if not path.exists():
        raise WorkspaceError(f"{work} holds no index: run `illustra scan DATA --out {work}` (or curate) first")
    return json.loads(path.read_text(encoding="utf-8"))


def index_identity(work: str | Path) -> dict:
    """What a derived artefact records about the index it was made from."""
    info = read_index_info(work)
    return {"work": str(Path(work)), "data_root": info.get("data_root", ""), "fingerprint": info.get("fingerprint", "")}


def default_work(data: str | Path, base: str | Path = "work/index") -> Path:
    """One work folder per data folder: BASE/<folder name>-<hash of its absolute path>."""
    resolved = Path(data).resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name or "data")[:40]
    return Path(base) / f"{slug}-{hashlib.blake2b(str(resolved).encode(), digest_size=4).hexdigest()}"


def check_data_root(work: str | Path, data: str | Path) -> None:
    """Stop when WORK already holds the index of another data folder (two folders never share an index)."""
    path = Path(work) / INDEX_INFO_FILE
    if not path.exists():
        return
    recorded = json.loads(path.read_text(encoding="utf-8")).get("data_root")
    if recorded and Path(recorded) != Path(data).resolve():
        raise WorkspaceError(f"{work} holds the index of {recorded}, not of {Path(data).resolve()}: give this folder "
                             f"its own work folder (leave --work out for one per folder, e.g. {default_work(data)})")


@dataclass
class Remapped:
    """A table joined to the current index, and what the join dropped."""

    table: pd.DataFrame
    kept: int
    missing: int   # ids no longer in the index (deleted or renamed files)
    changed: int   # same id, different decoded pixels (edited files)
    unreadable: int  # in the index but no longer decodes
    stale: bool    # the table was made from another state of the index

    def message(self) -> str:
        """One line for the console when anything was dropped."""
        return (f"the index changed since this table was made: {self.kept} images re-mapped by file_id, "
                f"{self.missing} no longer exist, {self.changed} changed, {self.unreadable} no longer decode "
                "(dropped); re-run `illustra curate` to include new or changed images")


def remap_to_index(table: pd.DataFrame, work: str | Path, made_from: dict | None = None) -> Remapped:
    """`table` (rows with file_id, pixel_hash) with `cache_row` taken from the current index of WORK.

    `made_from` is the `index_identity` recorded when the table was made: a different data folder
    is an error; a different fingerprint means re-mapping (an equal one changes nothing).
    """
    from illustra.data.manifest import load_manifest

    info = read_index_info(work)
    if made_from and made_from.get("data_root") and info.get("data_root") and \
            Path(made_from["data_root"]) != Path(info["data_root"]):
        raise WorkspaceError(f"this table was made from {made_from['data_root']}, but {work} now indexes "
                             f"{info['data_root']}: run `illustra curate {made_from['data_root']}` again "
                             "with its own --work")
    if "file_id" not in table:
        raise WorkspaceError("this table has no file_id column (made by an older illustra): re-run `illustra curate`")
    current = load_manifest(work)
    stale = not made_from or made_from.get("fingerprint") != info.get("fingerprint")
    now = current.set_index("file_id")[["pixel_hash", "cache_row"]].rename(columns={"pixel_hash": "pixel_hash_now"})
    joined = table.drop(columns=["cache_row"], errors="ignore").join(now, on="file_id")
    present = joined["cache_row"].notna()
    same = present & (joined["pixel_hash_now"] == joined["pixel_hash"])
    readable = same & (joined["cache_row"] >= 0)
    kept = joined[readable].drop(columns=["pixel_hash_now"]).astype({"cache_row": int})
    return Remapped(kept, int(readable.sum()), int((~present).sum()), int((present & ~same).sum()),
                    int((same & ~readable).sum()), stale)
