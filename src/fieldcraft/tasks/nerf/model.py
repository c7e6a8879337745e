"""The NeRF model: radiance field(s), occupancy grid, visual hull, and how a ray batch is rendered.

:class:`NerfModel` is one ``nn.Module`` holding everything a checkpoint must restore (the
fields' weights, the occupancy grid's estimates, the carved hull), so a deep copy of it (the
training core's warm-up) renders exactly as the model does.

Rendering a batch of :class:`~fieldcraft.render.rays.Rays`:

1. rays are clipped to the scene box when made (:meth:`NerfModel.rays`) and, for ``box="hull"``,
   narrowed to their stretch through the visual hull (:meth:`NerfModel.clip_rays`); rays left
   with an empty range show the background and cost nothing (:meth:`NerfModel.render`);
2. samples: ``occupancy`` marches fixed steps through occupied cells (packed samples, early
   termination after a no-grad density pass); ``stratified`` takes ``n_samples`` jittered
   intervals per ray (padded), plus ``n_importance`` inverse-CDF samples for the fine field;
3. compositing (:mod:`fieldcraft.render.compositing`): weights from densities, colour, opacity,
   expected depth, then ``rgb + (1 - opacity) * background``.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from fieldcraft.data.cameras import Cameras
from fieldcraft.encodings import coarse_to_fine
from fieldcraft.encodings.annealing import WindowedEncoding
from fieldcraft.fields.appearance import AppearanceField
from fieldcraft.fields.radiance import RadianceField
from fieldcraft.render.compositing import accumulate, apply_background, weights_from_densities
from fieldcraft.render.contraction import CONTRACTED_BOX, contract, contracted_march, contraction_scale
from fieldcraft.render.losses import distance_from_normalized, normalized_distance
from fieldcraft.render.occupancy_grid import BinaryGrid, OccupancyGrid, march, occupied_range, termination_mask
from fieldcraft.render.pose_refinement import PoseCorrections
from fieldcraft.render.proposal import ProposalField, anneal_power, interlevel_loss, pdf_edges, uniform_edges
from fieldcraft.render.rays import Rays, make_rays, pixel_centres
from fieldcraft.render.samplers import interval_points, merge_edges, sample_pdf, stratified_edges
from fieldcraft.tasks.nerf.config import NerfConfig

Rendered = dict[str, Tensor | int]


def background_colour(name: str, device: torch.device | str = "cpu") -> Float[Tensor, " 3"]:
    """The evaluation background of a training background mode (``random`` evaluates on white).

    >>> background_colour("black").tolist(), background_colour("random").tolist()
    ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    """
    return torch.zeros(3, device=device) if name == "black" else torch.ones(3, device=device)


def hit_samples(part: Rendered, idx: Int[Tensor, " h"], m: int) -> Rendered:
    """The sample outputs of :meth:`NerfModel.render` (``with_samples``) for the rays ``idx`` of ``m``
    as outputs for all ``m``: ray indices mapped to ``idx``, ``interlevel`` 0 for the other rays."""
    out = {k: part[k] for k in ("s_starts", "s_ends", "weights") if k in part}
    if "ray_indices" in part:
        out["ray_indices"] = idx[part["ray_indices"]]
    if "interlevel" in part:
        out["interlevel"] = part["interlevel"].new_zeros(m).index_copy(0, idx, part["interlevel"])
    return out


class NerfModel(nn.Module):
    """Field(s) + occupancy grid + hull + the rendering procedure of a :class:`NerfConfig`, over the
    box ``aabb`` ``[2, 3]`` (world units; NDC box for forward-facing scenes, ``ndc=True``).

    Modules: ``field``, ``fine`` (or None), ``grid`` (:class:`OccupancyGrid` for the ``occupancy``
    sampler, else None), ``hull`` (:class:`BinaryGrid` for ``box="hull"``, else None).

    ``contraction`` (unbounded scenes): ``aabb`` is the inner box (buffer ``box``); field and grid
    live in contracted space ``[-2, 2]^3`` (:mod:`fieldcraft.render.contraction`).
    ``appearance_dim > 0``: the field is an :class:`~fieldcraft.fields.appearance.AppearanceField`
    with a code for each of ``n_images`` training images (``Rays.camera`` while training).
    ``pose_refine``: ``poses`` (:class:`~fieldcraft.render.pose_refinement.PoseCorrections`, one
    correction per training image, used by :meth:`rays` with ``refine=True``) and the fields'
    position encodings wrapped in :class:`~fieldcraft.encodings.annealing.WindowedEncoding`
    (:meth:`anneal`); else ``poses`` is None."""

    def __init__(self, config: NerfConfig, aabb: Float[Tensor, "2 3"], ndc: bool, n_images: int = 0) -> None:
        super().__init__()
        self.config, self.ndc = config, ndc
        self.contracted = config.contraction and not ndc
        if self.contracted:
            self.register_buffer("box", aabb.clone().float())
            inner_diag = float((aabb[1] - aabb[0]).norm())
            aabb = torch.tensor(CONTRACTED_BOX, device="cpu")  # a real tensor even when built on "meta"
        if config.appearance_dim > 0:
            self.field = AppearanceField(config.field, aabb, n_images, config.appearance_dim)
        else:
            self.field = config.field.build(aabb)
        self.fine = config.fine_field.build(aabb) if config.fine_field is not None and config.n_importance > 0 else None
        self.grid = OccupancyGrid(aabb, config.grid_resolution) if config.sampler == "occupancy" else None
        self.proposals = (nn.ModuleList([ProposalField(aabb, r) for r in config.proposal_resolutions])
                          if config.sampler == "proposal" else None)  # density-only fields of the proposal sampler
        self.hull = BinaryGrid(aabb, config.hull_resolution) if config.box == "hull" and not ndc else None
        diag = float((aabb[1] - aabb[0]).norm())
        self.step_size = (1.0 if ndc else diag) / config.render_steps
        if self.contracted:  # the occupancy grid's step: a 1024th of the inner box's diagonal (nerfacc-like)
            self.step_size = inner_diag / 1024
        self.poses = None
        if config.pose_refine:  # BARF: pose corrections (translations in box diagonals) + coarse-to-fine encodings
            box = self.aabb
            self.poses = PoseCorrections(n_images, config.pose_lr / config.lr, float((box[1] - box[0]).norm()))
            for field in (self.field, self.fine):
                if field is not None:
                    field.position_encoding = WindowedEncoding(field.position_encoding, config.c2f_start,
                                                               config.c2f_end)

    @property
    def aabb(self) -> Float[Tensor, "2 3"]:
        """The box the model was fitted in (world units; the inner box of a contracted model)."""
        return self.box if self.contracted else self.field.aabb

    def field_points(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        """World points in the field's coordinates: contracted (``contraction``), else as they are."""
        if not self.contracted:
            return x
        centre, half = 0.5 * (self.box[0] + self.box[1]), 0.5 * (self.box[1] - self.box[0]).max()
        return contract((x - centre) / half)

    def grid_density(self, y: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        """Density at grid points (field coordinates) for the occupancy grid; in contracted space
        scaled by the world length of a contracted step (:func:`~fieldcraft.render.contraction.contraction_scale`)."""
        sigma = self.field.density(y)
        return sigma * contraction_scale(y) if self.contracted else sigma

    # --- rays
    def rays(self, cameras: Cameras, cam: Int[Tensor, " m"], u: Float[Tensor, " m"], v: Float[Tensor, " m"],
             near: float, far: float, refine: bool = False) -> Rays:
        """Rays through pixel coordinates ``(u, v)`` of cameras ``cam``, clipped to the model's box and
        ``[near, far]`` (:func:`~fieldcraft.render.rays.make_rays`) and to the hull (:meth:`clip_rays`).
        ``refine`` (``cameras`` are the training views): their poses corrected by ``poses``
        (differentiably; a no-op without pose refinement)."""
        if refine and self.poses is not None:
            cameras = dataclasses.replace(cameras, c2w=self.poses(cameras.c2w))
        return self.clip_rays(make_rays(cameras, cam, u, v, near, far, None if self.contracted else self.aabb, self.ndc))

    def view_rays(self, cameras: Cameras, index: int, near: float, far: float) -> Rays:
        """The rays of every pixel of camera ``index`` (row-major), on the model's device."""
        device = self.aabb.device
        u, v = pixel_centres(cameras.height, cameras.width, device)
        cam = torch.full_like(u, index, dtype=torch.long)
        return self.rays(cameras.to(device), cam, u, v, near, far)

    def clip_rays(self, rays: Rays) -> Rays:
        """``rays`` with each range narrowed to its stretch through the visual hull (``box="hull"``;
        rays that miss it get an empty range); unchanged for other models."""
        if self.hull is None:
            return rays
        step = 0.5 * float((self.hull.aabb[1] - self.hull.aabb[0]).min()) / self.hull.resolution
        return rays.with_range(*occupied_range(self.hull, rays.origins, rays.dirs, rays.t_min, rays.t_max, step))

    def anneal(self, progress: float) -> None:
        """Open the position encodings' levels / bands for training ``progress`` in ``[0, 1]``
        (:class:`~fieldcraft.encodings.annealing.WindowedEncoding`; no-op without pose refinement)."""
        for m in self.modules():
            if isinstance(m, WindowedEncoding):
                m.set_progress(progress)

    # --- occupancy grid
    def update_grid(self, step: int) -> None:
        """Refresh the occupancy grid every ``grid_update_every`` steps (no-op without one), after bringing
        coarse-to-fine encodings to this step's resolution (:func:`~fieldcraft.encodings.coarse_to_fine`)."""
        coarse_to_fine(self, step)
        c = self.config
        if self.grid is not None and step % c.grid_update_every == 0:
            self.grid.update(step, self.grid_density, self.step_size, c.grid_decay, c.grid_threshold, c.grid_warmup)

    # --- rendering
    def render(self, rays: Rays, background: Float[Tensor, "#m 3"], train: bool = False, step: int | None = None,
               with_samples: bool = False) -> Rendered:
        """Render rays: ``rgb`` ``[m, 3]`` (over ``background``, one colour or one per ray), ``opacity``
        ``[m, 1]``, ``depth`` ``[m, 1]`` (expected distance along the ray where opaque; NDC ``t`` for NDC
        scenes), ``samples`` (int), and ``rgb_coarse`` for a model with a fine field.
        ``train`` jitters the samples. Rays with an empty range show the background and cost nothing.
        ``with_samples`` (``occupancy`` and ``proposal`` samplers) adds the radiance field's packed
        samples for the distortion loss: ``ray_indices``, ``s_starts``, ``s_ends`` (normalised ray
        distance, :func:`~fieldcraft.render.losses.normalized_distance`), ``weights`` ``[s]``, and for
        ``proposal`` the proposal fields' ``interlevel`` loss per ray ``[m]``."""
        hit = rays.t_max > rays.t_min
        if bool(hit.all()):
            return self._render_hits(rays, background, train, step, with_samples)
        m = len(rays)
        bg = background.expand(m, 3)
        idx = hit.nonzero().squeeze(-1)
        empty = {"rgb": bg, "rgb_coarse": bg, "opacity": bg.new_zeros(m, 1), "depth": bg.new_zeros(m, 1)}
        if len(idx) == 0:
            return {"rgb": bg.clone(), "opacity": empty["opacity"], "depth": empty["depth"], "samples": 0}
        part = self._render_hits(rays[idx], bg[idx], train, step, with_samples)
        out = {k: v if k == "samples" else empty[k].index_copy(0, idx, v) for k, v in part.items()
               if k in empty or k == "samples"}
        return out | hit_samples(part, idx, m)

    def _render_hits(self, rays: Rays, background: Tensor, train: bool, step: int | None,
                     with_samples: bool = False) -> Rendered:
        if self.proposals is not None:
            return self._render_proposal(rays, background, train, step, with_samples)
        if self.grid is not None:
            return self._render_packed(rays, background, train, step, with_samples)
        return self._render_stratified(rays, background, train)

    def _march(self, rays: Rays, train: bool, step: int | None, terminate: bool = True
               ) -> tuple[Int[Tensor, " s"], Float[Tensor, " s"], Float[Tensor, " s"], dict[str, Tensor]]:
        """The ``occupancy`` sampler's packed intervals ``(ri, t0, t1)`` (no gradient): marched through the
        grid (jittered when ``train``), then, with ``terminate``, early ray termination after a density
        pass at the midpoints. The last item is ``{"encoded": ...}``: that pass's position encoding of the
        kept midpoints, for a :class:`RadianceField` to reuse (:meth:`_shade`), or ``{}``."""
        c = self.config
        with torch.no_grad():
            if self.contracted:
                ri, t0, t1 = contracted_march(self.grid, rays.origins, rays.dirs, rays.t_min, rays.t_max, self.box,
                                              c.render_steps, jitter=train)
            else:
                ri, t0, t1 = march(self.grid, rays.origins, rays.dirs, rays.t_min, rays.t_max, self.step_size,
                                   jitter=train)
            if not (terminate and c.early_stop_eps > 0 and len(ri)):
                return ri, t0, t1, {}
            fx = self.field_points(rays.origins[ri] + (0.5 * (t0 + t1))[:, None] * rays.dirs[ri])
            extra = {"encoded": self.field.encode(fx)} if isinstance(self.field, RadianceField) else {}
            sig = self.field.density(fx, **extra)
            alpha_thre = c.alpha_threshold if (step is None or step >= c.grid_warmup) else 0.0
            keep = termination_mask(sig, t0, t1, ri, c.early_stop_eps, alpha_thre)
            return ri[keep], t0[keep], t1[keep], {k: v[keep] for k, v in extra.items()}

    def _shade(self, points: Float[Tensor, "s 3"], rays: Rays, ri: Int[Tensor, " s"], train: bool,
               extra: dict[str, Tensor]) -> tuple[Float[Tensor, " s"], Float[Tensor, "s 3"]]:
        """Density and colour at field ``points`` seen along rays ``ri`` (``extra``: from :meth:`_march`)."""
        if self.config.appearance_dim > 0:  # training images' own codes while training, else the mean code
            camera = rays.camera[ri] if train and rays.camera is not None else None
            return self.field(points, rays.viewdirs[ri], camera, **extra)
        return self.field(points, rays.viewdirs[ri], **extra)

    def samples(self, rays: Rays, train: bool = False, step: int | None = None, colour: bool = True,
                terminate: bool = True) -> dict[str, Tensor]:
        """The packed samples the ``occupancy`` sampler composites for ``rays`` (each with a non-empty
        range), as :meth:`render` draws them: ``ri`` (ray of each sample), ``t0``, ``t1``, ``sigma``,
        ``weights`` ``[s]``, ``points`` ``[s, 3]`` (field coordinates, :meth:`field_points`) and, when
        ``colour``, ``rgb`` ``[s, 3]``. ``terminate=False`` keeps the samples behind opaque ones (no
        early termination: what an edit that removes matter needs). For code that composites its own
        values with the field's weights (feature fields, :mod:`~fieldcraft.tasks.nerf.features`)."""
        ri, t0, t1, extra = self._march(rays, train, step, terminate)
        points = self.field_points(rays.origins[ri] + (0.5 * (t0 + t1))[:, None] * rays.dirs[ri])
        out = {"ri": ri, "t0": t0, "t1": t1, "points": points}
        if not colour:
            out["sigma"] = self.field.density(points, **extra)
        else:
            out["sigma"], out["rgb"] = self._shade(points, rays, ri, train, extra)
        out["weights"] = weights_from_densities(out["sigma"], t0, t1, ri)[0]
        return out

    def _render_packed(self, rays: Rays, bg: Tensor, train: bool, step: int | None, with_samples: bool = False
                       ) -> Rendered:
        m = len(rays)
        ri, t0, t1, extra = self._march(rays, train, step)
        mid = 0.5 * (t0 + t1)
        sigma, rgb = self._shade(self.field_points(rays.origins[ri] + mid[:, None] * rays.dirs[ri]), rays, ri, train,
                                 extra)
        w, _, _ = weights_from_densities(sigma, t0, t1, ri)
        colour = accumulate(w, rgb, ri, m)
        opacity = accumulate(w, None, ri, m)
        depth = accumulate(w, mid[:, None], ri, m) / opacity.clamp(min=1e-10)
        out = {"rgb": apply_background(colour, opacity, bg), "opacity": opacity, "depth": depth, "samples": len(ri)}
        if with_samples:  # the distortion loss's inputs (render's docstring)
            s0, s1 = (normalized_distance(x, rays.t_min[ri], rays.t_max[ri], self.inner_half()) for x in (t0, t1))
            out |= {"ray_indices": ri, "s_starts": s0, "s_ends": s1, "weights": w}
        return out

    def inner_half(self) -> float | None:
        """Half the side of the inner box of a contracted model (the unit of its ray spacing,
        :func:`~fieldcraft.render.contraction.spacing`), else None (rays spaced linearly)."""
        return 0.5 * float((self.box[1] - self.box[0]).max()) if self.contracted else None

    def _render_proposal(self, rays: Rays, bg: Tensor, train: bool, step: int | None, with_samples: bool = False
                         ) -> Rendered:
        """The ``proposal`` sampler (:mod:`fieldcraft.render.proposal`): intervals uniform in normalised
        ray distance -> each proposal field's weights -> intervals drawn from the last histogram for the
        radiance field (``proposal_samples``), composited padded. ``samples`` counts the radiance field's."""
        c, m, device = self.config, len(rays), rays.origins.device
        half, power = self.inner_half(), anneal_power(step, c.proposal_anneal_steps) if train else 1.0

        def points(edges: Tensor) -> tuple[Tensor, Tensor]:  # world t of the edges, field points of the midpoints
            t = distance_from_normalized(edges, rays.t_min[:, None], rays.t_max[:, None], half)
            mid = 0.5 * (t[:, :-1] + t[:, 1:])
            return t, self.field_points((rays.origins[:, None, :] + mid[..., None] * rays.dirs[:, None, :]).reshape(-1, 3))

        edges, levels = uniform_edges(m, c.proposal_samples[0], train, device), []
        for k, prop in enumerate(self.proposals):
            if k:
                edges = pdf_edges(edges, levels[-1][1] ** power, c.proposal_samples[k], train)
            t, pts = points(edges)
            sigma = prop.density(pts).reshape(m, -1)
            levels.append((edges, weights_from_densities(sigma, t[:, :-1], t[:, 1:])[0]))
        n = c.proposal_samples[-1]
        edges = pdf_edges(edges, levels[-1][1] ** power, n, train)
        t, pts = points(edges)
        vd = rays.viewdirs[:, None, :].expand(m, n, 3).reshape(-1, 3)
        with torch.autocast(pts.device.type, dtype=torch.bfloat16, enabled=c.bf16):
            if c.appearance_dim > 0:  # training images' own codes while training, else the mean code
                camera = rays.camera[:, None].expand(m, n).reshape(-1) if train and rays.camera is not None else None
                sigma, rgb = self.field(pts, vd, camera)
            else:
                sigma, rgb = self.field(pts, vd)
        sigma, rgb = sigma.float().reshape(m, n), rgb.float().reshape(m, n, 3)
        w = weights_from_densities(sigma, t[:, :-1], t[:, 1:])[0]
        opacity = accumulate(w)
        out = {"rgb": apply_background(accumulate(w, rgb), opacity, bg), "opacity": opacity,
               "depth": accumulate(w, 0.5 * (t[:, :-1] + t[:, 1:])[..., None]) / opacity.clamp(min=1e-10),
               "samples": m * n}
        if with_samples:
            out |= {"ray_indices": torch.arange(m, device=device).repeat_interleave(n),
                    "s_starts": edges[:, :-1].reshape(-1), "s_ends": edges[:, 1:].reshape(-1), "weights": w.reshape(-1),
                    "interlevel": sum(interlevel_loss(edges, w, e, pw) for e, pw in levels) / n}
        return out

    def _composite_padded(self, field: RadianceField, rays: Rays, edges: Float[Tensor, "m n+1"],
                          t: Float[Tensor, "m n"], bg: Tensor) -> tuple[Rendered, Float[Tensor, "m n"]]:
        m, n = t.shape
        pts = rays.origins[:, None, :] + t[..., None] * rays.dirs[:, None, :]
        vd = rays.viewdirs[:, None, :].expand(m, n, 3).reshape(-1, 3)
        with torch.autocast(pts.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            sigma, rgb = field(pts.reshape(-1, 3), vd)
        sigma, rgb = sigma.float().reshape(m, n), rgb.float().reshape(m, n, 3)
        w, _, _ = weights_from_densities(sigma, edges[:, :-1], edges[:, 1:])
        opacity = accumulate(w)
        out = {"rgb": apply_background(accumulate(w, rgb), opacity, bg), "opacity": opacity,
               "depth": accumulate(w, t[..., None]) / opacity.clamp(min=1e-10), "samples": m * n}
        return out, w

    def _render_stratified(self, rays: Rays, bg: Tensor, train: bool) -> Rendered:
        c = self.config
        edges = stratified_edges(rays.t_min, rays.t_max, c.n_samples)
        t = interval_points(edges, jitter=train)
        out, w = self._composite_padded(self.field, rays, edges, t, bg)
        if self.fine is None:
            return out
        extra = sample_pdf(edges, w.detach(), c.n_importance, deterministic=not train)
        fine_edges = merge_edges(edges, extra.detach())
        fine_t = 0.5 * (fine_edges[:, :-1] + fine_edges[:, 1:])
        fine, _ = self._composite_padded(self.fine, rays, fine_edges, fine_t, bg)
        fine["rgb_coarse"] = out["rgb"]
        fine["samples"] = out["samples"] + fine["samples"]
        return fine

    @torch.no_grad()
    def render_image(self, rays: Rays, background: Float[Tensor, "#m 3"], height: int, width: int,
                     chunk: int = 8192) -> dict[str, Tensor]:
        """Render ``height * width`` rays (row-major, made by :meth:`rays` / :meth:`view_rays`) in chunks:
        ``rgb`` ``[H, W, 3]`` in ``[0, 1]``, ``depth`` ``[H, W]``, ``opacity`` ``[H, W]``, on the rays' device."""
        parts: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
        if self.config.sampler == "stratified":
            chunk = max(256, (1 << 18) // (self.config.n_samples + self.config.n_importance))
        for s in range(0, len(rays), chunk):
            out = self.render(rays[s:s + chunk], background, train=False)
            for k, chunks in parts.items():
                chunks.append(out[k])
        return {"rgb": torch.cat(parts["rgb"]).clamp(0, 1).reshape(height, width, 3),
                "depth": torch.cat(parts["depth"]).reshape(height, width),
                "opacity": torch.cat(parts["opacity"]).reshape(height, width)}
