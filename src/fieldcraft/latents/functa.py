"""Functa: signals as latent vectors of one shared, shift-modulated SIREN (Dupont et al. 2022).

::

    shifts = reshape(A z + a, [layers, width])                  z: the signal's latent [latent]
    f_z(x) = 0.5 * SIREN(x; hidden layer i gets + shifts[i]) + 0.5      (values in [0, 1])

Encoding a signal ``y`` (values at points ``x``) is the *inner loop*: ``z_0 = 0`` and ``steps``
gradient steps on the signal's mean squared error with one learned step size per latent
coordinate (Meta-SGD, Li et al. 2017; clipped to ``[0, 1]``)::

    z_{k+1} = z_k - clip(alpha, 0, 1) * grad_z mean_pixels (f_{z_k}(x) - y)^2

The shared SIREN, ``A``, ``a`` and ``alpha`` are meta-learned (the *outer loop*, MAML): the loss
is the MSE after the inner loop on a batch of signals, differentiated through the inner steps
(second order; ``first_order`` treats the inner gradients as constants, which still trains
``alpha``). All signals of a batch run at once: the per-signal losses are summed, so each
latent gets the gradient of its own signal's mean error, as if encoded alone.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import check
from fieldcraft.fields import FieldConfig
from fieldcraft.networks import MLPConfig


@dataclasses.dataclass(frozen=True)
class FunctaNetConfig(Config):
    """The shared network. Fields:

    - ``channels``: values per point (1 gray, 3 RGB).
    - ``latent``: size of a signal's latent vector.
    - ``width``, ``layers``: SIREN hidden width and number of hidden (modulated) layers.
    - ``omega``: SIREN frequency factor of every sine layer (``sin(omega (W h + b + shift))``).
    - ``meta_sgd``: learn one inner step size per latent coordinate (else all fixed at ``inner_lr[0]``).
    - ``inner_lr``: Meta-SGD step sizes are drawn uniformly from this range (functa's (0.005, 0.1)).
    """

    type_name = "FunctaNet"
    channels: int = 1
    latent: int = 64
    width: int = 64
    layers: int = 3
    omega: float = 30.0
    meta_sgd: bool = True
    inner_lr: tuple[float, float] = (0.005, 0.1)

    def field_config(self) -> FieldConfig:
        network = MLPConfig(hidden_width=self.width, hidden_layers=self.layers, activation="sine",
                            first_omega_0=self.omega, hidden_omega_0=self.omega)
        return FieldConfig(in_dim=2, out_dim=self.channels, network=network, output_scale=0.5, output_offset=0.5)

    def build(self) -> Functa:
        check(self.latent >= 1 and self.width >= 1 and self.layers >= 1 and self.channels >= 1,
              f"functa needs latent, width, layers and channels >= 1, got {self.latent}, {self.width}, "
              f"{self.layers}, {self.channels}")
        lo, hi = self.inner_lr
        check(0.0 <= lo <= hi, f"inner_lr must be a range 0 <= lo <= hi, got {self.inner_lr}")
        return Functa(self)


class Functa(nn.Module):
    """The shared field (``field``), the latent-to-shift map (``to_shift``) and the inner step
    sizes (``inner_lr``: a parameter with Meta-SGD, else a buffer). See the module docstring."""

    def __init__(self, config: FunctaNetConfig) -> None:
        super().__init__()
        self.config = config
        self.field = config.field_config().build()
        self.to_shift = nn.Linear(config.latent, config.layers * config.width)
        with torch.no_grad():
            self.to_shift.bias.zero_()  # z = 0 leaves the SIREN as initialised
        lo, hi = config.inner_lr
        lr = torch.empty(config.latent).uniform_(lo, hi) if config.meta_sgd else torch.full((config.latent,), lo)
        if config.meta_sgd:
            self.inner_lr = nn.Parameter(lr)
        else:
            self.register_buffer("inner_lr", lr)

    def shifts(self, z: Float[Tensor, "B latent"]) -> Float[Tensor, "B layers width"]:
        return self.to_shift(z).reshape(z.shape[0], self.config.layers, self.config.width)

    def forward(self, z: Float[Tensor, "B latent"], coords: Float[Tensor, "n 2"]) -> Float[Tensor, "B n C"]:
        """Values of the ``B`` signals with latents ``z`` at the shared points ``coords``."""
        return self.field(coords.expand(z.shape[0], -1, -1), modulations={"shift": self.shifts(z)})

    def inner_loop(self, y: Float[Tensor, "B n C"], coords: Float[Tensor, "n 2"], steps: int,
                   mask: Float[Tensor, "B n"] | None = None, *, create_graph: bool = False,
                   z0: Float[Tensor, "B latent"] | None = None) -> Float[Tensor, "B latent"]:
        """Latents of the signals ``y`` (values at ``coords``): ``steps`` Meta-SGD steps from
        ``z0`` (zeros) on each signal's MSE over its points where ``mask`` is 1 (all points when
        None). ``create_graph``: keep the graph of the inner gradients (second-order MAML);
        otherwise they are constants, and the result still depends on ``inner_lr`` (and on the
        shared weights only through the last step's forward pass). Works under ``torch.no_grad``."""
        z = torch.zeros(y.shape[0], self.config.latent, device=y.device, dtype=y.dtype) if z0 is None else z0
        lr = self.inner_lr.clamp(0.0, 1.0)
        with torch.enable_grad():
            for _ in range(steps):
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                loss = signal_mse(self(z, coords), y, mask).sum()
                (grad,) = torch.autograd.grad(loss, z, create_graph=create_graph)
                z = z - lr * grad
        return z

    @torch.no_grad()
    def render(self, z: Float[Tensor, "B latent"], height: int, width: int,
               chunk: int = 256) -> Float[Tensor, "B H W C"]:
        """Images of the latents ``z`` at the pixel centres of ``height x width``, clipped to ``[0, 1]``."""
        from fieldcraft.coords import pixel_centres

        coords = pixel_centres(height, width, z.device, z.dtype)
        out = [self(z[i:i + chunk], coords).clamp(0.0, 1.0) for i in range(0, z.shape[0], chunk)]
        return torch.cat(out).reshape(z.shape[0], height, width, -1)


def signal_mse(pred: Float[Tensor, "B n C"], y: Float[Tensor, "B n C"],
               mask: Float[Tensor, "B n"] | None = None) -> Float[Tensor, " B"]:
    """Each signal's mean squared error over its points (those with ``mask`` 1) and channels.

    >>> signal_mse(torch.zeros(2, 3, 1), torch.ones(2, 3, 1), torch.tensor([[1., 0, 0], [1, 1, 1]]))
    tensor([1., 1.])
    """
    err = ((pred - y) ** 2).mean(-1)
    if mask is None:
        return err.mean(-1)
    return (err * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def observation_mask(spec: str | None, height: int, width: int, seeds: Tensor) -> Tensor | None:
    """``[B, H*W]`` float mask of the observed pixels of ``B`` images (row-major), or None for all.

    ``spec``: ``random:F`` (each pixel observed with probability ``F``, drawn per image from a
    generator seeded with that image's entry of ``seeds``, so a pixel's fate does not depend on
    the batch), ``top-half`` (rows ``< H/2``), ``left-half`` (columns ``< W/2``), or None / ``all``.

    >>> observation_mask("top-half", 2, 2, torch.tensor([0]))
    tensor([[1., 1., 0., 0.]])
    """
    from fieldcraft.errors import FieldcraftError

    if spec in (None, "", "all"):
        return None
    n = len(seeds)
    if spec == "top-half":
        rows = (torch.arange(height) < (height + 1) // 2).float()
        return rows[:, None].expand(height, width).reshape(1, -1).repeat(n, 1)
    if spec == "left-half":
        cols = (torch.arange(width) < (width + 1) // 2).float()
        return cols[None, :].expand(height, width).reshape(1, -1).repeat(n, 1)
    if spec.startswith("random:"):
        try:
            fraction = float(spec.split(":", 1)[1])
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction <= 1.0:
            raise FieldcraftError(f"--observe {spec}: the fraction must be a number in (0, 1]")
        rows = [torch.rand(height * width, generator=torch.Generator().manual_seed(int(s))) < fraction for s in seeds]
        return torch.stack(rows).float()
    raise FieldcraftError(f"--observe {spec!r}: use random:F (e.g. random:0.25), top-half, left-half or all")
