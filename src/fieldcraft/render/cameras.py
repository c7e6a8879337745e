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



def orbit_around(c2w: Float[Tensor, "n 3 4"], frames: int) -> Float[Tensor, "frames 3 4"]:
    """``frames`` poses on a circle around the origin at the cameras ``c2w``'s mean distance from it
    and mean height along their mean up axis, looking at the origin (:func:`orbit`): the orbit of an
    object-centred capture.

    >>> ring = orbit(6, 3.0, 1.0, torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]))[:, :3]
    >>> again = orbit_around(ring, 6)
    >>> round(float(again[:, :3, 3].norm(dim=-1).mean()), 4), round(float(again[:, 2, 3].mean()), 4)
    (3.1623, 1.0)
    """
    c2w = c2w.cpu().float()
    up = c2w[:, :, 1].mean(0)
    up = up / up.norm()
    centres = c2w[:, :, 3]
    height = (centres @ up).mean()
    start = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]))
    if start.norm() < 1e-3:
        start = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0]))
    ring = torch.sqrt(torch.clamp(centres.norm(dim=-1).mean() ** 2 - height**2, min=1e-6))
    return orbit(frames, float(ring), float(height), up, start / start.norm())[:, :3]

def smooth_path(c2w: Float[Tensor, "n 3 4"], frames: int, sigma: float = 2.0) -> Float[Tensor, "frames 3 4"]:
    """A smooth camera path along captured poses (in capture order): camera centres, viewing
    directions and up vectors are each smoothed by a Gaussian of ``sigma`` poses along the
    sequence (ends extended by point reflection, so a path that is straight near its ends keeps
    its ends), resampled to ``frames`` evenly spaced
    points of it (linear interpolation between poses), and rebuilt into rigid camera-to-world
    matrices (the view direction kept, the up vector made orthogonal to it).

    >>> line = torch.stack([look_at(torch.tensor([float(x), 0.0, 5.0]), torch.tensor([float(x), 0.0, 0.0]))[:3]
    ...                     for x in range(5)])
    >>> p = smooth_path(line, 9)
    >>> (p[:, 0, 3].round(decimals=3) + 0.0).tolist()[:3], p[4, :3, 2].tolist()   # x from 0 to 4, still looking down -z
    ([0.0, 0.5, 1.0], [0.0, 0.0, 1.0])
    """
    c2w = c2w.double()
    n = len(c2w)
    feats = torch.cat([c2w[:, :, 3], c2w[:, :, 2], c2w[:, :, 1]], 1)  # centre, back, up: [n, 9]
    if sigma > 0 and n > 1:
        r = min(max(1, int(math.ceil(3 * sigma))), n - 1)
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
        k = k / k.sum()
        left, right_ = 2 * feats[:1] - feats[1:r + 1].flip(0), 2 * feats[-1:] - feats[-r - 1:-1].flip(0)
        padded = torch.cat([left, feats, right_])  # point reflection at the ends: straight stretches stay straight
        feats = torch.nn.functional.conv1d(padded.T[:, None], k[None, None])[:, 0].T
    pos = torch.linspace(0, n - 1, frames, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo)[:, None]
    f = feats[lo] * (1 - w) + feats[hi] * w
    back = f[:, 3:6] / f[:, 3:6].norm(dim=-1, keepdim=True)
    up = f[:, 6:9]
    right = torch.linalg.cross(up, back)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(back, right)
    return torch.stack([right, true_up, back, f[:, :3]], -1).float()
