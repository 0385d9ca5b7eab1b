"""Assemble a contaminated training folder with ground truth from source images.

Steps (SPEC.md): save every source drawing with a realistic encoding, drop exact pixel
duplicates, add near/exact duplicate copies (~6 %), add photograph crops (~7 %), give every file
a random-looking name, and write the truth CSVs. The same seed gives byte-identical output: every
random choice comes from a seeded generator, per source or in one fixed-order planning pass.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

from illustra.bench.sources import SourceImage

TRANSFORMS = ("exact", "jpeg", "resize", "crop", "brightness", "format")
MAX_RENDER_FAILURES = 5  # a handful of broken package files is tolerated (and recorded in build.json) ...
MAX_RENDER_FAILURE_SHARE = 0.002  # ... more than this share of the sources stops the build
STAGING = ".staging"


@dataclass(frozen=True)
class AssemblyOptions:
    """Proportions and limits of the contaminated folder."""

    seed: int = 0
    duplicate_fraction: float = 0.06
    photo_fraction: float = 0.07
    cross_class_groups: float = 1 / 6
    max_files: int = 10_000  # trim the largest classes if the total would exceed this
    crops_per_scene: tuple[int, int] = (5, 30)
    cutout_fraction: float = 0.0  # share of photos cut out along a blob outline and put on white (holdout)
    photo_png_fraction: float = 0.0  # share of photos saved as PNG instead of JPEG (holdout)
    workers: int = 0


@dataclass
class PlannedFile:
    """One file of the output: where it goes, what it is, how it is made."""

    path: str  # relative to training/
    folder: str
    kind: str
    source: str
    style: str
    origin: str
    job: dict = field(default_factory=dict)  # what the worker does to write it


def _rng(seed: int, key: str) -> random.Random:
    """A generator for one item, independent of processing order."""
    return random.Random(f"{seed}:{key}")


def choose_encoding(rng: random.Random, has_alpha: bool) -> dict:
    """Mostly JPEG (q 85-95), some PNG: RGB, a few with alpha kept, a few palette or grayscale."""
    draw = rng.random()
    if draw < 0.70:
        return {"format": "JPEG", "quality": rng.randint(85, 95)}
    if draw < 0.78 and has_alpha:
        return {"format": "PNG", "mode": "RGBA"}
    if draw < 0.84:
        return {"format": "PNG", "mode": "P"}
    if draw < 0.88:
        return {"format": "PNG", "mode": "L"}
    return {"format": "PNG", "mode": "RGB"}


def on_white(image: Image.Image) -> Image.Image:
    """Composite RGBA on white; the pixel identity used for dropping exact source duplicates."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")


def encode(image: Image.Image, encoding: dict) -> bytes:
    """Encode an image (RGBA or RGB) as the chosen file format."""
    out = io.BytesIO()
    if encoding["format"] == "JPEG":
        on_white(image).save(out, "JPEG", quality=encoding["quality"])
    else:
        mode = encoding.get("mode", "RGB")
        if mode == "RGBA":
            picture = image.convert("RGBA")
        elif mode == "P":
            picture = on_white(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        else:
            picture = on_white(image).convert(mode)
        picture.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()


def extension(encoding: dict) -> str:
    """File extension for an encoding."""
    return ".jpg" if encoding["format"] == "JPEG" else ".png"


def stage_source(task: tuple[SourceImage, int, str, Callable]) -> dict:
    """Render one source, hash its pixels on white, encode it and write it to the staging folder."""
    source, seed, staging, render = task
    try:
        image = render(source)
    except Exception as exc:  # a broken source file is skipped and recorded, never fatal
        return {"key": source.key, "error": f"{type(exc).__name__}: {exc}"}
    white = on_white(image)
    pixel_hash = hashlib.blake2b(f"{white.size}".encode() + white.tobytes(), digest_size=16).hexdigest()
    has_alpha = image.mode == "RGBA" and image.getchannel("A").getextrema()[0] < 255
    encoding = choose_encoding(_rng(seed, source.key), has_alpha)
    staged = Path(staging) / (hashlib.sha1(source.key.encode()).hexdigest() + extension(encoding))
    staged.write_bytes(encode(image, encoding))
    return {"key": source.key, "pixel_hash": pixel_hash, "staged": str(staged), "encoding": encoding}


def _parallel(function: Callable, tasks: list, workers: int, desc: str) -> Iterable:
    """Map in worker processes (ordered results) with a progress bar."""
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(tasks), desc=desc, unit="img", leave=False)
    if workers <= 1 or len(tasks) < 32:
        yield from tqdm(map(function, tasks), **bar)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from tqdm(pool.imap(function, tasks, chunksize=8), **bar)


