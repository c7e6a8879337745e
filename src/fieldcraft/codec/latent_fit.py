"""Encoding with the ``latent`` preset: fit latent grids, a small synthesis network and the
entropy model's coefficients to one image for rate + lambda x distortion on the training core,
then quantise everything and range-code it (:mod:`fieldcraft.codec.latent_stream`).

Training (``LatentFit``): the loss is ``MSE + lambda * bpp`` where ``bpp`` is the latents' ideal
cost under the Laplace context model (:mod:`fieldcraft.codec.latent_stream`, continuous features)
divided by the pixel count. Latents are perturbed with uniform noise in ``[-1/2, 1/2]`` for the
first ``noise_until`` of the budget (by default all of it), then rounded with a straight-through
gradient. With a target rate, ``lambda`` follows the rate of the rounded latents (measured every few
steps): after each step
``lambda *= exp(rate_gain * clip(log(bpp / ((1 + rate_margin) target)), -0.3, 0.3) * budget fraction spent)``.

Then: synthesis weights become ``int * 2^-e`` (one global precision, chosen among a few by
``distortion + lambda * rate`` with the exact decoder), the context coefficients integers (tuned
by a small search on the exact table costs), and a dead zone on the latents' rounding is chosen
by bisection on the exact coded size to land on the target rate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fieldcraft.codec import grids
from fieldcraft.codec.entropy import N_TABLES
from fieldcraft.codec.latent_stream import WEIGHT_MAX, Architecture, LatentStream
from fieldcraft.codec.rate import laplace_bits_sum
from fieldcraft.config import Config
from fieldcraft.errors import check
from fieldcraft.metrics import psnr_from_mse
from fieldcraft.networks.mlp import MLPConfig
from fieldcraft.train import Budget, Objective, OptimizerConfig, ScheduleConfig, Trainer


@dataclasses.dataclass(frozen=True)
class LatentCodecConfig(Config):
    """Fields:

    - ``levels``: latent grids at ``H / 2^i x W / 2^i``, ``i < levels`` (one channel each).
    - ``hidden_width``, ``hidden_layers``: the 1x1 synthesis MLP (ReLU).
    - ``refine``: a residual 3x3 convolution after the MLP.
    - ``cubic``: bicubic upsampling of the latents (else bilinear).
    - ``max_symbol``: latents are integers in ``-max_symbol..max_symbol``.
    - ``lr``: Adam learning rate (cosine decay to ``final_lr_factor``).
    - ``latent_gain``: latents are ``latent_gain * theta`` with ``theta`` the trained parameter (Adam's
      steps on the latents are ``latent_gain`` times larger than on the network).
    - ``noise_until``: budget fraction trained with additive uniform noise (then straight-through rounding;
      the default, the whole budget, measured better than any straight-through phase).
    - ``rate_gain``: gain of the log-lambda controller per unit of budget (with a target rate).
    - ``rate_margin``: the controller aims this fraction above the target (the final dead zone trims the excess).
    - ``soft_rounding``: the noise phase uses C3's proxy (Kim et al. 2023): soft rounding at a temperature
      annealed from ``temperature[0]`` to ``temperature[1]``, Kumaraswamy noise whose shape ``a`` goes from
      ``kumaraswamy[0]`` (1: uniform) to ``kumaraswamy[1]`` (mode 1/2), then soft rounding again for the synthesis.
    - ``seed``: initialisation of the synthesis network.
    """

    type_name = "LatentCodec"
    levels: int = 7
    hidden_width: int = 16
    hidden_layers: int = 2
    refine: bool = False
    cubic: bool = False
    max_symbol: int = 63
    lr: float = 3e-2
    final_lr_factor: float = 0.05
    noise_until: float = 1.0
    latent_gain: float = 4.0
    rate_gain: float = 25.0
    rate_margin: float = 0.05
    soft_rounding: bool = False
    temperature: tuple[float, float] = (0.3, 0.1)
    kumaraswamy: tuple[float, float] = (1.0, 2.0)
    seed: int = 0

    def __post_init__(self) -> None:
        check(1 <= self.levels <= 12, f"levels must be 1..12, got {self.levels}")
        check(1 <= self.hidden_width <= 255 and 0 <= self.hidden_layers <= 8, "hidden width 1..255, layers 0..8")
        check(1 <= self.max_symbol <= 127, "max_symbol must be 1..127")

    def architecture(self, channels: int) -> Architecture:
        return Architecture(self.levels, self.hidden_width, self.hidden_layers, self.refine, self.max_symbol,
                            channels, self.cubic)


def initial_lambda(bpp: float) -> float:
    """A starting lambda for a target rate (the controller adapts it)."""
    return 0.0025 * (0.3 / bpp) ** 1.6


MATRIX_UPSAMPLING_FROM = 3  # levels from this one on are upsampled by products with interpolation matrices
MATRIX_UPSAMPLING_ENTRIES = 1 << 22  # ... when each matrix has at most this many entries (else interpolate)
CONTEXT_GAIN = 10.0  # the context coefficients move CONTEXT_GAIN times faster than the network's weights


class LatentCodecModel(nn.Module):
    """Latent grids + synthesis MLP (+ residual 3x3) + context coefficients, for one image."""

    def __init__(self, config: LatentCodecConfig, height: int, width: int, channels: int) -> None:
        super().__init__()
        self.config, self.height, self.width, self.channels = config, height, width, channels
        torch.manual_seed(config.seed)
        self.latents = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, h, w))
                                        for h, w in grids.level_shapes(height, width, config.levels))
        self.synthesis = MLPConfig(hidden_width=config.hidden_width, hidden_layers=config.hidden_layers,
                                   activation="relu").build(config.levels, channels)
        with torch.no_grad():
            self.synthesis.linears[-1].bias.fill_(0.5)
        self.refine = nn.Conv2d(channels, channels, 3, padding=1) if config.refine else None
        if self.refine is not None:
            nn.init.zeros_(self.refine.weight)
            nn.init.zeros_(self.refine.bias)
        # k = c0 + c1 LA (anchors), k = c2 + c3 LA + c4 LB (others), in table units
        init = torch.tensor([12.0, 0.5, 12.0, 0.3, 0.3]).repeat(config.levels, 1)
        self.context_theta = nn.Parameter(init / CONTEXT_GAIN)
        for i, (h, w) in enumerate(grids.level_shapes(height, width, config.levels)):
            self.register_buffer(f"_anchor{i}", torch.from_numpy(grids.anchor_mask(h, w))[None, None],
                                 persistent=False)
            if i >= MATRIX_UPSAMPLING_FROM and max(height * h, width * w) <= MATRIX_UPSAMPLING_ENTRIES:
                self.register_buffer(f"_rows{i}", interpolation_matrix(height, h, 2**i, config.cubic),
                                     persistent=False)
                self.register_buffer(f"_cols{i}", interpolation_matrix(width, w, 2**i, config.cubic).T.contiguous(),
                                     persistent=False)

    @property
    def context(self) -> Tensor:
        """Context coefficients ``[levels, 5]`` in table units (``CONTEXT_GAIN`` times the trained parameter)."""
        return CONTEXT_GAIN * self.context_theta

    def quantized(self, mode: str, phase: float = 0.0) -> list[Tensor]:
        """The latents as the decoder sees them: ``noise`` (training proxy) or ``round`` (straight-through).
        With ``soft_rounding``, ``noise`` returns the synthesis's inputs; :meth:`proxies` gives both."""
        return self.proxies(mode, phase)[0]

    def proxies(self, mode: str, phase: float = 0.0) -> tuple[list[Tensor], list[Tensor]]:
        """``(synthesis inputs, rate inputs)``: the same list except for ``soft_rounding`` in the noise
        phase (``phase`` in ``[0, 1]``: position within the noise phase, for the annealing)."""
        cfg = self.config
        m = float(cfg.max_symbol)
        syn, rate = [], []
        for theta in self.latents:
            y = cfg.latent_gain * theta
            if mode == "round":
                q = (y + (torch.round(y) - y).detach()).clamp(-m, m)
                syn.append(q)
                rate.append(q)
            elif not cfg.soft_rounding:
                q = (y + torch.empty_like(y).uniform_(-0.5, 0.5)).clamp(-m, m)
                syn.append(q)
                rate.append(q)
            else:
                t = cfg.temperature[0] + (cfg.temperature[1] - cfg.temperature[0]) * phase
                a = cfg.kumaraswamy[0] + (cfg.kumaraswamy[1] - cfg.kumaraswamy[0]) * phase
                r = soft_round(y, t) + kumaraswamy_noise(y, a)
                rate.append(r.clamp(-m, m))
                syn.append(soft_round(r, t).clamp(-m, m))
        return syn, rate

    def synthesize(self, latents: list[Tensor]) -> Tensor:
        """``[H, W, C]`` image from (quantised) latents."""
        ups = [self._upsample(i, y) for i, y in enumerate(latents)]
        img = self.synthesis(torch.stack(ups, dim=-1))
        if self.refine is not None:
            img = img + self.refine(img.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
        return img

    def _upsample(self, i: int, y: Tensor) -> Tensor:
        """Level ``i`` (``[1, 1, h, w]``) bilinearly upsampled to ``[H, W]`` (see :mod:`fieldcraft.codec.grids`):
        ``interpolate`` for the fine levels, two products with the interpolation matrices for the coarse
        ones when the matrices are small (``interpolate``'s backward costs as much at every level; the
        products shrink with the grid)."""
        H, W = self.height, self.width
        if i == 0:
            return y[0, 0, :H, :W]
        if not hasattr(self, f"_rows{i}"):
            mode = "bicubic" if self.config.cubic else "bilinear"
            return F.interpolate(y, scale_factor=2**i, mode=mode, align_corners=False)[0, 0, :H, :W]
        return torch.linalg.multi_dot([getattr(self, f"_rows{i}"), y[0, 0], getattr(self, f"_cols{i}")])

    def rate_bits(self, latents: list[Tensor]) -> Tensor:
        """Ideal bits of the latents under the context model (continuous features, Laplace scales)."""
        return torch.cat(self.level_bits(latents)).sum()

    def level_bits(self, latents: list[Tensor], shifts: tuple[float, ...] = (0.0,)) -> list[Tensor]:
        """Bits of each level (``[len(shifts)]`` per level), with every table index moved by each shift."""
        out = []
        for i, y in enumerate(latents):
            h, w = y.shape[-2:]
            if i + 1 < len(latents):
                a = box3(latents[i + 1].abs())
                a = a.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
                la = 4.0 * torch.log2(1.0 + a)
            else:
                la = torch.zeros_like(y)
            anchor = getattr(self, f"_anchor{i}")
            lb = 4.0 * torch.log2(1.0 + cross4(torch.where(anchor, y.abs(), 0.0)))
            c = self.context[i]
            k = torch.where(anchor, c[0] + c[1] * la, c[2] + c[3] * la + c[4] * lb)
            out.append(torch.stack([laplace_bits_sum(y, (k + s).clamp(0, N_TABLES - 1)) for s in shifts]))
        return out

    @torch.no_grad()
    def calibrated_bits(self, apply: bool = False) -> float:
        """Bits of the rounded latents with each level's table offset set to the best of a few
        shifts (the noise phase learns offsets suited to noisy latents); ``apply`` keeps those offsets."""
        q = self.quantized("round")
        per_shift = torch.stack(self.level_bits(q, CALIBRATION_SHIFTS), dim=1)  # [shifts, levels]
        best, index = per_shift.min(dim=0)
        if apply:
            shifts = torch.tensor(CALIBRATION_SHIFTS, dtype=self.context_theta.dtype, device=index.device)[index]
            self.context_theta[:, 0] += shifts / CONTEXT_GAIN
            self.context_theta[:, 2] += shifts / CONTEXT_GAIN
        return float(best.sum())


def soft_round(y: Tensor, temperature: float) -> Tensor:
    """C3's soft rounding (Agustsson & Theis 2020): ``floor(y) + 1/2 + tanh(r / T) / (2 tanh(1 / (2 T)))``,
    ``r = y - floor(y) - 1/2``; rounding as ``T -> 0``, the identity as ``T -> inf``.

    >>> soft_round(torch.tensor([0.0, 0.2, 0.5, 1.7]), 0.01).tolist()
    [0.0, 0.0, 0.5, 2.0]
    """
    base = torch.floor(y).detach() + 0.5
    return base + torch.tanh((y - base) / temperature) / (2.0 * math.tanh(0.5 / temperature))


def kumaraswamy_noise(like: Tensor, a: float) -> Tensor:
    """Noise in ``[-1/2, 1/2]`` shaped like ``like``: a Kumaraswamy ``(a, b)`` sample minus 1/2, ``b`` chosen
    so that the mode is 1/2 (``a = 1``: uniform; larger ``a`` concentrates it around 0)."""
    b = ((a - 1.0) * 2.0**a + 1.0) / a
    u = torch.empty_like(like).uniform_(1e-6, 1.0 - 1e-6)
    return (1.0 - (1.0 - u) ** (1.0 / b)) ** (1.0 / a) - 0.5


def interpolation_matrix(n_out: int, n_in: int, factor: int, cubic: bool = False) -> Tensor:
    """``Float[Tensor, "n_out n_in"]``: bilinear (or bicubic) upsampling along one axis as a matrix
    (:func:`fieldcraft.codec.grids.up_weights`, :func:`fieldcraft.codec.grids.cubic_weights`).

    >>> interpolation_matrix(4, 2, 2).tolist()
    [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    >>> interpolation_matrix(4, 2, 2, cubic=True).sum(1).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if cubic:
        idx, w = grids.cubic_weights(n_out, n_in, factor)
        for k in range(4):
            np.add.at(m, (rows, idx[:, k]), w[:, k])
    else:
        i0, i1, t = grids.up_weights(n_out, n_in, factor)
        np.add.at(m, (rows, i0), 1.0 - t)
        np.add.at(m, (rows, i1), t)
    return torch.from_numpy(m.astype(np.float32))


def box3(a: Tensor) -> Tensor:
    """``Float[Tensor, "... h w"]``: the sum over each 3x3 neighbourhood (zero padding), as shifted
    slices (the torch twin of :func:`fieldcraft.codec.grids.box3`; a 1-channel ``conv2d`` costs far more,
    its backward most)."""
    p = F.pad(a, (1, 1, 1, 1))
    rows = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]
    return rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]


def cross4(a: Tensor) -> Tensor:
    """``Float[Tensor, "... h w"]``: the sum of the 4 direct neighbours (zero padding; :func:`fieldcraft.codec.grids.cross4`)."""
    p = F.pad(a, (1, 1, 1, 1))
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


CALIBRATION_SHIFTS = (0.0, -2.0, -4.0, -6.0, -8.0, -12.0, -16.0, 2.0, 4.0, 8.0)


MEASURE_EVERY = 16  # steps between measurements of the rounded latents' rate (and offset calibrations)


class LatentFit(Objective):
    """``MSE + lambda * bpp`` of one image; ``lambda`` adapted to ``target_bpp`` when given."""

    def __init__(self, target: Tensor, lam: float, target_bpp: float | None, overhead_bits: float,
                 noise_until: float, rate_gain: float, rate_margin: float = 0.02) -> None:
        self.target, self.lam, self.target_bpp = target, lam, target_bpp
        self.overhead_bits, self.noise_until, self.rate_gain = overhead_bits, noise_until, rate_gain
        self.rate_margin = rate_margin
        self.pixels = target.shape[0] * target.shape[1]
        self.progress: Callable[[], float] = lambda: 0.0
        self.bpp = float("nan")
        self._last_progress = 0.0
        self._calibrated = False
        self.generators = {}

    def loss(self, model: LatentCodecModel, step: int) -> tuple[Tensor, dict[str, float]]:
        mode = "noise" if self.progress() < self.noise_until else "round"
        if mode == "round" and (not self._calibrated or step % MEASURE_EVERY == 0):
            # the rounded phase keeps each level's table offset at its best for the rounded latents
            self.bpp = (model.calibrated_bits(apply=True) + self.overhead_bits) / self.pixels
            self._calibrated = True
        elif step % MEASURE_EVERY == 0:  # the controller follows the rate of the rounded latents
            self.bpp = (model.calibrated_bits() + self.overhead_bits) / self.pixels
        syn, rate = model.proxies(mode, min(self.progress() / self.noise_until, 1.0) if self.noise_until else 1.0)
        mse = torch.mean((model.synthesize(syn) - self.target) ** 2)
        bits = model.rate_bits(rate)
        return mse + self.lam * bits / self.pixels, {
            "psnr": psnr_from_mse(float(mse.detach())), "bpp": self.bpp, "lambda": self.lam}

    def after_step(self, step: int) -> None:
        progress = self.progress()
        spent, self._last_progress = progress - self._last_progress, progress
        if self.target_bpp is not None and math.isfinite(self.bpp) and self.bpp > 0:
            err = min(max(math.log(self.bpp / (self.target_bpp * (1 + self.rate_margin))), -0.3), 0.3)
            self.lam *= math.exp(self.rate_gain * err * spent)


@dataclasses.dataclass
class LatentResult:
    stream: LatentStream
    train_seconds: float
    steps: int
    lam: float
    stopped: str | None


def fit_latent(pixels: np.ndarray, config: LatentCodecConfig, budget: Budget, *, bpp: float | None,
               lam: float | None, progress: bool, device: str = "cpu",
               size_of: Callable[[LatentStream], int]) -> LatentResult:
    """Fit and quantise (see module docstring). ``size_of(stream)`` gives a stream's exact file size in
    bytes (for the rate search)."""
    height, width, channels = pixels.shape
    target = torch.from_numpy(np.ascontiguousarray(pixels, np.float32)).to(device)
    model = LatentCodecModel(config, height, width, channels).to(device)
    arch = config.architecture(channels)
    n_weights = sum(int(np.prod(s)) for s in arch.tensor_shapes())
    overhead = 8.0 * (32 + 10 * config.levels) + 8.5 * n_weights  # header and synthesis weights, bits
    lam0 = lam if lam is not None else initial_lambda(bpp)
    objective = LatentFit(target, lam0, bpp if lam is None else None, overhead, config.noise_until, config.rate_gain,
                          config.rate_margin)
    optimizer = OptimizerConfig(lr=config.lr, schedule=ScheduleConfig(kind="cosine",
                                                                      final_factor=config.final_lr_factor))
    trainer = Trainer(model, objective, optimizer, budget, description="compress", progress=progress)
    objective.progress = lambda: trainer.budget.progress(trainer.step, trainer.seconds)
    outcome = trainer.run()
    t0 = time.perf_counter()
    stream = quantise(model, pixels, objective.lam, bpp if lam is None else None, size_of)
    if progress:
        print(f"quantised and coded in {time.perf_counter() - t0:.1f} s", flush=True)
    return LatentResult(stream, outcome.seconds, outcome.step, objective.lam, outcome.stopped)


def quantise_latents(latents: list[np.ndarray], m: int, deadzone: float) -> list[np.ndarray]:
    """``sign(y) floor(|y| + 1/2 - deadzone)`` (at least 0), clipped to ``-m..m``: a dead zone of
    ``deadzone`` (``0 <= deadzone < 1/2``; 0 is plain rounding)."""
    return [np.clip(np.sign(y) * np.maximum(np.floor(np.abs(y) + 0.5 - deadzone), 0.0), -m, m).astype(np.int64)
            for y in latents]


def quantise_weights(weights: list[np.ndarray], precision: int) -> tuple[list[int], list[np.ndarray]]:
    """Each tensor as ``int * 2^-e``, ``e = min(precision, largest e with |int| <= WEIGHT_MAX)``."""
    exps, ints = [], []
    for w in weights:
        peak = float(np.abs(w).max(initial=0.0))
        e = precision if peak == 0 else min(precision, int(math.floor(math.log2(WEIGHT_MAX / peak))))
        while e > 0 and np.abs(np.rint(w * 2.0**e)).max(initial=0) > WEIGHT_MAX:
            e -= 1
        e = max(e, 0)
        exps.append(e)
        ints.append(np.clip(np.rint(w * 2.0**e), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64))
    return exps, ints


def tune_context(stream: LatentStream) -> None:
    """Integer context coefficients that code the stream's latents in fewer bits (coordinate search
    on the exact table costs, level by level; in place)."""
    from fieldcraft.codec.latent_stream import LevelCost

    shapes = grids.level_shapes(stream.height, stream.width, stream.arch.levels)
    for i in range(stream.arch.levels):
        cost = LevelCost(stream.latents, i, shapes[i], stream.arch.max_symbol)
        row = stream.context[i].copy()
        best = cost(row)
        for term, steps in ((0, (64, 32, 16)), (1, (8, 4)), (2, (64, 32, 16)), (3, (8, 4)), (4, (8, 4)),
                            (0, (16, 8)), (2, (16, 8))):
            for delta in steps:
                improved = True
                while improved:
                    improved = False
                    for sgn in (1, -1):
                        trial = row.copy()
                        trial[term] += sgn * delta
                        if abs(int(trial[term])) > 32767:
                            continue
                        bits = cost(trial)
                        if bits < best - 1e-9:
                            best, row, improved = bits, trial, True
                            break
        stream.context[i] = row


def quantise(model: LatentCodecModel, image: np.ndarray, lam: float, bpp: float | None,
             size_of: Callable[[LatentStream], int], progress: bool = False) -> LatentStream:
    """The coded stream of a fitted model (see module docstring); ``image`` is the original ``[H, W, C]``
    in ``[0, 1]``, ``size_of`` the exact file size of a stream in bytes."""
    cfg = model.config
    H, W = model.height, model.width
    pixels = H * W
    reference = np.rint(np.clip(image, 0, 1) * 255.0) / 255.0
    latents = [cfg.latent_gain * y.detach().cpu().double().numpy()[0, 0] for y in model.latents]
    tensors = [p for lin in model.synthesis.linears for p in (lin.weight, lin.bias)]
    if model.refine is not None:
        tensors += [model.refine.weight, model.refine.bias]
    weights = [t.detach().cpu().double().numpy() for t in tensors]
    context = np.rint(model.context.detach().cpu().double().numpy() * 64).astype(np.int64)
    stream = LatentStream(cfg.architecture(model.channels), H, W, [], [], context,
                          quantise_latents(latents, cfg.max_symbol, 0.0))
    tune_context(stream)
    best = None
    for precision in WEIGHT_PRECISIONS:
        exps, ints = quantise_weights(weights, precision)
        trial = dataclasses.replace(stream, exponents=exps, weights=ints)
        if not grids.exactness_margin(*trial.synthesis_args()):
            continue
        d = float(np.mean((trial.image() / 255.0 - reference) ** 2))
        cost = d + lam * 8.0 * size_of(trial) / pixels
        if best is None or cost < best[0]:
            best = (cost, trial)
    check(best is not None, "the synthesis weights are too large to decode exactly; try a shorter fit")
    stream = best[1]
    if bpp is not None:
        _search_deadzone(stream, latents, bpp, size_of)
        tune_context(stream)
        _search_deadzone(stream, latents, bpp, size_of)
    return stream


RATE_TOLERANCE = 0.03
WEIGHT_PRECISIONS = (7, 9, 11)  # candidate exponents of the synthesis weights (values int * 2^-e)


def _search_deadzone(stream: LatentStream, latents: list[np.ndarray], bpp: float,
                     size_of: Callable[[LatentStream], int], iterations: int = 14) -> None:
    """Bisection on the dead zone so that the rate lands at ``bpp`` (in place). Candidates are
    ranked by the ideal latent bits plus the offset to the exact size measured at the start; the
    chosen one is checked with the exact size (and the search repeated once with a new offset)."""
    from fieldcraft.codec.latent_stream import latent_bits

    pixels = stream.height * stream.width
    m = stream.arch.max_symbol

    def set_tau(tau: float) -> None:
        stream.latents = quantise_latents(latents, m, tau)

    tau = 0.0
    for _ in range(2):
        set_tau(tau)
        exact = 8.0 * size_of(stream)
        if abs(exact / pixels / bpp - 1) <= RATE_TOLERANCE / 2 or (tau == 0.0 and exact / pixels < bpp):
            return
        offset = exact - latent_bits(stream)
        lo, hi = 0.0, 0.49   # rate(lo) largest, rate(hi) smallest (a negative dead zone costs far more quality)
        for _ in range(iterations):
            tau = 0.5 * (lo + hi)
            set_tau(tau)
            r = (latent_bits(stream) + offset) / pixels
            if r > bpp:
                lo = tau
            else:
                hi = tau
        tau = hi
    set_tau(tau)
