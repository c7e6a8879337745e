"""Image readers: files (PNG, JPEG, TIFF and what else Pillow opens; 1- to 16-bit or float;
gray, gray + alpha, RGB, RGBA, palette or CMYK) and ``sample:NAME`` for the natural images that
ship inside scikit-image's wheel. Palette images become RGB (RGBA with a transparent entry),
1/2/4-bit images 8-bit gray, CMYK images RGB (``(1 - c)(1 - k)``), min-is-white TIFFs ordinary
gray. OpenEXR files are refused (no installed library reads them), as is anything unreadable or
truncated, with one line naming the file.

Every reader returns ``float32`` arrays of shape ``[H, W, C]`` (``C`` = 1, 3 or 4) with values
in ``[0, 1]``: integer images are divided by their type's maximum (255, 65535); float images
must be finite and are used as stored when inside ``[0, 1]``, otherwise mapped linearly from
``[min, max]`` to ``[0, 1]`` (the range is recorded). Colours are not gamma-decoded.

Resizing (``size``) scales the longer side to ``size`` pixels with Pillow's ``BILINEAR``
resampling on float32 channels: a triangle (tent) filter whose support grows with the
reduction factor, so shrinking is anti-aliased (a 2x reduction averages 4 x 4 source pixels
with weights ``[1, 3, 3, 1] / 8`` per axis). This is what torchvision's ``Resize`` does, and so
what the SIREN and Fourier-features reference code fit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fieldcraft.errors import FieldcraftError

# scikit-image images whose files ship in its wheel (others are fetched from the web)
SAMPLE_IMAGES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "rocket", "text",
)


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """``pixels``: float32 ``[H, W, C]`` in ``[0, 1]``; ``source``: what was read;
    ``value_range``: the stored values that map to 0 and 1; ``bit_depth``: 8, 16 or 32 (float)."""

    pixels: np.ndarray
    source: str
    value_range: tuple[float, float]
    bit_depth: int


def load_image(source: str | Path, size: int | None = None, square: bool = False) -> LoadedImage:
    """Read ``source`` (a path or ``sample:NAME``), optionally centre-crop to a square and
    resize so the longer side is ``size`` pixels. Raises :class:`FieldcraftError` on bad input."""
    source = str(source)
    if source.startswith("sample:"):
        raw, label = _load_sample(source[len("sample:"):]), source
    else:
        raw, label = _read_file(Path(source)), source
    pixels, value_range, depth = _to_unit_float(raw, label)
    if square:
        h, w = pixels.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        pixels = pixels[top:top + s, left:left + s]
    if size is not None:
        pixels = resize_longer_side(pixels, size, label)
    return LoadedImage(np.ascontiguousarray(pixels, dtype=np.float32), label, value_range, depth)


def resize_longer_side(pixels: np.ndarray, size: int, label: str = "image") -> np.ndarray:
    """Anti-aliased resize of ``[H, W, C]`` so that ``max(H, W) == size`` (aspect kept)."""
    from PIL import Image

    if size < 1:
        raise FieldcraftError(f"{label}: --size must be >= 1, got {size}")
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return pixels
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, c], dtype=np.float32), mode="F")
                   .resize((new_w, new_h), Image.Resampling.BILINEAR))
        for c in range(pixels.shape[2])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def _load_sample(name: str) -> np.ndarray:
    import skimage.data

    key = name.replace("-", "_")
    if key not in SAMPLE_IMAGES:
        raise FieldcraftError(f"sample:{name}: unknown sample image (available: {', '.join(SAMPLE_IMAGES)})")
    try:
        return np.asarray(getattr(skimage.data, key)())
    except Exception as exc:  # e.g. a data file missing from the installed wheel
        raise FieldcraftError(f"sample:{name}: could not load from scikit-image ({exc})") from None


EXR_MAGIC = b"\x76\x2f\x31\x01"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_file(path: Path) -> np.ndarray:
    """The stored values of an image file (formats told by their first bytes, not the suffix):
    PNG (pypng: every bit kept, 1/2/4-bit and palette images expanded), TIFF (tifffile: palette,
    min-is-white and CMYK converted), anything Pillow opens (JPEG, BMP, GIF, WebP, ...: palette,
    1-bit and CMYK converted). OpenEXR is refused: no installed library reads it."""
    if not path.exists():
        raise FieldcraftError(f"{path}: no such file")
    if path.is_dir():
        raise FieldcraftError(f"{path}: is a directory, expected an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FieldcraftError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise FieldcraftError(f"{path}: empty file (0 bytes)")
    if data.startswith(EXR_MAGIC) or path.suffix.lower() == ".exr":
        raise FieldcraftError(f"{path}: OpenEXR images are not supported (no EXR reader is installed); "
                              "convert it to a 16-bit PNG or a float32 TIFF")
    try:
        if data.startswith(PNG_MAGIC):
            return _decode_png(data)
        if data[:4] in TIFF_MAGICS:
            return _decode_tiff(path)
        return _decode_pillow(path)
    except FieldcraftError:
        raise
    except Exception as exc:  # noqa: BLE001 (each library raises its own types for bad files)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FieldcraftError(f"{path}: unreadable or truncated image ({msg})") from None


def _decode_png(data: bytes) -> np.ndarray:
    """PNG codes ``[H, W, C]``: ``uint8`` for bit depths up to 8 (1, 2 and 4-bit values scaled to
    0..255), ``uint16`` above (significant bits scaled to 0..65535); palettes expanded to RGB(A)."""
    from fieldcraft.io.images import decode_png_depth

    arr, depth = decode_png_depth(data)
    top = (1 << depth) - 1
    if depth < 8:
        return (arr.astype(np.uint16) * 255 // top).astype(np.uint8)
    if 8 < depth < 16:
        return np.rint(arr.astype(np.float64) * (65535.0 / top)).astype(np.uint16)
    return arr


def _decode_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF, with palette, min-is-white and CMYK pages converted to RGB / gray."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = np.asarray(tif.asarray())
        photometric = int(page.photometric)
        colormap = page.colormap
        inkset = page.tags.get("InkSet")
    if photometric == 3 and colormap is not None:  # PALETTE
        cmap = np.asarray(colormap)
        if (cmap % 256 == 0).all():  # 8-bit entries stored as v * 256 (Pillow, libtiff's old convention)
            cmap = (cmap >> 8).astype(np.uint8)
        elif (cmap % 257 == 0).all():
            cmap = (cmap // 257).astype(np.uint8)
        return np.moveaxis(cmap[:, arr], 0, -1)
    if photometric == 0:  # MINISWHITE: 0 is white
        if arr.dtype == bool:
            return ~arr
        if np.issubdtype(arr.dtype, np.unsignedinteger):
            return np.iinfo(arr.dtype).max - arr
    if photometric == 5:  # SEPARATED
        if (inkset is not None and int(inkset.value) != 1) or arr.ndim != 3 or arr.shape[2] < 4:
            raise FieldcraftError(f"{path}: separated (ink) TIFF other than CMYK is not supported")
        return _cmyk_to_rgb(arr)
    if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB are read as stored
        raise FieldcraftError(f"{path}: TIFF photometric interpretation {photometric} is not supported "
                              "(use gray, RGB, palette or CMYK)")
    return arr


def _cmyk_to_rgb(arr: np.ndarray) -> np.ndarray:
    """``[H, W, 4+]`` CMYK (+ extra channels, kept) to RGB: ``(1 - c)(1 - k)`` per channel, in the input's type."""
    top = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    cmyk = arr[..., :4].astype(np.float64) / top
    rgb = (1.0 - cmyk[..., :3]) * (1.0 - cmyk[..., 3:4]) * top
    rgb = np.rint(rgb).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else rgb.astype(arr.dtype)
    return np.concatenate([rgb, arr[..., 4:]], axis=-1)


