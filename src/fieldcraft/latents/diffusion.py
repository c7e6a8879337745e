"""A denoising diffusion model (DDPM, Ho et al. 2020) of latent vectors.

Latents are first standardised per coordinate (``u = (z - mean) / std``, train statistics kept
as buffers). With a linear noise schedule ``beta_t`` (``t = 1..T``), ``alpha_bar_t = prod (1 - beta_s)``::

    u_t = sqrt(alpha_bar_t) u + sqrt(1 - alpha_bar_t) eps,          eps ~ N(0, I)
    loss = || eps_theta(u_t, t) - eps ||^2                            (t uniform in 1..T)

``eps_theta`` is an MLP on ``[u_t, sinusoidal embedding of t]``. Sampling is ancestral:
``u_T ~ N(0, I)``, ``u_{t-1} = (u_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(1 - beta_t) + sigma_t xi``
with ``sigma_t^2 = beta_t``, then ``z = mean + std u_0``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import check


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(Config):
    """``dim``: latent size; ``width``, ``layers``: the denoiser MLP (SiLU); ``steps``: ``T``;
    ``beta``: the linear schedule's ``(beta_1, beta_T)``; ``time_features``: size of the
    sinusoidal time embedding."""

    type_name = "LatentDiffusion"
    dim: int = 64
    width: int = 256
    layers: int = 3
    steps: int = 1000
    beta: tuple[float, float] = (1e-4, 0.02)
    time_features: int = 32

    def build(self) -> LatentDiffusion:
        check(self.dim >= 1 and self.width >= 1 and self.layers >= 1 and self.steps >= 1,
              "the diffusion model needs dim, width, layers and steps >= 1")
        return LatentDiffusion(self)


class LatentDiffusion(nn.Module):
    """Denoiser, schedule and standardisation buffers (``mean``, ``std``; set them with :meth:`set_statistics`)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dims = [c.dim + c.time_features] + [c.width] * c.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(c.width, c.dim))
        self.denoiser = nn.Sequential(*layers)
        betas = torch.linspace(c.beta[0], c.beta[1], c.steps, dtype=torch.float64)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alpha_bar", torch.cumprod(1.0 - betas, 0).float())
        self.register_buffer("mean", torch.zeros(c.dim))
        self.register_buffer("std", torch.ones(c.dim))

    @torch.no_grad()
    def set_statistics(self, latents: Float[Tensor, "N dim"]) -> None:
        self.mean.copy_(latents.mean(0))
        self.std.copy_(latents.std(0).clamp_min(1e-6))

    def _time(self, t: Tensor) -> Tensor:
        half = self.config.time_features // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half, 1))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], -1)

    def predict_noise(self, u_t: Float[Tensor, "B dim"], t: Float[Tensor, " B"]) -> Float[Tensor, "B dim"]:
        """``eps_theta(u_t, t)`` for 0-based steps ``t`` in ``[0, T)``."""
        return self.denoiser(torch.cat([u_t, self._time(t)], -1))

    def loss(self, latents: Float[Tensor, "B dim"], generator: torch.Generator | None = None) -> Tensor:
        """The DDPM training loss (mean over the batch and coordinates) of raw latents."""
        u = (latents - self.mean) / self.std
        t = torch.randint(0, self.config.steps, (u.shape[0],), generator=generator).to(u.device)
        eps = torch.randn(u.shape, generator=generator).to(u.device)
        ab = self.alpha_bar[t][:, None]
        u_t = ab.sqrt() * u + (1.0 - ab).sqrt() * eps
        return ((self.predict_noise(u_t, t) - eps) ** 2).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Float[Tensor, "n dim"]:
        """``n`` latents drawn by ancestral sampling (``generator`` on the CPU)."""
        device = self.betas.device
        u = torch.randn(n, self.config.dim, generator=generator).to(device)
        for t in reversed(range(self.config.steps)):
            beta, ab = self.betas[t], self.alpha_bar[t]
            eps = self.predict_noise(u, torch.full((n,), t, device=device))
            u = (u - beta / (1.0 - ab).sqrt() * eps) / (1.0 - beta).sqrt()
            if t > 0:
                u = u + beta.sqrt() * torch.randn(u.shape, generator=generator).to(device)
        return self.mean + self.std * u
