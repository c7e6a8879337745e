"""Plenoxels (Fridovich-Keil et al. 2022): a radiance field that is a voxel grid and no network.

::

    x in scene box --(to [0, 1]^3)--> trilinear interpolation of the vertices' values
    sigma = density_scale * relu(raw density)
    rgb   = max(0, sum_k c_k Y_k(d) + 1/2)     (color_activation="clamp", svox2's code)
          = sigmoid(sum_k c_k Y_k(d))          (color_activation="sigmoid")

Every vertex of a dense grid of ``R`` cells per axis (``(R + 1)^3`` vertices) holds a raw density
and ``3 K`` spherical-harmonic coefficients (``K = sh_degree^2``; ``sh_degree=3`` are the harmonics of
``l <= 2``, the paper's "degree 2": 9 per colour channel, 27 in all); ``Y_k`` are the real SH of the
view direction (:func:`fieldcraft.encodings.spherical_harmonics.spherical_harmonics`). Storage: two
:class:`~fieldcraft.encodings.GridEncoding` tables over the same vertices, ``density_grid.table``
``[(R + 1)^3, 1]`` and ``sh_grid.table`` ``[(R + 1)^3, 3 K]`` (channel-major: R's K coefficients, then G's,
then B's), so density queries (occupancy grid, early termination) read one number per vertex, and the
optimiser gives both tables row-sparse Adam (:mod:`fieldcraft.train.row_sparse_adam`).
Interpolation is the grid encoding's (:func:`fieldcraft.encodings.dispatch.grid_encode`: the numba
kernels on float32 CPU tensors, else the PyTorch reference
:func:`~fieldcraft.encodings.grid.grid_encode_reference`; ``backend="torch"`` or
``FIELDCRAFT_KERNELS=reference`` forces the reference).

The paper's optimiser is RMSProp with a learning rate 3000 times larger for densities than for SH
coefficients; here one Adam learning rate drives both tables and ``density_scale`` multiplies the raw
density (Adam's steps do not depend on the gradient's scale, so this is a learning rate on the
density ``density_scale`` times the table's).

Regularisation (:meth:`PlenoxelField.regularization`, added to the NeRF loss by
:class:`~fieldcraft.tasks.nerf.training.PhotometricLoss`): total variation on a random subset of cells,

    TV = sum over sampled cells v, sum over channels d of sqrt(dx^2 + dy^2 + dz^2 + eps) - sqrt(eps)

with ``dx = value(v + e_x, d) - value(v, d)`` between neighbouring vertices in use (so a constant grid
has TV 0), weighted ``tv_density`` for the raw density and ``tv_sh`` for the SH coefficients; the
cells (``tv_fraction`` of the cells in use) are drawn from a generator seeded with the training step.
A sum over the sampled cells, as svox2's code adds it (its weights carry over: 1e-5 and 1e-3 for
synthetic scenes; the paper writes a mean over all voxels, whose weight would be this one times the
number of cells sampled). On lego_100 at 64^3 every weight tried lowered the val PSNR, so the NeRF
``plenoxels`` preset sets both to 0 (docs/encodings.md).

Coarse-to-fine (:class:`~fieldcraft.encodings.triplane.CoarseToFine`, driven by
:func:`~fieldcraft.encodings.coarse_to_fine` that ``NerfModel.update_grid`` calls each step): with
``k`` ``upsample_steps`` the grid starts at ``R / 2^k`` cells per axis, using every ``2^k``-th stored
vertex, and doubles at each listed step. First it prunes: vertices in use whose density is below
``prune_density`` and that are more than ``prune_dilate`` vertices from any denser one are set to zero
(density and SH, as a pruned voxel of the paper's sparse grid reads zeros); then the vertices the
doubling brings into use get the trilinear interpolation of their neighbours, so the field is
unchanged where nothing was pruned. The tables keep their shape (the optimiser's moments stay with
their vertices) and the buffer ``level`` (doublings done) is checkpointed. The grid is dense and lives
wholly in memory (``(R + 1)^3 (1 + 3 K)`` floats, plus Adam's two moments): pruning zeroes vertices, it
does not free them, unlike the paper's sparse CUDA structure. A pruned cell whose eight corners are all
zero has density 0 and gets no photometric gradient (the ReLU's gradient at 0 is 0); vertices next to
kept ones can grow back.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings.dense_grid import DenseGridConfig
from fieldcraft.encodings.dispatch import grid_encode
from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.encodings.spherical_harmonics import SphericalHarmonicsConfig
from fieldcraft.encodings.triplane import BACKENDS, CoarseToFine
from fieldcraft.errors import check
from fieldcraft.kernels.grid_layout import GridLayout, dense_grid_layout

COLOR_ACTIVATIONS = ("clamp", "sigmoid")
TV_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class PlenoxelFieldConfig(Config):
    """Fields:

    - ``resolution``: R, cells per axis after all upsampling (``(R + 1)^3`` vertices).
    - ``sh_degree``: SH bands, as ``SphericalHarmonicsConfig.degree`` (1-4): ``sh_degree^2``
      coefficients per colour channel; 3 (harmonics of ``l <= 2``) is the paper's "degree 2".
    - ``upsample_steps``: training steps at which the resolution doubles (the start is ``R / 2^k``);
      empty: always ``R``.
    - ``density_scale``: ``sigma = density_scale * relu(raw)`` (world units; the density's learning
      rate relative to the SH coefficients', see the module docstring).
    - ``density_init``: initial raw density of every vertex (SH coefficients start at 0: grey).
    - ``color_activation``: ``clamp`` (``max(0, SH + 1/2)``, svox2's code) or ``sigmoid``.
    - ``tv_density``, ``tv_sh``: weights of the total variation of the raw density and of the SH
      coefficients (0: off).
    - ``tv_fraction``: fraction of the cells in use sampled for the TV each step (the paper: 1 %).
    - ``prune_density``: at each upsampling, vertices with ``sigma`` below this (world units) and
      farther than ``prune_dilate`` vertices from a denser one are zeroed; 0: no pruning.
    - ``prune_dilate``: the margin (vertices at the current resolution) kept around dense vertices.
    - ``backend``: ``auto`` (numba kernels when they apply), ``torch`` (PyTorch reference) or ``fast``.
    """

    type_name = "PlenoxelField"
    resolution: int = 128
    sh_degree: int = 3
    upsample_steps: tuple[int, ...] = ()
    density_scale: float = 100.0
    density_init: float = 0.01
    color_activation: str = "clamp"
    tv_density: float = 1e-5
    tv_sh: float = 1e-3
    tv_fraction: float = 0.01
    prune_density: float = 0.0
    prune_dilate: int = 2
    backend: str = "auto"

    def build(self, aabb: Tensor) -> PlenoxelField:
        k = len(self.upsample_steps)
        check(self.resolution >= 1, f"Plenoxels resolution must be >= 1, got {self.resolution}")
        check(self.resolution % (1 << k) == 0,
              f"Plenoxels resolution {self.resolution} must be divisible by 2^{k} (it doubles at each of the {k} "
              f"upsample steps)")
        check(all(s > 0 for s in self.upsample_steps) and list(self.upsample_steps) == sorted(self.upsample_steps),
              f"Plenoxels upsample_steps must be increasing positive steps, got {self.upsample_steps}")
        check(1 <= self.sh_degree <= 4, f"Plenoxels sh_degree must be 1-4, got {self.sh_degree}")
        check(self.color_activation in COLOR_ACTIVATIONS,
              f"unknown color_activation {self.color_activation!r} (use {'|'.join(COLOR_ACTIVATIONS)})")
        check(self.density_scale > 0, f"Plenoxels density_scale must be > 0, got {self.density_scale}")
        check(self.tv_density >= 0 and self.tv_sh >= 0, "Plenoxels TV weights must be >= 0")
        check(0 < self.tv_fraction <= 1, f"Plenoxels tv_fraction must be in (0, 1], got {self.tv_fraction}")
        check(self.prune_density >= 0 and self.prune_dilate >= 0, "Plenoxels prune_density and prune_dilate must be >= 0")
        check(self.backend in BACKENDS, f"Plenoxels backend must be {'|'.join(BACKENDS)}, got {self.backend!r}")
        return PlenoxelField(self, aabb)


def strided_rows(table: Float[Tensor, "rows F"], resolution: int, stride: int) -> Float[Tensor, "m F"]:
    """The vertices in use of a dense 3-D grid table (every ``stride``-th of the ``resolution + 1`` per
    axis, row ``x + y (R + 1) + z (R + 1)^2``) as the table of a grid of ``resolution / stride`` cells
    (same row order); the table itself when ``stride == 1``, else a copy that gradients flow through.

    >>> t = torch.arange(27.0)[:, None]  # 2 cells per axis
    >>> strided_rows(t, 2, 2).flatten().tolist()  # the 8 corners
    [0.0, 2.0, 6.0, 8.0, 18.0, 20.0, 24.0, 26.0]
    """
    if stride == 1:
        return table
    n1 = resolution + 1
    return table.view(n1, n1, n1, table.shape[1])[::stride, ::stride, ::stride].reshape(-1, table.shape[1])


def upsample_grid(table: Float[Tensor, "rows F"], resolution: int, stride: int) -> None:
    """Halve the stride of a dense 3-D grid table in place: the vertices at odd multiples of
    ``stride / 2`` get the trilinear interpolation of the vertices in use (one axis at a time), so the
    interpolated function is unchanged (a trilinear function on a sub-cell is trilinear).

    >>> t = torch.zeros(27, 1); t[26] = 8.0  # 2 cells, stride 2: corners 0 and (2, 2, 2) = 8
    >>> upsample_grid(t, 2, 2); t[13].item()  # the centre: the mean of the 8 corners
    1.0
    """
    check(stride % 2 == 0, f"cannot upsample a grid already at full resolution (stride {stride})")
    h, n1 = stride // 2, resolution + 1
    with torch.no_grad():
        g = table.view(n1, n1, n1, table.shape[1])  # [z, y, x, F]
        a = g[::stride, ::stride]  # along x, on rows whose y and z are in use
        a[:, :, h::stride] = 0.5 * (a[:, :, 0:-1:stride] + a[:, :, stride::stride])
        b = g[::stride, :, ::h]  # along y (every x now in use)
        b[:, h::stride] = 0.5 * (b[:, 0:-1:stride] + b[:, stride::stride])
        c = g[:, ::h, ::h]  # along z
        c[h::stride] = 0.5 * (c[0:-1:stride] + c[stride::stride])


def total_variation(table: Float[Tensor, "rows F"], cells: Int[Tensor, "m 3"], resolution: int,
                    stride: int) -> Float[Tensor, ""]:
    """Sum over ``cells`` (integer ``(x, y, z)`` at the current resolution, each ``< R / stride``) of
    ``sum_d sqrt(dx^2 + dy^2 + dz^2 + eps) - sqrt(eps)``, the differences taken between a cell's first
    vertex and its three neighbours in use, for every column ``d`` of ``table`` (module docstring).

    >>> t = torch.arange(8.0)[:, None]  # 1 cell: value x + 2 y + 4 z at its corners
    >>> round(total_variation(t, torch.zeros(1, 3, dtype=torch.long), 1, 1).item(), 3)  # sqrt(1 + 4 + 16)
    4.583
    """
    n1 = resolution + 1
    r = (cells[:, 0] + cells[:, 1] * n1 + cells[:, 2] * n1 * n1) * stride
    rows = torch.cat([r, r + stride, r + stride * n1, r + stride * n1 * n1])
    # a sparse gradient (only the rows read) when one already exists to add it to: avoids a dense
    # zero table per step; the first gradient of a step must be dense (row-sparse Adam reads it)
    sparse = table.is_leaf and table.grad is not None and table.grad.layout == torch.strided
    v = F.embedding(rows, table, sparse=sparse)
    v0, vx, vy, vz = v.view(4, len(r), table.shape[1]).unbind(0)
    d2 = (vx - v0) ** 2 + (vy - v0) ** 2 + (vz - v0) ** 2
    return (torch.sqrt(d2 + TV_EPS) - math.sqrt(TV_EPS)).sum()


class PlenoxelField(CoarseToFine, nn.Module):
    """``density(x) -> sigma [n]`` and ``forward(x, d) -> (sigma [n], rgb [n, 3])`` on world points
    inside the box ``aabb`` ``[2, 3]`` (points outside are clamped to its boundary).

    Modules: ``density_grid`` and ``sh_grid`` (:class:`~fieldcraft.encodings.GridEncoding` s of ``(R + 1)^3``
    vertices, 1 and ``3 K`` features), ``direction_encoding`` (real SH of ``sh_degree`` bands); buffers
    ``aabb`` and ``level`` (upsamplings done)."""

    def __init__(self, config: PlenoxelFieldConfig, aabb: Tensor) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("aabb", aabb.clone().float())
        self.register_buffer("level", torch.zeros((), dtype=torch.int64))
        self.upsample_steps = tuple(config.upsample_steps)
        self.n_upsamples = len(config.upsample_steps)
        self.n_coefficients = config.sh_degree**2
        self.density_grid = self._grid(1, config.density_init)
        self.sh_grid = self._grid(3 * self.n_coefficients, 0.0)
        self.direction_encoding = SphericalHarmonicsConfig(degree=config.sh_degree).build(3)

    def _grid(self, features: int, value: float) -> GridEncoding:
        c = self.config
        enc = GridEncoding(DenseGridConfig(resolution=c.resolution, n_features=features, backend=c.backend), 3,
                           dense_grid_layout(3, c.resolution, features), 0.0, c.backend)
        with torch.no_grad():
            enc.table.fill_(value)
        return enc

    # --- resolution
    @property
    def stride(self) -> int:
        return 1 << (self.n_upsamples - int(self.level))

    @property
    def current_resolution(self) -> int:
        """Cells per axis in use now."""
        return self.config.resolution // self.stride

    def layout(self, features: int) -> GridLayout:
        """The dense layout of the vertices in use (:func:`strided_rows`) with ``features`` features."""
        return dense_grid_layout(3, self.current_resolution, features)

    def set_step(self, step: int) -> bool:
        """Prune and upsample as many times as the steps ``<= step`` in ``upsample_steps`` ask; True if it did."""
        target = min(sum(1 for s in self.upsample_steps if s <= step), self.n_upsamples)
        changed = False
        while int(self.level) < target:
            self.prune()
            for enc in (self.density_grid, self.sh_grid):
                upsample_grid(enc.table.data, self.config.resolution, self.stride)
            self.level += 1
            changed = True
        return changed

    @torch.no_grad()
    def prune(self) -> int:
        """Zero the vertices in use whose density is below ``prune_density`` and that lie more than
        ``prune_dilate`` vertices from a denser one (module docstring); returns how many were zeroed."""
        c = self.config
        if c.prune_density <= 0:
            return 0
        n1, s = c.resolution + 1, self.stride
        raw = self.density_grid.table.view(n1, n1, n1)[::s, ::s, ::s]
        keep = (c.density_scale * torch.relu(raw) >= c.prune_density).float()
        if c.prune_dilate > 0:
            k = 2 * c.prune_dilate + 1
            keep = F.max_pool3d(keep[None, None], k, stride=1, padding=c.prune_dilate)[0, 0]
        drop = keep == 0
        for enc in (self.density_grid, self.sh_grid):
            enc.table.view(n1, n1, n1, -1)[::s, ::s, ::s][drop] = 0.0
        return int(drop.sum())

    # --- evaluation
    def normalize(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        """World points to ``[0, 1]^3`` over the box (not clamped: the grid encoding clamps)."""
        return (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def _interpolate(self, enc: GridEncoding, u: Float[Tensor, "n 3"]) -> Float[Tensor, "n F"]:
        table = strided_rows(enc.table, self.config.resolution, self.stride)
        return grid_encode(u, table, self.layout(table.shape[1]), self.config.backend)

    def _sigma(self, u: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        return self.config.density_scale * torch.relu(self._interpolate(self.density_grid, u)[:, 0])

    def density(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        return self._sigma(self.normalize(x))

    def forward(self, x: Float[Tensor, "n 3"], d: Float[Tensor, "n 3"] | None = None
                ) -> tuple[Float[Tensor, " n"], Float[Tensor, "n 3"]]:
        u = self.normalize(x)
        coeffs = self._interpolate(self.sh_grid, u).view(len(u), 3, self.n_coefficients)
        if d is None:  # no direction: the mean over directions (band 0 only)
            y = torch.zeros(1, self.n_coefficients, dtype=coeffs.dtype, device=coeffs.device)
            y[:, 0] = 0.28209479177387814
        else:
            y = self.direction_encoding(d)
        raw = (coeffs * y[:, None, :]).sum(-1)
        rgb = torch.sigmoid(raw) if self.config.color_activation == "sigmoid" else torch.clamp_min(raw + 0.5, 0.0)
        return self._sigma(u), rgb

    # --- regularisation
    def regularization(self, step: int) -> Float[Tensor, ""] | None:
        """``tv_density TV(raw density) + tv_sh TV(SH)`` on ``tv_fraction`` of the cells in use, drawn
        from a generator seeded with ``step`` (module docstring); None when both weights are 0."""
        c = self.config
        if c.tv_density == 0 and c.tv_sh == 0:
            return None
        n = self.current_resolution
        m = max(1, int(round(c.tv_fraction * n**3)))
        gen = torch.Generator().manual_seed(1_000_003 + int(step))
        cells = torch.randint(0, n, (m, 3), generator=gen).to(self.aabb.device)
        total = self.aabb.new_zeros(())
        for weight, enc in ((c.tv_density, self.density_grid), (c.tv_sh, self.sh_grid)):
            if weight > 0:
                total = total + weight * total_variation(enc.table, cells, c.resolution, self.stride)
        return total

    def extra_repr(self) -> str:
        return (f"resolution={self.current_resolution}/{self.config.resolution}, "
                f"sh_coefficients={self.n_coefficients}x3")
