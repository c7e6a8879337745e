"""Reference codecs through Pillow (JPEG, WebP, JPEG 2000, AVIF), rate-distortion sweeps, PSNR at a
given rate and the Bjontegaard delta rate.

- bpp = ``8 * bytes / pixels`` of the encoded file; PSNR on the 8-bit decoded image against the
  8-bit original (``fieldcraft.metrics.psnr``, values in ``[0, 1]``).
- Settings: JPEG ``quality`` 1..95 (Pillow defaults: 4:2:0 chroma subsampling, standard tables,
  no optimisation), WebP ``quality`` 0..100 (lossy, method 4), JPEG 2000 irreversible with the
  rate set by ``quality_mode="rates"`` (compression ratios), AVIF ``quality`` 0..100 (Pillow's
  default speed).
- :func:`psnr_at`: PSNR at a rate by linear interpolation in ``log(bpp)`` between the two
  sweep points that bracket it (``nan`` outside the sweep's range).
- :func:`bd_rate`: Bjontegaard's average rate difference (%) of a test curve against an anchor:
  cubic fits of ``log(bpp)`` as a function of PSNR integrated over the overlapping PSNR range
  (lower degree when a curve has fewer than 4 points).

>>> round(psnr_at([(0.1, 20.0), (0.4, 30.0)], 0.2), 3)
25.0
>>> round(bd_rate([(0.1, 20.0), (0.2, 25.0), (0.4, 30.0)], [(0.05, 20.0), (0.1, 25.0), (0.2, 30.0)]), 3)
-50.0
"""

from __future__ import annotations

import io
import math

import numpy as np

from fieldcraft.metrics import psnr

_J2K_RATIOS = (400, 300, 240, 200, 160, 130, 110, 96, 80, 64, 48, 40, 32, 24, 16, 12, 8)


def available() -> list[str]:
    """The reference codecs this Pillow provides, among ``jpeg``, ``webp``, ``jpeg2000``, ``avif``."""
    from PIL import features

    out = ["jpeg"]
    for name, feat in (("webp", "webp"), ("jpeg2000", "jpg_2000"), ("avif", "avif")):
        try:
            if features.check(feat):
                out.append(name)
        except ValueError:  # a feature this Pillow does not know
            pass
    return out


def settings(codec: str) -> list:
    """The sweep of one codec (qualities, or JPEG 2000 compression ratios)."""
    return {"jpeg": list(range(1, 96)), "webp": list(range(0, 101, 2)), "jpeg2000": list(_J2K_RATIOS),
            "avif": list(range(0, 101, 3))}[codec]


def encode(codec: str, codes: np.ndarray, setting) -> bytes:
    """The encoded file of ``uint8 [H, W, C]`` codes (C = 1 or 3)."""
    from PIL import Image

    im = Image.fromarray(codes[:, :, 0] if codes.shape[2] == 1 else codes)
    buf = io.BytesIO()
    if codec == "jpeg":
        im.save(buf, "JPEG", quality=int(setting))
    elif codec == "webp":
        im.save(buf, "WEBP", quality=int(setting), method=4)
    elif codec == "jpeg2000":
        im.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[float(setting)], irreversible=True)
    elif codec == "avif":
        im.save(buf, "AVIF", quality=int(setting))
    else:
        raise ValueError(codec)
    return buf.getvalue()


def decode(data: bytes, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def sweep(codec: str, codes: np.ndarray) -> list[tuple[float, float]]:
    """``(bpp, psnr)`` points of a codec's sweep on ``uint8 [H, W, C]`` codes, sorted by rate."""
    pixels = codes.shape[0] * codes.shape[1]
    ref = codes.astype(np.float64) / 255.0
    points = []
    for s in settings(codec):
        data = encode(codec, codes, s)
        points.append((8.0 * len(data) / pixels, psnr(decode(data, codes.shape[2]) / 255.0, ref)))
    return sorted(set(points))


def psnr_at(points: list[tuple[float, float]], bpp: float) -> float:
    """PSNR at ``bpp`` interpolated linearly in log-rate between the bracketing points (see module docstring)."""
    pts = sorted(points)
    for (r0, p0), (r1, p1) in zip(pts[:-1], pts[1:]):
        if r0 <= bpp <= r1:
            if r1 == r0:
                return max(p0, p1)
            t = (math.log(bpp) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return p0 + t * (p1 - p0)
    return math.nan


def _monotone(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper envelope: points whose PSNR exceeds every lower-rate point's."""
    out: list[tuple[float, float]] = []
    for r, p in sorted(points):
        if not out or p > out[-1][1]:
            out.append((r, p))
    return out


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjontegaard delta rate (%) of ``test`` against ``anchor`` (negative: fewer bits for the same PSNR)."""
    a, t = _monotone(anchor), _monotone(test)
    if len(a) < 2 or len(t) < 2:
        return math.nan
    lo = max(min(p for _, p in a), min(p for _, p in t))
    hi = min(max(p for _, p in a), max(p for _, p in t))
    if not hi > lo:
        return math.nan

    def integral(pts):
        r = np.log([x for x, _ in pts])
        p = np.array([y for _, y in pts])
        poly = np.polyint(np.polyfit(p, r, min(3, len(pts) - 1)))
        return np.polyval(poly, hi) - np.polyval(poly, lo)

    diff = (integral(t) - integral(a)) / (hi - lo)
    return float((math.exp(diff) - 1.0) * 100.0)
