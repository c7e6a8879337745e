"""Integer probability tables and range coding (``constriction``) for the codec.

Every probability the decoder uses comes out of integer arithmetic, so a file decodes the same
way on any machine:

- **Laplace tables.** Table ``k`` (``0 <= k < N_TABLES``) is a Laplace distribution of scale
  ``s_k = 2^(k/4 - 5)`` integrated over the unit bins of the integers ``-M..M``:
  ``P(0) = 1 - q``, ``P(+-n) = q^(2n-1) (1 - q^2) / 2`` with ``q = exp(-1 / (2 s_k))``. ``q`` is
  computed in 128-bit fixed point with Python integers (``2^(1/4)`` by integer square roots,
  ``exp`` by a Taylor series and repeated squaring), each probability becomes an integer
  frequency ``max(1, floor(P 2^32))``, and ``constriction``'s ``Categorical`` model is built from
  those integers (converted exactly to float64; its normalisation uses IEEE arithmetic only).
- **Context features.** :func:`log_feature` maps a non-negative integer ``f`` to
  ``floor(4 log2(1 + f))`` through integer bit lengths.

Symbols of one table are coded together, tables in increasing ``k``, with one
``constriction.stream.queue.RangeEncoder`` per file (:func:`encode_grouped` / :func:`decode_grouped`).

>>> [int(v) for v in log_feature(np.array([0, 1, 2, 3, 15]))]
[0, 4, 6, 8, 16]
>>> f = laplace_frequencies(20, 3)          # scale 1, symbols -3..3
>>> bool((f == f[::-1]).all()), int(f.argmax())
(True, 3)
"""

from __future__ import annotations

import functools
import math
from math import isqrt

import numpy as np

N_TABLES = 64          # scales 2^-5 .. 2^10.75 in quarter octaves
SCALE_OFFSET = 5.0     # s_k = 2^(k / 4 - SCALE_OFFSET)
_FRAC = 128            # fixed-point fraction bits of the table computation
_FREQ_BITS = 32        # frequencies are floor(P * 2^32), at least 1
LOG_FEATURE_MAX = 4095  # features are clipped to this before log_feature


def table_scale(k: float) -> float:
    """The Laplace scale of table ``k`` (float; the tables themselves are integer-derived)."""
    return 2.0 ** (k / 4.0 - SCALE_OFFSET)


@functools.cache
def _pow2_quarter() -> tuple[int, ...]:
    """``2^(j/4) * 2^_FRAC`` for ``j = 0..3``, from integer square roots (floor)."""
    one = 1 << _FRAC
    r2 = isqrt(2 << (2 * _FRAC))               # sqrt(2)
    r4 = isqrt(r2 << _FRAC)                    # 2^(1/4)
    return one, r4, r2, (r2 * r4) >> _FRAC


def _exp_neg(x: int) -> int:
    """``floor(exp(-x / 2^_FRAC) * 2^_FRAC)`` (approximately: truncated fixed point) for ``x >= 0``."""
    m = 12  # exp(-x) = exp(-x / 2^m)^(2^m); x / 2^m < 1/64 for x < 64
    one = 1 << _FRAC
    total, term = one, one
    for n in range(1, 24):
        term = (term * x) >> (_FRAC + m)
        term //= n
        total += -term if n % 2 else term
        if term == 0:
            break
    for _ in range(m):
        total = (total * total) >> _FRAC
    return total


