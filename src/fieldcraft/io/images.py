"""PNG files: 8- or 16-bit, gray, gray+alpha, RGB or RGBA, from and to ``[0, 1]`` arrays.

Values are clipped to ``[0, 1]`` and rounded to the nearest code (``round(v * 255)`` or
``round(v * 65535)``). Writes are atomic (temporary file, then rename). PNGs are encoded and
decoded with pypng, which keeps all 16 bits of every channel (Pillow reduces 16-bit colour
PNGs to 8 bits).
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
    import png

    arr = codes if codes.ndim == 3 else codes[:, :, None]
    h, w, c = arr.shape
    writer = png.Writer(width=w, height=h, greyscale=c <= 2, alpha=c in (2, 4),
                        bitdepth=16 if arr.dtype == np.uint16 else 8, compression=6)
    buf = io.BytesIO()
    writer.write_array(buf, arr.reshape(-1))
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """``uint8`` / ``uint16`` codes ``[H, W, C]`` of a PNG (palette images expanded to RGB(A))."""
    import png

    width, height, rows, info = png.Reader(bytes=data).asDirect()
    dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
    arr = np.vstack([np.asarray(r, dtype=dtype) for r in rows])
    return arr.reshape(height, width, info["planes"])


def read_png(path: str | Path) -> np.ndarray:
    """Read a PNG as float32 ``[H, W, C]`` in ``[0, 1]`` (8- or 16-bit)."""
    return dequantize(decode_png(Path(path).read_bytes()))
