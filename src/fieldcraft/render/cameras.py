"""Camera paths: a camera looking at a point, and cameras on a circle around the origin.

Poses are camera-to-world matrices in the convention of :mod:`fieldcraft.data.cameras`
(OpenGL axes: x right, y up, the camera looks down -z; last column the camera centre). Used by
NeRF's orbit video (:mod:`fieldcraft.tasks.nerf.outputs`) and by the sphere-traced views of
signed distance fields (:func:`fieldcraft.render.sphere_tracing.orbit_cameras`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def look_at(eye: Float[Tensor, " 3"], target: Float[Tensor, " 3"] | None = None,
            up: Float[Tensor, " 3"] | None = None) -> Float[Tensor, "4 4"]:
    """Camera-to-world matrix of a camera at ``eye`` looking at ``target`` (default: the origin),
    with ``up`` (default +y) projected to the image's up direction.

    >>> m = look_at(torch.tensor([0.0, 0.0, 3.0]))
    >>> (m[:3, 2] + 0.0).tolist(), m[:3, 3].tolist()        # looks down -z from z = 3
    ([0.0, 0.0, 1.0], [0.0, 0.0, 3.0])
    """
    target = torch.zeros(3, dtype=eye.dtype) if target is None else target
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype) if up is None else up
    back = eye - target
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    m = torch.eye(4, dtype=eye.dtype)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, back, eye
    return m


def orbit(n: int, ring: float, height: float, up: Float[Tensor, " 3"], start: Float[Tensor, " 3"]
          ) -> Float[Tensor, "n 4 4"]:
    """``n`` cameras looking at the origin from ``height * up + ring * (cos a * start + sin a * (up x start))``
    for ``a = 2 pi k / n``; ``up`` and ``start`` are orthogonal unit vectors.

    >>> m = orbit(4, 2.0, 1.0, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    >>> m[:, :3, 3].round(decimals=4).tolist()[:2]
    [[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]
    """
    side = torch.linalg.cross(up, start)
    mats = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = height * up + ring * (math.cos(a) * start + math.sin(a) * side)
        mats.append(look_at(eye, torch.zeros(3, dtype=eye.dtype), up))
    return torch.stack(mats)
