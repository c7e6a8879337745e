"""Camera refinement (BARF, Lin et al. 2021): per-image pose corrections optimised jointly with a
field, and the similarity alignment that compares refined poses with true ones.

A correction is a 6-vector per training image, ``(omega, v)``: an axis-angle rotation ``omega``
(radians) and a translation ``v`` (world units), applied in the camera's own frame (SO(3) x R^3,
as nerfstudio's camera optimiser): ``c2w' = c2w [exp(omega) | v]``, i.e. ``R' = R exp(omega)``
and ``centre' = centre + R v``. Corrections start at zero (the given poses).

:class:`PoseCorrections` stores them as ``gain * delta`` (``delta`` the parameter, translations
also times the scene size): Adam moves a parameter by about its learning rate a step whatever
the gradient's scale, so ``gain = pose_lr / lr`` gives the corrections their own learning rate
(``pose_lr`` radians, and scene sizes, a step) inside the field's optimiser and schedule.

Refined poses are defined up to a similarity transform of the whole scene (the field can follow
any), so they are compared with true poses after aligning their camera centres to the true ones
(:func:`similarity`, Umeyama 1991), as BARF does (:func:`pose_errors`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def skew(w: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3 3"]:
    """Cross-product matrices: ``skew(w) @ x == cross(w, x)``.

    >>> skew(torch.tensor([[1.0, 2.0, 3.0]])).tolist()
    [[[0.0, -3.0, 2.0], [3.0, 0.0, -1.0], [-2.0, 1.0, 0.0]]]
    """
    z = torch.zeros_like(w[:, 0])
    return torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], -1), torch.stack([w[:, 2], z, -w[:, 0]], -1),
                        torch.stack([-w[:, 1], w[:, 0], z], -1)], 1)


def so3_exp(w: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3 3"]:
    """Rotation matrices of axis-angle vectors (Rodrigues' formula; Taylor series near 0, so the
    gradient at ``w = 0`` is exact and finite).

    >>> so3_exp(torch.tensor([[0.0, 0.0, torch.pi / 2]])).round(decimals=6).tolist()   # 90 degrees about z
    [[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]
    >>> so3_exp(torch.zeros(1, 3)).tolist()
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]
    """
    theta2 = (w * w).sum(-1)[:, None, None]
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / torch.where(small, torch.ones_like(theta2),
                                                                                     theta2))
    k = skew(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def rotation_angle(r: Float[Tensor, "n 3 3"]) -> Float[Tensor, " n"]:
    """Angle (radians) of rotation matrices (``atan2``: accurate for small angles too).

    >>> round(float(rotation_angle(so3_exp(torch.tensor([[0.0, 0.3, 0.4]])))[0]), 5)
    0.5
    """
    cos = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin = torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1).norm(dim=-1) / 2
    return torch.atan2(sin, cos)


def compose(c2w: Float[Tensor, "n 3 4"], correction: Float[Tensor, "n 6"]) -> Float[Tensor, "n 3 4"]:
    """``c2w`` corrected by ``(omega, v)`` in the camera's frame (module docstring).

    >>> c2w = torch.tensor([[[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0]]])
    >>> compose(c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]))[0, :, 3].tolist()   # camera x is world y
    [1.0, 3.0, 3.0]
    """
    rot = c2w[:, :, :3]
    return torch.cat([rot @ so3_exp(correction[:, :3]), c2w[:, :, 3:] + rot @ correction[:, 3:, None]], -1)


class PoseCorrections(nn.Module):
    """A correction per image, ``gain * delta`` with ``delta`` ``[n, 6]`` (parameter, zeros; module
    docstring); translations scaled by ``scene_size`` (world units per unit of ``v``).

    >>> pc = PoseCorrections(2, gain=0.1, scene_size=5.0)
    >>> with torch.no_grad():
    ...     _ = pc.delta[1, 3].fill_(2.0)
    >>> pc.corrections()[1].tolist()   # 0.1 * 2 scene sizes of 5 units along camera x
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, n_images: int, gain: float, scene_size: float) -> None:
        super().__init__()
        self.gain, self.scene_size = float(gain), float(scene_size)
        self.delta = nn.Parameter(torch.zeros(max(int(n_images), 1), 6))
        self.register_buffer("units", torch.tensor([1.0, 1.0, 1.0, scene_size, scene_size, scene_size]),
                             persistent=False)

    def corrections(self, cam: Int[Tensor, " m"] | None = None) -> Float[Tensor, "m 6"]:
        """``(omega, v)`` of images ``cam`` (all images when None), in radians and world units."""
        d = self.delta if cam is None else self.delta[cam]
        return d * (self.gain * self.units)

    def forward(self, c2w: Float[Tensor, "m 3 4"], cam: Int[Tensor, " m"] | None = None) -> Float[Tensor, "m 3 4"]:
        """The corrected ``c2w`` of images ``cam`` (``c2w`` given per row; all images when None)."""
        return compose(c2w, self.corrections(cam).to(c2w.dtype))


