"""Folder-level jobs behind `illustra pretrain` and `illustra embed` (plain functions)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from illustra.data.cache import CacheSpec, open_pixels
from illustra.data.index import IndexSettings, index_dataset, recorded_settings
from illustra.data.manifest import load_manifest, save_manifest
from illustra.errors import UserError
from illustra.ssl.augment import MEAN, STD
from illustra.ssl.embed import embed_manifest
from illustra.ssl.pretrain import PretrainConfig, pretrain
from illustra.train.device import barrier, distributed


def parse_duration(text: str | float | int | None) -> float:
    """'90s', '20m', '1.5h' or plain seconds -> seconds (0 for none)."""
    if text in (None, "", 0):
        return 0.0
    match = re.fullmatch(r"\s*([\d.]+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ValueError(f"cannot read duration {text!r}; use e.g. 90s, 20m, 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def preprocessing_of(spec: CacheSpec, input_size: int) -> dict:
    """How an image becomes encoder input; stored in every weights file."""
    return {"cache_size": spec.size, "cache_policy": spec.policy, "input_size": input_size,
            "resize": "fit into cache square by policy (white padding), then bilinear antialiased resize",
            "mean": list(MEAN), "std": list(STD), "value_range": "RGB / 255"}


def indexed(data: str | Path, work: str | Path, spec: CacheSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest and cache of a data folder (decoding only what is new; the decode guard `scan` used is kept)."""
    recorded = recorded_settings(work)
    max_pixels = recorded.max_pixels if recorded is not None else IndexSettings().max_pixels
    result = index_dataset(data, work, IndexSettings(spec, max_pixels))
    if not (result.manifest["cache_row"] >= 0).any():
        raise UserError(f"no readable image under the class folders of {data} ({len(result.manifest)} files listed, "
                        f"{len(result.classes)} class folders): expected {data}/<class folder>/<image files>")
    return result.manifest, open_pixels(work, spec)


def pretrain_folder(data: str | Path, run_dir: str | Path, work: str | Path, config: PretrainConfig,
                    spec: CacheSpec = CacheSpec(), resume: bool = False) -> dict:
    """Pretrain on every usable image of a data folder (all classes, photos included)."""
    rank, world = distributed()
    if rank == 0:
        indexed(data, work, spec)
    if world > 1:
        barrier()  # the other ranks read what rank 0 wrote
    return pretrain_cached(run_dir, work, config, spec, resume)


def pretrain_cached(run_dir: str | Path, work: str | Path, config: PretrainConfig, spec: CacheSpec = CacheSpec(),
                    resume: bool = False) -> dict:
    """Pretrain on every usable row of an already indexed WORK folder (manifest + pixel cache)."""
    started = time.perf_counter()  # the budget's clock: loading counts against it
    manifest, pixels = load_manifest(work), open_pixels(work, spec)
    usable = manifest[manifest["cache_row"] >= 0]
    images = np.asarray(pixels[usable["cache_row"].to_numpy()])
    labels = usable["class_id"].to_numpy()  # only for the kNN monitor
    return pretrain(images, labels, run_dir, config, preprocessing_of(spec, config.encoder.input_size), resume=resume,
                    budget_clock=started)


def embed_folder(data: str | Path, encoder: str | Path, out: str | Path, work: str | Path,
                 spec: CacheSpec = CacheSpec()) -> tuple[pd.DataFrame, bool]:
    """Embed every manifest row; write OUT/embeddings.npy and OUT/manifest.csv with `embedding_row`."""
    manifest, pixels = indexed(data, work, spec)
    features, reused = embed_manifest(manifest, pixels, encoder, out, shared=work)
    manifest = manifest.assign(embedding_row=np.where(manifest["cache_row"] >= 0, np.arange(len(manifest)), -1))
    save_manifest(manifest, Path(out) / "manifest.csv")
    return manifest, reused
