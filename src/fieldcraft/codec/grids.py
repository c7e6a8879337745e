"""Latent grids, their upsampling, context features and the exact synthesis (numpy, torch-free).

Level ``i`` of an ``H x W`` image is a grid of ``ceil(H / 2^i) x ceil(W / 2^i)`` integers.
Upsampling to full resolution is bilinear with the pixel-centre convention
(:mod:`fieldcraft.coords`): output pixel ``j`` reads source position ``(j + 0.5) / 2^i - 0.5``,
clamped to the grid (PyTorch's ``interpolate(..., scale_factor=2^i, mode="bilinear",
align_corners=False)``, cropped). Its weights are multiples of ``2^-(i+1)``.

**Exact synthesis.** The decoder evaluates the synthesis network in float64 on values that are
all dyadic rationals small enough that every product and partial sum is exact: latents are
integers, upsampling weights dyadic, network weights ``int * 2^-e``, and every layer's output is
rounded to a multiple of ``2^-FIXED_BITS`` (``floor(v 2^16 + 1/2) / 2^16``). The result does not
depend on summation order, BLAS or FMA, so every machine decodes the same pixels.
:func:`exactness_margin` checks the bound at encode time.

>>> up_weights(4, 2, 2)             # source rows and weights of 4 output rows from 2
(array([0, 0, 0, 1]), array([0, 1, 1, 1]), array([0.  , 0.25, 0.75, 0.  ]))
"""

from __future__ import annotations

import numpy as np

FIXED_BITS = 16  # activations are rounded to multiples of 2^-FIXED_BITS
EXACT_LIMIT = 2.0**52


