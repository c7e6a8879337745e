"""Pinhole cameras: the one place fieldcraft states its camera convention.

Convention (NeRF / Blender / nerfstudio, "OpenGL"):

- A camera is a camera-to-world matrix ``c2w`` (``[3, 4]`` or ``[4, 4]``, rotation columns are
  the camera axes in world coordinates, last column the camera centre) plus pinhole
  intrinsics ``fx, fy, cx, cy`` in pixels and the image size ``width, height``.
- Camera axes: ``x`` right, ``y`` up, the camera looks down ``-z``.
- Pixel ``(row i, col j)`` covers ``[j, j+1] x [i, i+1]`` in pixel coordinates ``(u, v)``
  (``u`` right, ``v`` down); its ray passes through the pixel *centre* ``(j + 0.5, i + 0.5)``.
  The camera-space direction of pixel coordinates ``(u, v)`` is
  ``((u - cx) / fx, -(v - cy) / fy, -1)``; :func:`project` is its inverse.

Datasets in other conventions (LLFF's ``[down, right, back]``) are converted on reading.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.errors import FieldcraftError


@dataclasses.dataclass
class Cameras:
    """``n`` pinhole cameras sharing one image size.

    - ``c2w``: ``[n, 3, 4]`` camera-to-world (OpenGL axes, see module docstring).
    - ``fx, fy, cx, cy``: ``[n]`` intrinsics in pixels.
    - ``width, height``: image size in pixels.
    """

    c2w: Float[Tensor, "n 3 4"]
    fx: Float[Tensor, " n"]
    fy: Float[Tensor, " n"]
    cx: Float[Tensor, " n"]
    cy: Float[Tensor, " n"]
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def __getitem__(self, idx) -> Cameras:
        idx = torch.as_tensor(idx).reshape(-1)
        return Cameras(self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx], self.width, self.height)

    def to(self, device) -> Cameras:
        return Cameras(self.c2w.to(device), self.fx.to(device), self.fy.to(device), self.cx.to(device),
                       self.cy.to(device), self.width, self.height)

    def rescaled(self, width: int, height: int) -> Cameras:
        """The same cameras for images resized to ``width x height`` pixels."""
        sx, sy = width / self.width, height / self.height
        return Cameras(self.c2w, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

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


def camera_directions(cameras: Cameras, u: Float[Tensor, " m"], v: Float[Tensor, " m"],
                      cam: torch.Tensor) -> Float[Tensor, "m 3"]:
    """Camera-space directions (``z = -1``) of pixel coordinates ``(u, v)`` seen by cameras ``cam``.

    >>> c = Cameras.from_fov(torch.eye(4)[None], 1.0, 4, 4)
    >>> (camera_directions(c, torch.tensor([2.0]), torch.tensor([2.0]), torch.tensor([0])) + 0.0).tolist()
    [[0.0, 0.0, -1.0]]
    """
    x = (u - cameras.cx[cam]) / cameras.fx[cam]
    y = -(v - cameras.cy[cam]) / cameras.fy[cam]
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def project(cameras: Cameras, points: Float[Tensor, "m 3"], cam: Tensor) -> tuple[Float[Tensor, "m 2"], Float[Tensor, " m"]]:
    """Project world points into cameras ``cam``: pixel coordinates ``(u, v)`` and depth along ``-z``.

    Inverse of ray generation: the point ``o + t d`` of the ray through pixel centre
    ``(j + 0.5, i + 0.5)`` projects back to ``(j + 0.5, i + 0.5)``.
    """
    c2w = cameras.c2w[cam]
    rot, centre = c2w[:, :, :3], c2w[:, :, 3]
    local = torch.einsum("mji,mj->mi", rot, points - centre)  # R^T (p - c)
    depth = -local[:, 2]
    u = cameras.fx[cam] * local[:, 0] / depth + cameras.cx[cam]
    v = -cameras.fy[cam] * local[:, 1] / depth + cameras.cy[cam]
    return torch.stack([u, v], -1), depth
