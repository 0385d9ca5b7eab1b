"""Scanning, the manifest and the pixel cache on a folder mixing every file kind."""

from __future__ import annotations

import hashlib

import numpy as np

from illustra.data.cache import CacheSpec, fit_square, open_pixels
from illustra.data.index import IndexSettings, index_dataset, read_classes
from illustra.data.manifest import BASE_COLUMNS, load_manifest, problems, usable
from illustra.data.scan import natural_sorted, scan_dataset


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_natural_class_order():
    assert natural_sorted(["L2_10", "L2_2", "L2_52", "L2_3"]) == ["L2_2", "L2_3", "L2_10", "L2_52"]


def test_scan_lists_classes_in_natural_order_and_reports_strays(corpus):
    root, _ = corpus
    scan = scan_dataset(root)
    assert scan.classes == ["L2_2", "L2_3", "L2_10"]
    skipped = dict(scan.skipped)
    assert skipped["stray.png"].startswith("outside_class")
    assert skipped["L2_3/.DS_Store"].startswith("hidden")
    assert any(p.startswith("L2_3/.thumbs") for p in skipped)


def test_index_reports_every_bad_file_loads_every_odd_one_and_never_touches_data(corpus, tmp_path):
    root, expected = corpus
    before = _digests(root)
    result = index_dataset(root, tmp_path / "work", IndexSettings(CacheSpec(32)), progress=False)
    manifest = load_manifest(tmp_path / "work")
    assert _digests(root) == before  # originals byte-identical, nothing added to DATA
    assert list(manifest.columns) == list(BASE_COLUMNS)
    by_path = {row["path"].rstrip("/"): row for row in manifest.to_dict("records")}
    for path, (status, code) in expected.items():
        row = by_path[path.rstrip("/")]
        assert row["status"] == status, (path, row["reason"])
        assert row["reason"].startswith(code), (path, row["reason"])
        assert (row["cache_row"] >= 0) == (status != "error")
    korean = by_path["L2_3/고양이 그림.png"]
    assert korean["class_id"] == 1 and korean["width"] == 40
    assert set(problems(manifest)["path"].str.rstrip("/")) == {p.rstrip("/") for p, (s, _) in expected.items()
                                                               if s != "ok"}
    assert read_classes(tmp_path / "work") == ["L2_2", "L2_3", "L2_10"]
    assert result.decoded == len(scan_dataset(root).files)


def test_cache_rows_hold_the_letterboxed_images(corpus, tmp_path):
    root, _ = corpus
    index_dataset(root, tmp_path / "work", IndexSettings(CacheSpec(32)), progress=False)
    manifest = usable(load_manifest(tmp_path / "work"))
    pixels = open_pixels(tmp_path / "work", CacheSpec(32))
    assert pixels.shape[1:] == (32, 32, 3) and pixels.dtype == np.uint8
    row = manifest[manifest["path"].str.endswith("/good.png")].iloc[0]
    square = pixels[row["cache_row"]]
    assert tuple(square[0, 0]) == (255, 255, 255)  # letterbox padding / white background
    assert square[16, 16, 0] > 150 and square[16, 16, 1] < 90  # the red square in the middle


def test_second_run_reuses_unchanged_files_and_redecodes_changed_ones(corpus, tmp_path):
    root, _ = corpus
    work = tmp_path / "work"
    first = index_dataset(root, work, IndexSettings(CacheSpec(32)), progress=False)
    again = index_dataset(root, work, IndexSettings(CacheSpec(32)), progress=False)
    assert again.decoded == 0 and again.reused == first.decoded
    pixels_before = np.array(open_pixels(work, CacheSpec(32)))
    from corpus import drawing, png_bytes

    good = next(root.glob("*/good.png"))
    good.write_bytes(png_bytes(drawing((50, 50), colour=(0, 0, 220))))
    good_rel = good.relative_to(root).as_posix()
    third = index_dataset(root, work, IndexSettings(CacheSpec(32)), progress=False)
    assert third.decoded == 1
    manifest = load_manifest(work)
    row = manifest[manifest["path"] == good_rel].iloc[0]
    pixels = open_pixels(work, CacheSpec(32))
    assert pixels[row["cache_row"], 16, 16, 2] > 150  # now blue
    others = manifest[(manifest["cache_row"] >= 0) & (manifest["path"] != good_rel)]["cache_row"]
    assert np.array_equal(pixels[others.to_numpy()], pixels_before[others.to_numpy()])


def test_changing_the_cache_size_rebuilds(corpus, tmp_path):
    root, _ = corpus
    index_dataset(root, tmp_path / "w", IndexSettings(CacheSpec(32)), progress=False)
    result = index_dataset(root, tmp_path / "w", IndexSettings(CacheSpec(48)), progress=False)
    assert result.reused == 0 and open_pixels(tmp_path / "w", CacheSpec(48)).shape[1] == 48


def test_fit_square_policies():
    from PIL import Image

    wide = Image.new("RGB", (100, 50), (0, 0, 0))
    boxed = fit_square(wide, CacheSpec(20, "letterbox"))
    assert tuple(boxed[0, 10]) == (255, 255, 255) and tuple(boxed[10, 10]) == (0, 0, 0)
    cropped = fit_square(wide, CacheSpec(20, "crop"))
    assert cropped.max() == 0
