"""Writing images: 8- or 16-bit PNG from ``[H, W, C]`` or ``[H, W]`` arrays in ``[0, 1]``.

Values are clipped to ``[0, 1]`` and rounded to the nearest code (``round(v * 255)`` or
``round(v * 65535)``). Writes are atomic (temporary file, then rename).
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
    """Write ``pixels`` (``[H, W]``, ``[H, W, 1|3|4]``, values in ``[0, 1]``) as a PNG."""
    import imageio.v3 as iio

    arr = quantize(pixels, bits)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    iio.imwrite(buf, arr, extension=".png")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def read_png(path: str | Path) -> np.ndarray:
    """Read a PNG as float32 ``[H, W, C]`` in ``[0, 1]`` (8- or 16-bit)."""
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(Path(path)))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return dequantize(arr)
