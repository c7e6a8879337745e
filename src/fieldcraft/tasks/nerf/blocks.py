"""Scenes in blocks (Block-NeRF): one field per overlapping block of cameras, composited per view.

Fitting (:func:`fit_blocks`, ``fieldcraft fit nerf DATA --blocks N``):

1. :func:`split_cameras`: ``N`` block centres by k-means (k-means++ seeding,
   :func:`scipy.cluster.vq.kmeans2`) on the training cameras' centres; camera ``i`` joins its
   nearest block and every block whose centre is at most ``(1 + overlap)`` times as far as the
   nearest one, so neighbouring blocks share the cameras near their seam. A block's radius is the
   distance from its centre to its farthest camera.
2. Each block is an ordinary NeRF run in ``DIR/block_<k>/`` fitted by
   :func:`~fieldcraft.tasks.nerf.training.fit` on its cameras (``frames``), with the budget split
   evenly between the blocks (or, with ``block=k``, one block with its own budget).
3. Once every block is fitted, :func:`match_appearance` fits a colour affine transform per block
   (:func:`fit_affine`: ``3x3`` matrix + bias, least squares with a small pull towards the
   identity) so that on the training views two neighbouring blocks share, block ``b``'s
   transformed colours match its already matched neighbour's; block 0 is the anchor (identity)
   and the others follow in breadth-first order over the graph of blocks that share cameras.

Everything is recorded in ``DIR/blocks.json`` (:class:`Layout`, strict JSON).

Compositing (:func:`render_view`, used by :func:`evaluate_blocks` and :func:`render_blocks`): a
view's blocks are weighted by inverse distance (:func:`idw_weights`: ``d^-power`` from the
camera centre to each block centre, over the blocks whose radius covers the camera, else the
nearest block); each block renders the view (blocks of weight 0 are not rendered) and the
pixels are averaged with those weights. Optional (``Layout.appearance``, ``Layout.visibility``;
off by default, the defaults chosen on lego_100's validation views, docs/scaling.md): each
block's colours go through its appearance transform first; each block's weight is multiplied
per pixel by ``opacity + 1e-3`` (a block that sees empty space where another sees the object
gives way; where every block sees nothing it is the distance weights alone).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.errors import FieldcraftError, check, reading

BLOCKS_FILE = "blocks.json"
FORMAT = "fieldcraft-nerf-blocks"
VERSION = 1
DEFAULT_OVERLAP = 0.5
# Defaults chosen on lego_100's validation split (docs/scaling.md, "Scenes in blocks"):
DEFAULT_POWER = 2.0
DEFAULT_VISIBILITY = False
DEFAULT_APPEARANCE = False
VISIBILITY_EPS = 1e-3
MATCH_VIEWS = 8  # shared training views rendered per pair of blocks for appearance matching
MATCH_PIXELS = 4096  # pixels per view at most (an even stride through the view)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A scene's blocks (``blocks.json``).

    - ``centres``: ``[N, 3]`` block centres (world units); ``radii``: ``[N]`` distance from each centre
      to its farthest camera; ``members``: the training-view indices of each block.
    - ``overlap``: the split's margin (module docstring); ``power``: the inverse-distance power;
      ``visibility``: weight each block's pixels by its opacity; ``appearance``: apply the colour
      transforms (``blocks.json`` ``compositing``: edit it to composite differently).
    - ``transforms``: per block a ``3x4`` colour transform ``[M | bias]`` (rows: output R, G, B), or
      None before the blocks are matched; ``matched_steps``: each block's step when they were.
    """

    centres: tuple[tuple[float, ...], ...]
    radii: tuple[float, ...]
    members: tuple[tuple[int, ...], ...]
    overlap: float = DEFAULT_OVERLAP
    power: float = DEFAULT_POWER
    visibility: bool = DEFAULT_VISIBILITY
    appearance: bool = DEFAULT_APPEARANCE
    transforms: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    matched_steps: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.centres)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "blocks": len(self), "overlap": self.overlap,
                "compositing": {"power": self.power, "visibility": self.visibility, "appearance": self.appearance},
                "centres": [list(c) for c in self.centres], "radii": list(self.radii),
                "cameras": [list(m) for m in self.members],
                "appearance": None if self.transforms is None else
                {"transforms": [[list(r) for r in t] for t in self.transforms],
                 "block_steps": list(self.matched_steps or ())}}

    @staticmethod
    def from_dict(d: dict[str, Any], source: str | Path) -> Layout:
        check(isinstance(d, dict) and d.get("format") == FORMAT, f"{source}: not a blocks file (format {FORMAT!r})")
        check(d.get("version") == VERSION, f"{source}: blocks file version {d.get('version')!r}, this reads {VERSION}")
        with reading(source, "blocks file"):
            n = int(d["blocks"])
            centres = tuple(tuple(float(x) for x in c) for c in d["centres"])
            radii = tuple(float(r) for r in d["radii"])
            members = tuple(tuple(int(i) for i in m) for m in d["cameras"])
            check(n >= 1 and len(centres) == len(radii) == len(members) == n and all(len(c) == 3 for c in centres)
                  and all(members), f"{source}: malformed blocks file: {n} blocks need as many centres (x, y, z), "
                                    "radii and non-empty camera lists")
            app = d.get("appearance")
            transforms = steps = None
            if app is not None:
                transforms = tuple(tuple(tuple(float(x) for x in r) for r in t) for t in app["transforms"])
                steps = tuple(int(s) for s in app["block_steps"])
                check(len(transforms) == n and all(len(t) == 3 and all(len(r) == 4 for r in t) for t in transforms),
                      f"{source}: malformed blocks file: appearance needs one 3x4 transform per block")
            comp = d["compositing"]
            check(isinstance(comp["visibility"], bool) and isinstance(comp["appearance"], bool)
                  and float(comp["power"]) >= 0, f"{source}: malformed blocks file: 'compositing' needs power >= 0 "
                                                 "and true/false visibility and appearance")
            return Layout(centres, radii, members, float(d["overlap"]), float(comp["power"]), comp["visibility"],
                          comp["appearance"], transforms, steps)


