"""Where the public stand-in benchmark's images come from: fetching, listing and rendering.

Downloads go through the registries' ordinary clients (`npm pack`, `apt-get download`) into a
cache folder, so a second build needs no network. Nothing here reads the user's data.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import subprocess
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MAX_SIDE = 512  # source images larger than this on the long side are shrunk to it
SVG_SIDE = 128  # OpenMoji SVGs are rendered at this size
NPM_PACKAGES = {"emoji-datasource-twitter": "16.0.0", "emoji-datasource-google": "16.0.0", "openmoji": "17.0.0"}
DEB_PACKAGES = ("openclipart-png", "plasma-workspace-wallpapers", "mate-backgrounds")
OPENMOJI_UNUSED_GROUPS = {"extras-openmoji", "extras-unicode"}


class MissingToolError(RuntimeError):
    """A download client the builder needs is not installed; the message says how to get it."""


@dataclass(frozen=True)
class SourceImage:
    """One source drawing or photo scene: where it comes from and how to render it."""

    key: str  # unique and stable; also the truth's `origin`
    folder: str  # class folder ("" for photo scenes)
    kind: str  # "illustration" or "photo"
    source: str  # package (or generator) it comes from
    style: str  # twitter, google, openmoji-color, openmoji-black, openclipart, photo, ...
    loader: str  # "png", "svg", "jpeg" or a synthetic generator name
    location: str  # file path, or generator parameters as JSON


def class_map() -> dict:
    """The benchmark's class map shipped with the package (a copy of shared/benchmark)."""
    text = importlib.resources.files("illustra.bench").joinpath("classes.json").read_text(encoding="utf-8")
    return json.loads(text)


def default_cache_dir() -> Path:
    """Download cache: $ILLUSTRA_CACHE, else ~/.cache/illustra."""
    return Path(os.environ.get("ILLUSTRA_CACHE") or Path.home() / ".cache" / "illustra")


def _require(tool: str, hint: str) -> str:
    """Path of a command-line tool, or a clear error naming what is missing."""
    found = shutil.which(tool)
    if not found:
        raise MissingToolError(f"`{tool}` is not installed; {hint}")
    return found


def _run(command: list[str], cwd: Path, hint: str) -> None:
    """Run a download command; on failure raise with its output and a hint."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise MissingToolError(f"`{' '.join(command)}` failed ({done.returncode}): {tail}\n{hint}")


def fetch_npm(name: str, version: str, cache: Path) -> Path:
    """Fetch an npm package with `npm pack` (once) and unpack it; returns its package folder."""
    target = cache / "npm" / f"{name}-{version}"
    if (target / ".done").exists():
        return target / "package"
    archive_dir = cache / "npm"
    archive_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_dir / f"{name}-{version}.tgz"
    if not archive.exists():
        npm = _require("npm", "install Node.js and npm (Debian: `apt-get install npm`)")
        _run([npm, "pack", f"{name}@{version}", "--silent"], archive_dir, "check that the npm registry is reachable")
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    (target / ".done").touch()
    return target / "package"


def fetch_deb(name: str, cache: Path) -> Path:
    """Fetch a Debian package with `apt-get download` (once) and unpack it; returns its root."""
    deb_dir = cache / "deb"
    target = deb_dir / name
    if (target / ".done").exists():
        return target
    deb_dir.mkdir(parents=True, exist_ok=True)
    debs = sorted(deb_dir.glob(f"{name}_*.deb"))
    if not debs:
        apt = _require("apt-get", f"on a non-Debian machine, put {name}_*.deb from a Debian mirror into {deb_dir}")
        hint = "run `apt-get update` first if apt does not know the package"
        try:
            _run([apt, "download", name], deb_dir, hint)
        except MissingToolError:
            if os.geteuid() != 0:  # only root may refresh the package lists
                raise
            print(f"apt-get download {name} failed; refreshing package lists with `apt-get update` once")
            _run([apt, "update"], deb_dir, "apt-get update failed")
            _run([apt, "download", name], deb_dir, hint)
        debs = sorted(deb_dir.glob(f"{name}_*.deb"))
    shutil.rmtree(target, ignore_errors=True)
    extract_deb(debs[-1], target)
    (target / ".done").write_text(debs[-1].name, encoding="utf-8")
    return target


def extract_deb(deb: Path, target: Path) -> None:
    """Unpack a .deb's data archive (an `ar` archive holding data.tar.*) without dpkg."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb} is not a Debian package")
        while header := handle.read(60):
            member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if member.startswith("data.tar"):
                if member.endswith(".zst"):
                    _require("dpkg-deb", "this .deb is zstd-compressed; install dpkg")
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
                    return
                with tarfile.open(fileobj=handle, mode="r|*") as tar:
                    tar.extractall(target, filter="data")
                return
            handle.seek(size + size % 2, os.SEEK_CUR)
    raise ValueError(f"{deb} holds no data archive")


