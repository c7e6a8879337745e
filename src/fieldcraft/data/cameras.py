"""Cameras (pinhole, with optional lens distortion): the one place fieldcraft states its camera convention.

Convention (NeRF / Blender / nerfstudio, "OpenGL"):

- A camera is a camera-to-world matrix ``c2w`` (``[3, 4]`` or ``[4, 4]``, rotation columns are
  the camera axes in world coordinates, last column the camera centre) plus pinhole
  intrinsics ``fx, fy, cx, cy`` in pixels and the image size ``width, height``.
- Camera axes: ``x`` right, ``y`` up, the camera looks down ``-z``.
- Pixel ``(row i, col j)`` covers ``[j, j+1] x [i, i+1]`` in pixel coordinates ``(u, v)``
  (``u`` right, ``v`` down); its ray passes through the pixel *centre* ``(j + 0.5, i + 0.5)``.
  The camera-space direction of pixel coordinates ``(u, v)`` is
  ``((u - cx) / fx, -(v - cy) / fy, -1)``; :func:`project` is its inverse.

Datasets in other conventions (LLFF's ``[down, right, back]``, COLMAP's ``[right, down, forward]``
world-to-camera) are converted on reading.

Lens distortion (COLMAP / OpenCV / nerfstudio camera models) acts on *normalised* image
coordinates in OpenCV's orientation, ``x = (u - cx) / fx``, ``y = (v - cy) / fy`` (``y`` down).
Each camera carries ``distortion = (k1, k2, k3, k4, p1, p2)`` (nerfstudio's order) and a
``fisheye`` flag:

- perspective (``PINHOLE``, ``SIMPLE_RADIAL`` (k1), ``RADIAL`` (k1, k2), ``OPENCV`` (k1, k2, p1, p2,
  optional k3, k4)): with ``r2 = x^2 + y^2`` and ``R = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4``,
  ``xd = x R + 2 p1 x y + p2 (r2 + 2 x^2)``, ``yd = y R + p1 (r2 + 2 y^2) + 2 p2 x y``;
- ``OPENCV_FISHEYE`` (k1..k4): ``theta = atan(r)``, ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 +
  k3 theta^6 + k4 theta^8)``, ``(xd, yd) = (x, y) theta_d / r``.

:func:`distort` maps undistorted to distorted coordinates (used by :func:`project`);
:func:`undistort` inverts it by Newton's method (as COLMAP and nerfstudio's ``camera_utils`` do),
and ray generation (:func:`camera_directions`) sends the ray of a pixel through its undistorted
coordinates.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fieldcraft.errors import FieldcraftError

DISTORTION_PARAMS = ("k1", "k2", "k3", "k4", "p1", "p2")


@dataclasses.dataclass
class Cameras:
    """``n`` cameras sharing one image size (per-camera intrinsics and distortion).

    - ``c2w``: ``[n, 3, 4]`` camera-to-world (OpenGL axes, see module docstring).
    - ``fx, fy, cx, cy``: ``[n]`` intrinsics in pixels.
    - ``width, height``: image size in pixels.
    - ``distortion``: ``[n, 6]`` ``(k1, k2, k3, k4, p1, p2)`` (module docstring), None: none.
    - ``fisheye``: ``[n]`` bool, the ``OPENCV_FISHEYE`` model (None: all perspective).
    """

    c2w: Float[Tensor, "n 3 4"]
    fx: Float[Tensor, " n"]
    fy: Float[Tensor, " n"]
    cx: Float[Tensor, " n"]
    cy: Float[Tensor, " n"]
    width: int
    height: int
    distortion: Float[Tensor, "n 6"] | None = None
    fisheye: Bool[Tensor, " n"] | None = None

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def distorted(self) -> bool:
        """Whether any camera has lens distortion (a non-zero coefficient or the fisheye model)."""
        return (self.distortion is not None and bool((self.distortion != 0).any())) or (
            self.fisheye is not None and bool(self.fisheye.any()))

    def _map(self, fn) -> Cameras:
        opt = lambda t: None if t is None else fn(t)
        return Cameras(fn(self.c2w), fn(self.fx), fn(self.fy), fn(self.cx), fn(self.cy), self.width, self.height,
                       opt(self.distortion), opt(self.fisheye))

    def __getitem__(self, idx) -> Cameras:
        idx = torch.as_tensor(idx).reshape(-1)
        return self._map(lambda t: t[idx.to(t.device)])

    def to(self, device) -> Cameras:
        return self._map(lambda t: t.to(device))

    def rescaled(self, width: int, height: int) -> Cameras:
        """The same cameras for images resized to ``width x height`` pixels (distortion acts on
        normalised coordinates, so it is unchanged)."""
        sx, sy = width / self.width, height / self.height
        return Cameras(self.c2w, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height,
                       self.distortion, self.fisheye)

    @staticmethod
    def from_fov(c2w: Tensor, camera_angle_x: float, width: int, height: int) -> Cameras:
        """Blender-style cameras: horizontal field of view in radians, principal point at the centre."""
        n = c2w.shape[0]
        f = 0.5 * width / torch.tan(torch.tensor(0.5 * camera_angle_x, dtype=torch.float64))
        full = lambda v: torch.full((n,), float(v), dtype=torch.float32)
        return Cameras(c2w[:, :3, :4].float(), full(f), full(f), full(width / 2), full(height / 2), width, height)


def check_poses(c2w: Tensor, source: str, labels: list[str] | None = None) -> Float[Tensor, "n 3 4"]:
    """Validate camera-to-world matrices (``[n, 3, 4]`` or ``[n, 4, 4]``) read from ``source``: finite,
    a last row ``0 0 0 1`` when given, and rigid: the rotation orthonormal (``max |R^T R - I| <= 1e-2``)
    with determinant +1 (not singular, scaled, sheared or mirrored). ``labels`` name the poses in
    messages (default ``camera pose k``).

    >>> check_poses(torch.eye(4)[None] * 2, "t.json")
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: t.json: camera pose 0: the last row must be 0 0 0 1, got [0.0, 0.0, 0.0, 2.0]
    """
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) not in ((3, 4), (4, 4)):
        raise FieldcraftError(f"{source}: camera matrices must be 3x4 or 4x4, got shape {tuple(c2w.shape[1:])}")
    label = (lambda k: labels[k]) if labels is not None else (lambda k: f"camera pose {k}")
    bad = ~torch.isfinite(c2w).reshape(len(c2w), -1).all(-1)
    if bad.any():
        raise FieldcraftError(f"{source}: {label(int(bad.nonzero()[0]))} contains NaN or infinite values")
    m = c2w.double()
    if m.shape[1] == 4:
        off = (m[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype)).abs().amax(-1) > 1e-6
        if off.any():
            k = int(off.nonzero()[0])
            raise FieldcraftError(f"{source}: {label(k)}: the last row must be 0 0 0 1, got {m[k, 3].tolist()}")
    rot = m[:, :3, :3]
    det = torch.linalg.det(rot)
    err = (rot.transpose(1, 2) @ rot - torch.eye(3, dtype=m.dtype)).abs().amax((1, 2))
    for k in range(len(m)):
        if abs(float(det[k])) < 1e-6:
            raise FieldcraftError(f"{source}: {label(k)}: the rotation is singular (determinant {float(det[k]):.3g}); "
                                  "camera-to-world matrices must be rigid")
        if float(err[k]) > 1e-2:
            raise FieldcraftError(f"{source}: {label(k)}: the rotation is not orthonormal (scaled or sheared, "
                                  f"max |R^T R - I| = {float(err[k]):.3g}); camera-to-world matrices must be rigid")
        if float(det[k]) < 0:
            raise FieldcraftError(f"{source}: {label(k)}: the rotation is a reflection (determinant "
                                  f"{float(det[k]):.3g}); camera-to-world matrices must be rigid")
    return c2w[:, :3, :4].float()


def pose_from_json(value: object, source: str, frame: int) -> Float[Tensor, "3 4"]:
    """Frame ``frame``'s ``transform_matrix`` (nested lists, 3x4 or 4x4, float64) checked by
    :func:`check_poses` (where it is ``camera pose <frame>``).

    >>> pose_from_json("eye", "t.json", 2)
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: t.json: frame 2 'transform_matrix' is not a numeric matrix
    """
    try:
        m = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise FieldcraftError(f"{source}: frame {frame} 'transform_matrix' is not a numeric matrix") from None
    if m.ndim != 2 or tuple(m.shape) not in ((3, 4), (4, 4)):
        raise FieldcraftError(f"{source}: frame {frame} 'transform_matrix' must be 3x4 or 4x4, got shape {tuple(m.shape)}")
    check_poses(m[None], source, [f"camera pose {frame}"])
    return m[:3, :4]


def look_centre(c2w: Float[Tensor, "n 3 4"]) -> Float[Tensor, " 3"]:
    """The point the cameras look at: the least-squares point closest to every optical axis, or
    the cameras' mean centre when that is ill-defined (parallel axes) or behind them on average
    (a forward-facing or outward-looking capture). float64.

    >>> c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4]], [[0, 0, 1, 4], [0, 1, 0, 0], [-1, 0, 0, 0]]])
    >>> look_centre(c2w).tolist()     # one camera on +z, one on +x, both looking at the origin
    [0.0, 0.0, 0.0]
    """
    m = c2w.double()
    centres, axes = m[:, :, 3], -m[:, :, 2]
    proj = torch.eye(3, dtype=m.dtype)[None] - axes[:, :, None] * axes[:, None, :]
    a, b = proj.sum(0), torch.einsum("nij,nj->i", proj, centres)
    if float(torch.linalg.cond(a)) < 1e6:
        focus = torch.linalg.solve(a, b)
        if float(torch.einsum("ni,ni->n", focus - centres, axes).mean()) > 0:
            return focus
    return centres.mean(0)


def camera_directions(cameras: Cameras, u: Float[Tensor, " m"], v: Float[Tensor, " m"],
                      cam: torch.Tensor) -> Float[Tensor, "m 3"]:
    """Camera-space directions (``z = -1``) of pixel coordinates ``(u, v)`` seen by cameras ``cam``.

    >>> c = Cameras.from_fov(torch.eye(4)[None], 1.0, 4, 4)
    >>> (camera_directions(c, torch.tensor([2.0]), torch.tensor([2.0]), torch.tensor([0])) + 0.0).tolist()
    [[0.0, 0.0, -1.0]]
    """
    x = (u - cameras.cx[cam]) / cameras.fx[cam]
    y = (v - cameras.cy[cam]) / cameras.fy[cam]
    if cameras.distorted:
        fisheye = cameras.fisheye[cam] if cameras.fisheye is not None else None
        dist = cameras.distortion[cam] if cameras.distortion is not None else torch.zeros(len(x), 6, device=x.device)
        x, y = undistort(x, y, dist, fisheye)
    return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)


def project(cameras: Cameras, points: Float[Tensor, "m 3"], cam: Tensor) -> tuple[Float[Tensor, "m 2"], Float[Tensor, " m"]]:
    """Project world points into cameras ``cam``: pixel coordinates ``(u, v)`` and depth along ``-z``.

    Inverse of ray generation: the point ``o + t d`` of the ray through pixel centre
    ``(j + 0.5, i + 0.5)`` projects back to ``(j + 0.5, i + 0.5)``.
    """
    c2w = cameras.c2w[cam]
    rot, centre = c2w[:, :, :3], c2w[:, :, 3]
    local = torch.einsum("mji,mj->mi", rot, points - centre)  # R^T (p - c)
    depth = -local[:, 2]
    x, y = local[:, 0] / depth, -local[:, 1] / depth
    if cameras.distorted:
        fisheye = cameras.fisheye[cam] if cameras.fisheye is not None else None
        dist = cameras.distortion[cam] if cameras.distortion is not None else torch.zeros(len(x), 6, device=x.device)
        x, y = distort(x, y, dist, fisheye)
    u = cameras.fx[cam] * x + cameras.cx[cam]
    v = cameras.fy[cam] * y + cameras.cy[cam]
    return torch.stack([u, v], -1), depth


def _perspective(x: Tensor, y: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Distorted ``(xd, yd)`` of the perspective model and its Jacobian ``(dxd/dx, dxd/dy, dyd/dx, dyd/dy)``."""
    k1, k2, k3, k4, p1, p2 = d.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    dr = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))  # d radial / d r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    xx = radial + 2 * x * x * dr + 2 * p1 * y + 6 * p2 * x
    xy = 2 * x * y * dr + 2 * p1 * x + 2 * p2 * y
    yy = radial + 2 * y * y * dr + 6 * p1 * y + 2 * p2 * x
    return xd, yd, xx, xy, xy, yy


