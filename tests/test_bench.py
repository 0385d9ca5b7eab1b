"""The benchmark assembly (on synthetic sources): layout, truth, proportions, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import tarfile

import numpy as np
from PIL import Image

from illustra.bench import fixture
from illustra.bench.assemble import AssemblyOptions, assemble, blob_mask, spread
from illustra.bench.build import build_fixture, render, render_scene
from illustra.bench.sources import extract_deb, list_holdout_drawings, list_holdout_scenes, list_openmoji


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_truth_files_have_the_spec_columns_and_cover_every_file(fixture_bench):
    training = fixture_bench / "training"
    files = {p.relative_to(training).as_posix() for p in training.rglob("*") if p.is_file()}
    sources = _read(fixture_bench / "truth" / "sources.csv")
    assert list(sources[0]) == ["path", "folder", "kind", "source", "style", "origin"]
    assert {row["path"] for row in sources} == files
    assert all(row["path"].split("/")[0] == row["folder"] for row in sources)
    duplicates = _read(fixture_bench / "truth" / "duplicates.csv")
    assert list(duplicates[0]) == ["path", "group", "transform"]
    photos = {row["path"] for row in _read(fixture_bench / "truth" / "photos.csv")}
    assert photos == {row["path"] for row in sources if row["kind"] == "photo"}
    assert all(len(name.split("/")[1].split(".")[0]) == 12 for name in files)  # random-looking names


def test_duplicates_and_photos_have_the_spec_proportions(tmp_path):
    out = tmp_path / "b"
    record = build_fixture(out, seed=1, classes=5, per_class=40)
    total = record["files"]
    assert abs(record["duplicate_copies"] / total - 0.06) < 0.01
    assert abs(record["photos"] / total - 0.07) < 0.01
    groups = {}
    for row in _read(out / "truth" / "duplicates.csv"):
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        assert [m["transform"] for m in members].count("original") == 1
        assert 2 <= len(members) <= 4
    sources = {row["path"]: row for row in _read(out / "truth" / "sources.csv")}
    for members in groups.values():  # every copy comes from the same source image as its original
        assert len({sources[m["path"]]["origin"] for m in members}) == 1
    exact = [m for ms in groups.values() for m in ms if m["transform"] == "exact"]
    for member in exact:
        original = next(m for m in groups[member["group"]] if m["transform"] == "original")
        assert (out / "training" / member["path"]).read_bytes() == (out / "training" / original["path"]).read_bytes()
    photo = Image.open(out / "training" / next(p for p, r in sources.items() if r["kind"] == "photo"))
    assert photo.format == "JPEG"


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    build_fixture(tmp_path / "a", seed=7, classes=4, per_class=15)
    build_fixture(tmp_path / "b", seed=7, classes=4, per_class=15)
    build_fixture(tmp_path / "c", seed=8, classes=4, per_class=15)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_spread_respects_bounds_and_total():
    counts = spread(100, 6, 5, 30, random.Random(0))
    assert sum(counts) == 100 and all(5 <= c <= 30 for c in counts)
    assert sum(spread(3, 6, 5, 30, random.Random(0))) == 3  # bounds bend only when they must


def test_deb_extraction_without_dpkg(tmp_path):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("./usr/share/x/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", payload.getvalue())]
    blob = b"!<arch>\n"
    for name, content in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        blob += header + content + (b"\n" if len(content) % 2 else b"")
    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(blob)
    extract_deb(deb, tmp_path / "root")
    assert (tmp_path / "root" / "usr" / "share" / "x" / "hello.txt").read_text() == "hello"


def test_openmoji_listing_uses_base_emoji_and_subgroup_spelling(tmp_path):
    import json

    (tmp_path / "data").mkdir()
    rows = [
        {"hexcode": "1F600", "group": "smileys-emotion", "subgroups": "face-smiling", "skintone": ""},
        {"hexcode": "1F44B-1F3FB", "group": "people-body", "subgroups": "hand-fingers-open", "skintone": "1"},
        {"hexcode": "2600", "group": "travel-places", "subgroups": "sky-weather", "skintone": ""},
        {"hexcode": "E000", "group": "extras-openmoji", "subgroups": "face-smiling", "skintone": ""},
    ]
    (tmp_path / "data" / "openmoji.json").write_text(json.dumps(rows))
    for variant in ("color", "black"):
        (tmp_path / variant / "svg").mkdir(parents=True)
        for row in rows:
            (tmp_path / variant / "svg" / f"{row['hexcode']}.svg").write_text("<svg/>")
    classes = [{"folder": "L2_20", "emoji": ["face-smiling"]}, {"folder": "L2_33", "emoji": ["sky & weather"]}]
    found = list_openmoji(tmp_path, classes)
    assert sorted((s.folder, s.style) for s in found) == [
        ("L2_20", "openmoji-black"), ("L2_20", "openmoji-color"),
        ("L2_33", "openmoji-black"), ("L2_33", "openmoji-color"),
    ]


def test_holdout_cut_outs_are_photos_on_white_and_half_the_photos_are_png(tmp_path):
    folders = ["L2_2", "L2_3"]
    options = AssemblyOptions(seed=1, workers=1, duplicate_fraction=0.0, photo_fraction=0.3, crops_per_scene=(4, 30),
                              cutout_fraction=0.5, photo_png_fraction=0.5)
    assemble(fixture.synthetic_drawings(folders, 12, 1), fixture.synthetic_scenes(2, 1), tmp_path, options,
             render, render_scene)
    photos = [row for row in _read(tmp_path / "truth" / "sources.csv") if row["kind"] == "photo"]
    styles = {row["style"] for row in photos}
    assert styles == {"photo", "photo-cutout"}
    assert {row["path"][-4:] for row in photos} == {".jpg", ".png"}
    assert not _read(tmp_path / "truth" / "duplicates.csv")
    for row in photos:
        if row["style"] == "photo-cutout":
            image = Image.open(tmp_path / "training" / row["path"]).convert("RGBA")
            white = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
            corners = [white.getpixel(xy) for xy in ((0, 0), (image.width - 1, image.height - 1))]
            assert all(min(c) >= 240 for c in corners), corners


def test_blob_mask_is_one_centred_object_of_reasonable_size():
    mask = np.asarray(blob_mask((120, 80), seed=5)) > 127
    assert 0.25 < mask.mean() < 0.85
    assert mask[40, 60] and not mask[0, 0] and not mask[-1, -1]


def test_holdout_listing_parts_share_no_source_and_skip_links(tmp_path):
    icons = tmp_path / "oxygen-icon-theme" / "usr/share/icons/oxygen/base/128x128/apps"
    icons.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(icons / name)
    (icons / "c.png").symlink_to(icons / "a.png")
    roots = {"oxygen-icon-theme": tmp_path / "oxygen-icon-theme", "papirus-icon-theme": tmp_path / "none"}
    drawings = list_holdout_drawings(roots, "dev", ["L2_2", "L2_3"], seed=0)
    assert sorted(d.style for d in drawings) == ["oxygen", "oxygen"] and all(d.folder in ("L2_2", "L2_3") for d in drawings)
    scene_roots = {"opencv-doc": tmp_path / "cv", "lomiri-wallpapers-20.04": tmp_path / "lomiri"}
    for package, name in [("opencv-doc", "usr/share/doc/opencv-doc/examples/data/" + n) for n in ("aero1.jpg", "aero3.jpg")]:
        (scene_roots[package] / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(scene_roots[package] / name)
    dev, test = list_holdout_scenes(scene_roots, "dev"), list_holdout_scenes(scene_roots, "test")
    assert [s.key for s in dev] == ["photo:opencv-doc:aero1.jpg"] and [s.key for s in test] == ["photo:opencv-doc:aero3.jpg"]


def test_truth_completion_lists_natural_duplicates_and_near_misses(tmp_path):
    """Two sources that are one picture (re-encoded) become a `natural` group; a star variant is a near miss."""
    from PIL import ImageDraw
    from test_curation import flag  # the same flag, with and without a star

    from illustra.bench.truth import complete_truth

    def disc(colour) -> Image.Image:
        image = Image.new("RGB", (128, 128), "white")
        ImageDraw.Draw(image).ellipse((10, 10, 118, 118), fill=colour)
        return image

    training, truth = tmp_path / "training", tmp_path / "truth"
    (training / "L2_2").mkdir(parents=True)
    truth.mkdir()
    files = {"L2_2/flag.png": flag(), "L2_2/flag_again.jpg": flag(), "L2_2/flag_star.png": flag(star=True),
             "L2_2/disc.png": disc((200, 40, 40)), "L2_2/disc_copy.png": disc((200, 40, 40)),
             "L2_2/other.png": disc((40, 40, 200))}
    for rel, image in files.items():
        image.save(training / rel, quality=95)
    with open(truth / "sources.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "folder", "kind", "source", "style", "origin"])
        writer.writerows([[rel, "L2_2", "illustration", "test", "test", rel] for rel in files])
    with open(truth / "duplicates.csv", "w", encoding="utf-8", newline="") as handle:  # one injected copy
        handle.write("path,group,transform\nL2_2/disc.png,0,original\nL2_2/disc_copy.png,0,exact\n")

    summary = complete_truth(tmp_path)
    groups = list(csv.DictReader(open(truth / "duplicates.csv", encoding="utf-8")))
    by_path = {row["path"]: row for row in groups}
    assert by_path["L2_2/flag.png"]["group"] == by_path["L2_2/flag_again.jpg"]["group"]
    assert by_path["L2_2/flag.png"]["transform"] == "natural"
    assert "L2_2/flag_star.png" not in by_path and "L2_2/other.png" not in by_path
    assert by_path["L2_2/disc_copy.png"]["transform"] == "exact"  # the injected group is kept as it was
    near = {tuple(sorted((row["path_a"], row["path_b"])))
            for row in csv.DictReader(open(truth / "near_miss.csv", encoding="utf-8"))}
    assert ("L2_2/flag.png", "L2_2/flag_star.png") in near or ("L2_2/flag_again.jpg", "L2_2/flag_star.png") in near
    assert summary["natural_pairs"] == 1 and (truth / "duplicates_injected.csv").exists()
    assert complete_truth(tmp_path) == summary  # idempotent: runs again from the injected groups


def test_a_missing_svg_renderer_or_many_render_failures_stop_the_build(tmp_path, monkeypatch):
    """Fail loudly where data would silently vanish: no resvg-py with SVG sources, or > a handful of failures."""
    import importlib.util

    import pytest

    from illustra.bench.sources import SourceImage, require_renderers
    from illustra.errors import UserError

    svg = SourceImage("openmoji:1f600", "L2_20", "illustration", "openmoji", "openmoji-color", "svg", "/none.svg")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "resvg_py" else real(name, *a))
    with pytest.raises(UserError, match=r'pip install -e "\.\[bench\]"'):
        require_renderers([svg])
    monkeypatch.undo()
    broken = [SourceImage(f"x:{i}", "L2_2", "illustration", "test", "test", "svg", f"/none/{i}.svg") for i in range(8)]
    drawings = fixture.synthetic_drawings(["L2_2", "L2_3"], 4, 0)

    def render_or_fail(source):
        return render(source) if source.loader != "svg" else (_ for _ in ()).throw(OSError("cannot render"))

    with pytest.raises(UserError, match="8 of 16 sources failed to render"):
        assemble(drawings + broken, [], tmp_path / "out", AssemblyOptions(workers=1), render_or_fail, render_scene)
