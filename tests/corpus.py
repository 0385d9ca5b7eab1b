"""A corpus of real small image files, good and bad, for the loading and scanning tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def drawing(size: tuple[int, int] = (40, 30), colour=(200, 30, 30)) -> Image.Image:
    """An RGBA drawing: a coloured square on a transparent background."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    image.paste(Image.new("RGBA", (w // 2, h // 2), colour + (255,)), (w // 4, h // 4))
    return image


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    """Encode as JPEG."""
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def png_bytes(image: Image.Image, **options) -> bytes:
    """Encode as PNG."""
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90 degrees' (orientation 6): upright it is 20x40."""
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(image, exif=exif.tobytes())


def animated_gif() -> bytes:
    """A two-frame GIF: red then blue."""
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def sixteen_bit_png() -> bytes:
    """A 16-bit grayscale PNG holding a ramp up to 65535."""
    ramp = np.linspace(0, 65535, 32 * 8, dtype=np.uint16).reshape(8, 32)
    return png_bytes(Image.fromarray(ramp))


def palette_png(transparent: bool) -> bytes:
    """A palette PNG, optionally with a transparent background index."""
    image = drawing().convert("RGB").quantize(colors=8)
    if transparent:
        corner = image.getpixel((0, 0))
        return png_bytes(image, transparency=corner)
    return png_bytes(image)


# name -> (bytes, expected status, expected reason code or "")
def bad_and_odd_files() -> dict[str, tuple[bytes, str, str]]:
    """Every odd-but-valid and every unusable file kind the loader must handle."""
    good = drawing()
    jpeg = jpeg_bytes(good.convert("RGB"), quality=90)
    return {
        "good.jpg": (jpeg, "ok", ""),
        "good.png": (png_bytes(good), "ok", ""),
        "rotated.jpg": (exif_rotated_jpeg(), "ok", ""),
        "palette.png": (palette_png(transparent=False), "ok", ""),
        "palette_alpha.png": (palette_png(transparent=True), "ok", ""),
        "gray.png": (png_bytes(good.convert("L")), "ok", ""),
        "gray_alpha.png": (png_bytes(good.convert("LA")), "ok", ""),
        "cmyk.jpg": (jpeg_bytes(good.convert("RGB").convert("CMYK")), "ok", ""),
        "deep16.png": (sixteen_bit_png(), "ok", ""),
        "image.webp": (_webp(good), "ok", ""),
        "animated.gif": (animated_gif(), "warning", "animated"),
        "png_named.jpg": (png_bytes(good), "warning", "extension_mismatch"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "error", "truncated"),
        "truncated.png": (png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))[:300], "error", "truncated"),
        "empty.png": (b"", "error", "empty_file"),
        "garbage.png": (bytes(range(256)) * 4, "error", "not_an_image"),
        "notes.txt": (b"not an image, just notes\n", "error", "not_an_image"),
        "bomb.png": (png_header_only(100_000, 100_000), "error", "too_large"),
    }


def _webp(image: Image.Image) -> bytes:
    """Encode as WebP (lossless, alpha kept)."""
    out = io.BytesIO()
    image.save(out, "WEBP", lossless=True)
    return out.getvalue()


def write_corpus(root: Path) -> dict[str, tuple[str, str]]:
    """Write a class-folder tree mixing every file kind; return relative path -> (status, code)."""
    expected = {}
    for name, (data, status, code) in bad_and_odd_files().items():
        folder = "L2_2" if len(expected) % 2 == 0 else "L2_10"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(data)
        expected[f"{folder}/{name}"] = (status, code)
    korean = root / "L2_3" / "고양이 그림.png"
    korean.parent.mkdir(parents=True, exist_ok=True)
    korean.write_bytes(png_bytes(drawing()))
    expected["L2_3/고양이 그림.png"] = ("ok", "")
    (root / "L2_3" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    expected["L2_3/.DS_Store"] = ("error", "hidden")
    (root / "L2_3" / ".thumbs").mkdir()
    (root / "L2_3" / ".thumbs" / "a.png").write_bytes(png_bytes(drawing()))
    expected["L2_3/.thumbs/"] = ("error", "hidden")
    (root / "stray.png").write_bytes(png_bytes(drawing()))
    expected["stray.png"] = ("error", "outside_class")
    return expected
