"""Occupancy grid (Instant-NGP sec. 4 / nerfacc ``OccGridEstimator``): skip empty space.

A ``R^3`` grid over the scene box stores, per cell, a running estimate of the opacity of one
marching step, ``occ = sigma(x) * step_size``. Every ``update_every`` training steps
(:meth:`OccupancyGrid.update`) the estimates decay by ``decay`` and are raised to fresh
density evaluations: every cell during the first ``warmup_steps``, afterwards a random quarter
of all cells plus as many random occupied cells. A cell is occupied when its estimate
exceeds ``min(mean estimate, threshold)``.

:func:`march` walks rays with a fixed step through the box and keeps only the intervals whose
midpoint lies in an occupied cell, returning packed samples (``ray_indices``, ``t_starts``,
``t_ends``) for :mod:`fieldcraft.render.compositing`. Early ray termination happens after a
cheap density pass (see :func:`termination_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from fieldcraft.render.compositing import alphas_from_densities, exclusive_cumsum


class BinaryGrid(nn.Module):
    """Occupied cells of a ``R^3`` grid over a box: ``aabb`` ([2, 3]) and ``binary`` (``[R, R, R]``,
    x-major), as buffers (saved with checkpoints). Cell ``(i, j, k)`` spans
    ``aabb[0] + [i, i + 1] * (aabb[1] - aabb[0]) / R`` along x, and so on."""

    def __init__(self, aabb: Float[Tensor, "2 3"], resolution: int = 64) -> None:
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("aabb", aabb.clone().float())
        self.register_buffer("binary", torch.ones(resolution, resolution, resolution, dtype=torch.bool))

    def cell_centres(self, cells: Int[Tensor, " m"], jitter: bool = True) -> Float[Tensor, "m 3"]:
        """World positions of flat cell indices (uniformly jittered inside the cell when ``jitter``)."""
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1).float()
        off = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        lo, hi = self.aabb[0], self.aabb[1]
        return lo + (ijk + off) / r * (hi - lo)

    def occupied(self, points: Float[Tensor, "m 3"]) -> Bool[Tensor, " m"]:
        """Whether points fall in occupied cells (points outside the box are empty)."""
        r = self.resolution
        lo, hi = self.aabb[0], self.aabb[1]
        u = (points - lo) / (hi - lo)
        inside = ((u >= 0) & (u < 1)).all(-1)
        ijk = (u * r).long().clamp(0, r - 1)
        idx = (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]
        return inside & self.binary.view(-1)[idx]


class OccupancyGrid(BinaryGrid):
    """State of the estimator: a :class:`BinaryGrid` plus ``density`` (``[R, R, R]`` occupancy
    estimates, a buffer) from which :meth:`update` derives ``binary``."""

    def __init__(self, aabb: Float[Tensor, "2 3"], resolution: int = 64) -> None:
        super().__init__(aabb, resolution)
        self.register_buffer("density", torch.zeros(resolution, resolution, resolution))

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[Tensor], Tensor], step_size: float, decay: float = 0.95,
               threshold: float = 0.01, warmup_steps: int = 256, chunk: int = 65536) -> None:
        """Refresh the estimates with ``density_fn(points [m, 3]) -> sigma [m]`` (see module docstring)."""
        flat = self.density.view(-1)
        n = flat.numel()
        if step < warmup_steps:
            cells = torch.arange(n, device=flat.device)
        else:
            uniform = torch.randint(0, n, (n // 4,), device=flat.device)
            occupied = self.binary.view(-1).nonzero()[:, 0]
            if len(occupied) > n // 4:
                occupied = occupied[torch.randint(0, len(occupied), (n // 4,), device=flat.device)]
            cells = torch.cat([uniform, occupied])
        fresh = torch.cat([density_fn(self.cell_centres(c)).reshape(-1) for c in cells.split(chunk)]) * step_size
        decayed = flat * decay
        decayed.scatter_reduce_(0, cells, fresh.to(decayed.dtype), reduce="amax")
        flat.copy_(torch.maximum(decayed, torch.zeros_like(decayed)))
        thre = min(float(flat.mean()), threshold)
        self.binary.copy_(self.density > thre)


def march(grid: BinaryGrid | None, origins: Float[Tensor, "r 3"], dirs: Float[Tensor, "r 3"],
          t_min: Float[Tensor, " r"], t_max: Float[Tensor, " r"], step_size: float, jitter: bool = False,
          max_steps: int | None = None) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Fixed-step intervals ``[t_min + k s, t_min + (k + 1) s]`` (shifted by one random offset per ray when
    ``jitter``) that end before ``t_max`` and whose midpoints are occupied; packed, ray-major.

    ``grid=None`` keeps every interval (plain uniform sampling). On the CPU the numba kernel of
    :mod:`fieldcraft.kernels.march` produces the same intervals without the dense candidate table.

    >>> ri, t0, t1 = march(None, torch.zeros(2, 3), torch.tensor([[0.0, 0, 1], [1.0, 0, 0]]),
    ...                    torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]), 0.25)
    >>> ri.tolist(), t0.tolist()
    ([0, 0, 0, 0, 1, 1], [0.0, 0.25, 0.5, 0.75, 0.0, 0.25])
    """
    span = (t_max - t_min).clamp(min=0)
    n_max = math.ceil(float(span.max()) / step_size) if len(span) else 0
    if max_steps is not None:
        n_max = min(n_max, max_steps)
    if n_max == 0:
        empty = torch.zeros(0, device=origins.device)
        return empty.long(), empty, empty
    offset = torch.rand_like(t_min) if jitter else torch.zeros_like(t_min)
    if _fast_march(origins, dirs, t_min, t_max):
        from fieldcraft.kernels.march import march as march_kernel

        lo, hi = (grid.aabb[0], grid.aabb[1]) if grid is not None else (origins.new_zeros(3), origins.new_ones(3))
        ri, ts = march_kernel(*(x.detach().contiguous().numpy() for x in (origins, dirs, t_min, t_max, offset)),
                              step_size, n_max, grid.binary.numpy() if grid is not None else None, lo.numpy(),
                              hi.numpy())
        t_starts = torch.from_numpy(ts)
        return torch.from_numpy(ri), t_starts, t_starts + step_size
    k = torch.arange(n_max, device=origins.device, dtype=origins.dtype)
    t0 = t_min[:, None] + (k[None] + offset[:, None]) * step_size  # [r, n_max]
    keep = t0 + step_size <= t_max[:, None]
    ray_idx, step_idx = keep.nonzero(as_tuple=True)
    t_starts = t0[ray_idx, step_idx]
    if grid is not None and len(ray_idx):
        mid = t_starts + 0.5 * step_size
        pts = origins[ray_idx] + mid[:, None] * dirs[ray_idx]
        occ = grid.occupied(pts)
        ray_idx, t_starts = ray_idx[occ], t_starts[occ]
    return ray_idx, t_starts, t_starts + step_size



