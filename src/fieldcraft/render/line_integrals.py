"""Line integrals of 2-D fields along detector rays (computed tomography forward model).

Beer-Lambert: a ray of ``I0`` photons crossing attenuation ``mu`` leaves ``I = I0 exp(-p)``
with ``p = int mu(o + t d) dt``. This module computes ``p`` for every detector ray by
quadrature; everything is a small pure function, differentiable with respect to the field.

Conventions (2-D, same as images, see ``docs/architecture.md``):

- coordinates ``(x, y)`` in world units, ``x`` to the right (image columns), ``y`` down (image
  rows); an ``N x N`` image covers ``[-1, 1]^2`` with pixel ``(i, j)`` centred at
  ``((2j + 1)/N - 1, (2i + 1)/N - 1)``.
- a view at angle ``theta`` (radians) has detector direction ``n = (cos theta, -sin theta)`` and
  ray direction ``d = (sin theta, cos theta)``; the parallel ray at detector coordinate ``u``
  is ``c + u n + t d`` (``c`` = centre of rotation). This is scikit-image's ``radon``
  convention, so sinograms made here go straight into ``iradon`` / ``iradon_sart``.
- fan beam: source at ``c - D_s d``, flat detector through ``c + D_d d`` along ``n``.
- integrals are in world length units times field units (multiply by ``N / 2`` for pixel
  units, the units of scikit-image's ``radon``).

Two ways to integrate, built on the same quadrature points:

- :func:`line_integrals`: evaluate any callable field at the points (exact field, costs one
  field evaluation per point);
- :func:`projection_matrix` + :func:`project`: the field sampled on an ``N x N`` pixel grid and
  interpolated bilinearly; the integrals are then a fixed sparse linear map of the pixel
  values (fast, used for fitting).

>>> import math, torch
>>> o, d = parallel_beam_rays(torch.tensor([0.0]), torch.tensor([0.0, 0.5]))
>>> t0, t1 = chord_interval(o, d, radius=1.0)
>>> pts, w = quadrature_points(o, d, t0, t1, n_samples=64)
>>> line_integrals(lambda p: torch.ones(p.shape[:-1]), pts, w)  # chord lengths 2 sqrt(1 - u^2)
tensor([[2.0000, 1.7321]])
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor


def detector_positions(n_detectors: int, spacing: float, center_index: float | None = None) -> Float[Tensor, " n"]:
    """Detector coordinates ``u_k = (k - center_index) * spacing`` (world units).

    ``center_index`` is the (possibly fractional) bin hit by the ray through the centre of
    rotation; default ``(n - 1) / 2``. scikit-image's ``radon``/``iradon`` use ``n // 2``.

    >>> detector_positions(4, 0.5)
    tensor([-0.7500, -0.2500,  0.2500,  0.7500])
    >>> detector_positions(4, 0.5, center_index=2)
    tensor([-1.0000, -0.5000,  0.0000,  0.5000])
    """
    c = (n_detectors - 1) / 2.0 if center_index is None else float(center_index)
    return (torch.arange(n_detectors, dtype=torch.float64) - c).to(torch.get_default_dtype()) * spacing


def _frames(angles: Tensor) -> tuple[Tensor, Tensor]:
    """Detector direction ``n`` and ray direction ``d`` per angle, ``[A, 2]`` each."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    n = torch.stack([cos, -sin], dim=-1)
    d = torch.stack([sin, cos], dim=-1)
    return n, d


def parallel_beam_rays(
    angles: Float[Tensor, " A"], u: Float[Tensor, " D"], center: tuple[float, float] = (0.0, 0.0)
) -> tuple[Float[Tensor, "A D 2"], Float[Tensor, "A D 2"]]:
    """Parallel-beam rays: origins ``c + u n`` (the point of each ray closest to ``c``) and unit
    directions ``d``, for ``angles`` (radians) and detector coordinates ``u``.

    >>> o, d = parallel_beam_rays(torch.tensor([0.0, torch.pi / 2]), torch.tensor([0.5]))
    >>> (o.round(decimals=4) + 0.0).tolist(), (d.round(decimals=4) + 0.0).tolist()
    ([[[0.5, 0.0]], [[0.0, -0.5]]], [[[0.0, 1.0]], [[1.0, 0.0]]])
    """
    n, d = _frames(angles)
    c = torch.tensor(center, dtype=angles.dtype, device=angles.device)
    origins = c + u[None, :, None] * n[:, None, :]
    return origins, d[:, None, :].expand_as(origins).contiguous()