# ------------------------------------------------------------------------------------ pure pieces


def camera_centres(c2w: Float[Tensor, "n 3 4"]) -> Float[Tensor, "n 3"]:
    """The centre (translation) of each camera-to-world pose."""
    return c2w[:, :3, 3]


def split_cameras(points: Float[Tensor, "n 3"], n_blocks: int, overlap: float = DEFAULT_OVERLAP, seed: int = 0
                  ) -> tuple[Float[Tensor, "b 3"], Float[Tensor, " b"], list[list[int]]]:
    """Block centres (k-means on ``points``), radii and members (module docstring).

    >>> pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [9, 0, 0], [10, 0, 0], [5.2, 0, 0]])
    >>> centres, radii, members = split_cameras(pts, 2, overlap=0.5)
    >>> sorted(members)
    [[0, 1, 4], [2, 3, 4]]
    """
    from scipy.cluster.vq import ClusterError, kmeans2

    if not isinstance(n_blocks, int) or n_blocks < 1:
        raise FieldcraftError(f"--blocks must be a whole number >= 1, got {n_blocks!r}")
    if not (overlap >= 0 and math.isfinite(overlap)):
        raise FieldcraftError(f"--block-overlap must be a finite number >= 0, got {overlap!r}")
    pts = points.detach().double().cpu()
    distinct = len(torch.unique(pts, dim=0))
    if n_blocks > distinct:
        raise FieldcraftError(f"--blocks {n_blocks}: the scene has {distinct} distinct camera positions")
    try:
        centres, _ = kmeans2(pts.numpy(), n_blocks, minit="++", seed=seed, missing="raise")
    except ClusterError:
        raise FieldcraftError(f"--blocks {n_blocks}: k-means left a block without cameras; use fewer blocks") from None
    c = torch.from_numpy(centres)
    d = torch.cdist(pts, c)
    near = d.min(dim=1, keepdim=True).values
    inside = d <= (1.0 + overlap) * near + 1e-9
    members = [inside[:, b].nonzero().squeeze(-1).tolist() for b in range(n_blocks)]
    radii = torch.stack([d[inside[:, b], b].max() for b in range(n_blocks)])
    return c.float(), radii.float(), members


