"""Coarse-to-fine annealing of an encoding's levels or frequency bands (BARF, Lin et al. 2021, eq. 14).

While camera poses are refined jointly with a field, high frequencies of the encoding make the
photometric loss rugged in the poses; BARF starts from the coarse bands and opens the finer ones
over training. Band ``k`` of ``n`` gets the weight

``w_k(alpha) = (1 - cos(pi * clamp(alpha - k, 0, 1))) / 2``,  ``alpha = n * clamp((p - start) / (end - start), 0, 1)``

at training progress ``p`` in ``[0, 1]``: every band is off before ``start``, on after ``end``,
and band ``k`` rises smoothly while ``alpha`` goes from ``k`` to ``k + 1``
(:func:`barf_window`). Which features belong to which band (:func:`feature_bands`):

- grid encodings (hash / dense grid, :class:`~fieldcraft.encodings.grid.GridEncoding`): level
  ``l`` (its ``F`` features) is band ``l - 1``; the coarsest level is always on (a grid with no
  level on has nothing to fit with);
- the frequency encoding: octave ``k`` (its sin and cos features) is band ``k``; the raw input
  (``include_input``) is always on.

:class:`WindowedEncoding` wraps an encoding and multiplies its features by the window (a buffer,
so a checkpoint keeps the window the field was last trained with). A wrapped grid encoding whose
points need a gradient runs on the fast CPU kernels (:mod:`fieldcraft.encodings.grid_points`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from fieldcraft.encodings.base import Encoding
from fieldcraft.encodings.frequency import FrequencyEncoding
from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.encodings.grid_points import grid_encode_with_points
from fieldcraft.errors import FieldcraftError


def barf_window(progress: float, n_bands: int, start: float, end: float) -> Float[Tensor, " n_bands"]:
    """Weights of ``n_bands`` bands at training ``progress`` (module docstring): all 0 before
    ``start``, all 1 from ``end`` on (``end <= start``: a step at ``start``), monotone in between.

    >>> barf_window(0.0, 4, 0.1, 0.5).tolist(), barf_window(0.5, 4, 0.1, 0.5).tolist()
    ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    >>> [round(w, 3) for w in barf_window(0.2, 4, 0.1, 0.5).tolist()]   # alpha = 1: band 0 open, band 1 starts
    [1.0, 0.0, 0.0, 0.0]
    >>> [round(w, 3) for w in barf_window(0.25, 4, 0.1, 0.5).tolist()]  # alpha = 1.5: band 1 half open
    [1.0, 0.5, 0.0, 0.0]
    """
    if end > start:
        alpha = n_bands * min(max((progress - start) / (end - start), 0.0), 1.0)
    else:
        alpha = float(n_bands) if progress >= start else 0.0
    k = torch.arange(n_bands, dtype=torch.float64)
    return ((1.0 - torch.cos(math.pi * (alpha - k).clamp(0.0, 1.0))) / 2).float()


def feature_bands(encoding: Encoding) -> tuple[Int[Tensor, " out_dim"], int]:
    """The band of each output feature of ``encoding`` (-1: always on) and the number of bands
    (module docstring); a :class:`~fieldcraft.errors.FieldcraftError` for an encoding without
    levels or bands.

    >>> from fieldcraft.encodings import FrequencyEncodingConfig
    >>> feature_bands(FrequencyEncodingConfig(n_frequencies=2).build(1))
    (tensor([-1,  0,  1,  0,  1]), 2)
    """
    if isinstance(encoding, GridEncoding):
        lay = encoding.layout
        levels = torch.arange(lay.n_levels).repeat_interleave(lay.n_features)
        return levels - 1, max(lay.n_levels - 1, 0)
    if isinstance(encoding, FrequencyEncoding):
        c = encoding.config
        octave = torch.arange(c.n_frequencies).repeat_interleave(encoding.in_dim)
        parts = [torch.full((encoding.in_dim,), -1)] if c.include_input else []
        return torch.cat([*parts, octave, octave]), c.n_frequencies
    raise FieldcraftError(f"coarse-to-fine annealing (--refine-poses) needs an encoding with levels or frequency "
                          f"bands (hash grid, dense grid, frequency), not {type(encoding).__name__}")


class WindowedEncoding(nn.Module):
    """``encoding``'s features times a per-feature window (buffer ``window`` ``[out_dim]``, all ones
    until :meth:`set_progress`); ``in_dim``, ``out_dim`` and ``config`` as the wrapped encoding's.

    >>> from fieldcraft.encodings import FrequencyEncodingConfig
    >>> enc = WindowedEncoding(FrequencyEncodingConfig(n_frequencies=2).build(1), 0.0, 1.0)
    >>> enc.set_progress(0.0)
    >>> (enc(torch.tensor([[0.25]])) + 0.0).tolist()   # only the raw input is on
    [[0.25, 0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, encoding: Encoding, start: float, end: float) -> None:
        super().__init__()
        self.encoding, self.start, self.end = encoding, float(start), float(end)
        self.in_dim, self.out_dim, self.config = encoding.in_dim, encoding.out_dim, encoding.config
        bands, self.n_bands = feature_bands(encoding)
        self.register_buffer("bands", bands, persistent=False)
        self.register_buffer("window", torch.ones(encoding.out_dim))

    def set_progress(self, progress: float) -> None:
        """Set the window for training ``progress`` in ``[0, 1]`` (:func:`barf_window`)."""
        if self.n_bands == 0:
            return
        w = barf_window(progress, self.n_bands, self.start, self.end).to(self.window.device)
        on = self.bands < 0
        self.window.copy_(torch.where(on, torch.ones_like(self.window), w[self.bands.clamp(min=0)]))

    def forward(self, x: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        # points that need a gradient (they move with refined poses): grids stay on the fast CPU kernels
        y = grid_encode_with_points(self.encoding, x) if isinstance(self.encoding, GridEncoding) else self.encoding(x)
        return y * self.window.to(y.dtype)

    def reattach(self, x: Float[Tensor, "n in_dim"], encoded: Float[Tensor, "n out_dim"]) -> Float[Tensor, "n out_dim"]:
        """As :meth:`~fieldcraft.encodings.base.Encoding.reattach`: computed again when a graph is
        needed (the points may carry pose gradients)."""
        return self(x) if torch.is_grad_enabled() else encoded

    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}, bands={self.n_bands}"
