"""Multiresolution feature grids: the shared core of the hash grid and the dense grid.

A grid encoding stores, for each level ``l``, a table of ``size_l x F`` learnable features
attached to the vertices of a regular grid with ``N_l`` cells per axis over the unit cube
(``N_l + 1`` vertices per axis). A point ``u`` in ``[0, 1]^d`` (inputs in ``[-1, 1]`` are
mapped by ``u = (x + 1) / 2`` and clamped to the cube) falls in cell
``c = min(floor(u N_l), N_l - 1)`` with local coordinates ``f = u N_l - c`` in ``[0, 1]``;
its level-``l`` feature is the multilinear (bi-/trilinear) interpolation of the ``2^d``
corner features. Output: the ``L`` levels' features concatenated level-major,
``[..., L * F]``.

Vertex ``v`` (integer coordinates) is stored at row

- dense levels (``(N_l + 1)^d <= 2^T``): ``sum_i v_i (N_l + 1)^i`` (no collisions),
- hashed levels: ``(v_0 * 1) xor (v_1 * 2654435761) xor (v_2 * 805459861) mod 2^T``
  (Teschner et al. 2003 spatial hash, as in Instant-NGP), computed on 32-bit products.

All levels live in one parameter ``table`` of shape ``[sum_l size_l, F]`` with row offsets
``offsets[l]``, so optimisers and fast kernels see one flat array.

This module holds the pure-PyTorch reference (:func:`grid_encode_reference`), which is
differentiable to any order in both the table and the points, and its sparse-matrix form for
points that never move (:func:`grid_operator`, used by
:class:`~fieldcraft.fields.fixed_points.FixedPointsField`); fast CPU kernels live in
:mod:`fieldcraft.kernels.grid` and are checked against it.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.kernels.grid_layout import PRIMES, GridLayout, level_resolutions

__all__ = ["PRIMES", "GridEncoding", "GridLayout", "corner_offsets", "grid_encode_reference", "grid_operator",
           "level_resolutions", "vertex_rows"]


def corner_offsets(dim: int, device: torch.device | None = None) -> Int[Tensor, "corners dim"]:
    """The ``2^d`` corner offsets of a cell, corner ``k`` having bit ``i`` of ``k`` on axis ``i``."""
    rows = [[(k >> i) & 1 for i in range(dim)] for k in range(2**dim)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def vertex_rows(vertices: Int[Tensor, "*batch dim"], resolution: int, size: int, hashed: bool) -> Int[Tensor, "*batch"]:
    """Table row of integer grid vertices at one level (see module docstring)."""
    dim = vertices.shape[-1]
    if not hashed:
        stride, idx = 1, torch.zeros_like(vertices[..., 0])
        for i in range(dim):
            idx = idx + vertices[..., i] * stride
            stride *= resolution + 1
        return idx
    idx = torch.zeros_like(vertices[..., 0])
    for i in range(dim):
        idx = idx ^ ((vertices[..., i] * PRIMES[i]) & 0xFFFFFFFF)
    return idx & (size - 1) if (size & (size - 1)) == 0 else idx % size


def grid_encode_reference(u: Float[Tensor, "n dim"], table: Float[Tensor, "rows F"], layout: GridLayout) -> Float[Tensor, "n L*F"]:
    """Pure-PyTorch multilinear grid encoding of points ``u`` in ``[0, 1]^d`` (clamped).

    Differentiable (any order) with respect to ``table`` and ``u``.
    """
    u = u.clamp(0.0, 1.0)
    dim = layout.dim
    corners = corner_offsets(dim, u.device)  # [C, d]
    feats = []
    for level, (res, size, hashed, off) in enumerate(
        zip(layout.resolutions, layout.sizes, layout.hashed, layout.offsets)
    ):
        p = u * res
        cell = torch.clamp(torch.floor(p.detach()), max=res - 1).to(torch.int64)
        frac = p - cell.to(p.dtype)  # [n, d]
        verts = cell[:, None, :] + corners[None]  # [n, C, d]
        rows = vertex_rows(verts, res, size, hashed) + off  # [n, C]
        # weights: prod_i (f_i if bit else 1 - f_i)
        w = torch.where(corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)  # [n, C]
        values = table[rows]  # [n, C, F]
        feats.append((w[..., None] * values).sum(1))
    return torch.cat(feats, dim=-1)


def grid_operator(u: Float[Tensor, "n dim"], layout: GridLayout) -> Tensor:
    """The grid encoding of fixed points ``u`` in ``[0, 1]^d`` (clamped) as a linear map of the
    table: a sparse CSR matrix ``S`` ``[n * L, rows]`` (float32, on ``u``'s device) with
    ``(S @ table).reshape(n, L * F) == grid_encode_reference(u, table, layout)`` for every
    ``table``. Row ``i * L + l`` holds point ``i``'s ``2^d`` corner weights at level ``l``
    (weights computed in float64; rows a hash collision repeats are summed).

    >>> from fieldcraft.kernels.grid_layout import dense_grid_layout
    >>> layout = dense_grid_layout(1, 2, 1)  # one level, 2 cells (3 vertices), 1 feature
    >>> grid_operator(torch.tensor([[0.25]]), layout).to_dense()
    tensor([[0.5000, 0.5000, 0.0000]])
    """
    u = u.detach().to(torch.float64).clamp(0.0, 1.0)
    n, levels = u.shape[0], layout.n_levels
    corners = corner_offsets(layout.dim, u.device)
    rows, cols, vals = [], [], []
    for level, (res, size, hashed, off) in enumerate(
        zip(layout.resolutions, layout.sizes, layout.hashed, layout.offsets)
    ):
        p = u * res
        cell = torch.clamp(torch.floor(p), max=res - 1).to(torch.int64)
        frac = p - cell
        c = vertex_rows(cell[:, None, :] + corners[None], res, size, hashed) + off  # [n, C]
        w = torch.where(corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)  # [n, C]
        rows.append((torch.arange(n, device=u.device) * levels + level)[:, None].expand_as(c).reshape(-1))
        cols.append(c.reshape(-1))
        vals.append(w.reshape(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        s = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                    (n * levels, layout.n_rows))
        return s.coalesce().to(torch.float32).to_sparse_csr()


class GridEncoding(Encoding):
    """Grid encoding over ``[-1, 1]^d`` backed by one flat table ``[rows, F]``."""

    def __init__(self, config: EncodingConfig, in_dim: int, layout: GridLayout, init_scale: float, backend: str) -> None:
        super().__init__(config, in_dim)
        self.layout = layout
        self.backend = backend
        table = torch.empty(layout.n_rows, layout.n_features).uniform_(-init_scale, init_scale)
        self.table = nn.Parameter(table)

    def encode(self, x: Tensor) -> Tensor:
        from fieldcraft.encodings.dispatch import grid_encode

        u = (x + 1.0) * 0.5
        return grid_encode(u, self.table, self.layout, self.backend)

    def reattach(self, x: Tensor, encoded: Tensor) -> Tensor:
        """``encoded`` (this encoding of ``x``, computed without a graph) attached to the table's graph
        without a second forward pass when the fast kernel applies; else as :meth:`Encoding.reattach`."""
        from fieldcraft.encodings.dispatch import grid_reattach

        if not torch.is_grad_enabled():
            return encoded
        u = (x + 1.0) * 0.5
        out = grid_reattach(u, encoded, self.table, self.layout, self.backend)
        return out if out is not None else self(x)

    def extra_repr(self) -> str:
        n_hashed = sum(self.layout.hashed)
        return (f"in_dim={self.in_dim}, out_dim={self.out_dim}, levels={self.layout.n_levels} "
                f"({n_hashed} hashed), resolutions={self.layout.resolutions[0]}..{self.layout.resolutions[-1]}, "
                f"rows={self.layout.n_rows}")