def _fisheye_theta_d(theta: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``theta_d(theta)`` of the fisheye model and its derivative."""
    k1, k2, k3, k4 = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
    t2 = theta * theta
    poly = 1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    dpoly = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
    return theta * poly, dpoly


def distort(x: Float[Tensor, " m"], y: Float[Tensor, " m"], distortion: Float[Tensor, "m 6"],
            fisheye: Bool[Tensor, " m"] | None = None) -> tuple[Float[Tensor, " m"], Float[Tensor, " m"]]:
    """Distorted normalised coordinates of undistorted ones (OpenCV orientation, module docstring).

    >>> xd, yd = distort(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([[0.1, 0, 0, 0, 0, 0]]))
    >>> round(float(xd), 6), float(yd)    # 0.5 (1 + 0.1 * 0.25)
    (0.5125, 0.0)
    """
    xd, yd = _perspective(x, y, distortion)[:2]
    if fisheye is not None and bool(fisheye.any()):
        r = torch.sqrt(x * x + y * y)
        theta_d, _ = _fisheye_theta_d(torch.atan(r), distortion)
        scale = torch.where(r > 1e-9, theta_d / r.clamp(min=1e-9), torch.ones_like(r))
        xd, yd = torch.where(fisheye, x * scale, xd), torch.where(fisheye, y * scale, yd)
    return xd, yd


def undistort(xd: Float[Tensor, " m"], yd: Float[Tensor, " m"], distortion: Float[Tensor, "m 6"],
              fisheye: Bool[Tensor, " m"] | None = None, iterations: int = 10
              ) -> tuple[Float[Tensor, " m"], Float[Tensor, " m"]]:
    """Undistorted normalised coordinates of distorted ones: Newton's method on :func:`distort`
    (2-D for the perspective model, on ``theta`` for the fisheye model), ``iterations`` steps from
    the distorted point, computed in float64.

    >>> d = torch.tensor([[-0.2, 0.05, 0.01, 0.0, 0.003, -0.002]])
    >>> x, y = undistort(*distort(torch.tensor([0.3]), torch.tensor([-0.4]), d), d)
    >>> round(float(x), 6), round(float(y), 6)
    (0.3, -0.4)
    """
    dtype = xd.dtype
    xd64, yd64, d = xd.double(), yd.double(), distortion.double()
    x, y = xd64.clone(), yd64.clone()
    for _ in range(iterations):
        fx_, fy_, a, b, c, e = _perspective(x, y, d)
        rx, ry = fx_ - xd64, fy_ - yd64
        det = a * e - b * c
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (e * rx - b * ry) / det
        y = y - (a * ry - c * rx) / det
    if fisheye is not None and bool(fisheye.any()):
        rd = torch.sqrt(xd64 * xd64 + yd64 * yd64)
        theta = rd.clone()
        for _ in range(iterations):
            g, dg = _fisheye_theta_d(theta, d)
            theta = (theta - (g - rd) / dg).clamp(0.0, 0.5 * math.pi - 1e-6)
        scale = torch.where(rd > 1e-12, torch.tan(theta) / rd.clamp(min=1e-12), torch.ones_like(rd))
        x, y = torch.where(fisheye, xd64 * scale, x), torch.where(fisheye, yd64 * scale, y)
    return x.to(dtype), y.to(dtype)