def _fast_march(*tensors: Tensor) -> bool:
    """Whether :func:`march` takes the numba kernel (:mod:`fieldcraft.kernels.march`): float32 CPU
    tensors, numba importable and ``FIELDCRAFT_KERNELS`` not ``reference``."""
    from fieldcraft.runtime import fast_kernels_enabled

    if not fast_kernels_enabled() or not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    from fieldcraft.kernels.march import NUMBA_ERROR

    return NUMBA_ERROR is None


def occupied_range(grid: BinaryGrid, origins: Float[Tensor, "r 3"], dirs: Float[Tensor, "r 3"], t_min: Float[Tensor, " r"],
                   t_max: Float[Tensor, " r"], step_size: float, chunk: int = 8192) -> tuple[Float[Tensor, " r"], Float[Tensor, " r"]]:
    """Each ray's range narrowed to the stretch from its first to its last occupied interval of
    :func:`march` (step ``step_size``), widened by one step on each side and kept within
    ``[t_min, t_max]``. Rays that cross no occupied cell get an empty range (``t_min == t_max``).

    >>> g = BinaryGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), 4)
    >>> _ = g.binary.zero_(); g.binary[2, 1, 1] = True      # the cell x in [0.5, 0.75]
    >>> o, d = torch.tensor([[-1.0, 0.3, 0.3], [-1.0, 0.9, 0.9]]), torch.tensor([[1.0, 0, 0]] * 2)
    >>> lo, hi = occupied_range(g, o, d, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 0.125)
    >>> lo.tolist(), hi.tolist()                           # t = 1.5 .. 1.75, one step wider; a miss
    ([1.375, 1.0], [1.875, 1.0])
    """
    lo, hi = t_min.clone(), t_min.clone()
    for s in range(0, len(t_min), chunk):
        sl = slice(s, s + chunk)
        ri, t0, t1 = march(grid, origins[sl], dirs[sl], t_min[sl], t_max[sl], step_size)
        if len(ri) == 0:
            continue
        first = torch.full_like(t_min[sl], math.inf).scatter_reduce(0, ri, t0, reduce="amin")
        last = torch.full_like(t_min[sl], -math.inf).scatter_reduce(0, ri, t1, reduce="amax")
        hit = torch.isfinite(first)
        a = torch.maximum(first - step_size, t_min[sl])
        b = torch.minimum(last + step_size, t_max[sl])
        lo[sl] = torch.where(hit, a, t_min[sl])
        hi[sl] = torch.where(hit, b, t_min[sl])
    return lo, hi


def termination_mask(sigmas: Float[Tensor, " n"], t_starts: Float[Tensor, " n"], t_ends: Float[Tensor, " n"],
                     ray_indices: Int[Tensor, " n"], early_stop_eps: float = 1e-4, alpha_threshold: float = 0.0
                     ) -> Bool[Tensor, " n"]:
    """Samples worth rendering: transmittance still above ``early_stop_eps`` (early ray termination)
    and alpha above ``alpha_threshold``.

    >>> termination_mask(torch.tensor([100.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]),
    ...                  torch.tensor([0, 0, 1])).tolist()
    [True, False, True]
    """
    tau = sigmas * (t_ends - t_starts)
    trans = torch.exp(-exclusive_cumsum(tau, ray_indices))
    keep = trans > early_stop_eps
    if alpha_threshold > 0:
        keep &= alphas_from_densities(sigmas, t_starts, t_ends) > alpha_threshold
    return keep
