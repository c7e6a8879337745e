"""What defines a NeRF fit: :class:`NerfConfig` and the presets of :func:`nerf_config`.

| preset | field | sampling | batch | optimiser | reference |
|---|---|---|---|---|---|
| ``instant`` (default) | hash grid (L=16, F=2, T=2^17, N 16..R) -> 64 -> 16 features; SH degree 4 -> 64x2 -> rgb; R: object scenes the views' pixel resolution up to 512 (``finest_from_views``), else 512 | occupancy grid 64^3, 256 steps across the box diagonal (NDC: 128 along the ray), early termination | ~2^14 samples (rays adapt) | object scenes 2e-2, NDC 1e-2; ``steps`` | Instant-NGP / nerfacc |
| ``vanilla`` | PE L=10 / L=4 dirs, 8x256 skip at 5 -> 128 -> rgb, coarse + fine field | 64 stratified + 128 importance | 1024 rays | 5e-4, ``exp`` | NeRF paper |
| ``tiny`` | PE L=6 on world coordinates, 8x256 skip at 5 -> 4, no view dependence, softplus density | 64 stratified over the ray's stretch through the visual hull | one full image | 5e-4, ``exp`` | tiny-NeRF notebook |
| ``tensorf`` | TensoRF VM (R=128 after doubling at steps 150 and 300, 24 components per mode) -> linear -> density + 27 features; SH degree 4 -> 64x2 -> rgb | as ``instant``, in the silhouette box | as ``instant`` | 2e-2, ``steps`` | TensoRF |
| ``plenoxels`` | no network: a voxel grid of density + SH degree 3 (9 x 3 coefficients) per vertex, 16 -> 32 -> 64 cells per axis (doubling at steps 200 and 500, pruning sigma < 1), no TV (weights 0) | as ``instant``, in the silhouette box | ~2^16 samples | 5e-2, ``steps`` | Plenoxels |
| ``nerfacto`` (real captures) | contracted space (``contraction``); hash grid (L=16, F=2, T=2^17, N 16..1024) -> 64 -> 16; SH degree 4 + 16-d appearance code per image -> 64x2 -> rgb | occupancy grid 64^3 in contracted space (threshold 0.0025), 128 candidate intervals per ray (linear, then uniform in disparity), early termination | ~2^14 samples | 1e-2, ``steps`` | nerfacto / Mip-NeRF 360 |

``tiny`` keeps the notebook's network (8x256 ReLU, skip at 5, one output layer to rgb + density,
Glorot-uniform weights and zero biases as Keras initialises them), its encoding (world
coordinates as they are, ``(x, sin(2^k x), cos(2^k x))`` for k < 6), its 64 jittered samples per
ray, one full training image per step and Adam from 5e-4. It departs from it in five places:

1. density ``softplus(raw - 1)`` (Mip-NeRF) instead of ``relu(raw)``: on a white background a
   ReLU density is pushed below zero everywhere within a few full-image steps (an empty scene
   renders the background, most of every image) and, with zero gradient, never recovers;
2. the 64 samples span the ray's stretch through the visual hull of the training views' alpha
   masks (``box="hull"``, :meth:`~fieldcraft.tasks.nerf.model.NerfModel.clip_rays`), not all of ``[2, 6]``;
3. the MLP runs under bfloat16 autocast (compositing in float32);
4. the learning rate decays exponentially to 0.1x over the run (the NeRF paper's schedule);
5. evaluation and rendering use a running average of the weights (``ema_decay=0.95``).

Learning-rate schedules (``schedule``, :data:`SCHEDULES`): ``steps`` warms up linearly over 100
steps and multiplies by 0.33 at 50, 75 and 90 % of the budget; ``exp`` decays to 0.1x; ``constant``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fieldcraft.config import Config
from fieldcraft.encodings import FrequencyEncodingConfig, HashGridConfig, SphericalHarmonicsConfig, TensoRFVMConfig
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.fields.plenoxels import PlenoxelFieldConfig
from fieldcraft.fields.radiance import RadianceFieldConfig
from fieldcraft.train import OptimizerConfig, ScheduleConfig
from fieldcraft.train.optimizers import instant_ngp

TASK = "nerf"
PRESETS = ("instant", "vanilla", "tiny", "tensorf", "nerfacto", "plenoxels")
DEFAULT_PRESET = "instant"
BACKGROUNDS = ("white", "black", "random")
BOXES = ("dataset", "silhouette", "hull")
SAMPLERS = ("occupancy", "stratified", "proposal")
SCHEDULES = {
    "steps": ScheduleConfig(kind="steps", warmup_steps=100, milestones=(0.5, 0.75, 0.9), gamma=0.33),
    "exp": ScheduleConfig(kind="exp", final_factor=0.1),
    "constant": ScheduleConfig(kind="constant"),
}


@dataclasses.dataclass(frozen=True)
class NerfConfig(Config):
    """Fields:

    - ``preset``: name of the preset this config came from (informative).
    - ``field``: the radiance field (coarse field when ``n_importance > 0``).
    - ``fine_field``: NeRF's second field for the importance samples, or None.
    - ``sampler``: ``occupancy`` (marching through an occupancy grid), ``stratified``, or ``proposal``
      (density-only proposal fields say where to sample, :mod:`fieldcraft.render.proposal`).
    - ``n_samples``: stratified samples per ray; ``n_importance``: extra PDF samples (fine pass).
    - ``render_steps``: occupancy marching steps across the scene box diagonal (step size =
      diagonal / render_steps; along ``t`` in ``[0, 1]`` for NDC scenes: 1 / render_steps).
    - ``grid_resolution``, ``grid_update_every``, ``grid_decay``, ``grid_threshold``,
      ``grid_warmup``: occupancy grid (see :mod:`fieldcraft.render.occupancy_grid`).
    - ``early_stop_eps``: drop samples once transmittance falls below this (0: off).
    - ``alpha_threshold``: drop samples with smaller alpha (after ``grid_warmup`` steps).
    - ``rays``: rays per batch (initial value when ``target_samples > 0``).
    - ``target_samples``: adapt the ray count so a batch has about this many samples (0: fixed),
      between 256 and ``max_rays``.
    - ``full_image``: a batch is every pixel of one random training image (tiny-NeRF).
    - ``micro_batch_rays``: render and backpropagate a batch in pieces of this many rays and add up
      their gradients (0: all at once): the whole batch's gradient with a piece's memory, which
      keeps the activations of 8x256 MLPs in cache.
    - ``lr``: Adam learning rate; ``schedule``: a name of :data:`SCHEDULES` (module docstring).
    - ``background``: ``white`` | ``black`` | ``random`` (a random colour per ray while training,
      white for evaluation). RGBA images are composited on it and the renderer adds
      ``(1 - opacity) * background``.
    - ``bf16``: evaluate the field's MLPs under bfloat16 autocast; compositing stays float32.
    - ``box``: the box the field lives in and rays are clipped to: ``dataset`` (the reader's scene
      box), ``silhouette`` (the box around the training views' visual hull,
      :func:`fieldcraft.data.bounds.silhouette_aabb`) or ``hull`` (that box, and each ray's range
      narrowed further to its stretch through the visual hull itself, carved on
      ``hull_resolution^3`` cells of that box and grown by one cell). The last two need RGBA
      images (else a warning and the dataset box); forward-facing NDC scenes keep their box.
      Box and hull are saved in the checkpoint.
    - ``hull_resolution``: cells per axis of the ``hull`` grid; ``hull_dilate``: pixels each alpha
      mask grows by before carving it (antialiased edges).
    - ``contraction``: unbounded scene: positions are normalised by the inner box (the box the
      run is fitted in, around the cameras: :func:`fieldcraft.render.contraction.inner_box`) and
      contracted into ``[-2, 2]^3`` (:func:`fieldcraft.render.contraction.contract`), where field and
      occupancy grid live; rays are not clipped to a box and the ``occupancy`` sampler places
      ``render_steps`` candidate intervals per ray from ``near`` to ``far``
      (:func:`fieldcraft.render.contraction.contracted_march`).
    - ``appearance_dim``: length of a learned appearance code per training image fed to the colour
      MLP (0: none; :mod:`fieldcraft.fields.appearance`); other views use the mean code.
    - ``pose_refine``: camera refinement (BARF, :mod:`fieldcraft.render.pose_refinement`): a pose
      correction per training image (axis-angle rotation + translation in the camera's frame,
      starting at zero) optimised with the field, applied to the training rays only; the position
      encodings' levels / frequency bands are opened coarse to fine over training
      (:mod:`fieldcraft.encodings.annealing`).
    - ``pose_lr``: the corrections' learning rate (radians, and scene-box diagonals, a step), under
      the same ``schedule`` as ``lr``.
    - ``c2f_start``, ``c2f_end``: fractions of the budget over which the encoding's finer levels /
      bands open (BARF's window; before ``c2f_start`` only the coarsest level / the raw input).
    - ``ema_decay``: also keep an exponential moving average of the weights (Polyak averaging,
      ``ema <- d * ema + (1 - d) * w`` after every step, ``d = min(ema_decay, (1 + step) / (10 + step))``),
      saved in the checkpoint and used by evaluation and rendering (0: off).
    - ``seed``: seeds weights, batches and jitter.
    - ``distortion_weight``: weight of Mip-NeRF 360's distortion loss (mean over the batch's rays of
      :func:`fieldcraft.render.losses.distortion_loss` in normalised ray distance) in the training loss
      (0: off; ``occupancy`` and ``proposal`` samplers).
    - ``proposal_samples``: ``proposal`` sampler: intervals per ray drawn for each proposal field (the
      first uniform in normalised ray distance, each next from the previous field's histogram), the
      last entry those of the radiance field (nerfstudio: 256, 96, 48).
    - ``proposal_resolutions``: finest hash-grid resolution of each proposal field (one per field,
      ``len(proposal_samples) - 1`` of them; :class:`fieldcraft.render.proposal.ProposalField`).
    - ``interlevel_weight``: weight of the proposal fields' interlevel loss (Mip-NeRF 360 eq. 13,
      :func:`fieldcraft.render.proposal.interlevel_loss`, mean over rays and radiance-field intervals).
    - ``finest_from_views``: object scenes (not NDC, not contracted) with a hash-grid position
      encoding: when a fit starts, the grid's finest level is lowered to the training views' pixel
      resolution of the box the field lives in (:func:`fieldcraft.data.bounds.pixel_resolution`: a
      finest cell about one pixel wide; lego at 100x100 pixels: 128, at 200x200: 256; never above
      the configured ``max_resolution``), and ``fit`` prints it. The checkpoint stores the resolved
      ``max_resolution``.
    - ``proposal_anneal_steps``: steps over which the proposal histograms' annealing exponent rises
      from 0 to 1 (:func:`fieldcraft.render.proposal.anneal_power`; 0: none).
    """

    type_name = "Nerf"
    preset: str = DEFAULT_PRESET
    field: RadianceFieldConfig = dataclasses.field(default_factory=RadianceFieldConfig)
    fine_field: RadianceFieldConfig | None = None
    sampler: str = "occupancy"
    n_samples: int = 64
    n_importance: int = 0
    render_steps: int = 256
    grid_resolution: int = 64
    grid_update_every: int = 16
    grid_decay: float = 0.95
    grid_threshold: float = 0.01
    grid_warmup: int = 256
    early_stop_eps: float = 1e-4
    alpha_threshold: float = 0.0
    rays: int = 1024
    target_samples: int = 0
    max_rays: int = 8192
    full_image: bool = False
    micro_batch_rays: int = 0
    lr: float = 1e-2
    schedule: str = "steps"
    background: str = "white"
    bf16: bool = False
    box: str = "dataset"
    hull_resolution: int = 128
    hull_dilate: int = 2
    ema_decay: float = 0.0
    seed: int = 0
    contraction: bool = False
    appearance_dim: int = 0
    pose_refine: bool = False
    pose_lr: float = 1e-3
    c2f_start: float = 0.1
    c2f_end: float = 0.5
    distortion_weight: float = 0.0
    proposal_samples: tuple[int, ...] = (96, 48, 32)
    proposal_resolutions: tuple[int, ...] = (128, 256)
    interlevel_weight: float = 1.0
    proposal_anneal_steps: int = 200
    finest_from_views: bool = False

    def __post_init__(self) -> None:
        check(self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r} (use {'|'.join(SAMPLERS)})")
        check(self.background in BACKGROUNDS, f"unknown background {self.background!r} (use {'|'.join(BACKGROUNDS)})")
        check(self.box in BOXES, f"unknown box {self.box!r} (use {'|'.join(BOXES)})")
        check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r} (use {'|'.join(SCHEDULES)})")
        check(not self.contraction or self.sampler in ("occupancy", "proposal"),
              "contraction needs the occupancy or proposal sampler")
        check(self.distortion_weight >= 0, f"distortion_weight must be >= 0, got {self.distortion_weight}")
        check(self.distortion_weight == 0 or self.sampler != "stratified",
              "the distortion loss needs the occupancy or proposal sampler")
        check(len(self.proposal_samples) == len(self.proposal_resolutions) + 1 >= 2
              and all(n > 0 for n in self.proposal_samples),
              f"proposal_samples {self.proposal_samples} needs one positive count per proposal field "
              f"({len(self.proposal_resolutions)}) plus the radiance field's")
        check(self.appearance_dim >= 0, f"appearance_dim must be >= 0, got {self.appearance_dim}")
        check(not isinstance(self.field, PlenoxelFieldConfig) or (self.appearance_dim == 0 and not self.pose_refine),
              "a Plenoxel field (a voxel grid, no network) takes no appearance codes and no camera refinement")
        check(self.pose_lr > 0, f"pose_lr must be > 0, got {self.pose_lr}")
        check(0 <= self.c2f_start <= 1 and 0 <= self.c2f_end <= 1,
              f"c2f_start and c2f_end must be in [0, 1], got {self.c2f_start}, {self.c2f_end}")

    def optimizer(self, grid: bool) -> OptimizerConfig:
        """Adam from ``lr`` with the ``schedule``: Instant-NGP's betas (0.9, 0.99) and eps 1e-15 for
        every parameter when the model has a grid encoding (``grid``), PyTorch's defaults otherwise."""
        schedule = SCHEDULES[self.schedule]
        return instant_ngp(self.lr, schedule) if grid else OptimizerConfig(lr=self.lr, schedule=schedule)