def idw_weights(points: Float[Tensor, "m 3"], centres: Float[Tensor, "b 3"], radii: Float[Tensor, " b"],
                power: float = DEFAULT_POWER) -> Float[Tensor, "m b"]:
    """Block-NeRF's inverse-distance weights of each block for cameras at ``points``: ``d^-power``
    over the blocks whose radius covers the point (else the nearest block alone), normalised to
    sum to 1; a point at a block's centre takes that block alone.

    >>> w = idw_weights(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 0, 0], [3, 0, 0]]), torch.tensor([5.0, 5]), 1)
    >>> [round(x, 4) for x in w[0].tolist()]
    [0.6667, 0.3333]
    >>> idw_weights(torch.tensor([[9.0, 0, 0]]), torch.tensor([[0.0, 0, 0], [3, 0, 0]]), torch.tensor([1.0, 1])).tolist()
    [[0.0, 1.0]]
    """
    d = torch.cdist(points.double(), centres.double().to(points.device))
    covered = d <= radii.double().to(points.device)[None] * (1 + 1e-6)
    nearest = torch.nn.functional.one_hot(d.argmin(dim=1), d.shape[1]).bool()
    use = torch.where(covered.any(dim=1, keepdim=True), covered, nearest)
    inv = torch.where(use, d.clamp_min(1e-12) ** -power, torch.zeros_like(d))
    at_centre = use & (d < 1e-9)
    inv = torch.where(at_centre.any(dim=1, keepdim=True), at_centre.double(), inv)
    return (inv / inv.sum(dim=1, keepdim=True)).to(points.dtype)


def fit_affine(source: Float[Tensor, "n 3"], target: Float[Tensor, "n 3"], ridge: float = 1e-4) -> Float[Tensor, "3 4"]:
    """The colour transform ``[M | t]`` minimising ``sum |M s + t - target|^2 + ridge n |[M | t] - [I | 0]|^2``
    (least squares with a small pull towards the identity, which keeps it defined when the colours
    span less than 3-d, e.g. a white background only).

    >>> s = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    >>> m = torch.tensor([[0.9, 0.1, 0.0, 0.05], [0.0, 1.1, 0.0, -0.02], [0.0, 0.0, 0.8, 0.1]])
    >>> bool(torch.allclose(fit_affine(s, apply_affine(s, m), ridge=0.0), m, atol=1e-4))
    True
    """
    x = torch.cat([source.double(), torch.ones(len(source), 1, dtype=torch.float64)], dim=1)
    prior = torch.eye(4, 3, dtype=torch.float64)  # [I; 0]: x @ prior = source
    lam = ridge * len(source)
    a = x.T @ x + lam * torch.eye(4, dtype=torch.float64)
    b = x.T @ target.double() + lam * prior
    return torch.linalg.solve(a, b).T.float()


def apply_affine(rgb: Float[Tensor, "*s 3"], transform: Float[Tensor, "3 4"]) -> Float[Tensor, "*s 3"]:
    """``M rgb + t`` for every colour (not clamped).

    >>> apply_affine(torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([[2.0, 0, 0, 0], [0, 1, 0, 0.1], [0, 0, 1, 0]]))
    tensor([[1.0000, 0.6000, 0.5000]])
    """
    t = transform.to(rgb)
    return rgb @ t[:, :3].T + t[:, 3]


def matching_order(members: Sequence[Sequence[int]]) -> list[tuple[int, int | None]]:
    """``(block, parent)`` in breadth-first order from block 0 over the graph of blocks sharing a
    camera (the block each is matched to; None for block 0 and for blocks sharing no camera with
    the ones before, which keep the identity).

    >>> matching_order([[0, 1], [1, 2], [5], [2, 3]])
    [(0, None), (1, 0), (3, 1), (2, None)]
    """
    sets = [set(m) for m in members]
    order: list[tuple[int, int | None]] = []
    seen: set[int] = set()
    for root in range(len(sets)):
        if root in seen:
            continue
        queue = [(root, None)]
        seen.add(root)
        while queue:
            b, parent = queue.pop(0)
            order.append((b, parent))
            for c in range(len(sets)):
                if c not in seen and sets[b] & sets[c]:
                    seen.add(c)
                    queue.append((c, b))
    return order