def fan_beam_rays(
    angles: Float[Tensor, " A"], u: Float[Tensor, " D"], source_distance: float, detector_distance: float,
    center: tuple[float, float] = (0.0, 0.0),
) -> tuple[Float[Tensor, "A D 2"], Float[Tensor, "A D 2"]]:
    """Fan-beam rays with a flat detector: origins at the source ``c - D_s d``, unit directions
    towards the detector bins ``c + D_d d + u n``. ``u`` is measured on the detector itself
    (magnification ``(D_s + D_d) / D_s`` relative to the centre of rotation).

    >>> o, d = fan_beam_rays(torch.tensor([0.0]), torch.tensor([0.0, 4.0]), 3.0, 1.0)
    >>> o[0, 0].tolist(), d[0, 1].tolist()  # source at (0, -3); bin u=4 is at (4, 1)
    ([0.0, -3.0], [0.7071067690849304, 0.7071067690849304])
    """
    n, d = _frames(angles)
    c = torch.tensor(center, dtype=angles.dtype, device=angles.device)
    source = c - source_distance * d  # [A, 2]
    bins = c + detector_distance * d[:, None, :] + u[None, :, None] * n[:, None, :]  # [A, D, 2]
    dirs = bins - source[:, None, :]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return source[:, None, :].expand_as(dirs).contiguous(), dirs


def chord_interval(
    origins: Float[Tensor, "*rays 2"], directions: Float[Tensor, "*rays 2"], radius: float = 1.0,
    center: tuple[float, float] = (0.0, 0.0),
) -> tuple[Float[Tensor, "*rays"], Float[Tensor, "*rays"]]:
    """Ray parameters ``(t_near, t_far)`` where unit-direction rays cross the disc of
    ``radius`` around ``center`` (the support of the object). Rays missing the disc get
    ``t_near == t_far``.

    >>> chord_interval(torch.tensor([[0.0, -2.0]]), torch.tensor([[0.0, 1.0]]))
    (tensor([1.]), tensor([3.]))
    """
    oc = origins - torch.tensor(center, dtype=origins.dtype, device=origins.device)
    b = (oc * directions).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + radius * radius
    half = torch.sqrt(disc.clamp_min(0.0))
    mid = -b
    return mid - half, mid + half


def quadrature_points(
    origins: Float[Tensor, "*rays 2"], directions: Float[Tensor, "*rays 2"], t_near: Float[Tensor, "*rays"],
    t_far: Float[Tensor, "*rays"], n_samples: int, offsets: Float[Tensor, "*rays S"] | None = None,
) -> tuple[Float[Tensor, "*rays S 2"], Float[Tensor, "*rays S"]]:
    """Midpoint-rule quadrature of ``[t_near, t_far]`` with ``n_samples`` equal intervals per ray:
    points ``o + t_k d`` with ``t_k = t_near + (k + offset_k) h``, ``h = (t_far - t_near)/S``,
    weights ``h`` (zero for rays that miss the support).

    ``offsets`` in ``[0, 1)`` jitter the samples inside their intervals (stratified
    sampling); default 0.5 (midpoints).
    """
    length = (t_far - t_near).clamp_min(0.0)
    h = length / n_samples
    k = torch.arange(n_samples, dtype=origins.dtype, device=origins.device)
    frac = (k + 0.5) if offsets is None else (k + offsets)
    t = t_near[..., None] + frac * h[..., None]
    points = origins[..., None, :] + t[..., None] * directions[..., None, :]
    weights = h[..., None].expand(*h.shape, n_samples)
    return points, weights


def line_integrals(field, points: Float[Tensor, "*rays S 2"], weights: Float[Tensor, "*rays S"],
                   chunk: int | None = None) -> Float[Tensor, "*rays"]:
    """``sum_k field(p_k) w_k`` per ray for a callable ``field: [..., 2] -> [...]`` or
    ``[..., 1]``. Differentiable with respect to whatever ``field`` depends on. ``chunk``
    evaluates at most that many rays at a time (memory bound for large sinograms).
    """
    rays_shape = points.shape[:-2]
    p = points.reshape(-1, *points.shape[-2:])
    w = weights.reshape(-1, weights.shape[-1])
    step = p.shape[0] if not chunk else int(chunk)
    out = []
    for i in range(0, p.shape[0], max(step, 1)):
        v = field(p[i:i + step])
        if v.dim() == p.dim():
            v = v[..., 0]
        out.append((v * w[i:i + step]).sum(-1))
    return torch.cat(out).reshape(rays_shape) if out else torch.zeros(rays_shape, device=points.device)