def similarity(source: Float[Tensor, "n 3"], target: Float[Tensor, "n 3"]
               ) -> tuple[float, Float[Tensor, "3 3"], Float[Tensor, " 3"]]:
    """Scale ``s``, rotation ``R`` and translation ``t`` minimising ``sum |s R source + t - target|^2``
    (Umeyama 1991), in float64.

    >>> src = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    >>> r = so3_exp(torch.tensor([[0.1, 0.2, 0.3]]))[0]
    >>> s, rot, t = similarity(src, 2 * src @ r.T + torch.tensor([1.0, 2, 3]))
    >>> round(s, 5), bool(torch.allclose(rot.float(), r, atol=1e-5)), [round(x, 4) for x in t.tolist()]
    (2.0, True, [1.0, 2.0, 3.0])
    """
    x, y = source.double(), target.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / len(x)
    u, d, vt = torch.linalg.svd(cov)
    e = torch.ones(3, dtype=torch.float64)
    if torch.det(u) * torch.det(vt) < 0:
        e[2] = -1.0
    rot = u @ torch.diag(e) @ vt
    var = (xc * xc).sum() / len(x)
    s = float((d * e).sum() / var) if var > 0 else 1.0
    return s, rot, my - s * rot @ mx


def transform_poses(c2w: Float[Tensor, "n 3 4"], s: float, rot: Float[Tensor, "3 3"], t: Float[Tensor, " 3"]
                    ) -> Float[Tensor, "n 3 4"]:
    """Poses moved by the similarity ``x -> s R x + t``: rotations ``R R_i``, centres ``s R c_i + t``."""
    r, c = rot.to(c2w), t.to(c2w)
    return torch.cat([r @ c2w[:, :, :3], (s * c2w[:, :, 3] @ r.T + c)[:, :, None]], -1)


def pose_errors(estimate: Float[Tensor, "n 3 4"], truth: Float[Tensor, "n 3 4"], align: bool = True
                ) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Rotation error (degrees) and camera-centre error (world units) of each ``estimate``, after the
    similarity that best aligns its camera centres to ``truth``'s (:func:`similarity`; ``align``).

    >>> truth = torch.cat([so3_exp(torch.randn(5, 3)), torch.randn(5, 3, 1)], -1)
    >>> rot, dist = pose_errors(transform_poses(truth, 3.0, so3_exp(torch.tensor([[0.0, 1.0, 0.0]]))[0],
    ...                                         torch.ones(3)), truth)
    >>> bool(rot.max() < 1e-3), bool(dist.max() < 1e-5)
    (True, True)
    """
    aligned = estimate.double()
    if align:
        aligned = transform_poses(aligned, *similarity(estimate[:, :, 3], truth[:, :, 3]))
    rel = truth.double()[:, :, :3].transpose(1, 2) @ aligned[:, :, :3]
    return torch.rad2deg(rotation_angle(rel)).float(), (aligned[:, :, 3] - truth.double()[:, :, 3]).norm(dim=-1).float()


def perturb_poses(c2w: Float[Tensor, "n 3 4"], degrees: float, translation: float, generator: torch.Generator
                  ) -> Float[Tensor, "n 3 4"]:
    """Each pose turned by exactly ``degrees`` about a random axis through its camera centre and its
    centre moved by exactly ``translation`` (world units) in a random direction (BARF's synthetic
    pose noise, with fixed magnitudes).

    >>> c2w = torch.eye(4)[None, :3].repeat(4, 1, 1)
    >>> noisy = perturb_poses(c2w, 3.0, 0.5, torch.Generator().manual_seed(0))
    >>> rot, dist = [e.tolist() for e in pose_errors(noisy, c2w, align=False)]
    >>> [round(r, 4) for r in rot], [round(d, 4) for d in dist]
    ([3.0, 3.0, 3.0, 3.0], [0.5, 0.5, 0.5, 0.5])
    """
    n = len(c2w)
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    shift = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    shift = translation * shift / shift.norm(dim=-1, keepdim=True)
    rot = so3_exp(axis * torch.deg2rad(torch.tensor(degrees, dtype=torch.float64)))
    m = c2w.double()
    return torch.cat([rot @ m[:, :, :3], (m[:, :, 3] + shift)[:, :, None]], -1).to(c2w.dtype)