class NameMaker:
    """Random-looking unique file names (12 hex digits) from the planning generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def __call__(self, ext: str) -> str:
        while (name := f"{self.rng.getrandbits(48):012x}") in self.used:
            pass
        self.used.add(name)
        return name + ext


def assemble(
    illustrations: list[SourceImage],
    scenes: list[SourceImage],
    out_dir: Path,
    options: AssemblyOptions,
    render: Callable[[SourceImage], Image.Image],
    render_scene: Callable[[SourceImage], Image.Image],
) -> dict:
    """Write out_dir/training and out_dir/truth; return counts for the build record."""
    training, truth = out_dir / "training", out_dir / "truth"
    for folder in (training, truth):
        shutil.rmtree(folder, ignore_errors=True)
    staging = out_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    illustrations = sorted(illustrations, key=lambda s: s.key)
    tasks = [(s, options.seed, str(staging), render) for s in illustrations]
    staged = list(_parallel(stage_source, tasks, options.workers, "render sources"))
    rng = random.Random(options.seed)
    names = NameMaker(rng)
    kept, stats = _keep_unique(illustrations, staged, options, rng)
    failed = stats["render_failures"]
    if len(failed) > max(MAX_RENDER_FAILURES, MAX_RENDER_FAILURE_SHARE * len(illustrations)):
        from illustra.errors import UserError

        raise UserError(f"{len(failed)} of {len(illustrations)} sources failed to render (first: {failed[0]}): the "
                        "build would silently lack them; fix the cause (a missing package?) and build again")
    files = _place_originals(kept, training, names)
    total = round(len(files) / (1 - options.duplicate_fraction - options.photo_fraction))
    groups = _plan_duplicates(files, round(total * options.duplicate_fraction), options, rng, names)
    folders = sorted({f.folder for f in files})
    photos = _plan_photos(scenes, folders, round(total * options.photo_fraction), options, rng, names)
    jobs = [(copy.job, str(training), render_scene) for _, copies in groups for copy in copies]
    jobs += [(photo.job, str(training), render_scene) for photo in photos]
    for result in _parallel(make_file, jobs, options.workers, "copies and photos"):
        if result:
            raise RuntimeError(result)
    shutil.rmtree(staging)
    all_files = files + [c for _, cs in groups for c in cs] + photos
    _write_truth(truth, all_files, groups, photos)
    class_counts = Counter(f.folder for f in all_files)
    return {**stats, "files": len(all_files), "duplicate_copies": sum(len(c) for _, c in groups),
            "duplicate_groups": len(groups), "photos": len(photos),
            "class_counts": dict(sorted(class_counts.items()))}


def _keep_unique(
    sources: list[SourceImage], staged: list[dict], options: AssemblyOptions, rng: random.Random
) -> tuple[list[tuple[SourceImage, dict]], dict]:
    """Drop failed renders and exact pixel duplicates; trim the largest classes to the size cap."""
    seen, kept, failed, dropped = set(), [], [], 0
    for source, result in zip(sources, staged):
        if "error" in result:
            failed.append(f"{source.key}: {result['error']}")
        elif result["pixel_hash"] in seen:
            dropped += 1
            os.remove(result["staged"])
        else:
            seen.add(result["pixel_hash"])
            kept.append((source, result))
    limit = int(options.max_files * (1 - options.duplicate_fraction - options.photo_fraction))
    by_class = defaultdict(list)
    for item in kept:
        by_class[item[0].folder].append(item)
    trimmed = 0
    while sum(map(len, by_class.values())) > limit:
        largest = max(sorted(by_class), key=lambda f: len(by_class[f]))
        victim = by_class[largest].pop(rng.randrange(len(by_class[largest])))
        os.remove(victim[1]["staged"])
        trimmed += 1
    kept = sorted((item for items in by_class.values() for item in items), key=lambda item: item[0].key)
    return kept, {"render_failures": failed, "exact_source_duplicates_dropped": dropped, "trimmed_for_size": trimmed}


def _place_originals(kept: list[tuple[SourceImage, dict]], training: Path, names: NameMaker) -> list[PlannedFile]:
    """Move staged sources to their class folders under random names."""
    files = []
    for source, result in kept:
        rel = f"{source.folder}/{names(Path(result['staged']).suffix)}"
        (training / source.folder).mkdir(parents=True, exist_ok=True)
        os.replace(result["staged"], training / rel)
        files.append(PlannedFile(rel, source.folder, "illustration", source.source, source.style, source.key,
                                 {"encoding": result["encoding"]}))
    return files


def _plan_duplicates(
    files: list[PlannedFile], target: int, options: AssemblyOptions, rng: random.Random, names: NameMaker
) -> list[tuple[PlannedFile, list[PlannedFile]]]:
    """Pick originals at random and give each 1-3 transformed copies until `target` copies exist."""
    folders = sorted({f.folder for f in files})
    order = rng.sample(range(len(files)), len(files))
    groups, made = [], 0
    for index in order:
        if made >= target:
            break
        original = files[index]
        count = min(rng.randint(1, 3), target - made)
        cross = len(folders) > 1 and rng.random() < options.cross_class_groups
        copies = []
        for number in range(count):
            transform = rng.choice(TRANSFORMS)
            params = _transform_params(transform, original, rng)
            folder = original.folder
            if cross and number == 0:
                folder = rng.choice([f for f in folders if f != original.folder])
            ext = params.get("ext") or Path(original.path).suffix
            rel = f"{folder}/{names(ext)}"
            job = {"op": "copy", "from": original.path, "to": rel, "transform": transform, **params}
            copies.append(PlannedFile(rel, folder, "illustration", original.source, original.style,
                                      original.origin, job))
        groups.append((original, copies))
        made += count
    return groups


def _transform_params(transform: str, original: PlannedFile, rng: random.Random) -> dict:
    """Random parameters of one duplicate transform (SPEC.md's ranges)."""
    is_jpeg = original.path.endswith(".jpg")
    if transform == "jpeg":
        return {"quality": rng.randint(60, 85), "ext": ".jpg"}
    if transform == "resize":
        scale = rng.uniform(0.5, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.5)
        return {"scale": round(scale, 4), "quality": rng.randint(85, 95)}
    if transform == "crop":
        return {"fractions": [round(rng.uniform(0.02, 0.05), 4) for _ in range(4)], "quality": rng.randint(85, 95)}
    if transform == "brightness":
        return {"factor": round(1 + rng.choice((-1, 1)) * rng.uniform(0.02, 0.05), 4), "quality": rng.randint(85, 95)}
    if transform == "format":
        return {"ext": ".png" if is_jpeg else ".jpg", "quality": rng.randint(85, 95)}
    return {}


def _plan_photos(
    scenes: list[SourceImage], folders: list[str], target: int, options: AssemblyOptions,
    rng: random.Random, names: NameMaker,
) -> list[PlannedFile]:
    """Cut `target` random crops (5-30 per scene, varied scale and aspect) into random folders."""
    if not scenes or target <= 0:
        return []
    counts = spread(target, len(scenes), *options.crops_per_scene, rng)
    photos = []
    for scene, count in zip(scenes, counts):
        for number in range(count):
            aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            crop = {"area": round(rng.uniform(0.02, 0.6), 4), "aspect": round(aspect, 4),
                    "x": round(rng.random(), 4), "y": round(rng.random(), 4), "long_side": rng.randint(128, 512),
                    "quality": rng.randint(70, 95)}
            style, ext = "photo", ".jpg"
            if options.cutout_fraction or options.photo_png_fraction:  # extra draws only when asked: seed-0 stays identical
                if rng.random() < options.cutout_fraction:
                    style, crop["cutout_seed"] = "photo-cutout", rng.getrandbits(32)
                if rng.random() < options.photo_png_fraction:
                    ext = ".png"
            folder = rng.choice(folders)
            rel = f"{folder}/{names(ext)}"
            photos.append(PlannedFile(rel, folder, "photo", scene.source, style, f"{scene.key}#{number}",
                                      {"op": "photo", "to": rel, "scene": scene, **crop}))
    return photos


def spread(total: int, parts: int, low: int, high: int, rng: random.Random) -> list[int]:
    """Random counts in [low, high] per part that add up to `total` (bounds bent only if they must)."""
    counts = [rng.randint(low, high) for _ in range(parts)]
    while sum(counts) != total:
        up = sum(counts) < total
        movable = [i for i, c in enumerate(counts) if (c < high if up else c > low)]
        movable = movable or [i for i, c in enumerate(counts) if up or c > 0]
        counts[rng.choice(movable)] += 1 if up else -1
    return counts


def make_file(task: tuple[dict, str, Callable]) -> str:
    """Worker: write one duplicate copy or photo crop; returns '' or an error message."""
    job, training, render_scene = task
    try:
        target = Path(training) / job["to"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if job["op"] == "photo":
            target.write_bytes(_photo_bytes(job, render_scene))
        else:
            target.write_bytes(_copy_bytes(job, Path(training) / job["from"]))
        return ""
    except Exception as exc:  # reported by the caller with the job that failed
        return f"{job.get('to')}: {type(exc).__name__}: {exc}"


def _copy_bytes(job: dict, original: Path) -> bytes:
    """Bytes of a duplicate copy made from the original file by one transform."""
    data = original.read_bytes()
    transform = job["transform"]
    if transform == "exact":
        return data
    image = Image.open(io.BytesIO(data))
    image.load()
    keep_png_mode = image.mode in ("RGBA", "P", "L") and transform != "format"
    image = image.convert("RGBA")
    if transform == "resize":
        size = (max(8, round(image.width * job["scale"])), max(8, round(image.height * job["scale"])))
        image = image.resize(size, Image.Resampling.LANCZOS)
    elif transform == "crop":
        left, top, right, bottom = job["fractions"]
        w, h = image.size
        image = image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))
    elif transform == "brightness":
        rgb = ImageEnhance.Brightness(on_white(image)).enhance(job["factor"]).convert("RGBA")
        rgb.putalpha(image.getchannel("A"))
        image = rgb
    ext = Path(job["to"]).suffix
    if ext == ".jpg":
        return encode(image, {"format": "JPEG", "quality": job.get("quality", 90)})
    mode = Image.open(io.BytesIO(data)).mode if keep_png_mode else "RGB"
    return encode(image, {"format": "PNG", "mode": mode if mode in ("RGBA", "P", "L") else "RGB"})