def bilinear_corners(points: Float[Tensor, "*pts 2"], size: int) -> tuple[Int[Tensor, "*pts 4"], Float[Tensor, "*pts 4"]]:
    """Flat pixel indices (``i * size + j``) and weights of the 4 pixels whose bilinear
    interpolation gives the value at ``points`` in an ``size x size`` image over ``[-1, 1]^2``
    (pixel-centre convention, zero outside the image: ``grid_sample(align_corners=False,
    padding_mode="zeros")``). Corners outside the image get weight 0 and index 0.

    >>> idx, w = bilinear_corners(torch.tensor([[-0.5, -0.5]]), 2)  # centre of pixel (0, 0)
    >>> idx.tolist(), w.tolist()
    ([[0, 1, 2, 3]], [[1.0, 0.0, 0.0, 0.0]])
    """
    g = (points + 1.0) * (size / 2.0) - 0.5  # continuous pixel coordinates (col, row)
    base = torch.floor(g)
    f = g - base
    b = base.to(torch.int64)
    idx, wts = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            col, row = b[..., 0] + dx, b[..., 1] + dy
            w = (f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
            inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
            idx.append(torch.where(inside, row * size + col, torch.zeros_like(col)))
            wts.append(torch.where(inside, w, torch.zeros_like(w)))
    return torch.stack(idx, -1), torch.stack(wts, -1)


def projection_matrix(points: Float[Tensor, "*rays S 2"], weights: Float[Tensor, "*rays S"], size: int,
                      chunk: int = 2048) -> Tensor:
    """Sparse CSR matrix ``A`` (``[n_rays, size * size]``) with ``A @ image.flatten()`` equal to
    :func:`line_integrals` of the bilinear interpolant of a ``size x size`` image over
    ``[-1, 1]^2`` (:func:`image_field`) at the same quadrature points (rays flattened in
    row-major order). Built ``chunk`` rays at a time to bound memory."""
    n_s = points.shape[-2]
    pts = points.reshape(-1, n_s, 2)
    wts = weights.reshape(-1, n_s)
    n_rays = pts.shape[0]
    rows_all, cols_all, vals_all = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta", invariant checks
        for start in range(0, n_rays, chunk):
            idx, w = bilinear_corners(pts[start:start + chunk], size)
            vals = (w * wts[start:start + chunk, :, None]).reshape(idx.shape[0], -1)
            rows = torch.arange(start, start + idx.shape[0], device=vals.device)[:, None].expand_as(vals)
            keep = vals != 0
            coo = torch.sparse_coo_tensor(torch.stack([rows[keep], idx.reshape(idx.shape[0], -1)[keep]]),
                                          vals[keep], (n_rays, size * size)).coalesce()
            rows_all.append(coo.indices()[0])
            cols_all.append(coo.indices()[1])
            vals_all.append(coo.values())
        # chunks cover increasing row ranges, so the concatenation is still sorted (coalesced)
        coo = torch.sparse_coo_tensor(torch.stack([torch.cat(rows_all), torch.cat(cols_all)]), torch.cat(vals_all),
                                      (n_rays, size * size), is_coalesced=True)
        return coo.to_sparse_csr()


def image_field(image: Float[Tensor, "N N"]):
    """An image over ``[-1, 1]^2`` as a callable field ``[..., 2] -> [...]``: bilinear
    interpolation between pixel centres, zero outside (``grid_sample``, ``align_corners=False``).

    >>> f = image_field(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> f(torch.tensor([[-0.5, -0.5], [0.0, 0.0], [0.5, 0.5]]))
    tensor([0.0000, 1.5000, 3.0000])
    """
    grid_image = image[None, None]

    def field(p: Tensor) -> Tensor:
        g = p.reshape(1, -1, 1, 2).to(grid_image.dtype)
        v = torch.nn.functional.grid_sample(grid_image, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        return v.reshape(p.shape[:-1])

    return field


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dense: Tensor, matrix: Tensor, matrix_t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.matrix_t = matrix_t
        return matrix @ dense

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.matrix_t @ grad, None, None


def sparse_matmul(matrix: Tensor, dense: Float[Tensor, "cols k"], matrix_t: Tensor | None = None) -> Float[Tensor, "rows k"]:
    """``matrix @ dense`` for a sparse CSR ``matrix``, differentiable in ``dense``; the backward
    pass multiplies by ``matrix_t`` (precompute it once with :func:`transpose_csr`)."""
    if matrix_t is None:
        matrix_t = transpose_csr(matrix)
    return _SparseMatmul.apply(dense, matrix, matrix_t)


def project(image: Float[Tensor, "N N"], matrix: Tensor, matrix_t: Tensor | None = None) -> Float[Tensor, " rays"]:
    """Line integrals ``matrix @ image.flatten()`` of an image through a :func:`projection_matrix`,
    differentiable in ``image`` (backward: ``matrix_t``, the transpose, computed if omitted)."""
    return sparse_matmul(matrix, image.reshape(-1, 1), matrix_t)[:, 0]


def transpose_csr(matrix: Tensor) -> Tensor:
    """The transpose of a sparse CSR matrix, as CSR."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return matrix.to_sparse_coo().t().coalesce().to_sparse_csr()


def beer_lambert(
    integrals: Float[Tensor, "*rays"], photons: float | None, generator: torch.Generator | None = None
) -> Float[Tensor, "*rays"]:
    """Measured line integrals ``-ln(I / I0)`` after Beer-Lambert attenuation of ``photons``
    (``I0``) per ray and Poisson counting noise ``I ~ Poisson(I0 exp(-p))``; zero counts are
    clamped to 0.5 photon. ``photons=None`` returns ``integrals`` unchanged (noiseless).
    """
    if photons is None:
        return integrals
    expected = photons * torch.exp(-integrals.double())
    counts = torch.poisson(expected, generator=generator).clamp_min(0.5)
    return (-torch.log(counts / photons)).to(integrals.dtype)