def appearance_transforms(members: Sequence[Sequence[int]],
                          render: Callable[[int, list[int]], Float[Tensor, "p 3"]],
                          views: int = MATCH_VIEWS) -> list[Float[Tensor, "3 4"]]:
    """One colour transform per block (module docstring, step 3): ``render(block, view_indices)``
    gives the block's colours of the same pixels of those training views. Each block is fitted
    against its parent (:func:`matching_order`) on up to ``views`` evenly spaced shared views."""
    transforms: list[Tensor] = [torch.eye(3, 4)] * len(members)
    for b, parent in matching_order(members):
        if parent is None:
            continue
        shared = sorted(set(members[b]) & set(members[parent]))
        pick = [shared[int(i)] for i in np.linspace(0, len(shared) - 1, min(views, len(shared))).round()]
        target = apply_affine(render(parent, pick), transforms[parent])
        transforms[b] = fit_affine(render(b, pick), target)
    return transforms


def composite_blocks(rgb: Float[Tensor, "b *s 3"], opacity: Float[Tensor, " b *s"], weights: Float[Tensor, " b"],
                     visibility: bool = True) -> tuple[Float[Tensor, "*s 3"], Float[Tensor, "*s 1"]]:
    """The blocks' renders averaged with ``weights`` (:func:`idw_weights`), each multiplied per pixel by
    ``opacity + 1e-3`` when ``visibility``; returns the colours and the per-pixel weights' array
    ``[b, *s, 1]`` normalised (for compositing depth and opacity alike).

    >>> rgb = torch.tensor([[[1.0, 1, 1]], [[0.0, 0, 0]]])
    >>> out, _ = composite_blocks(rgb, torch.tensor([[0.0], [1.0]]), torch.tensor([0.5, 0.5]))
    >>> [round(v, 3) for v in out[0].tolist()]
    [0.001, 0.001, 0.001]
    """
    w = weights.to(rgb).reshape(-1, *([1] * (rgb.dim() - 1)))
    if visibility:
        w = w * (opacity.to(rgb)[..., None] + VISIBILITY_EPS)
    w = w / w.sum(dim=0, keepdim=True)
    return (w * rgb).sum(dim=0), w


# ------------------------------------------------------------------------------- files and runs


def block_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"block_{k}"


def is_blocks_dir(path: str | Path) -> bool:
    """Whether ``path`` is the output of ``fit nerf --blocks``."""
    return (Path(path) / BLOCKS_FILE).is_file()


def read_layout(out: str | Path) -> Layout:
    """``out/blocks.json``, checked (one line naming the file when it is malformed)."""
    import json

    path = Path(out) / BLOCKS_FILE
    if not path.is_file():
        raise FieldcraftError(f"{path}: not found (not the output of 'fit nerf --blocks')")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FieldcraftError(f"{path}: malformed JSON ({e})") from None
    return Layout.from_dict(d, path)


def write_layout(out: str | Path, layout: Layout) -> None:
    from fieldcraft.io.records import write_json

    write_json(Path(out) / BLOCKS_FILE, layout.to_dict())


