"""Pixel cache: every image decoded once, fitted to a square working size, in one uint8 array.

Policy ``letterbox`` (default) scales the long side to the working size and pads on white: a
drawing is never cut, and white is the background clipart already sits on. ``crop`` takes the
centre square instead (fills the frame, but can cut off the subject of wide drawings).
The array is ``(N, size, size, 3)`` in a ``.npy`` file, opened memory-mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

POLICIES = ("letterbox", "crop")


@dataclass(frozen=True)
class CacheSpec:
    """How cached pixels are made: square side in pixels and the fitting policy."""

    size: int = 64
    policy: str = "letterbox"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown cache policy {self.policy!r}; choose one of {POLICIES}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"cache size {self.size} is outside 8..1024")

    @property
    def file_name(self) -> str:
        """File name of the cache array for this spec."""
        return f"pixels_{self.size}_{self.policy}.npy"


def fit_square(image: Image.Image, spec: CacheSpec) -> np.ndarray:
    """Fit an RGB image into a ``size x size`` square by the spec's policy; uint8 HWC."""
    size = spec.size
    width, height = image.size
    if spec.policy == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0))
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


def cache_file(work_dir: str | Path, spec: CacheSpec) -> Path:
    """Where the cache array for ``spec`` lives inside a work folder."""
    return Path(work_dir) / spec.file_name


def create_pixels(path: Path, rows: int, spec: CacheSpec) -> np.memmap:
    """A new writable cache array, filled white (rows of unloadable files stay white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, spec.size, spec.size, 3))
    array[:] = 255
    return array


def open_pixels(work_dir: str | Path, spec: CacheSpec = CacheSpec()) -> np.memmap:
    """Open a cache array read-only and memory-mapped (no copy into RAM)."""
    path = cache_file(work_dir, spec)
    if not path.exists():
        raise FileNotFoundError(f"no pixel cache at {path}; run `illustra scan` first")
    return np.load(path, mmap_mode="r")
