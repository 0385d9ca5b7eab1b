"""The one safe loader: every odd-but-valid file loads, every bad file is reported with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from corpus import bad_and_odd_files, drawing, png_bytes

from illustra.data.imageio import load_image

CASES = bad_and_odd_files()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_file_kind_gets_its_status_and_reason(name):
    data, status, code = CASES[name]
    result = load_image(data, name=name)
    assert result.status == status, result.reason
    assert result.reason.startswith(code) if code else result.reason == ""
    if status == "error":
        assert result.image is None
    else:
        assert result.image.mode == "RGB"


def test_exif_orientation_is_applied():
    data, _, _ = CASES["rotated.jpg"]
    result = load_image(data, name="rotated.jpg")
    assert (result.info.width, result.info.height) == (40, 20)  # as stored
    assert result.image.size == (20, 40)  # as seen


@pytest.mark.parametrize("name", ["good.png", "palette_alpha.png", "gray_alpha.png", "image.webp"])
def test_transparency_is_composited_on_white(name):
    image = np.asarray(load_image(CASES[name][0], name=name).image)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert image[image.shape[0] // 2, image.shape[1] // 2].min() < 250  # the drawing is still there


def test_cmyk_and_16_bit_are_converted_faithfully():
    cmyk = np.asarray(load_image(CASES["cmyk.jpg"][0], name="cmyk.jpg").image).astype(int)
    centre = cmyk[15, 20]
    assert centre[0] > 150 and centre[1] < 90 and centre[2] < 90  # still red
    ramp = np.asarray(load_image(CASES["deep16.png"][0], name="deep16.png").image)
    assert ramp[0, 0, 0] == 0 and ramp[-1, -1, 0] == 255 and 100 < ramp[4, 0, 0] < 155


def test_animated_uses_the_first_frame():
    image = np.asarray(load_image(CASES["animated.gif"][0], name="animated.gif").image)
    assert tuple(image[8, 8]) == (255, 0, 0)


def test_bomb_guard_names_the_limit_and_is_configurable():
    data = png_bytes(drawing((100, 100)))
    result = load_image(data, name="x.png", max_pixels=5_000)
    assert result.status == "error" and "decompression-bomb" in result.reason
    assert "decompression-bomb" in load_image(CASES["bomb.png"][0], name="bomb.png").reason
    assert load_image(data, name="x.png").loaded


def test_missing_file_is_reported_not_raised(tmp_path):
    result = load_image(tmp_path / "nope.png")
    assert result.status == "error" and result.reason.startswith("unreadable")


def test_draft_decode_keeps_header_size_and_shrinks_pixels():
    from corpus import jpeg_bytes

    big = jpeg_bytes(drawing((800, 600)).convert("RGB"))
    result = load_image(big, name="big.jpg", draft_size=128)
    assert (result.info.width, result.info.height) == (800, 600)
    assert 128 <= min(result.image.size) < 600