def fit_blocks(config: Any, data_path: str | Path, out: str | Path, budget: Any, n_blocks: int, *,
               block: int | None = None, overlap: float | None = None, match_colours: bool = False,
               seed: int = 0, resume: bool = False,
               progress: bool = True, device: str | None = None, given: tuple[str, ...] = (), overwrite: bool = False,
               checkpoint_seconds: float = 60.0, downscale: int | None = None, skip_missing: bool = False,
               announce: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, fit and match the blocks of ``data_path`` into ``out`` (module docstring). ``budget``
    is for all blocks together (each gets ``1 / N`` of its steps and seconds) unless ``block``
    names the one block to fit, which then gets all of it. ``overlap`` None: the stored one, or
    :data:`DEFAULT_OVERLAP`. An existing ``blocks.json`` is reused (its block count must be
    ``n_blocks``) unless ``overwrite``. ``match_colours``: composite with the colour transforms
    (``compositing.appearance``; they are fitted and stored either way). Other arguments: :func:`~fieldcraft.tasks.nerf.training.fit`."""
    from fieldcraft.data.scene import load_posed_images
    from fieldcraft.tasks.nerf.training import fit
    from fieldcraft.train import Budget, distributed

    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise FieldcraftError(f"--blocks must be a whole number >= 1, got {n_blocks!r}")
    if block is not None and not 0 <= block < n_blocks:
        raise FieldcraftError(f"--block {block}: out of range for --blocks {n_blocks} (0 to {n_blocks - 1})")
    out = Path(out)
    path = out / BLOCKS_FILE
    main = distributed.is_main()  # under torchrun (one block as a data-parallel job) rank 0 writes and matches
    if not main:
        announce = lambda message: None  # noqa: E731
    if path.is_file() and not overwrite:
        layout = read_layout(out)
        check(len(layout) == n_blocks, f"{path}: holds {len(layout)} blocks, not --blocks {n_blocks} "
                                       "(--overwrite splits the scene again)")
        check(overlap is None or overlap == layout.overlap,
              f"{path}: was split with --block-overlap {layout.overlap}, not {overlap} (--overwrite splits again)")
        if match_colours and not layout.appearance:
            layout = dataclasses.replace(layout, appearance=True)
            if main:
                write_layout(out, layout)
    elif resume:
        raise FieldcraftError(f"{path}: not found: nothing to resume")
    else:
        data = load_posed_images(data_path, "train", downscale=downscale or 1, skip_missing=skip_missing)
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
        centres, radii, members = split_cameras(camera_centres(data.cameras.c2w), n_blocks, overlap, seed)
        layout = Layout(tuple(tuple(c) for c in centres.tolist()), tuple(radii.tolist()),
                        tuple(tuple(m) for m in members), overlap, appearance=match_colours)
        if main:  # the split is deterministic: every rank computes the same
            out.mkdir(parents=True, exist_ok=True)
            write_layout(out, layout)
    announce(f"fit nerf: {n_blocks} blocks of {', '.join(str(len(m)) for m in layout.members)} of "
             f"{1 + max(max(m) for m in layout.members)} training views (overlap {layout.overlap}) -> {path}")
    todo = range(n_blocks) if block is None else [block]
    if budget is not None and block is None:
        budget = Budget(steps=None if budget.steps is None else max(1, budget.steps // n_blocks),
                        seconds=None if budget.seconds is None else budget.seconds / n_blocks)
    summaries: dict[int, dict[str, Any]] = {}
    stopped = None
    for k in todo:
        d = block_dir(out, k)
        summaries[k] = fit(config, data_path, d, budget, resume=resume and (d / "checkpoint.safetensors").is_file(),
                           progress=progress, device=device, given=given, overwrite=overwrite,
                           checkpoint_seconds=checkpoint_seconds, downscale=downscale, skip_missing=skip_missing,
                           frames=layout.members[k])
        stopped = summaries[k]["stopped"]
        if stopped:
            break
    result: dict[str, Any] = {"blocks": n_blocks, "block_sizes": [len(m) for m in layout.members],
                              "fitted": sorted(summaries), "block_steps": [s["steps"] for s in summaries.values()],
                              "fit_seconds": sum(s["fit_seconds"] for s in summaries.values()),
                              "preset": next(iter(summaries.values()))["preset"], "out": str(out),
                              "device": next(iter(summaries.values()))["device"], "stopped": stopped}
    if main and not stopped and all((block_dir(out, k) / "checkpoint.safetensors").is_file() for k in range(n_blocks)):
        t0 = time.perf_counter()
        match_appearance(out, device=device)
        result["match_seconds"] = time.perf_counter() - t0
        announce(f"fit nerf: matched the blocks' colours on shared training views in {result['match_seconds']:.1f} s")
    return result


def load_blocks(out: str | Path, averaged: bool = True, device: str | None = None
                ) -> tuple[Layout, list[Any], list[dict[str, Any]]]:
    """The layout and every block's model and checkpoint header (:func:`~fieldcraft.tasks.nerf.outputs.load_model`)."""
    from fieldcraft.tasks.nerf.outputs import load_model

    layout = read_layout(out)
    models, metas = [], []
    for k in range(len(layout)):
        d = block_dir(out, k)
        if not (d / "checkpoint.safetensors").is_file():
            raise FieldcraftError(f"{d}: block {k} of {len(layout)} has no checkpoint yet "
                                  f"(fit it: 'fit nerf ... --blocks {len(layout)} --block {k}')")
        model, meta = load_model(d, averaged, device)
        models.append(model)
        metas.append(meta)
    return layout, models, metas


def _view_pixels(model: Any, cameras: Any, k: int, near: float, far: float, bg: Tensor,
                 max_pixels: int = MATCH_PIXELS) -> Tensor:
    """Colours of an even stride of at most ``max_pixels`` pixels of view ``k``."""
    rays = model.view_rays(cameras, k, near, far)
    step = max(1, math.ceil(len(rays) / max_pixels))
    idx = torch.arange(0, len(rays), step, device=rays.origins.device)
    with torch.no_grad():
        return model.render(rays[idx], bg, train=False)["rgb"].float().clamp(0, 1).cpu()


def match_appearance(out: str | Path, device: str | None = None) -> Layout:
    """Fit the blocks' colour transforms (module docstring) on their shared training views and
    store them in ``blocks.json`` with each block's step; returns the new layout."""
    from fieldcraft.tasks.nerf.model import background_colour
    from fieldcraft.tasks.nerf.outputs import fitted_views

    layout, models, metas = load_blocks(out, device=device)
    data = fitted_views(metas[0], None, "train")
    bg = background_colour(models[0].config.background, models[0].aabb.device)[None]

    def render(b: int, views: list[int]) -> Tensor:
        return torch.cat([_view_pixels(models[b], data.cameras, i, data.near, data.far, bg) for i in views])

    transforms = appearance_transforms(layout.members, render)
    layout = dataclasses.replace(layout, transforms=tuple(tuple(tuple(r) for r in t.tolist()) for t in transforms),
                                 matched_steps=tuple(int(m["step"]) for m in metas))
    write_layout(out, layout)
    return layout


def _matched(out: str | Path, layout: Layout, metas: list[dict[str, Any]], device: str | None) -> Layout:
    """``layout`` with transforms fitted to the blocks as they are now (matched again when a block
    was fitted further since)."""
    steps = tuple(int(m["step"]) for m in metas)
    if layout.transforms is None or layout.matched_steps != steps:
        return match_appearance(out, device)
    return layout


def render_view(layout: Layout, models: list[Any], cameras: Any, k: int, near: float, far: float,
                bg: Tensor, visibility: bool | None = None, appearance: bool | None = None) -> dict[str, Tensor]:
    """View ``k`` of ``cameras`` composited from the blocks (module docstring): ``rgb`` ``[H, W, 3]``,
    ``depth`` and ``opacity`` ``[H, W]`` on the CPU, and ``weights`` ``[N]`` (the view's block weights).
    ``visibility``, ``appearance`` None: the layout's."""
    visibility = layout.visibility if visibility is None else visibility
    appearance = layout.appearance if appearance is None else appearance
    centre = camera_centres(cameras.c2w[k:k + 1].cpu()).float()
    w = idw_weights(centre, torch.tensor(layout.centres), torch.tensor(layout.radii), layout.power)[0]
    used = [b for b in range(len(layout)) if w[b] > 0]
    rgbs, ops, depths = [], [], []
    for b in used:
        model = models[b]
        with torch.no_grad():
            out = model.render_image(model.view_rays(cameras, k, near, far), bg, cameras.height, cameras.width)
        rgb = out["rgb"].float().cpu()
        if appearance and layout.transforms is not None:
            rgb = apply_affine(rgb, torch.tensor(layout.transforms[b])).clamp(0, 1)
        rgbs.append(rgb)
        ops.append(out["opacity"].float().cpu())
        depths.append(out["depth"].float().cpu())
    rgb, pw = composite_blocks(torch.stack(rgbs), torch.stack(ops), w[used], visibility)
    pw = pw[..., 0]
    return {"rgb": rgb, "opacity": (pw * torch.stack(ops)).sum(0), "depth": (pw * torch.stack(depths)).sum(0),
            "weights": w}


def evaluate_blocks(out_dir: str | Path, split: str = "test", data_path: str | Path | None = None,
                    max_images: int | None = None, progress: bool = True, averaged: bool = True,
                    device: str | None = None, visibility: bool | None = None, appearance: bool | None = None
                    ) -> dict[str, Any]:
    """:func:`~fieldcraft.tasks.nerf.outputs.evaluate` for a blocks directory: the same outputs in
    ``<out_dir>/eval/<split>/`` (renders, depth pictures, ``metrics.json`` with per-view and mean
    PSNR and SSIM), each view composited from the blocks (:func:`render_view`). ``step`` and
    ``fit_seconds`` are the blocks' sums; ``block_steps`` and per view ``block_weights`` are added.
    ``visibility``, ``appearance``: override the layout's compositing (None: as in ``blocks.json``)."""
    from tqdm.auto import tqdm

    from fieldcraft.data.scene import composite
    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json
    from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, ssim
    from fieldcraft.render.depth import depth_picture
    from fieldcraft.tasks.nerf.model import background_colour
    from fieldcraft.tasks.nerf.outputs import fitted_views

    layout, models, metas = load_blocks(out_dir, averaged, device)
    layout = _matched(out_dir, layout, metas, device)
    visibility = layout.visibility if visibility is None else visibility
    appearance = layout.appearance if appearance is None else appearance
    data = fitted_views(metas[0], data_path, split, max_images)
    config = models[0].config
    bg = background_colour(config.background)
    last = not averaged and config.ema_decay > 0
    dest = Path(out_dir) / "eval" / (f"{split}-last" if last else split)
    views = []
    t0 = time.perf_counter()
    for k in tqdm(range(len(data)), desc=f"eval {split} ({len(layout)} blocks)", disable=not progress):
        out = render_view(layout, models, data.cameras, k, data.near, data.far, bg.to(models[0].aabb.device)[None],
                          visibility, appearance)
        rgb = out["rgb"].numpy()
        gt = composite(data.image(k), bg).cpu().numpy()
        name = Path(data.names[k]).with_suffix(".png")
        write_png(dest / name, rgb)
        write_png(dest / "depth" / name, depth_picture(out["depth"].numpy(), out["opacity"].numpy()))
        views.append({"name": str(name), "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt),
                      "block_weights": [round(float(x), 6) for x in out["weights"]]})
    seconds = time.perf_counter() - t0
    metrics = {"split": split, "data": str(data.source), "views": len(views),
               "step": sum(int(m["step"]) for m in metas), "fit_seconds": sum(float(m["seconds"]) for m in metas),
               "preset": config.preset, "weights": "average" if averaged and config.ema_decay > 0 else "last",
               "psnr": float(np.mean([v["psnr"] for v in views])) if views else math.nan,
               "ssim": float(np.mean([v["ssim"] for v in views])) if views else math.nan,
               "psnr_definition": PSNR_DEFINITION + "; mean over views",
               "ssim_definition": SSIM_DEFINITION + "; mean over views",
               "render_seconds_per_view": seconds / max(len(views), 1), "device": str(models[0].aabb.device),
               "directory": str(dest), "blocks": len(layout), "block_steps": [int(m["step"]) for m in metas],
               "compositing": {"power": layout.power, "visibility": visibility,
                               "appearance": appearance and layout.transforms is not None},
               "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics


def render_blocks(out_dir: str | Path, dest: str | Path, frames: int = 60, fps: int = 30,
                  data_path: str | Path | None = None, progress: bool = True, device: str | None = None,
                  path: bool | str | Path | None = False) -> Path:
    """:func:`~fieldcraft.tasks.nerf.outputs.render_orbit` for a blocks directory: the orbit (or the
    smoothed captured path, ``path``) around all the training views, each frame composited from
    the blocks (:func:`render_view`)."""
    from tqdm.auto import tqdm

    from fieldcraft.io.video import write_video
    from fieldcraft.tasks.nerf.model import background_colour
    from fieldcraft.tasks.nerf.outputs import fitted_views, orbit_cameras, path_cameras

    check(frames >= 1, f"--frames must be >= 1, got {frames}")
    check(path is None or isinstance(path, bool), f"{out_dir}: --path with a camera-path file is not supported for a blocks directory")
    layout, models, metas = load_blocks(out_dir, device=device)
    layout = _matched(out_dir, layout, metas, device)
    data = fitted_views(metas[0], data_path, "train")
    cams = path_cameras(data, frames) if path else orbit_cameras(data, frames)
    bg = background_colour(models[0].config.background, models[0].aabb.device)[None]
    images = [render_view(layout, models, cams, k, data.near, data.far, bg)["rgb"].numpy()
              for k in tqdm(range(frames), desc="render path" if path else "render orbit", disable=not progress)]
    return write_video(Path(dest), images, fps)