def _photo_bytes(job: dict, render_scene: Callable) -> bytes:
    """Bytes of one photo crop: a random box of given area share and aspect, saved as JPEG."""
    scene = render_scene(job["scene"])
    width, height = scene.size
    crop_w = min(width, round(np.sqrt(job["area"] * width * height * job["aspect"])))
    crop_h = min(height, round(np.sqrt(job["area"] * width * height / job["aspect"])))
    left = round((width - crop_w) * job["x"])
    top = round((height - crop_h) * job["y"])
    crop = scene.crop((left, top, left + crop_w, top + crop_h))
    long_side = min(job["long_side"], max(crop.size))
    crop.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    picture = cut_out(crop, job["cutout_seed"]) if "cutout_seed" in job else crop.convert("RGB")
    if job["to"].endswith(".png"):
        return encode(picture, {"format": "PNG", "mode": picture.mode})
    return encode(picture, {"format": "JPEG", "quality": job["quality"]})


def blob_mask(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth, irregular, centred object outline (L mode, 255 inside) filling roughly 35-75 % of the box."""
    generator = np.random.default_rng(seed)
    width, height = size
    field = Image.fromarray((generator.random((5, 5)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    y, x = np.mgrid[0:height, 0:width]
    radius = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    level = (1.0 - radius) + 0.9 * (np.asarray(field, np.float32) / 255 - 0.5)
    inside = level > np.quantile(level, 1 - generator.uniform(0.35, 0.75))
    mask = Image.fromarray((inside * 255).astype(np.uint8))
    return mask.filter(ImageFilter.GaussianBlur(generator.uniform(0.0, 1.5)))  # hard or slightly feathered edge


def cut_out(photo: Image.Image, seed: int) -> Image.Image:
    """A photo cut-out: the photo inside a blob outline, transparent outside, with a white margin (RGBA)."""
    generator = np.random.default_rng(seed)
    margin = int(max(photo.size) * generator.uniform(0.04, 0.15))
    canvas = Image.new("RGBA", (photo.width + 2 * margin, photo.height + 2 * margin), (255, 255, 255, 0))
    piece = photo.convert("RGBA")
    piece.putalpha(blob_mask(photo.size, seed))
    canvas.alpha_composite(piece, (margin, margin))
    return canvas


def _write_truth(truth: Path, files: list[PlannedFile], groups: list, photos: list[PlannedFile]) -> None:
    """Write truth/sources.csv, truth/duplicates.csv and truth/photos.csv (paths relative to training/)."""
    truth.mkdir(parents=True, exist_ok=True)
    rows = sorted([f.path, f.folder, f.kind, f.source, f.style, f.origin] for f in files)
    _write_csv(truth / "sources.csv", ["path", "folder", "kind", "source", "style", "origin"], rows)
    dup_rows = []
    for number, (original, copies) in enumerate(groups):
        dup_rows.append([original.path, number, "original"])
        dup_rows += [[c.path, number, c.job["transform"]] for c in copies]
    _write_csv(truth / "duplicates.csv", ["path", "group", "transform"], dup_rows)
    _write_csv(truth / "photos.csv", ["path"], sorted([p.path] for p in photos))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A small CSV writer with a header row and '\\n' line ends (byte-stable)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_build_record(truth: Path, record: dict) -> None:
    """Save what was built and from what (not read by any detector)."""
    (truth / "build.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
