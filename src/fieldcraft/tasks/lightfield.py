"""Light field networks: one network evaluation per ray (Sitzmann et al. 2021, "Light Field Networks").

Task = data (every pixel of the training views of a posed-image dataset with its ray,
:func:`fieldcraft.data.scene.load_posed_images`) + field (the ray's Plücker coordinates ->
colour, :class:`LightField`) + MSE against the pixels composited on the background; the
training core (:mod:`fieldcraft.train`) does the rest. No sampling along rays, no compositing:
a view costs one MLP evaluation per pixel.

Conventions (docs/lightfield.md):

- A ray ``o + t d`` (world units, cameras of :mod:`fieldcraft.data.cameras`) is moved into the
  scene's frame, ``o' = (o - centre) / radius``, and given to the field as its Plücker
  coordinates ``(d, o' x d)`` (:func:`fieldcraft.render.rays.plucker`), 6 numbers in
  ``[-1, 1]`` for every ray that meets the scene. Object scenes (Blender, nerfstudio with
  ``aabb_scale`` 1 or a synthetic ``transforms.json``): ``centre`` and ``radius`` are the centre and half-diagonal of the scene
  box: the box around the visual hull of the alpha masks when the images have alpha
  (:func:`fieldcraft.data.bounds.silhouette_aabb`), else the dataset's box; a ray that misses
  the box is the background colour, as in the ``nerf`` task, and is not learnt. Other scenes
  (LLFF, COLMAP, unbounded nerfstudio): the mean of the training cameras' centres and their
  largest distance from it, every ray learnt.
- Colours: RGB in ``[0, 1]`` (sigmoid output); RGBA pixels are composited on the background
  (white by default, as ``nerf`` evaluates Blender scenes).
- Presets (:data:`PRESETS`, the encoding of the 6-D input): ``relu`` (the raw Plücker
  coordinates into a ReLU MLP, as in the paper; the default: the best held-out PSNR of the four
  on lego, docs/lightfield.md), ``pe`` (NeRF's positional encoding, 3 octaves), ``fourier``
  (Gaussian random Fourier features), ``siren`` (sine MLP).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.data.cameras import Cameras
from fieldcraft.data.scene import PosedImages, composite, load_posed_images
from fieldcraft.encodings import FourierFeaturesConfig, FrequencyEncodingConfig, IdentityEncodingConfig
from fieldcraft.errors import FieldcraftError, check, reading
from fieldcraft.fields import FieldConfig
from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, psnr_from_mse, ssim
from fieldcraft.networks import MLPConfig
from fieldcraft.render.cameras import orbit_around
from fieldcraft.render.rays import PixelRays, PixelTable, camera_rays, pixel_centres, plucker, ray_aabb
from fieldcraft.train import Budget, Objective, OptimizerConfig, Run, ScheduleConfig

TASK = "lightfield"
PRESETS = ("relu", "pe", "fourier", "siren")
DEFAULT_PRESET = "relu"
BACKGROUNDS = ("white", "black")
DEFAULT_BUDGET = Budget(seconds=120.0)


@dataclasses.dataclass(frozen=True)
class LightFieldConfig(Config):
    """Everything that defines a light-field fit (saved in the checkpoint).

    - ``preset``: encoding of the Plücker coordinates and network kind, one of :data:`PRESETS`
      (module docstring).
    - ``hidden_width``, ``hidden_layers``: the MLP's size.
    - ``n_frequencies``: octaves of the ``pe`` encoding (NeRF's ``sin / cos(2^k pi x)``, k < L).
    - ``fourier_features``, ``fourier_sigma``: number and standard deviation of the random
      frequencies of the ``fourier`` preset.
    - ``rays``: rays per step (random pixels of all training views).
    - ``lr``: Adam's learning rate (None: the preset's, :meth:`resolved_lr`); it decays
      exponentially to ``lr * final_lr_factor`` over the budget.
    - ``background``: ``white`` or ``black``, the colour RGBA pixels are composited on and rays
      that miss an object scene's box get.
    - ``seed``: seeds the initialisation and the batches.
    """

    type_name = "LightFieldFit"
    preset: str = DEFAULT_PRESET
    hidden_width: int = 128
    hidden_layers: int = 4
    n_frequencies: int = 3
    fourier_features: int = 128
    fourier_sigma: float = 2.0
    rays: int = 4096
    lr: float | None = None
    final_lr_factor: float = 0.1
    background: str = "white"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        check(self.background in BACKGROUNDS,
              f"--background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        check(self.rays >= 1, f"--rays must be >= 1, got {self.rays}")
        check(self.n_frequencies >= 1, f"--frequencies must be >= 1, got {self.n_frequencies}")
        check(self.hidden_width >= 1 and self.hidden_layers >= 1,
              f"the MLP needs --width >= 1 and --layers >= 1, got {self.hidden_width} and {self.hidden_layers}")

    def resolved_lr(self) -> float:
        """``lr``, or the preset's: 3e-4 for ``siren``, 5e-3 for the others."""
        if self.lr is not None:
            return self.lr
        return 3e-4 if self.preset == "siren" else 5e-3

    def field(self) -> FieldConfig:
        """The field: Plücker coordinates ``[m, 6]`` -> RGB ``[m, 3]`` in ``[0, 1]``."""
        relu = MLPConfig(hidden_width=self.hidden_width, hidden_layers=self.hidden_layers, output_activation="sigmoid")
        if self.preset == "pe":
            return FieldConfig(6, 3, FrequencyEncodingConfig(n_frequencies=self.n_frequencies), relu)
        if self.preset == "fourier":
            enc = FourierFeaturesConfig(n_features=self.fourier_features, sigma=self.fourier_sigma, seed=self.seed)
            return FieldConfig(6, 3, enc, relu)
        if self.preset == "siren":  # zero-mean sine output mapped to [0, 1], as the image task's siren preset
            sine = MLPConfig(hidden_width=self.hidden_width, hidden_layers=self.hidden_layers, activation="sine")
            return FieldConfig(6, 3, IdentityEncodingConfig(), sine, output_scale=0.5, output_offset=0.5)
        return FieldConfig(6, 3, IdentityEncodingConfig(), relu)

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.resolved_lr(),
                               schedule=ScheduleConfig(kind="exp", final_factor=self.final_lr_factor))