@functools.cache
def laplace_frequencies(k: int, m: int) -> np.ndarray:
    """Integer frequencies (as float64) of table ``k`` over the symbols ``-m..m`` (length ``2m + 1``)."""
    if not 0 <= k < N_TABLES:
        raise ValueError(f"table index {k} outside 0..{N_TABLES - 1}")
    one = 1 << _FRAC
    # x = 1 / (2 s_k) = 2^(SCALE_OFFSET - 1 - k/4) = 2^(4 - ceil(k/4)) * 2^((4 ceil(k/4) - k) / 4)
    c = -(-k // 4)
    x = _pow2_quarter()[4 * c - k]
    e = int(SCALE_OFFSET) - 1 - c
    x = x << e if e >= 0 else x >> -e
    q = _exp_neg(x)
    r = (q * q) >> _FRAC
    shift = _FRAC - _FREQ_BITS
    freqs = [max(1, (one - q) >> shift)]
    cur = (q * (one - r)) >> (_FRAC + 1)
    for _ in range(m):
        freqs.append(max(1, cur >> shift))
        cur = (cur * r) >> _FRAC
    half = np.asarray(freqs, dtype=np.float64)
    return np.concatenate([half[:0:-1], half])


@functools.cache
def _model(k: int, m: int):
    import constriction

    return constriction.stream.model.Categorical(laplace_frequencies(k, m), perfect=False)


def table_bits(k: int, m: int) -> np.ndarray:
    """Cost in bits of each symbol ``-m..m`` under table ``k`` (float, encoder-side decisions only)."""
    f = laplace_frequencies(k, m)
    return -np.log2(f / f.sum())


@functools.cache
def _log_table() -> np.ndarray:
    return np.array([((1 + f) ** 4).bit_length() - 1 for f in range(LOG_FEATURE_MAX + 1)], dtype=np.int64)


def log_feature(f: np.ndarray) -> np.ndarray:
    """``floor(4 log2(1 + f))`` of non-negative integers (clipped at ``LOG_FEATURE_MAX``), exactly."""
    return _log_table()[np.clip(np.asarray(f, dtype=np.int64), 0, LOG_FEATURE_MAX)]


def best_table(values: np.ndarray, m: int) -> int:
    """The table index that codes the integers ``values`` (all within ``-m..m``) in the fewest bits."""
    counts = np.bincount(np.asarray(values, np.int64).reshape(-1) + m, minlength=2 * m + 1)
    costs = [float(counts @ table_bits(k, m)) for k in range(N_TABLES)]
    return int(np.argmin(costs))


@functools.cache
def bits_matrix(m: int) -> np.ndarray:
    """``[N_TABLES, 2m + 1]``: :func:`table_bits` of every table."""
    return np.stack([table_bits(k, m) for k in range(N_TABLES)])


def grouped_bits(symbols: np.ndarray, tables: np.ndarray, m: int) -> float:
    """Ideal cost in bits of coding ``symbols`` each with its table (what :func:`encode_grouped` spends,
    up to the coder's rounding)."""
    return float(bits_matrix(m)[np.asarray(tables, np.int64), np.asarray(symbols, np.int64) + m].sum())


def encode_grouped(encoder, symbols: np.ndarray, tables: np.ndarray, m: int) -> None:
    """Append ``symbols`` (integers in ``-m..m``), each coded with table ``tables[i]``: the symbols of
    one table together in their order, tables in increasing index."""
    symbols = np.asarray(symbols, np.int64).reshape(-1)
    tables = np.asarray(tables, np.int64).reshape(-1)
    if symbols.size and (symbols.min() < -m or symbols.max() > m):
        raise ValueError(f"symbols outside -{m}..{m}")
    for k in np.unique(tables):
        encoder.encode((symbols[tables == k] + m).astype(np.int32), _model(int(k), m))


def decode_grouped(decoder, tables: np.ndarray, m: int) -> np.ndarray:
    """Inverse of :func:`encode_grouped`: the symbols (int64, shape of ``tables``)."""
    flat = np.asarray(tables, np.int64).reshape(-1)
    out = np.zeros(flat.shape, np.int64)
    for k in np.unique(flat):
        sel = flat == k
        out[sel] = np.asarray(decoder.decode(_model(int(k), m), int(sel.sum())), np.int64) - m
    return out.reshape(np.shape(tables))


def laplace_bits_reference(k: float, value: float) -> float:
    """Ideal bits of an integer ``value`` under a Laplace of table scale ``k`` in float (for tests)."""
    s = table_scale(k)
    a = abs(value)
    p = 1 - math.exp(-0.5 / s) if a == 0 else 0.5 * (math.exp(-(a - 0.5) / s) - math.exp(-(a + 0.5) / s))
    return -math.log2(p)