def nerf_config(preset: str = DEFAULT_PRESET, background: str | None = None, ndc: bool = False,
                **overrides: Any) -> NerfConfig:
    """The config of a preset (module docstring) for an object (``ndc=False``) or a forward-facing
    scene (``ndc=True``: ``instant`` marches 128 steps along NDC rays); ``background`` and
    ``overrides`` replace fields.

    >>> nerf_config("tiny").box, nerf_config("instant", ndc=True).render_steps
    ('hull', 128)
    """
    if preset == "instant":
        field = RadianceFieldConfig(
            position_encoding=HashGridConfig(n_levels=16, n_features=2, log2_table_size=17, base_resolution=16,
                                             max_resolution=512),
            trunk_width=64, trunk_layers=1, n_features=15, direction_encoding=SphericalHarmonicsConfig(degree=4),
            color_width=64, color_layers=2, density_activation="trunc_exp", density_bias=-1.0)
        # object scenes: a finest level matched to the views and a higher rate (lego val, bench/nerf_instant_variants.py)
        cfg = NerfConfig(preset=preset, field=field, sampler="occupancy", render_steps=128 if ndc else 256, rays=256,
                         target_samples=1 << 14, lr=1e-2 if ndc else 2e-2, schedule="steps", background="random",
                         finest_from_views=not ndc)
    elif preset == "tensorf":
        field = RadianceFieldConfig(
            position_encoding=TensoRFVMConfig(resolution=128, n_components=24, upsample_steps=(150, 300)),
            trunk_layers=0, n_features=27, direction_encoding=SphericalHarmonicsConfig(degree=4),
            color_width=64, color_layers=2, density_activation="trunc_exp", density_bias=-1.0)
        cfg = NerfConfig(preset=preset, field=field, sampler="occupancy", render_steps=128 if ndc else 256, rays=256,
                         target_samples=1 << 14, lr=2e-2, schedule="steps", background="random",
                         box="dataset" if ndc else "silhouette")
    elif preset == "plenoxels":  # a voxel grid of density + SH, no network (docs/encodings.md "Plenoxels")
        field = PlenoxelFieldConfig(resolution=64, sh_degree=3, upsample_steps=(200, 500), density_scale=100.0,
                                    density_init=0.01, tv_density=0.0, tv_sh=0.0, prune_density=1.0)  # TV: see docs
        cfg = NerfConfig(preset=preset, field=field, sampler="occupancy", render_steps=128 if ndc else 256, rays=256,
                         target_samples=1 << 16, lr=5e-2, schedule="steps", background="random",
                         box="dataset" if ndc else "silhouette")
    elif preset == "vanilla":
        field = RadianceFieldConfig(
            position_encoding=FrequencyEncodingConfig(n_frequencies=10), trunk_width=256, trunk_layers=8, skips=(5,),
            n_features=256, direction_encoding=FrequencyEncodingConfig(n_frequencies=4), color_width=128,
            color_layers=1, density_activation="relu")
        cfg = NerfConfig(preset=preset, field=field, fine_field=field, sampler="stratified", n_samples=64,
                         n_importance=128, rays=1024, micro_batch_rays=128, lr=5e-4, schedule="exp", background="white",
                         bf16=True)
    elif preset == "tiny":
        field = RadianceFieldConfig(
            position_encoding=FrequencyEncodingConfig(n_frequencies=6, pi_scale=False), positions="world", init="glorot",
            trunk_width=256, trunk_layers=8, skips=(5,), n_features=3, direction_encoding=None, color_layers=-1,
            density_activation="softplus", density_bias=-1.0)
        cfg = NerfConfig(preset=preset, field=field, sampler="stratified", n_samples=64, full_image=True,
                         micro_batch_rays=512, lr=5e-4, schedule="exp", background="white", bf16=True,
                         box="hull", hull_dilate=1, ema_decay=0.95)
    elif preset == "nerfacto":  # instant's fit in contracted space: finest level 1024 over [-2, 2]^3, appearance codes
        cfg = nerf_config("instant")
        field = cfg.field.replace(position_encoding=cfg.field.position_encoding.replace(max_resolution=1024))
        cfg = cfg.replace(preset=preset, field=field, render_steps=128, contraction=True, appearance_dim=16,
                          grid_threshold=0.0025, lr=1e-2, finest_from_views=False)
    else:
        raise FieldcraftError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if background is not None:
        cfg = cfg.replace(background=background)
    return cfg.replace(**overrides) if overrides else cfg
