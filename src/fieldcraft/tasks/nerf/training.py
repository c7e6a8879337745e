"""Fitting a NeRF on the training core: the photometric objective and :func:`fit`.

Task = data (every pixel of the training views with its ray, :func:`training_rays`) + model
(:class:`~fieldcraft.tasks.nerf.model.NerfModel`) + volume rendering + MSE against the pixels
composited on the background; the core (:mod:`fieldcraft.train`) owns the optimiser, the
learning-rate schedule, the budget, the JIT warm-up, checkpoints and resuming.

One step of :class:`PhotometricLoss`: refresh the occupancy grid, draw a batch (``n_rays``
random pixels of all views, or every pixel of one random view for ``full_image``), choose the
background (one colour, or a random one per ray), render and backpropagate the batch in
micro-batches (their gradients add up to the whole batch's), then after the optimiser step
update the running average of the weights and adapt ``n_rays`` to ``target_samples``.
With camera refinement (``pose_refine``) a step first sets the encodings' coarse-to-fine window
from the budget's progress (``NerfModel.anneal``), the batch's rays come from the corrected
training poses, and :func:`fit` writes ``poses.json`` at the end
(:func:`~fieldcraft.tasks.nerf.outputs.write_poses`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fieldcraft.data.bounds import pixel_resolution, silhouette_aabb, visual_hull
from fieldcraft.data.scene import PosedImages, composite, forward_facing, load_posed_images
from fieldcraft.encodings import GridEncoding, HashGridConfig
from fieldcraft.errors import FieldcraftError
from fieldcraft.metrics import psnr_from_mse
from fieldcraft.render.contraction import inner_box
from fieldcraft.render.losses import sample_losses
from fieldcraft.render.rays import PixelRays, PixelTable, Rays
from fieldcraft.tasks.nerf.config import TASK, NerfConfig, nerf_config
from fieldcraft.tasks.nerf.model import NerfModel, background_colour
from fieldcraft.tasks.nerf.outputs import write_poses
from fieldcraft.train import Budget, Objective, Run, distributed
from fieldcraft.train.distributed import Shard, shard


def scene_bounds(config: NerfConfig, data: PosedImages) -> tuple[Float[Tensor, "2 3"], Bool[Tensor, "R R R"] | None]:
    """The box the field lives in and, for ``box="hull"``, the carved visual hull (``hull_resolution^3``
    cells of that box, masks grown by ``hull_dilate`` pixels, the hull by one cell); see ``NerfConfig.box``."""
    if config.contraction and not data.ndc:  # unbounded: the inner box around the cameras, contracted beyond
        return inner_box(data.cameras.c2w), None
    if config.box == "dataset" or data.ndc:
        return data.aabb, None
    if data.images.shape[-1] != 4:
        warnings.warn(f"{data.source}: no alpha channel for box={config.box!r}; using the dataset's scene box",
                      stacklevel=2)
        return data.aabb, None
    box = silhouette_aabb(data)
    if config.box != "hull":
        return box, None
    return box, visual_hull(dataclasses.replace(data, aabb=box), config.hull_resolution, dilate=config.hull_dilate,
                            grow=1)


def finest_from_views(config: NerfConfig, data: PosedImages, aabb: Float[Tensor, "2 3"]) -> NerfConfig:
    """``config`` with its hash grid's finest level lowered to the views' pixel resolution of ``aabb``
    (:func:`~fieldcraft.data.bounds.pixel_resolution`; at least twice the coarsest level, at most the
    configured finest level, which cameras inside or near the box would otherwise push far past)
    when ``config.finest_from_views`` applies: an object scene (not NDC, not contracted) whose
    position encoding is a hash grid. Otherwise ``config`` unchanged."""
    pe = getattr(config.field, "position_encoding", None)
    if not config.finest_from_views or data.ndc or config.contraction or not isinstance(pe, HashGridConfig):
        return config
    finest = min(max(pixel_resolution(data.cameras, aabb), 2 * pe.base_resolution), pe.max_resolution)
    return config.replace(field=config.field.replace(position_encoding=pe.replace(max_resolution=finest)))


def training_rays(model: NerfModel, data: PosedImages) -> tuple[PixelRays, PixelTable]:
    """The ray (clipped to the model's box and hull) and the pixel (RGB or straight RGBA) of every
    pixel of every view, view-major, on the model's device: rays made per batch when indexed
    (:class:`~fieldcraft.render.rays.PixelRays`), pixels kept as stored (``uint8``) and given as
    float32 (:class:`~fieldcraft.render.rays.PixelTable`). With pose refinement the rays come from
    the corrected poses and carry their graph (``NerfModel.rays(..., refine=True)``)."""
    n, h, w = len(data), data.height, data.width
    device = model.aabb.device
    cams = data.cameras.to(device)
    rays = PixelRays(lambda cam, u, v: model.rays(cams, cam, u, v, data.near, data.far, refine=True), n, h, w, device)
    return rays, PixelTable(data.images.to(device).reshape(n * h * w, -1))


class PhotometricLoss(Objective):
    """Mean squared error between rendered and true colours of random ray batches (module docstring).

    ``rays``, ``pixels``: every training pixel (:func:`training_rays`); ``pixels_per_view``: ``H * W``
    (``full_image`` batches); ``model``: the trained model, whose weights :meth:`after_step` averages
    (``ema_decay > 0``). The loss itself renders with the model it is given (a copy during warm-up).
    Checkpointed state: the averaged weights, the adaptive ray count and the rays seen."""

    def __init__(self, config: NerfConfig, rays: Rays, pixels: Float[Tensor, "n c"], pixels_per_view: int,
                 model: NerfModel) -> None:
        self.config, self.rays, self.pixels, self.pixels_per_view = config, rays, pixels, pixels_per_view
        self.model = model
        self.generators = {"batches": torch.Generator().manual_seed(config.seed + 1)}
        self.n_rays = config.rays
        self.rays_seen = 0
        self.ema = ({n: p.detach().clone() for n, p in model.named_parameters()} if config.ema_decay > 0 else None)
        self._last = (0, 0)  # (rays, samples) of the last batch
        self.progress: Callable[[int], float] | None = None  # step -> fraction of the budget (set by fit)

    def batch(self) -> tuple[Rays, Float[Tensor, "m c"]]:
        """Rays and pixels of the next batch (drawn with the ``batches`` generator)."""
        c, gen, device = self.config, self.generators["batches"], self.pixels.device
        if c.full_image:
            k = int(torch.randint(0, len(self.pixels) // self.pixels_per_view, (1,), generator=gen))
            idx = torch.arange(k * self.pixels_per_view, (k + 1) * self.pixels_per_view, device=device)
        else:
            idx = torch.randint(0, len(self.pixels), (self.n_rays,), generator=gen).to(device)
        return self.rays[idx], self.pixels[idx]

    def background(self, m: int) -> Float[Tensor, "#m 3"]:
        """The training background: one colour ``[1, 3]``, or a random colour per ray (``random``)."""
        device = self.pixels.device
        if self.config.background == "random":
            return torch.rand(m, 3, generator=self.generators["batches"]).to(device)
        return background_colour(self.config.background, device)[None]

    def loss(self, model: NerfModel, step: int) -> tuple[None, dict[str, float]]:
        c = self.config
        refining = model.poses is not None
        if refining and self.progress is not None:  # BARF: open the encoding's levels with the budget
            model.anneal(self.progress(step))
        model.update_grid(step)
        rays, pix = self.batch()
        bg = self.background(len(rays))
        target = composite(pix, bg)
        m = len(rays)
        piece = c.micro_batch_rays if c.micro_batch_rays > 0 else m
        mse = loss_sum = 0.0
        samples = 0
        # Rays that miss the box render the background whatever the weights: their error is a constant.
        hit = rays.t_max > rays.t_min
        if not bool(hit.all()):
            miss = ~hit
            err = float(torch.sum(((bg[miss] if len(bg) > 1 else bg) - target[miss]) ** 2)) / (m * 3)
            mse, loss_sum = mse + err, loss_sum + (2 * err if model.fine is not None else err)
        ids = hit.nonzero().squeeze(-1)
        part = shard(len(ids), allow_empty=True)  # this rank's hit rays (all of them in one process)
        miss_mse, miss_loss = mse, loss_sum
        regularised = c.distortion_weight > 0 or c.sampler == "proposal"
        with rank_jitter(c, step, part, self.pixels.device):
            for s in range(part.slice.start, part.slice.stop, piece):
                sl = ids[s:min(s + piece, part.slice.stop)]
                out = model.render(rays[sl], bg[sl] if len(bg) > 1 else bg, train=True, step=step,
                                   with_samples=regularised)
                # Sums over the piece divided by the whole batch's size: the pieces' losses add up to the batch mean.
                err = torch.sum((out["rgb"] - target[sl]) ** 2) / (m * 3)
                loss = err + (torch.sum((out["rgb_coarse"] - target[sl]) ** 2) / (m * 3) if "rgb_coarse" in out else 0.0)
                if regularised:  # distortion + interlevel losses (docs/nerf.md "Real captures"), batch means
                    loss = loss + sample_losses(out, len(sl), c.distortion_weight, c.interlevel_weight) / m
                loss.backward(retain_graph=refining)  # the pieces share the rays' graph (pose corrections)
                mse += float(err.detach())
                loss_sum += float(loss.detach())
                samples += int(out["samples"])
        reg = field_regularization(model, step)  # a field's own term (Plenoxels' total variation), once a step
        if reg is not None:
            reg = reg / distributed.world()[1] if distributed.active() else reg  # each rank adds its share
            reg.backward()
            loss_sum += float(reg.detach())
        if distributed.active():  # the global batch's figures on every rank (adaptive ray count, logs)
            hit_mse, hit_loss, samples = distributed.all_sum([mse - miss_mse, loss_sum - miss_loss, samples])
            mse, loss_sum, samples = miss_mse + hit_mse, miss_loss + hit_loss, int(samples)
            self._last = (m, samples)
            return None, {"loss": loss_sum if distributed.is_main() else 0.0,  # the core sums "loss" over ranks
                          "psnr": psnr_from_mse(mse), "rays": float(m), "spr": samples / max(m, 1)}
        self._last = (m, samples)
        return None, {"loss": loss_sum, "psnr": psnr_from_mse(mse), "rays": float(m), "spr": samples / max(m, 1)}

    def after_step(self, step: int) -> None:
        c = self.config
        m, samples = self._last
        self.rays_seen += m
        if self.ema is not None:
            d = min(c.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    self.ema[n].lerp_(p, 1 - d)
        if c.target_samples > 0 and not c.full_image:
            ratio = c.target_samples / max(samples, 1)
            self.n_rays = int(min(max(self.n_rays * min(max(ratio, 0.5), 1.5), 256), c.max_rays))

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"ema.{n}": t for n, t in self.ema.items()} if self.ema is not None else {}
        return tensors, {"n_rays": self.n_rays, "rays_seen": self.rays_seen}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema = {n: tensors[f"ema.{n}"].to(t.device).clone() if f"ema.{n}" in tensors else t
                        for n, t in self.ema.items()}
        self.n_rays = int(meta.get("n_rays", self.n_rays))
        self.rays_seen = int(meta.get("rays_seen", 0))


def field_regularization(model: NerfModel, step: int) -> Tensor | None:
    """The sum of the ``regularization(step)`` terms the model's fields offer (e.g.
    :meth:`fieldcraft.fields.plenoxels.PlenoxelField.regularization`), or None when none does."""
    terms = [f.regularization(step) for f in (model.field, model.fine) if hasattr(f, "regularization")]
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


@contextlib.contextmanager
def rank_jitter(config: NerfConfig, step: int, part: Shard, device: torch.device) -> Iterator[None]:
    """The random sample offsets of this rank's rays when fitting as several ranks (a no-op in one process).

    On the CPU the occupancy sampler draws one offset per ray (:func:`~fieldcraft.render.occupancy_grid.march`),
    the stratified sampler without a fine field ``n_samples`` per ray
    (:func:`~fieldcraft.render.samplers.interval_points`), in ray order from torch's global
    generator: skipping the draws of the rays before this rank's part, and after it, gives each ray
    the offsets a single process gives it and leaves every rank's generator where a single process
    leaves it (the occupancy-grid updates then agree). Otherwise (a fine field interleaves its
    draws; CUDA's generator) this rank's offsets come from a generator seeded with
    ``(seed, step, rank)``, restored afterwards: same distribution, not the single process's numbers."""
    if not distributed.active():
        yield
        return
    stratified = config.sampler == "stratified" and config.fine_field is None
    per_ray = 1 if config.sampler == "occupancy" else config.n_samples if stratified else 0
    if per_ray and device.type == "cpu":
        torch.rand(part.slice.start * per_ray)
        yield
        torch.rand((part.total - part.slice.stop) * per_ray)
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed((config.seed * 1_000_003 + step) * 4096 + distributed.world()[0])
        yield


def has_grid(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a grid encoding (it then gets Instant-NGP's Adam, ``NerfConfig.optimizer``)."""
    return any(isinstance(m, GridEncoding) for m in model.modules())


def fit(config: NerfConfig | None, data_path: str | Path, out: str | Path, budget: Budget | None = None, *,
        resume: bool = False, progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
        overwrite: bool = False, max_images: int | None = None, checkpoint_seconds: float = 60.0,
        downscale: int | None = None, skip_missing: bool = False,
        frames: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Fit a radiance field to ``data_path``'s training split; checkpoint (prefix ``model``) and
    ``history.jsonl`` in ``out``. Returns a summary (``stopped`` names the signal that ended the run
    early, if one did).

    ``config`` None: the default preset for the dataset. ``budget`` None: the stored budget when
    resuming (a fresh run needs one). ``given``: the option names the user set (on resume, stored
    settings are kept and the differing given ones reported). ``max_images``: only the first N views.
    ``downscale``, ``skip_missing``: :func:`~fieldcraft.data.scene.load_posed_images` (stored in the
    checkpoint, which evaluation and rendering read the same way; None: 1, or the stored factor
    when resuming). ``frames``: fit only these views of the training split (indices after
    ``max_images``; stored in the checkpoint as ``frames``, kept when resuming; a block of
    :mod:`~fieldcraft.tasks.nerf.blocks`); None: every view."""
    from fieldcraft.runtime import default_device

    if config is None:
        config = nerf_config(ndc=forward_facing(data_path))
    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, device=device or default_device(),
                   overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    if downscale is None:
        downscale = int(run.meta.get("downscale", 1)) if run.resumed else 1
    data = load_posed_images(data_path, "train", max_images=max_images, downscale=downscale,
                             skip_missing=skip_missing)
    if run.resumed and run.meta.get("frames") is not None:
        frames = tuple(run.meta["frames"])
    if frames is not None:
        bad = [i for i in frames if not 0 <= i < len(data)]
        if bad or not frames:
            raise FieldcraftError(f"{data.source}: frames {bad[:3] or '[]'} not among the {len(data)} training views")
        data = data.subset(list(frames))
    if run.resumed:  # the box and hull the run was fitted in (the training rays are clipped to them)
        aabb, hull = torch.tensor(run.meta["aabb"], dtype=data.aabb.dtype), run.tensors.get("model.hull.binary")
    else:
        aabb, hull = scene_bounds(config, data)
        fitted = finest_from_views(config, data, aabb)
        if config.finest_from_views and fitted.field != config.field and distributed.is_main():
            print(f"fit nerf: finest hash-grid level {fitted.field.position_encoding.max_resolution} cells "
                  f"(a cell about a pixel wide in the training views; finest_from_views)", flush=True)
        run.config = config = fitted
    torch.manual_seed(config.seed)
    model = NerfModel(config, aabb, data.ndc, n_images=len(data))
    if hull is not None and model.hull is not None:
        model.hull.binary.copy_(hull.cpu())
    model = model.to(run.device)
    rays, pixels = training_rays(model, dataclasses.replace(data, aabb=aabb))
    objective = PhotometricLoss(config, rays, pixels, data.height * data.width, model)
    meta = {"data": str(Path(data_path).resolve()), "ndc": data.ndc, "aabb": aabb.tolist(), "near": data.near,
            "far": data.far, "downscale": downscale, "skip_missing": skip_missing,
            "n_images": len(data), **({"frames": list(frames)} if frames is not None else {})}
    trainer = run.trainer(model, objective, config.optimizer(has_grid(model)), meta=meta, prefix="model",
                          checkpoint_seconds=checkpoint_seconds, log_every=10,
                          description=f"fit nerf [{config.preset}]", progress=progress)
    objective.progress = lambda step: trainer.budget.progress(step, trainer.seconds)
    outcome = trainer.run()
    if model.poses is not None and distributed.is_main():
        write_poses(run.out / "poses.json", model, data, outcome.step)
    history = outcome.history
    return {"steps": outcome.step, "fit_seconds": outcome.seconds, "preset": config.preset, "out": str(run.out),
            "rays_per_second": objective.rays_seen / outcome.seconds if outcome.seconds > 0 else None,
            "train_psnr": history.values[-1].get("psnr") if history.values else None, "device": str(run.device),
            "stopped": outcome.stopped}
