"""Synthetic sources for fast tests: flat-colour drawings per class and photo-like scenes.

They go through the same assembly as the real benchmark (duplicates, photo crops, truth), so a
test folder has the benchmark's shape in a second, with no download.
"""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from illustra.bench.sources import SourceImage

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "bars")


def synthetic_drawings(folders: list[str], per_class: int, seed: int) -> list[SourceImage]:
    """`per_class` drawing sources for each folder; class k draws shape k in its own hue."""
    sources = []
    for class_index, folder in enumerate(folders):
        for number in range(per_class):
            params = json.dumps({"class": class_index, "number": number, "seed": seed})
            sources.append(SourceImage(f"synthetic:{folder}:{number:04d}", folder, "illustration", "synthetic",
                                       "synthetic", "synthetic-drawing", params))
    return sources


def synthetic_scenes(count: int, seed: int) -> list[SourceImage]:
    """Photo-like scenes (smooth light, texture and sensor noise) to cut photo crops from."""
    return [SourceImage(f"photo:synthetic{n:02d}", "", "photo", "synthetic", "photo", "synthetic-photo",
                        json.dumps({"number": n, "seed": seed})) for n in range(count)]


def draw(source: SourceImage) -> Image.Image:
    """Render a synthetic drawing: a black-outlined flat shape on a transparent canvas."""
    params = json.loads(source.location)
    rng = random.Random(source.location)
    side = rng.randint(72, 160)
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    hue = (params["class"] * 0.61803) % 1.0
    fill = _hue_colour((hue + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.6, 1.0))
    margin = rng.uniform(0.08, 0.22) * side
    box = (margin + rng.uniform(-4, 4), margin + rng.uniform(-4, 4), side - margin, side - margin)
    _shape(pen, SHAPES[params["class"] % len(SHAPES)], box, fill, max(2, side // 40))
    if params["class"] >= len(SHAPES):  # more classes than shapes: add a class-specific dot
        pen.ellipse((side * 0.42, side * 0.42, side * 0.58, side * 0.58), fill=(20, 20, 20, 255))
    return image


def _hue_colour(hue: float, value: float) -> tuple[int, int, int, int]:
    """An opaque saturated RGBA colour of the given hue."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return (round(r * 255), round(g * 255), round(b * 255), 255)


def _shape(pen: ImageDraw.ImageDraw, shape: str, box: tuple, fill: tuple, width: int) -> None:
    """Draw one named shape inside a box with a black outline."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2
    ink = (0, 0, 0, 255)
    if shape == "circle":
        pen.ellipse(box, fill=fill, outline=ink, width=width)
    elif shape == "square":
        pen.rectangle(box, fill=fill, outline=ink, width=width)
    elif shape == "ring":
        pen.ellipse(box, outline=fill, width=max(6, int(r / 3)))
    elif shape == "bars":
        for k in range(3):
            left = x0 + k * (x1 - x0) / 3
            pen.rectangle((left + 2, y0, left + (x1 - x0) / 3 - 2, y1), fill=fill, outline=ink, width=width)
    else:
        points = _polygon(shape, cx, cy, r)
        pen.polygon(points, fill=fill, outline=ink, width=width)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of the polygon shapes."""
    if shape == "triangle":
        angles, radii = [90, 210, 330], [r] * 3
    elif shape == "diamond":
        angles, radii = [0, 90, 180, 270], [r] * 4
    elif shape == "star":
        angles, radii = [90 + 36 * k for k in range(10)], [r if k % 2 == 0 else r * 0.45 for k in range(10)]
    else:  # cross
        w = r * 0.35
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return [(cx + q * math.cos(math.radians(a)), cy - q * math.sin(math.radians(a))) for a, q in zip(angles, radii)]


def photo_scene(source: SourceImage) -> Image.Image:
    """A 640x480 photo-like scene: smooth lighting, mid-frequency texture, sensor noise."""
    rng = np.random.default_rng(_seed_of(source.location))
    height, width = 480, 640
    coarse = rng.uniform(30, 230, size=(6, 8, 3)).astype(np.float32)
    light = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    light = np.asarray(light, np.float32)
    texture = rng.normal(0, 1, size=(height // 4, width // 4, 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(np.uint8(np.clip(128 + 40 * texture, 0, 255))).resize(
        (width, height), Image.Resampling.BICUBIC), np.float32) - 128
    noise = rng.normal(0, rng.uniform(4, 10), size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(light + 0.6 * texture + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6))


def _seed_of(text: str) -> int:
    """A stable 32-bit seed from a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