def package_versions(cache: Path, debs: tuple[str, ...] = DEB_PACKAGES) -> dict[str, str]:
    """Versions of the fetched packages, for the build record."""
    versions = {f"npm:{n}": v for n, v in NPM_PACKAGES.items()} if debs == DEB_PACKAGES else {}
    for name in debs:
        done = cache / "deb" / name / ".done"
        if done.exists():
            versions[f"deb:{name}"] = done.read_text(encoding="utf-8").strip()
    return versions


def _subgroup_name(name: str) -> str:
    """Compare emoji subcategory names the way OpenMoji spells them."""
    return name.replace(" & ", "-")


def list_emoji_datasource(package: Path, style: str, classes: list[dict]) -> list[SourceImage]:
    """Base emoji (no skin tones) of each class's subcategories, in one emoji-datasource style."""
    wanted = {_subgroup_name(s): c["folder"] for c in classes for s in c["emoji"]}
    found = []
    for emoji in json.loads((package / "emoji.json").read_text(encoding="utf-8")):
        folder = wanted.get(_subgroup_name(emoji["subcategory"]))
        path = package / "img" / style / "64" / emoji["image"]
        if folder and emoji.get(f"has_img_{style}") and path.exists():
            found.append(SourceImage(f"{style}:{emoji['unified'].lower()}", folder, "illustration",
                                     f"emoji-datasource-{style}", style, "png", str(path)))
    return found


def list_openmoji(package: Path, classes: list[dict]) -> list[SourceImage]:
    """Base OpenMoji emoji of each class's subgroups, in colour and black line art."""
    wanted = {_subgroup_name(s): c["folder"] for c in classes for s in c["emoji"]}
    found = []
    for emoji in json.loads((package / "data" / "openmoji.json").read_text(encoding="utf-8")):
        if emoji.get("skintone") or emoji["group"] in OPENMOJI_UNUSED_GROUPS:
            continue
        folder = wanted.get(_subgroup_name(emoji["subgroups"]))
        if not folder:
            continue
        for variant in ("color", "black"):
            path = package / variant / "svg" / f"{emoji['hexcode']}.svg"
            if path.exists():
                found.append(SourceImage(f"openmoji-{variant}:{emoji['hexcode'].lower()}", folder, "illustration",
                                         "openmoji", f"openmoji-{variant}", "svg", str(path)))
    return found


def list_openclipart(root: Path, classes: list[dict]) -> list[SourceImage]:
    """Every openclipart PNG under each class's folders, taken recursively."""
    base = root / "usr" / "share" / "openclipart" / "png"
    found, seen = [], set()
    for cls in classes:
        for sub in cls["openclipart"]:
            for path in sorted((base / sub).rglob("*")):
                rel = path.relative_to(base).as_posix()
                if path.suffix.lower() == ".png" and path.is_file() and rel not in seen:
                    seen.add(rel)
                    found.append(SourceImage(f"openclipart:{rel}", cls["folder"], "illustration",
                                             "openclipart-png", "openclipart", "png", str(path)))
    return found


def list_photo_scenes(plasma_root: Path, mate_root: Path, photo_sources: dict) -> list[SourceImage]:
    """The listed wallpapers that are photographs (largest file of each plasma wallpaper)."""
    scenes = []
    for name in photo_sources["plasma-workspace-wallpapers"]:
        images = plasma_root / "usr" / "share" / "wallpapers" / name / "contents" / "images"
        files = [p for p in images.glob("*") if p.is_file()]
        if files:
            largest = max(files, key=lambda p: (_pixels_from_name(p), p.stat().st_size, p.name))
            scenes.append(SourceImage(f"photo:{name}", "", "photo", "plasma-workspace-wallpapers", "photo",
                                      "jpeg", str(largest)))
    for name in photo_sources["mate-backgrounds"]:
        path = mate_root / "usr" / "share" / "backgrounds" / "mate" / "nature" / name
        if path.exists():
            scenes.append(SourceImage(f"photo:{Path(name).stem}", "", "photo", "mate-backgrounds", "photo",
                                      "jpeg", str(path)))
    return scenes


def _pixels_from_name(path: Path) -> int:
    """Pixel count from a wallpaper file name such as 2560x1600.jpg (0 when absent)."""
    try:
        width, height = path.stem.lower().split("x")
        return int(width) * int(height)
    except ValueError:
        return 0


