"""Tri-plane encoding (EG3D, Chan et al. 2022) and the feature planes and lines it shares with TensoRF.

A point ``x`` in ``[-1, 1]^3`` is projected onto the three axis-aligned planes XY, XZ and YZ;
each plane is a ``R x R``-cell grid of ``C``-feature vertices, bilinearly interpolated; the three
plane features are summed (EG3D) or concatenated. With ``levels > 1`` the planes exist at
resolutions ``R, R/2, ... R/2^(levels-1)`` and the levels' features are concatenated
(multiresolution tri-plane).

Storage (:class:`FeatureStack`): one parameter per stack, texel-major ``[P, (R + 1)^D, C]``
(``D = 2`` planes, ``D = 1`` lines; see :mod:`fieldcraft.kernels.planes` for the exact layout and
interpolation). Points outside ``[-1, 1]`` are clamped to the boundary.

Coarse-to-fine (TensoRF): with ``upsample_steps`` ``(s_1, .., s_k)`` a stack starts with ``R / 2^k``
cells per axis, using every ``2^k``-th stored vertex, and doubles its resolution at each of those
training steps (:func:`coarse_to_fine`, called by a task at the start of each step). Doubling
fills the vertices it brings into use with the (bi)linear interpolation of their neighbours, so
the represented function is unchanged (a bilinear function restricted to a sub-cell is bilinear),
and the parameter keeps its shape: optimiser moments of the vertices in use stay where they are,
and a checkpoint restores the current resolution (buffer ``level``).

Implementations: numba kernels on float32 CPU tensors when the points need no gradient
(:mod:`fieldcraft.kernels.planes`), else the PyTorch reference :func:`sample_reference`
(any device, differentiable in the points; ``FIELDCRAFT_KERNELS=reference`` forces it).
Plane gradients are dense: the optimiser gives them ordinary Adam.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.errors import FieldcraftError, check

BACKENDS = ("auto", "torch", "fast")
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # XY, XZ, YZ (TensoRF's matMode)
LINE_AXES = ((2,), (1,), (0,))  # the axis each plane leaves out (TensoRF's vecMode)


def sample_reference(t: Float[Tensor, "n P D"], table: Float[Tensor, "P V C"], resolution: int,
                     stride: int) -> Float[Tensor, "n P C"]:
    """Multilinear features of points ``t`` (in ``[0, 1]``, clamped) in a stack of ``P`` grids of
    dimension ``D`` (1 or 2), using every ``stride``-th of the ``resolution + 1`` vertices per axis.
    Differentiable in ``table`` and ``t``.

    >>> table = torch.arange(3.0).reshape(1, 3, 1)  # one line, 2 cells, values 0, 1, 2
    >>> sample_reference(torch.tensor([[[0.25]], [[1.0]]]), table, 2, 1).flatten().tolist()
    [0.5, 2.0]
    >>> sample_reference(torch.tensor([[[0.25]]]), table, 2, 2).flatten().tolist()  # stride 2: vertices 0 and 2
    [0.5]
    """
    n, planes, dim = t.shape
    r = resolution // stride
    x = t.clamp(0.0, 1.0) * r
    cell = torch.clamp(torch.floor(x.detach()), max=r - 1)
    frac = x - cell
    cell = cell.to(torch.int64) * stride
    n1 = resolution + 1
    base = torch.arange(planes, device=t.device) * table.shape[1]  # row offset of each grid in the flat table
    flat = table.reshape(-1, table.shape[2])
    if dim == 1:
        v0 = cell[..., 0] + base
        f = frac[..., 0:1]
        return (1 - f) * flat[v0] + f * flat[v0 + stride]
    v00 = cell[..., 0] + cell[..., 1] * n1 + base
    fx, fy = frac[..., 0:1], frac[..., 1:2]
    return ((1 - fx) * (1 - fy) * flat[v00] + fx * (1 - fy) * flat[v00 + stride]
            + (1 - fx) * fy * flat[v00 + stride * n1] + fx * fy * flat[v00 + stride * (n1 + 1)])


class _SampleFunction(torch.autograd.Function):
    """The numba kernels, differentiable in the table (not the points)."""

    @staticmethod
    def forward(ctx, t: Tensor, table: Tensor, resolution: int, stride: int) -> Tensor:
        from fieldcraft.kernels import planes as K

        t = t.detach().contiguous()
        out = K.sample_forward(t.numpy(), table.detach().contiguous().numpy(), resolution, stride)
        ctx.save_for_backward(t)
        ctx.resolution, ctx.stride, ctx.rows = resolution, stride, table.shape[1]
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        from fieldcraft.kernels import planes as K

        (t,) = ctx.saved_tensors
        g = grad_out.detach().to(torch.float32).contiguous().numpy()
        grad = K.sample_backward(t.numpy(), g, ctx.resolution, ctx.stride, ctx.rows)
        return None, torch.from_numpy(grad), None, None


def sample(t: Float[Tensor, "n P D"], table: Float[Tensor, "P V C"], resolution: int, stride: int,
           backend: str = "auto") -> Float[Tensor, "n P C"]:
    """:func:`sample_reference`, on the numba kernels when they apply (float32 CPU tensors, points
    without gradient, fast kernels enabled, numba importable) unless ``backend="torch"``."""
    from fieldcraft.kernels.planes import HAVE_NUMBA
    from fieldcraft.runtime import fast_kernels_enabled

    usable = (HAVE_NUMBA and fast_kernels_enabled() and t.device.type == "cpu" and table.device.type == "cpu"
              and t.dtype == table.dtype == torch.float32 and not t.requires_grad)
    if backend != "torch" and usable:
        from fieldcraft.encodings.grid_autograd import num_threads

        num_threads()  # the kernels use torch's thread count
        return _SampleFunction.apply(t, table, resolution, stride)
    if backend == "fast":
        raise FieldcraftError("plane backend 'fast' requested but the numba kernel does not apply "
                              "(needs float32 CPU tensors, no input gradients, numba installed)")
    return sample_reference(t, table, resolution, stride)


def upsample_stack(table: Float[Tensor, "P V C"], resolution: int, stride: int, dim: int) -> None:
    """Halve the stride of a stack in place: the vertices at odd multiples of ``stride / 2`` get the
    (bi)linear interpolation of their neighbours, so the represented function is unchanged."""
    check(stride % 2 == 0, f"cannot upsample a stack already at full resolution (stride {stride})")
    h = stride // 2
    n1 = resolution + 1
    with torch.no_grad():
        if dim == 1:
            table[:, h::stride] = 0.5 * (table[:, 0:-1:stride] + table[:, stride::stride])
            return
        grid = table.view(table.shape[0], n1, n1, table.shape[2])  # [P, j, i, C] (row v = i + j (R + 1))
        rows = grid[:, ::stride]  # rows j at multiples of stride: fill i at odd multiples of h
        rows[:, :, h::stride] = 0.5 * (rows[:, :, 0:-1:stride] + rows[:, :, stride::stride])
        cols = grid[:, :, ::h]  # every column now in use: fill rows j at odd multiples of h
        cols[:, h::stride] = 0.5 * (cols[:, 0:-1:stride] + cols[:, stride::stride])


class FeatureStack(nn.Module):
    """``P`` feature grids of dimension ``dim`` (planes or lines), ``resolution`` cells per axis at full
    resolution, ``n_features`` features per vertex, parameter ``table`` ``[P, (R + 1)^dim, C]``
    drawn from ``N(0, init_scale^2)``; ``n_upsamples`` halvings of the stride still to come
    (buffer ``level``: how many were done). ``axes``: the point coordinates each grid reads."""

    def __init__(self, axes: tuple[tuple[int, ...], ...], resolution: int, n_features: int, init_scale: float,
                 n_upsamples: int = 0, backend: str = "auto") -> None:
        super().__init__()
        dim = len(axes[0])
        check(resolution % (1 << n_upsamples) == 0 and resolution >> n_upsamples >= 1,
              f"resolution {resolution} must be a multiple of 2^{n_upsamples} (one halving per upsample step)")
        self.dim, self.resolution, self.n_upsamples, self.backend = dim, int(resolution), int(n_upsamples), backend
        self.axes = [list(a) for a in axes]
        self.register_buffer("level", torch.zeros((), dtype=torch.int64))
        self.table = nn.Parameter(torch.randn(len(axes), (resolution + 1) ** dim, n_features) * init_scale)

    @property
    def stride(self) -> int:
        return 1 << (self.n_upsamples - int(self.level))

    @property
    def current_resolution(self) -> int:
        """Cells per axis in use now."""
        return self.resolution // self.stride

    def forward(self, u: Float[Tensor, "n 3"]) -> Float[Tensor, "n P C"]:
        """Features of points ``u`` in ``[0, 1]^3`` on each grid."""
        return sample(u[:, self.axes], self.table, self.resolution, self.stride, self.backend)

    def upsample(self) -> None:
        """Double the resolution in use, keeping the represented function."""
        upsample_stack(self.table.data, self.resolution, self.stride, self.dim)
        self.level += 1

    def extra_repr(self) -> str:
        return (f"grids={self.table.shape[0]}, dim={self.dim}, resolution={self.current_resolution}/{self.resolution}, "
                f"features={self.table.shape[2]}")


class CoarseToFine:
    """Mixin of encodings whose :class:`FeatureStack` s double their resolution at ``upsample_steps``."""

    upsample_steps: tuple[int, ...] = ()

    def stacks(self) -> list[FeatureStack]:
        return [m for m in self.modules() if isinstance(m, FeatureStack)]  # type: ignore[attr-defined]

    def set_step(self, step: int) -> bool:
        """Upsample as many times as the steps ``<= step`` in ``upsample_steps`` ask; True if it did."""
        target = sum(1 for s in self.upsample_steps if s <= step)
        changed = False
        for stack in self.stacks():
            while int(stack.level) < min(target, stack.n_upsamples):
                stack.upsample()
                changed = True
        return changed


def coarse_to_fine(module: nn.Module, step: int) -> bool:
    """Bring every coarse-to-fine encoding inside ``module`` to the resolution of training step
    ``step`` (:class:`CoarseToFine`); True if any was upsampled. Tasks call it before each step."""
    changed = False
    for m in module.modules():
        if isinstance(m, CoarseToFine):
            changed |= m.set_step(step)
    return changed


def check_upsampling(name: str, resolution: int, upsample_steps: tuple[int, ...], backend: str) -> None:
    check(resolution >= 1, f"{name} resolution must be >= 1, got {resolution}")
    check(all(s > 0 for s in upsample_steps) and list(upsample_steps) == sorted(upsample_steps),
          f"{name} upsample_steps must be increasing positive steps, got {upsample_steps}")
    check(resolution % (1 << len(upsample_steps)) == 0,
          f"{name} resolution {resolution} must be divisible by 2^{len(upsample_steps)} "
          f"(it doubles at each of the {len(upsample_steps)} upsample steps)")
    check(backend in BACKENDS, f"{name} backend must be {'|'.join(BACKENDS)}, got {backend!r}")


@dataclasses.dataclass(frozen=True)
class TriPlaneConfig(EncodingConfig):
    """Fields:

    - ``resolution``: R, cells per axis of each plane (finest level, after all upsampling).
    - ``n_features``: C, features per plane vertex.
    - ``reduce``: ``sum`` (EG3D: the three planes' features added, ``out_dim = levels C``) or
      ``concat`` (``3 levels C``).
    - ``levels``: resolutions ``R, R/2, ..`` (``levels`` of them), features concatenated finest first.
    - ``init_scale``: standard deviation of the normal initialisation.
    - ``upsample_steps``: training steps at which the resolution doubles (coarse-to-fine; the start is
      ``R / 2^k`` for ``k`` steps); empty: always full resolution.
    - ``backend``: ``auto`` (numba kernels when they apply), ``torch`` (PyTorch reference) or ``fast``.
    """

    type_name = "TriPlane"
    resolution: int = 128
    n_features: int = 16
    reduce: str = "sum"
    levels: int = 1
    init_scale: float = 0.1
    upsample_steps: tuple[int, ...] = ()
    backend: str = "auto"

    def out_dim(self, in_dim: int) -> int:
        return self.levels * self.n_features * (3 if self.reduce == "concat" else 1)

    def build(self, in_dim: int) -> TriPlaneEncoding:
        check(in_dim == 3, f"TriPlane encodes 3-D points, got {in_dim}-D inputs")
        check(self.reduce in ("sum", "concat"), f"TriPlane reduce must be sum|concat, got {self.reduce!r}")
        check(self.levels >= 1 and self.n_features >= 1, "TriPlane levels and n_features must be >= 1")
        check_upsampling("TriPlane", self.resolution >> (self.levels - 1), self.upsample_steps, self.backend)
        check(self.resolution % (1 << (self.levels - 1)) == 0,
              f"TriPlane resolution {self.resolution} must be divisible by 2^(levels - 1)")
        return TriPlaneEncoding(self, in_dim)


class TriPlaneEncoding(CoarseToFine, Encoding):
    """``[n, 3] -> [n, out_dim]``; modules ``levels`` (one :class:`FeatureStack` of 3 planes per level)."""

    config: TriPlaneConfig

    def __init__(self, config: TriPlaneConfig, in_dim: int) -> None:
        super().__init__(config, in_dim)
        self.upsample_steps = tuple(config.upsample_steps)
        k = len(config.upsample_steps)
        self.levels = nn.ModuleList(
            FeatureStack(PLANE_AXES, config.resolution >> level, config.n_features, config.init_scale, k, config.backend)
            for level in range(config.levels))

    def encode(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n out_dim"]:
        u = (x + 1.0) * 0.5
        feats = []
        for stack in self.levels:
            f = stack(u)  # [n, 3, C]
            feats.append(f.sum(1) if self.config.reduce == "sum" else f.reshape(len(u), f.shape[1] * f.shape[2]))
        return feats[0] if len(feats) == 1 else torch.cat(feats, -1)


def grid_points(resolution: int, stride: int, dim: int) -> Float[Tensor, "m dim"]:
    """The vertices in use of a grid (every ``stride``-th of ``resolution + 1`` per axis) as points of
    ``[0, 1]^dim``, for tests and inspection.

    >>> grid_points(4, 2, 1).flatten().tolist()
    [0.0, 0.5, 1.0]
    """
    ticks = torch.arange(0, resolution + 1, stride, dtype=torch.float32) / resolution
    mesh = torch.meshgrid(*([ticks] * dim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], -1)


__all__ = ["CoarseToFine", "FeatureStack", "TriPlaneConfig", "TriPlaneEncoding", "coarse_to_fine", "grid_points",
           "sample", "sample_reference", "upsample_stack"]
