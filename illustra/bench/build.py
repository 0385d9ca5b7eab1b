"""`illustra bench build` / `bench fixture`: make the public stand-in benchmark or a test fixture."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from illustra.bench import fixture
from illustra.bench.assemble import AssemblyOptions, assemble, write_build_record
from illustra.bench.sources import (
    DEB_PACKAGES,
    NPM_PACKAGES,
    SourceImage,
    class_map,
    default_cache_dir,
    fetch_deb,
    fetch_npm,
    holdout_packages,
    list_emoji_datasource,
    list_holdout_drawings,
    list_holdout_scenes,
    list_openclipart,
    list_openmoji,
    list_photo_scenes,
    package_versions,
    render_file,
    require_renderers,
)
from illustra.bench.truth import complete_truth

BUILDER_VERSION = 1
SMALL_PER_CLASS_STYLE = 3  # --small: sources per class and style
SMALL_SCENES = 6
HOLDOUT_OPTIONS = {"duplicate_fraction": 0.0, "photo_fraction": 0.12, "crops_per_scene": (8, 20),
                   "cutout_fraction": 0.5, "photo_png_fraction": 0.5}


def render(source: SourceImage) -> Image.Image:
    """Render any source drawing (file-backed or synthetic) as RGBA."""
    if source.loader == "synthetic-drawing":
        return fixture.draw(source)
    return render_file(source)


@functools.lru_cache(maxsize=3)
def render_scene(scene: SourceImage) -> Image.Image:
    """Decode (or synthesise) one photo scene; cached because consecutive crops share it."""
    if scene.loader == "synthetic-photo":
        return fixture.photo_scene(scene)
    with Image.open(scene.location) as image:
        return image.convert("RGB")


def _already_built(out: Path, request: dict) -> dict | None:
    """The build record when `out` already holds exactly this build."""
    record_path = out / "truth" / "build.json"
    if not record_path.exists() or not (out / "training").is_dir():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return record if record.get("request") == request else None


def _small_subset(sources: list[SourceImage]) -> list[SourceImage]:
    """The first few sources of every (class, style) pair."""
    taken: dict[tuple[str, str], int] = {}
    subset = []
    for source in sorted(sources, key=lambda s: s.key):
        slot = (source.folder, source.style)
        if taken.get(slot, 0) < SMALL_PER_CLASS_STYLE:
            taken[slot] = taken.get(slot, 0) + 1
            subset.append(source)
    return subset


def gather_sources(cache: Path) -> tuple[list[SourceImage], list[SourceImage]]:
    """Fetch every package (cached) and list the illustration sources and photo scenes."""
    mapping = class_map()
    classes = mapping["classes"]
    packages = {name: fetch_npm(name, version, cache) for name, version in NPM_PACKAGES.items()}
    debs = {name: fetch_deb(name, cache) for name in DEB_PACKAGES}
    illustrations = (
        list_emoji_datasource(packages["emoji-datasource-twitter"], "twitter", classes)
        + list_emoji_datasource(packages["emoji-datasource-google"], "google", classes)
        + list_openmoji(packages["openmoji"], classes)
        + list_openclipart(debs["openclipart-png"], classes)
    )
    scenes = list_photo_scenes(debs["plasma-workspace-wallpapers"], debs["mate-backgrounds"], mapping["photo_sources"])
    return illustrations, scenes


def build_benchmark(
    out: str | Path, *, seed: int = 0, cache: str | Path | None = None, small: bool = False,
    workers: int = 0, force: bool = False,
) -> dict:
    """Build DIR/training and DIR/truth per SPEC.md; skipped when DIR already holds this build."""
    out = Path(out)
    request = {"builder": BUILDER_VERSION, "seed": seed, "small": small, "kind": "benchmark"}
    if not force and (record := _already_built(out, request)):
        if not (out / "truth" / "near_miss.csv").exists():  # built before the truth was completed (issue #17)
            record = {**record, "truth_completion": complete_truth(out)}
        return {**record, "reused": True}
    cache = Path(cache) if cache else default_cache_dir()
    started = time.perf_counter()
    illustrations, scenes = gather_sources(cache)
    require_renderers(illustrations)
    options = AssemblyOptions(seed=seed, workers=workers)
    if small:
        illustrations, scenes = _small_subset(illustrations), scenes[:SMALL_SCENES]
        options = AssemblyOptions(seed=seed, workers=workers, crops_per_scene=(1, 8))
    counts = assemble(illustrations, scenes, out, options, render, render_scene)
    record = {"request": request, "options": asdict(options), "packages": package_versions(cache),
              "sources": len(illustrations), "scenes": [s.key for s in scenes], **counts,
              "build_seconds": round(time.perf_counter() - started, 1)}
    write_build_record(out / "truth", record)
    record["truth_completion"] = complete_truth(out)  # natural duplicates + near misses (bench/truth.py)
    return record


def build_holdout(
    out: str | Path, *, part: str = "dev", seed: int = 0, cache: str | Path | None = None, workers: int = 0,
    force: bool = False, duplicates: float = 0.0, photos: float | None = None, cutouts: float | None = None,
) -> dict:
    """A folder from sources the benchmark never uses, to test that the photo detector generalises
    (and, with `duplicates` > 0, the duplicate detector: that share of injected copies, truth completed).

    Drawings: icon themes of other styles (dev: Oxygen glossy + Papirus flat; test: MATE + elementary,
    both shaded), put into random class folders. Photos (~12 %): OpenCV's sample photographs (dev and
    test get alternate ones), half as plain crops and half cut out along a blob outline onto white,
    half saved as PNG. No duplicates are added. Truth as in the benchmark (style `photo` or `photo-cutout`).
    """
    out = Path(out)
    knobs = {"photo_fraction": photos, "cutout_fraction": cutouts}  # the photo robustness grid (issue #18)
    knobs = {key: value for key, value in knobs.items() if value is not None}
    request = {"builder": BUILDER_VERSION, "seed": seed, "kind": "holdout", "part": part,
               **({"duplicates": duplicates} if duplicates else {}), **knobs}  # defaults: the request as before
    if not force and (record := _already_built(out, request)):
        return {**record, "reused": True}
    cache = Path(cache) if cache else default_cache_dir()
    started = time.perf_counter()
    packages = holdout_packages(part)
    roots = {name: fetch_deb(name, cache) for name in packages}
    folders = [c["folder"] for c in class_map()["classes"]]
    drawings = list_holdout_drawings(roots, part, folders, seed)
    require_renderers(drawings)
    scenes = list_holdout_scenes(roots, part)
    options = AssemblyOptions(seed=seed, workers=workers,
                              **{**HOLDOUT_OPTIONS, "duplicate_fraction": duplicates, **knobs})
    counts = assemble(drawings, scenes, out, options, render, render_scene)
    record = {"request": request, "options": asdict(options), "packages": package_versions(cache, packages),
              "sources": len(drawings), "scenes": [s.key for s in scenes], **counts,
              "build_seconds": round(time.perf_counter() - started, 1)}
    write_build_record(out / "truth", record)
    if duplicates:  # a second folder to check the duplicate thresholds on (issue #17)
        record["truth_completion"] = complete_truth(out)
    return record


def build_fixture(
    out: str | Path, *, seed: int = 0, classes: int = 5, per_class: int = 12, scenes: int = 3,
    photo_fraction: float = 0.07, duplicate_fraction: float = 0.06, force: bool = True,
) -> dict:
    """A small synthetic benchmark (same layout and truth) for tests; no download."""
    out = Path(out)
    request = {"builder": BUILDER_VERSION, "seed": seed, "kind": "fixture", "classes": classes,
               "per_class": per_class, "scenes": scenes, "photo_fraction": photo_fraction,
               "duplicate_fraction": duplicate_fraction}
    if not force and (record := _already_built(out, request)):
        return {**record, "reused": True}
    folders = [c["folder"] for c in class_map()["classes"][:classes]]
    options = AssemblyOptions(seed=seed, workers=1, photo_fraction=photo_fraction,
                              duplicate_fraction=duplicate_fraction, crops_per_scene=(1, 30))
    counts = assemble(fixture.synthetic_drawings(folders, per_class, seed), fixture.synthetic_scenes(scenes, seed),
                      out, options, render, render_scene)
    record = {"request": request, **counts}
    write_build_record(out / "truth", record)
    return record