def _decode_pillow(path: Path) -> np.ndarray:
    """What Pillow opens (first frame), as gray, gray + alpha, RGB or RGBA values of the stored type."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decode now: a truncated file raises here
        mode = im.mode
        if mode == "1":
            im = im.convert("L")
        elif mode in ("P", "PA"):
            im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        elif mode == "RGBa":
            im = im.convert("RGBA")
        elif mode == "La":
            im = im.convert("LA")
        return np.asarray(im).copy()


def _to_unit_float(raw: np.ndarray, label: str) -> tuple[np.ndarray, tuple[float, float], int]:
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3 or raw.shape[2] not in (1, 2, 3, 4):
        raise FieldcraftError(f"{label}: expected a gray, RGB or RGBA image, got array of shape {raw.shape}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise FieldcraftError(f"{label}: zero-size image ({raw.shape[0]}x{raw.shape[1]})")
    if raw.shape[2] == 2:  # gray + alpha -> keep gray and alpha as 2 channels is unusual; expand to RGBA
        raw = np.concatenate([raw[..., :1]] * 3 + [raw[..., 1:]], axis=2)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, (0.0, 255.0), 8
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0, (0.0, 65535.0), 16
    if raw.dtype == bool:
        return raw.astype(np.float32), (0.0, 1.0), 8
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        lo, hi = float(min(0, raw.min())), float(max(raw.max(), 1))
        return ((raw.astype(np.float64) - lo) / (hi - lo)).astype(np.float32), (lo, hi), info.bits
    if np.issubdtype(raw.dtype, np.floating):
        bad = ~np.isfinite(raw)
        if bad.any():
            i, j, _ = np.argwhere(bad)[0]
            raise FieldcraftError(f"{label}: {int(bad.sum())} non-finite values (NaN/inf), first at row {i}, column {j}")
        lo, hi = float(raw.min()), float(raw.max())
        if lo >= 0.0 and hi <= 1.0:
            return raw.astype(np.float32), (0.0, 1.0), 32
        if hi == lo:
            return np.zeros(raw.shape, np.float32), (lo, lo + 1.0), 32
        return ((raw - lo) / (hi - lo)).astype(np.float32), (lo, hi), 32
    raise FieldcraftError(f"{label}: unsupported pixel type {raw.dtype}")
