"""Safe image loading: the one function every stage uses to turn a file into RGB pixels.

Bad input never crashes a run: every failure becomes a `LoadResult` with status ``error`` and a
reason ``code: detail``; odd-but-valid files load and carry a ``warning`` reason.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: 64 MP is ~8000 x 8000

# What a file extension promises; a mismatch is loaded but reported (``extension_mismatch``).
EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".gif": "GIF",
    ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".ico": "ICO",
    ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM", ".tga": "TGA",
}
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says: format, original colour mode, size and frame count."""

    format: str
    mode: str
    width: int
    height: int
    n_frames: int = 1


@dataclass
class LoadResult:
    """Outcome of loading one file: RGB image (or None), header info, status and reason."""

    image: Image.Image | None
    info: ImageInfo | None
    status: str  # "ok", "warning" (loaded, but noteworthy) or "error" (not loaded)
    reason: str = ""

    @property
    def loaded(self) -> bool:
        """True when pixels are available (status ok or warning)."""
        return self.image is not None


def _error(code: str, detail: str, info: ImageInfo | None = None) -> LoadResult:
    """An unusable file, with a machine-readable code and a human detail."""
    return LoadResult(None, info, "error", f"{code}: {detail}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_bit_depth_to_l(image)
        mode = "L"
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("RGB", "L", "1") and "transparency" in image.info:
        image = image.convert("RGBA")  # colour-key transparency (tRNS chunk)
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, WHITE + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit or 32-bit single-channel image to 8-bit grayscale."""
    values = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    scaled = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def _extension_warning(name: str, fmt: str) -> str:
    """A warning when the file's extension promises another format than its content."""
    suffix = Path(name).suffix.lower()
    expected = EXTENSION_FORMATS.get(suffix)
    if expected == fmt or (expected == "JPEG" and fmt == "MPO"):  # MPO: multi-picture JPEG
        return ""
    shown = suffix or "(no extension)"
    return f"extension_mismatch: {shown} file holds {fmt} data"


def load_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> LoadResult:
    """Load a file (path or bytes) as upright 8-bit RGB on white; never raises.

    ``draft_size`` lets libjpeg decode big JPEGs at a reduced scale (at least that many pixels on
    the short side) -- a large speed-up when only a small working copy is needed.
    """
    label = name if name is not None else (str(source) if not isinstance(source, bytes) else "")
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            return _error("unreadable", f"{exc.strerror or exc}")
    if not data:
        return _error("empty_file", "the file has 0 bytes")
    return _decode(data, label, max_pixels, draft_size)


def _decode(data: bytes, label: str, max_pixels: int, draft_size: int | None) -> LoadResult:
    """Decode bytes with every failure mapped to a reason."""
    info = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                info = ImageInfo(
                    format=image.format or "unknown",
                    mode=image.mode,
                    width=image.width,
                    height=image.height,
                    n_frames=int(getattr(image, "n_frames", 1) or 1),
                )
                if info.width <= 0 or info.height <= 0:
                    return _error("corrupt", "the header gives an empty size", info)
                if info.width * info.height > max_pixels:
                    return _error(
                        "too_large",
                        f"{info.width}x{info.height} = {info.width * info.height / 1e6:.0f} MP is over "
                        f"the {max_pixels / 1e6:.0f} MP decompression-bomb limit (raise max_pixels to load it)",
                        info,
                    )
                if draft_size and info.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                rgb = to_rgb(upright)
    except Image.DecompressionBombError as exc:
        return _error("too_large", f"{exc} (decompression-bomb guard)", info)
    except UnidentifiedImageError:
        return _error("not_an_image", "no image format recognises this content", info)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        text = str(exc)
        code = "truncated" if "truncated" in text.lower() or isinstance(exc, EOFError) else "corrupt"
        return _error(code, text or type(exc).__name__, info)
    except MemoryError:
        return _error("too_large", "not enough memory to decode", info)
    notes = [_extension_warning(label, info.format)] if label else []
    if info.n_frames > 1:
        notes.append(f"animated: {info.n_frames} frames, the first is used")
    notes = [n for n in notes if n]
    return LoadResult(rgb, info, "warning" if notes else "ok", "; ".join(notes))