class LightField(nn.Module):
    """A light field: ``colour(origins, dirs)`` evaluates ``field`` once per ray on the rays' Plücker
    coordinates in the scene frame (``centre`` ``[3]``, ``radius``); with a scene box ``aabb``
    ``[2, 3]`` (object scenes) rays that miss it get ``background`` ``[3]`` without evaluating
    the field. Buffers: ``centre``, ``radius``, ``aabb`` (zeros when there is no box), ``bounded``
    (whether there is one), ``background``."""

    def __init__(self, field: FieldConfig, centre: Float[Tensor, " 3"], radius: float,
                 aabb: Float[Tensor, "2 3"] | None, background: Float[Tensor, " 3"]) -> None:
        super().__init__()
        self.field = field.build()
        self.register_buffer("centre", centre.float().clone())
        self.register_buffer("radius", torch.tensor(float(radius)))
        self.register_buffer("aabb", torch.zeros(2, 3) if aabb is None else aabb.float().clone())
        self.register_buffer("bounded", torch.tensor(aabb is not None))
        self.register_buffer("background", background.float().clone())

    def coordinates(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"]) -> Float[Tensor, "m 6"]:
        """The field's input: Plücker coordinates of the rays in the scene frame."""
        return plucker((origins - self.centre) / self.radius, dirs)

    def hits(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"]) -> Bool[Tensor, " m"]:
        """Rays that meet the scene box ahead of their origin (all rays without a box)."""
        if not bool(self.bounded):
            return torch.ones(len(origins), dtype=torch.bool, device=origins.device)
        t0, t1 = ray_aabb(origins, dirs, self.aabb)
        return (t1 > t0) & (t1 > 0)

    def forward(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"]) -> Float[Tensor, "m 3"]:
        """Colours of the rays: the field where they meet the box, the background elsewhere."""
        hit = self.hits(origins, dirs)
        if bool(hit.all()):
            return self.field(self.coordinates(origins, dirs))
        out = self.background.to(origins.dtype).expand(len(origins), 3).clone()
        ids = hit.nonzero().squeeze(-1)
        if len(ids):
            out = out.index_put((ids,), self.field(self.coordinates(origins[ids], dirs[ids])))
        return out


def scene_frame(data: PosedImages) -> tuple[Float[Tensor, " 3"], float, Float[Tensor, "2 3"] | None]:
    """``(centre, radius, box)`` of the scene frame (module docstring); ``box`` None when rays are not clipped."""
    if data.scene == "object" and not data.ndc:
        box = data.aabb.float()
        if data.images.shape[-1] == 4:
            from fieldcraft.data.bounds import silhouette_aabb

            try:
                box = silhouette_aabb(data).float()
            except FieldcraftError:  # no hull (e.g. empty masks): the dataset's box
                pass
        return 0.5 * (box[0] + box[1]), float(0.5 * (box[1] - box[0]).norm()), box
    centres = data.cameras.c2w[:, :, 3].float()
    centre = centres.mean(0)
    return centre, max(float((centres - centre).norm(dim=-1).max()), 1e-3), None


def background_colour(name: str, device: torch.device | str = "cpu") -> Float[Tensor, " 3"]:
    """``white`` -> ones, ``black`` -> zeros."""
    return torch.zeros(3, device=device) if name == "black" else torch.ones(3, device=device)


class RayRegression(Objective):
    """MSE between the light field's colours of ``rays`` random training pixels and the pixels
    composited on the background; rays that miss the box (their colour is the background
    whatever the weights) count in the logged PSNR, not in the gradient."""

    def __init__(self, rays: PixelRays, pixels: PixelTable, batch: int, background: Float[Tensor, " 3"],
                 seed: int) -> None:
        self.rays, self.pixels, self.batch, self.bg = rays, pixels, batch, background
        self.generators = {"batches": torch.Generator().manual_seed(seed + 1)}

    def loss(self, model: LightField, step: int) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(0, len(self.pixels), (self.batch,), generator=self.generators["batches"])
        idx = idx.to(self.pixels.device)
        origins, dirs = self.rays[idx]
        target = composite(self.pixels[idx], self.bg)
        loss = torch.mean((model(origins, dirs) - target) ** 2)
        return loss, {"loss": float(loss.detach()), "psnr": psnr_from_mse(float(loss.detach()))}


def training_rays(data: PosedImages, device: torch.device) -> tuple[PixelRays, PixelTable]:
    """World rays (origins, unit directions) of every training pixel, made per batch, and the pixels."""
    cams = data.cameras.to(device)
    n, h, w = len(data), data.height, data.width
    rays = PixelRays(lambda cam, u, v: camera_rays(cams, cam, u, v), n, h, w, device)
    return rays, PixelTable(data.images.to(device).reshape(n * h * w, -1))


def fit(config: LightFieldConfig, data_path: str | Path, out: str | Path, budget: Budget | None = None, *,
        resume: bool = False, progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
        overwrite: bool = False, max_images: int | None = None, checkpoint_seconds: float = 60.0,
        downscale: int | None = None, skip_missing: bool = False) -> dict[str, Any]:
    """Fit a light field to ``data_path``'s training split; checkpoint (prefix ``model``),
    ``config.json`` and ``history.jsonl`` in ``out``. Returns a summary (``stopped`` names the
    signal that ended the run early, if one did). ``budget`` None: 120 s, or the stored budget
    when resuming. ``downscale``, ``skip_missing``: :func:`~fieldcraft.data.scene.load_posed_images`
    (stored; None: 1, or the stored factor when resuming); ``max_images``: the first N views."""
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=DEFAULT_BUDGET,
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    if downscale is None:
        downscale = int(run.meta.get("downscale", 1)) if run.resumed else 1
    data = load_posed_images(data_path, "train", max_images=max_images, downscale=downscale,
                             skip_missing=skip_missing)
    if run.resumed:
        centre, radius = torch.tensor(run.meta["centre"]), float(run.meta["radius"])
        box = None if run.meta.get("aabb") is None else torch.tensor(run.meta["aabb"])
    else:
        centre, radius, box = scene_frame(data)
    torch.manual_seed(config.seed)
    bg = background_colour(config.background)
    model = LightField(config.field(), centre, radius, box, bg).to(run.device)
    rays, pixels = training_rays(data, run.device)
    objective = RayRegression(rays, pixels, config.rays, bg.to(run.device), config.seed)
    meta = {"data": str(Path(data_path).resolve()), "centre": centre.tolist(), "radius": radius,
            "aabb": None if box is None else box.tolist(), "downscale": downscale, "skip_missing": skip_missing,
            "n_images": len(data), "width": data.width, "height": data.height}
    trainer = run.trainer(model, objective, config.optimizer(), meta=meta, prefix="model",
                          checkpoint_seconds=checkpoint_seconds, log_every=10,
                          description=f"fit lightfield [{config.preset}]", progress=progress)
    outcome = trainer.run()
    history = outcome.history
    return {"steps": outcome.step, "fit_seconds": outcome.seconds, "preset": config.preset, "out": str(run.out),
            "rays_per_second": outcome.step * config.rays / outcome.seconds if outcome.seconds > 0 else None,
            "train_psnr": history.values[-1].get("psnr") if history.values else None, "device": str(run.device),
            "stopped": outcome.stopped}


def load_lightfield(out_dir: str | Path, device: str | None = None) -> LightField:
    """The fitted light field of ``out_dir`` on ``device`` (default: cuda when available), in eval
    mode; its checkpoint header is ``model.meta``."""
    return _load(out_dir, device)[0]


def _load(out_dir: str | Path, device: str | None) -> tuple[LightField, dict[str, Any]]:
    from fieldcraft.runtime import default_device

    device = device or default_device()
    tensors, meta = load_checkpoint(Path(out_dir), device=device)
    check(meta.get("task") == TASK, f"{out_dir}: the checkpoint is of task {meta.get('task')!r}, not {TASK!r}")
    with reading(out_dir, "checkpoint"):
        config = Config.from_dict(meta["config"])
        check(isinstance(config, LightFieldConfig), f"{out_dir}: the checkpoint's config is not a light-field config")
        check(isinstance(meta.get("data"), str), f"{out_dir}: malformed checkpoint: no dataset path ('data')")
        centre = torch.tensor(meta["centre"], dtype=torch.float32)
        box = None if meta.get("aabb") is None else torch.tensor(meta["aabb"], dtype=torch.float32)
        check(centre.shape == (3,) and float(meta["radius"]) > 0 and (box is None or box.shape == (2, 3)),
              f"{out_dir}: malformed checkpoint: scene frame 'centre', 'radius', 'aabb'")
        model = build_loaded(lambda: LightField(config.field(), centre, float(meta["radius"]), box,
                                                background_colour(config.background)), tensors, "model").to(device)
    model.eval()
    model.meta = meta
    return model, meta


@torch.no_grad()
def render_rays(model: LightField, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"],
                chunk: int = 1 << 16) -> Float[Tensor, "m 3"]:
    """Colours of many rays, ``chunk`` rays at a time."""
    return torch.cat([model(origins[s:s + chunk], dirs[s:s + chunk]) for s in range(0, len(origins), chunk)])


def render_camera(model: LightField, cameras: Cameras, k: int) -> Float[Tensor, "h w 3"]:
    """View ``k`` of ``cameras`` (its size, intrinsics and distortion), on the model's device."""
    device = model.centre.device
    cams = cameras[[k]].to(device)
    u, v = pixel_centres(cams.height, cams.width, device)
    origins, dirs = camera_rays(cams, torch.zeros(len(u), dtype=torch.long, device=device), u, v)
    return render_rays(model, origins, dirs).reshape(cams.height, cams.width, 3)


def render_view(model: LightField, c2w: Float[Tensor, "3 4"] | Float[Tensor, "4 4"], fx: float, fy: float,
                cx: float, cy: float, width: int, height: int) -> Float[Tensor, "h w 3"]:
    """The pinhole view of camera-to-world ``c2w`` (OpenGL axes, :mod:`fieldcraft.data.cameras`)
    with intrinsics ``fx, fy, cx, cy`` (pixels) at ``width x height``: RGB in ``[0, 1]`` on the
    model's device. For the viewer and scripts."""
    check(width >= 1 and height >= 1, f"the view needs a positive size, got {width}x{height}")
    c2w = torch.as_tensor(c2w, dtype=torch.float32).cpu()
    check(c2w.shape in ((3, 4), (4, 4)), f"c2w must be 3x4 or 4x4, got {tuple(c2w.shape)}")
    one = lambda x: torch.tensor([float(x)])  # noqa: E731
    cams = Cameras(c2w[None, :3], one(fx), one(fy), one(cx), one(cy), int(width), int(height))
    return render_camera(model, cams, 0)


def fitted_views(meta: dict[str, Any], data_path: str | Path | None, split: str,
                 max_images: int | None = None) -> PosedImages:
    """A split of the fitted dataset (or of ``data_path``), read as the fit read its training views."""
    return load_posed_images(data_path or meta["data"], split, max_images=max_images,
                             downscale=int(meta.get("downscale", 1)), skip_missing=bool(meta.get("skip_missing", False)))


def evaluate(out_dir: str | Path, split: str = "test", data_path: str | Path | None = None,
             max_images: int | None = None, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Render every view of ``split`` to ``<out_dir>/eval/<split>/`` (the dataset's file names as
    8-bit PNGs) and write ``metrics.json``: per-view and mean PSNR and SSIM
    (:mod:`fieldcraft.metrics`) of the float renders against the views composited on the
    background, and the milliseconds each view took to render (``ms_per_view``: the mean; the
    rays, the network and the copy to the CPU, not the scoring or the PNG).
    ``max_images``: the first N views. Returns the metrics."""
    from tqdm.auto import tqdm

    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json

    model, meta = _load(out_dir, device)
    data = fitted_views(meta, data_path, split, max_images)
    bg = model.background.cpu()
    dest = Path(out_dir) / "eval" / split
    render_camera(model, data.cameras.rescaled(8, 8), 0)  # first-call allocations out of the timings
    views = []
    t0 = time.perf_counter()
    for k in tqdm(range(len(data)), desc=f"eval {split}", disable=not progress):
        t = time.perf_counter()
        rgb = render_camera(model, data.cameras, k).float().cpu().numpy()
        ms = 1000.0 * (time.perf_counter() - t)
        gt = composite(data.image(k), bg).numpy()
        name = Path(data.names[k]).with_suffix(".png")
        write_png(dest / name, rgb)
        views.append({"name": str(name), "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt), "ms": ms})
    seconds = time.perf_counter() - t0
    mean = lambda key: float(np.mean([v[key] for v in views])) if views else math.nan  # noqa: E731
    metrics = {"split": split, "data": str(data.source), "views": len(views), "step": meta["step"],
               "fit_seconds": meta["seconds"], "preset": model.meta["config"].get("preset"),
               "psnr": mean("psnr"), "ssim": mean("ssim"),
               "psnr_definition": PSNR_DEFINITION + "; mean over views",
               "ssim_definition": SSIM_DEFINITION + "; mean over views",
               "ms_per_view": mean("ms"), "render_seconds_per_view": seconds / max(len(views), 1),
               "threads": torch.get_num_threads(), "device": str(model.centre.device), "directory": str(dest),
               "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics


def render_orbit(out_dir: str | Path, dest: str | Path, frames: int = 60, fps: int = 30,
                 data_path: str | Path | None = None, progress: bool = True, device: str | None = None) -> Path:
    """Render an orbit (:func:`fieldcraft.render.cameras.orbit_around` of the training cameras, the first view's intrinsics) to
    the video ``dest``; returns the path written (``.gif`` when mp4 cannot be encoded,
    :func:`fieldcraft.io.video.write_video`)."""
    from tqdm.auto import tqdm

    from fieldcraft.io.video import write_video

    check(frames >= 1, f"--frames must be >= 1, got {frames}")
    model, meta = _load(out_dir, device)
    data = fitted_views(meta, data_path, "train")
    check(data.scene == "object" and not data.ndc,
          f"{data.source}: render lightfield --orbit circles object scenes only ({data.scene} scene)")
    cams = data.cameras[[0] * frames]
    cams = dataclasses.replace(cams, c2w=orbit_around(data.cameras.c2w, frames).to(cams.c2w.dtype))
    images = [render_camera(model, cams, k).float().cpu().numpy()
              for k in tqdm(range(frames), desc="render orbit", disable=not progress)]
    return write_video(Path(dest), images, fps)