def require_renderers(sources: list[SourceImage]) -> None:
    """Stop before building when a renderer the sources need is missing (never skip a third of them silently)."""
    import importlib.util

    from illustra.errors import UserError

    svg = sum(1 for source in sources if source.loader == "svg")
    if svg and importlib.util.find_spec("resvg_py") is None:
        raise UserError(f"{svg} of the {len(sources)} sources are SVG files and the SVG renderer (resvg-py) is not "
                        'installed: run `pip install -e ".[bench]"` and build again')


def render_file(source: SourceImage) -> Image.Image:
    """Render a file-backed source as RGBA (SVG at 128 px), shrunk to at most 512 px."""
    if source.loader == "svg":
        import io

        import resvg_py

        png = resvg_py.svg_to_bytes(svg_path=source.location, width=SVG_SIDE, height=SVG_SIDE, skip_system_fonts=True)
        image = Image.open(io.BytesIO(bytes(png)))
    else:
        with warnings.catch_warnings():  # trusted package files; the 512 px shrink follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source.location)
    image.load()
    image = image.convert("RGBA")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


# --- The holdout folders (issue #5): sources the main benchmark never uses ----------------------
# Two parts with nothing in common: `dev` may inform the photo detector's design; `test` is scored once.
HOLDOUT_ICONS = {  # part -> (package, glob under the package root, style, share of the distinct files taken)
    "dev": [("oxygen-icon-theme", "usr/share/icons/oxygen/base/128x128/*/*.png", "oxygen", 1.0),
            ("papirus-icon-theme", "usr/share/icons/Papirus/64x64/apps/*.svg", "papirus", 0.25)],
    "test": [("mate-icon-theme", "usr/share/icons/mate/256x256/*/*.png", "mate", 1.0),
             ("elementary-xfce-icon-theme", "usr/share/icons/elementary-xfce/*/128/*.png", "elementary", 1.0)],
}
HOLDOUT_PHOTO_PACKAGES = ("opencv-doc", "lomiri-wallpapers-20.04")
OPENCV_EXAMPLES = "usr/share/doc/opencv-doc/examples/"
# Photographs only (looked at one by one): OpenCV's sample photos, colour and grayscale, plus one wallpaper.
# Alternate entries go to the dev and the test part.
HOLDOUT_PHOTOS = [("opencv-doc", OPENCV_EXAMPLES + name) for name in (
    "data/aero1.jpg", "data/aero3.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/basketball1.png",
    "data/board.jpg", "data/box.png", "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg",
    "data/chicky_512.png", "data/ela_original.jpg", "data/fruits.jpg", "data/home.jpg", "data/left.jpg",
    "data/left01.jpg", "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg", "data/orange.jpg",
    "data/right.jpg", "data/rubberwhale1.png", "data/squirrel_cls.jpg", "data/stuff.jpg", "text/scenetext01.jpg",
    "text/scenetext03.jpg", "text/scenetext05.jpg", "alphamat/input_images/plant.jpg")] + [
    ("lomiri-wallpapers-20.04", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg")]


def holdout_packages(part: str) -> tuple[str, ...]:
    """Debian packages one holdout part needs."""
    return tuple(package for package, *_ in HOLDOUT_ICONS[part]) + HOLDOUT_PHOTO_PACKAGES


def _stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by key and seed: order-free sampling and folder choice."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big") / 2**64


def list_holdout_drawings(roots: dict[str, Path], part: str, folders: list[str], seed: int) -> list[SourceImage]:
    """Icons of styles the benchmark never shows; each goes into a folder fixed by its key (they have no class)."""
    found = []
    for package, pattern, style, share in HOLDOUT_ICONS[part]:
        for path in sorted(roots[package].glob(pattern)):
            key = f"{style}:{path.relative_to(roots[package]).as_posix()}"
            if path.is_symlink() or _stable_fraction(key, seed) >= share:
                continue
            folder = folders[int(_stable_fraction("folder:" + key, seed) * len(folders))]
            found.append(SourceImage(key, folder, "illustration", package, style, path.suffix.lower()[1:], str(path)))
    return found


def list_holdout_scenes(roots: dict[str, Path], part: str) -> list[SourceImage]:
    """The part's photographs (every other entry of HOLDOUT_PHOTOS)."""
    scenes = []
    for package, name in HOLDOUT_PHOTOS[0 if part == "dev" else 1::2]:
        path = roots[package] / name
        if path.exists():
            scenes.append(SourceImage(f"photo:{package}:{path.name}", "", "photo", package, "photo", "jpeg", str(path)))
    return scenes
