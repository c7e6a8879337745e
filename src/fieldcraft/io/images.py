"""PNG files: 8- or 16-bit, gray, gray+alpha, RGB or RGBA, from and to ``[0, 1]`` arrays.

Values are clipped to ``[0, 1]`` and rounded to the nearest code (``round(v * 255)`` or
``round(v * 65535)``). Writes are atomic (temporary file, then rename). 16-bit PNGs (and
palette, low-bit-depth or ``tRNS`` PNGs on reading) go through pypng, which keeps all 16 bits of
every channel (Pillow reduces 16-bit colour PNGs to 8 bits); plain 8-bit ones through Pillow,
which is faster and gives the same codes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fieldcraft.io.checkpoint import atomic_write_bytes


def quantize(pixels: np.ndarray, bits: int = 16) -> np.ndarray:
    """``[0, 1]`` floats to ``uint8`` (bits=8) or ``uint16`` (bits=16) codes."""
    peak = 255 if bits == 8 else 65535
    codes = np.rint(np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0) * peak)
    return codes.astype(np.uint8 if bits == 8 else np.uint16)


def dequantize(codes: np.ndarray) -> np.ndarray:
    peak = 255.0 if codes.dtype == np.uint8 else 65535.0
    return codes.astype(np.float32) / peak


def write_png(path: str | Path, pixels: np.ndarray, bits: int = 8) -> Path:
    """Write ``pixels`` (``[H, W]``, ``[H, W, 1|2|3|4]``, values in ``[0, 1]``) as a PNG."""
    atomic_write_bytes(Path(path), encode_png(quantize(pixels, bits)))
    return Path(path)


def encode_png(codes: np.ndarray) -> bytes:
    """PNG bytes of ``uint8`` / ``uint16`` codes ``[H, W]`` or ``[H, W, C]`` (C = 1..4)."""
    arr = codes if codes.ndim == 3 else codes[:, :, None]
    h, w, c = arr.shape
    if arr.dtype == np.uint8:  # Pillow's encoder (C, several times faster than pypng); same pixels
        from PIL import Image

        buf = io.BytesIO()
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
        Image.fromarray(np.ascontiguousarray(arr if c > 1 else arr[:, :, 0]), mode).save(buf, "PNG", compress_level=6)
        return buf.getvalue()
    import png

    writer = png.Writer(width=w, height=h, greyscale=c <= 2, alpha=c in (2, 4),
                        bitdepth=16 if arr.dtype == np.uint16 else 8, compression=6)
    buf = io.BytesIO()
    writer.write_array(buf, arr.reshape(-1))
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The stored codes ``[H, W, C]`` of a PNG: ``uint8`` for bit depths up to 8 (1, 2 and 4-bit
    values as stored, 0..2^depth-1), ``uint16`` above; palettes and ``tRNS`` transparency expanded
    to RGB(A) (pypng's ``asDirect``)."""
    return decode_png_depth(data)[0]


def decode_png_depth(data: bytes) -> tuple[np.ndarray, int]:
    """``(codes [H, W, C], significant bit depth)`` of a PNG (see :func:`decode_png`; the depth
    is pypng's: the ``sBIT`` depth when given, 8 for palette images). Plain 8-bit gray /
    gray+alpha / RGB / RGBA images without ``tRNS`` are decoded by Pillow (the same codes, about
    20x faster); everything else by pypng."""
    if _plain_8bit(data):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im)
        return (arr if arr.ndim == 3 else arr[:, :, None]), 8
    import png

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    arr = np.vstack([np.asarray(r, dtype=dtype) for r in rows])
    return arr.reshape(height, width, info["planes"]), int(info["bitdepth"])


def _plain_8bit(data: bytes) -> bool:
    """True for a PNG whose IHDR says bit depth 8, colour type gray (0), RGB (2), gray+alpha (4) or
    RGBA (6), not interlaced, and which has no ``tRNS`` or ``sBIT`` chunk before its image data.

    >>> _plain_8bit(encode_png(np.zeros((2, 3, 3), np.uint8)))
    True
    >>> _plain_8bit(encode_png(np.zeros((2, 3), np.uint16)))
    False
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return False
    depth, colour, interlace = data[24], data[25], data[28]
    idat = data.find(b"IDAT")
    return depth == 8 and colour in (0, 2, 4, 6) and interlace == 0 and idat > 0 and b"tRNS" not in data[:idat] \
        and b"sBIT" not in data[:idat]


def read_png(path: str | Path) -> np.ndarray:
    """Read a PNG as float32 ``[H, W, C]`` in ``[0, 1]`` (8- or 16-bit)."""
    return dequantize(decode_png(Path(path).read_bytes()))