def level_shapes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """``[(ceil(H / 2^i), ceil(W / 2^i)) for i in range(levels)]``.

    >>> level_shapes(5, 8, 3)
    [(5, 8), (3, 4), (2, 2)]
    """
    return [(-(-height // 2**i), -(-width // 2**i)) for i in range(levels)]


def up_weights(n_out: int, n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear upsampling by ``factor`` along one axis: for each output index, source indices
    ``i0``, ``i1`` and the weight ``t`` of ``i1`` (``out = (1 - t) y[i0] + t y[i1]``)."""
    num = 2 * np.arange(n_out, dtype=np.int64) + 1 - factor   # source position = num / (2 factor)
    den = 2 * factor
    i0 = np.floor_divide(num, den)
    t = (num - i0 * den) / den
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    below = i0 < 0
    i0 = np.clip(i0, 0, n_in - 1)
    t = np.where(below, 0.0, t)
    t = np.where(i1 == i0, 0.0, t)
    return i0, i1, t


CUBIC_A = -0.75  # PyTorch's bicubic kernel parameter


def cubic_weights(n_out: int, n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Bicubic upsampling by ``factor`` along one axis (PyTorch's ``interpolate(mode="bicubic",
    align_corners=False)``: source position ``(j + 1/2) / factor - 1/2``, Keys kernel with ``a = -3/4``,
    indices clamped to the grid): ``[n_out, 4]`` source indices and weights. The weights are exact
    dyadic rationals (multiples of ``2^-(3 log2(factor) + 5)``).

    >>> idx, w = cubic_weights(4, 2, 2)
    >>> idx.tolist(), w[1].tolist()
    ([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]], [-0.10546875, 0.87890625, 0.26171875, -0.03515625])
    """
    num = 2 * np.arange(n_out, dtype=np.int64) + 1 - factor   # source position = num / (2 factor)
    den = 2 * factor
    i0 = np.floor_divide(num, den)
    t = (num - i0 * den) / den                                  # exact: a multiple of 1 / (2 factor)
    a = CUBIC_A
    s = 1.0 - t
    w = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                  ((a + 2) * t - (a + 3)) * t * t + 1,
                  ((a + 2) * s - (a + 3)) * s * s + 1,
                  ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a], axis=1)
    idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return idx, w


def upsample(grid: np.ndarray, height: int, width: int, factor: int, cubic: bool = False) -> np.ndarray:
    """``[h, w]`` -> ``[height, width]`` float64 (see module docstring); exact for integer grids.
    ``cubic``: bicubic (:func:`cubic_weights`), each axis's result rounded to a multiple of
    ``2^-FIXED_BITS`` (exact and deterministic, as the rest of the synthesis)."""
    g = np.asarray(grid, np.float64)
    if factor == 1:
        return g[:height, :width].copy()
    if cubic:
        ri, rw = cubic_weights(height, g.shape[0], factor)
        rows = fixed(sum(g[ri[:, k]] * rw[:, k, None] for k in range(4)))
        ci, cw = cubic_weights(width, g.shape[1], factor)
        return fixed(sum(rows[:, ci[:, k]] * cw[None, :, k] for k in range(4)))
    r0, r1, rt = up_weights(height, g.shape[0], factor)
    rows = g[r0] * (1.0 - rt)[:, None] + g[r1] * rt[:, None]
    c0, c1, ct = up_weights(width, g.shape[1], factor)
    return rows[:, c0] * (1.0 - ct)[None, :] + rows[:, c1] * ct[None, :]


def fixed(v: np.ndarray) -> np.ndarray:
    """Round to the nearest multiple of ``2^-FIXED_BITS`` (ties up), exactly in float64 (in place)."""
    v *= 2.0**FIXED_BITS
    v += 0.5
    np.floor(v, out=v)
    v *= 2.0**-FIXED_BITS
    return v


CHUNK_PIXELS = 1 << 14  # the MLP runs on this many pixels at a time (cache-sized blocks)


def synthesize(latents: list[np.ndarray], layers: list[tuple[np.ndarray, np.ndarray]],
               refine: tuple[np.ndarray, np.ndarray] | None, height: int, width: int,
               cubic: bool = False) -> np.ndarray:
    """The decoded image ``[H, W, C]`` (float64, not clipped) from integer latents and dyadic weights
    (``cubic``: bicubic upsampling of the latents, else bilinear).

    ``layers``: ``(weight [out, in], bias [out])`` of the 1x1 layers (ReLU between them);
    ``refine``: ``(weight [C, C, 3, 3], bias [C])`` of the residual 3x3 convolution (zero padding) or None.
    """
    feats = np.empty((height, width, len(latents)))
    for i, g in enumerate(latents):
        feats[:, :, i] = upsample(g, height, width, 2**i, cubic)
    flat = feats.reshape(-1, len(latents))
    out = np.empty((flat.shape[0], layers[-1][0].shape[0]))
    transposed = [(np.ascontiguousarray(w.T), b) for w, b in layers]
    with _one_blas_thread():  # products this small gain nothing from BLAS threads, which suffer on a busy machine
        _mlp(flat, transposed, out)
    img = out.reshape(height, width, -1)
    if refine is not None:
        img = img + fixed(conv3x3(img, *refine))
    return img


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (installed with scikit-learn)
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def _mlp(flat: np.ndarray, transposed: list[tuple[np.ndarray, np.ndarray]], out: np.ndarray) -> None:
    for start in range(0, flat.shape[0], CHUNK_PIXELS):
        h = flat[start:start + CHUNK_PIXELS]
        for n, (wt, b) in enumerate(transposed):
            h = h @ wt
            h += b
            fixed(h)
            if n < len(transposed) - 1:
                np.maximum(h, 0.0, out=h)
        out[start:start + CHUNK_PIXELS] = h


def conv3x3(img: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``[H, W, C] -> [H, W, O]``: 3x3 cross-correlation with zero padding (PyTorch's ``conv2d``, padding 1)."""
    h, w, c = img.shape
    pad = np.zeros((h + 2, w + 2, c), img.dtype)
    pad[1:-1, 1:-1] = img
    out = np.broadcast_to(bias, (h, w, weight.shape[0])).copy()
    for dy in range(3):
        for dx in range(3):
            out += pad[dy:dy + h, dx:dx + w] @ weight[:, :, dy, dx].T
    return out


def exactness_margin(latents: list[np.ndarray], layers: list[tuple[np.ndarray, np.ndarray]],
                     refine: tuple[np.ndarray, np.ndarray] | None, height: int, width: int,
                     cubic: bool = False) -> bool:
    """Whether every product and partial sum of :func:`synthesize` stays exactly representable:
    magnitudes (in units of the finest dyadic step of each layer) below ``2^52``."""
    levels = len(latents)
    amax = max((float(np.abs(g).max()) if g.size else 0.0) for g in latents)
    frac_bits = 2 * levels  # upsampling weights: multiples of 2^-(i+1) per axis
    if cubic:  # sum |w| <= 1.375 per axis; weights multiples of 2^-(3 levels + 2); rows rounded to 2^-16
        amax *= 1.5**2
        if amax * 2.0 ** (FIXED_BITS + 3 * levels + 2) >= EXACT_LIMIT:
            return False
        frac_bits = FIXED_BITS
    bound = amax
    for w, b in layers:
        wbits = _frac_bits(w, b)
        worst = float(np.abs(w).sum(axis=1).max()) * bound + float(np.abs(b).max(initial=0.0))
        if worst * 2.0 ** (frac_bits + wbits) >= EXACT_LIMIT:
            return False
        bound = worst + 1.0
        frac_bits = FIXED_BITS
    if refine is not None:
        w, b = refine
        worst = float(np.abs(w).sum(axis=(1, 2, 3)).max()) * bound + float(np.abs(b).max(initial=0.0))
        if worst * 2.0 ** (FIXED_BITS + _frac_bits(w, b)) >= EXACT_LIMIT:
            return False
    return True


def _frac_bits(*arrays: np.ndarray) -> int:
    """Fraction bits needed to write every value of ``arrays`` (dyadic) exactly."""
    bits = 0
    for a in arrays:
        a = np.asarray(a, np.float64)
        while bits < 60 and not np.all(a * 2.0**bits == np.floor(a * 2.0**bits)):
            bits += 1
    return bits


def box3(a: np.ndarray) -> np.ndarray:
    """Sum over each 3x3 neighbourhood (zero padding), integers in, integers out."""
    h, w = a.shape
    p = np.zeros((h + 2, w + 2), a.dtype)
    p[1:-1, 1:-1] = a
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def cross4(a: np.ndarray) -> np.ndarray:
    """Sum of the 4 direct neighbours (zero padding)."""
    h, w = a.shape
    p = np.zeros((h + 2, w + 2), a.dtype)
    p[1:-1, 1:-1] = a
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]


def anchor_mask(h: int, w: int) -> np.ndarray:
    """Checkerboard ``(row + col) % 2 == 0``: the anchors, coded before the other half."""
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


def parent_feature(coarser: np.ndarray | None, h: int, w: int) -> np.ndarray:
    """``box3(|coarser|)`` repeated 2x2 and cropped to ``[h, w]`` (zeros for the coarsest level)."""
    if coarser is None:
        return np.zeros((h, w), np.int64)
    a = box3(np.abs(np.asarray(coarser, np.int64)))
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)[:h, :w]
