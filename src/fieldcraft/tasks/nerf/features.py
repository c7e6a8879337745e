"""Feature fields: 2-D feature maps distilled into a 3-D field rendered with a fitted NeRF
(Kobayashi et al. 2022, "Decomposing NeRF for editing via feature field distillation", DFF).

1. **Feature maps** (:func:`load_feature_maps`): one ``.npy`` array per training image,
   ``[h, w, C]`` (channel-last; ``[h, w]`` is ``C = 1``; any ``h, w, C``, integer or float),
   found at ``DIR/<image name>.npy`` (the image's file name as the dataset names it, relative to
   its split folder, with ``.npy`` in place of its extension: ``r_0.png`` -> ``DIR/r_0.npy``).
   Each map is resized to its image's size (bilinear between pixel centres, antialiased when
   shrinking) so pixel ``(i, j)`` of the image has feature ``F[i, j]``. :func:`extract_features`
   writes such maps with a classical extractor (a PCA of colour patches, or DAISY).
2. **Distillation** (:func:`fit_features`): a :class:`FeatureField` (its own small hash grid +
   MLP -> ``C`` features; the radiance field is untouched) is rendered with the frozen NeRF's
   sample weights, ``F(r) = sum_i w_i f(x_i) + (1 - sum_i w_i) b`` (``b``: a learnt background
   feature), and fitted by MSE to the maps at random training pixels on the training core. The
   weights come from the NeRF's densities with no gradient (DFF's stop-gradient): features never
   move geometry. Checkpoint: ``RUN/features/`` of the NeRF run ``RUN`` (task ``features``).
3. **Query and edit** (:class:`Query`, :func:`render_rays`): the 3-D selection of a query is
   every point whose feature ``f(x)`` has cosine similarity ``>= threshold`` with a query vector
   (a given vector, or the rendered feature ``F(r)`` of a clicked pixel, as in DFF). ``remove``
   sets the density of selected samples to 0 before compositing, and of the untaught matter
   directly behind them along the ray (an object's inside, never seen in training, has no
   distilled features; :func:`extend_through_matter`, ``FeatureField.seen``); ``recolour``
   replaces the selected samples' colour.
   Renders keep the samples behind opaque matter when removing (no early termination).
4. **Pictures**: feature maps shown as RGB through a PCA fitted on the training maps (stored in
   the feature field's buffers, so every picture of a run uses one mapping).

Only NeRF runs sampled with the occupancy grid (``sampler="occupancy"``: presets ``instant``,
``tensorf``, ``nerfacto``, ``plenoxels``) have the packed samples this needs
(:meth:`~fieldcraft.tasks.nerf.model.NerfModel.samples`).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.data.scene import PosedImages, composite, load_posed_images
from fieldcraft.encodings import HashGridConfig
from fieldcraft.errors import FieldcraftError, check, describe
from fieldcraft.fields import FieldConfig
from fieldcraft.networks import MLPConfig
from fieldcraft.render.compositing import accumulate, apply_background, weights_from_densities
from fieldcraft.render.rays import Rays
from fieldcraft.tasks.nerf.model import NerfModel, background_colour
from fieldcraft.train import Budget, Objective, Run, ScheduleConfig
from fieldcraft.train.optimizers import instant_ngp

TASK = "features"
FEATURES_DIR = "features"  # the feature field's run directory inside the NeRF run
EXTRACTORS = ("patch-pca", "daisy")
EDITS = ("remove", "recolour")
DEFAULT_BUDGET = Budget(steps=1000)


@dataclasses.dataclass(frozen=True)
class FeatureFieldConfig(Config):
    """What defines a feature-field fit (saved in the checkpoint; the channel count ``C`` comes
    from the maps and is stored beside it as ``channels``).

    - ``encoding``: the feature field's own position encoding (a small hash grid over the NeRF's box).
    - ``hidden_width``, ``hidden_layers``: the ReLU MLP from the encoding to the ``C`` features.
    - ``rays``: training pixels a step.
    - ``lr``: Adam's learning rate (Instant-NGP's betas and eps), decaying exponentially to 0.1x.
    - ``seed``: seeds the initialisation and the batches.
    """

    type_name = "FeatureField"
    encoding: HashGridConfig = dataclasses.field(default_factory=lambda: HashGridConfig(
        n_levels=12, n_features=2, log2_table_size=16, base_resolution=16, max_resolution=512))
    hidden_width: int = 64
    hidden_layers: int = 1
    rays: int = 2048
    lr: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.rays >= 1, f"--rays must be >= 1, got {self.rays}")
        check(self.hidden_width >= 1 and self.hidden_layers >= 0,
              f"the MLP needs --width >= 1 and --layers >= 0, got {self.hidden_width} and {self.hidden_layers}")

    def field(self, channels: int) -> FieldConfig:
        """Positions in ``[-1, 1]^3`` -> ``channels`` features (no output activation)."""
        return FieldConfig(3, channels, self.encoding, MLPConfig(hidden_width=self.hidden_width,
                                                                 hidden_layers=self.hidden_layers))

    def optimizer(self):
        return instant_ngp(self.lr, ScheduleConfig(kind="exp", final_factor=0.1))


class FeatureField(nn.Module):
    """``f(y)``: ``C`` features at field coordinates ``y`` ``[n, 3]`` of a NeRF (its samples'
    ``points``), normalised to ``[-1, 1]^3`` over ``aabb`` (the NeRF's field box, a buffer).
    ``background`` ``[C]`` (a parameter): the feature of what the volume does not cover.
    Buffers ``view_mean`` ``[C]``, ``view_basis`` ``[3, C]``, ``view_low`` / ``view_high`` ``[3]``:
    the PCA that shows features as RGB (:meth:`picture`); ``seen`` ``[R, R, R]`` over ``aabb``: the
    largest rendering weight a training sample had in each cell while distilling (:meth:`see`),
    where features were taught (:meth:`known`)."""

    SEEN = 0.01  # a cell whose samples never weighed this much in a training pixel was not taught

    def __init__(self, config: FeatureFieldConfig, channels: int, aabb: Float[Tensor, "2 3"],
                 resolution: int = 64) -> None:
        super().__init__()
        self.channels = int(channels)
        self.register_buffer("seen", torch.zeros(resolution, resolution, resolution))
        self.field = config.field(self.channels).build()
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.background = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("view_mean", torch.zeros(self.channels))
        self.register_buffer("view_basis", torch.zeros(3, self.channels))
        self.register_buffer("view_low", -torch.ones(3))
        self.register_buffer("view_high", torch.ones(3))

    def forward(self, y: Float[Tensor, "n 3"]) -> Float[Tensor, "n C"]:
        lo, hi = self.aabb[0], self.aabb[1]
        return self.field((y - lo) / (hi - lo) * 2.0 - 1.0)

    def cells(self, y: Float[Tensor, "n 3"]) -> Tensor:
        """Flat index of the ``seen`` cell of each point (points outside the box: the nearest cell)."""
        r = self.seen.shape[0]
        ijk = ((y - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * r).long().clamp(0, r - 1)
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]

    @torch.no_grad()
    def see(self, y: Float[Tensor, "n 3"], weights: Float[Tensor, " n"]) -> None:
        """Record training samples at ``y`` with their rendering ``weights`` in ``seen``."""
        self.seen.view(-1).scatter_reduce_(0, self.cells(y), weights.detach().to(self.seen.dtype), reduce="amax")

    def known(self, y: Float[Tensor, "n 3"]) -> Tensor:
        """Whether the features at ``y`` were taught: their cell held a sample of weight >= ``SEEN``."""
        return self.seen.view(-1)[self.cells(y)] >= self.SEEN

    @torch.no_grad()
    def fit_picture(self, features: Float[Tensor, "n C"]) -> None:
        """Set the RGB view (:meth:`picture`) to the top 3 principal components of ``features``,
        each stretched from its 1st to its 99th percentile (fewer than 3 channels: grey for the rest)."""
        f = features.float()
        mean = f.mean(0)
        _, _, vt = torch.linalg.svd(f - mean, full_matrices=False)
        k = min(3, vt.shape[0])
        basis = torch.zeros(3, self.channels, device=f.device)
        basis[:k] = vt[:k] * torch.sign(vt[:k].gather(1, vt[:k].abs().argmax(1, keepdim=True)))  # fixed signs
        proj = (f - mean) @ basis.T
        low, high = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
        low[k:], high[k:] = -1.0, 1.0
        self.view_mean.copy_(mean)
        self.view_basis.copy_(basis)
        self.view_low.copy_(low)
        self.view_high.copy_(torch.maximum(high, low + 1e-6))

    @torch.no_grad()
    def picture(self, features: Float[Tensor, "*b C"]) -> Float[Tensor, "*b 3"]:
        """Features as RGB in ``[0, 1]`` through the stored PCA."""
        proj = (features.float() - self.view_mean) @ self.view_basis.T
        return ((proj - self.view_low) / (self.view_high - self.view_low)).clamp(0, 1)


# ------------------------------------------------------------------------------------- feature maps


def feature_path(directory: str | Path, image_name: str) -> Path:
    """Where the feature map of an image is looked for (module docstring).

    >>> feature_path("feats", "r_0.png").as_posix(), feature_path("feats", "images/frame_1.jpg").as_posix()
    ('feats/r_0.npy', 'feats/images/frame_1.npy')
    """
    return Path(directory) / Path(image_name).with_suffix(".npy")


def read_npy(path: Path, what: str) -> np.ndarray:
    """The array in a ``.npy`` file (no pickles); one line when it is missing or unreadable."""
    check(path.is_file(), f"{path}: {what} not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FieldcraftError(f"{path}: not a readable .npy array ({describe(exc)})") from None
    check(isinstance(arr, np.ndarray), f"{path}: not a .npy array (an .npz archive?)")
    return arr


def read_feature_map(path: str | Path) -> np.ndarray:
    """One feature map as float32 ``[h, w, C]``; one-line errors for missing, unreadable, badly
    shaped or non-finite arrays."""
    path = Path(path)
    arr = read_npy(path, "feature map")
    check(arr.dtype.kind in "fiub", f"{path}: feature maps must be numbers, got dtype {arr.dtype}")
    check(arr.ndim in (2, 3) and min(arr.shape) >= 1,
          f"{path}: a feature map must be [height, width, channels] or [height, width], got shape {list(arr.shape)}")
    arr = arr.astype(np.float32)[..., None] if arr.ndim == 2 else arr.astype(np.float32)
    check(bool(np.isfinite(arr).all()), f"{path}: holds NaN or infinite values")
    return arr


def resize_map(arr: Float[Tensor, "h w C"], height: int, width: int) -> Float[Tensor, "H W C"]:
    """A feature map resized to ``height x width`` (bilinear between pixel centres, antialiased when
    shrinking; unchanged at its own size).

    >>> resize_map(torch.tensor([[[0.0], [1.0]]]), 1, 4)[0, :, 0].tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    h, w, _ = arr.shape
    if (h, w) == (height, width):
        return arr
    x = arr.permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                        antialias=height < h or width < w)
    return y[0].permute(1, 2, 0)


def load_feature_maps(directory: str | Path, names: list[str], height: int, width: int
                      ) -> Float[Tensor, "n H W C"]:
    """The feature maps of images ``names`` from ``directory``, resized to ``height x width``, as
    float16 ``[n, H, W, C]``; the first missing file, or a channel count differing from the first
    map's, is a one-line error."""
    directory = Path(directory)
    check(directory.is_dir(), f"{directory}: feature directory not found")
    paths = [feature_path(directory, name) for name in names]
    missing = next((p for p in paths if not p.is_file()), None)
    check(missing is None, f"{missing}: feature map not found (one per training image, DIR/<image name>.npy: "
                           f"{len(paths)} expected; 'fieldcraft extract features DATA --out DIR' writes them)")
    out = None
    for k, path in enumerate(paths):
        arr = torch.from_numpy(read_feature_map(path))
        if out is None:
            out = torch.empty(len(paths), height, width, arr.shape[-1], dtype=torch.float16)
        check(arr.shape[-1] == out.shape[-1],
              f"{path}: {arr.shape[-1]} channels, {paths[0].name} has {out.shape[-1]}: every map needs the same")
        out[k] = resize_map(arr, height, width).to(torch.float16)
    check(out is not None, f"{directory}: no images to read feature maps for")
    return out


def read_query(path: str | Path, channels: int) -> Float[Tensor, "k C"]:
    """Query vectors from a ``.npy`` file: ``[C]`` (one) or ``[k, C]``, finite, none of them zero."""
    path = Path(path)
    arr = read_npy(path, "query file")
    check(arr.dtype.kind in "fiu" and arr.ndim in (1, 2) and arr.shape[-1] == channels,
          f"{path}: a query is [{channels}] or [k, {channels}] numbers (the feature field has {channels} channels), "
          f"got shape {list(getattr(arr, 'shape', []))}")
    q = torch.from_numpy(np.atleast_2d(arr).astype(np.float32))
    check(bool(torch.isfinite(q).all()) and bool((q.norm(dim=-1) > 0).all()),
          f"{path}: query vectors must be finite and non-zero")
    return q


# ------------------------------------------------------------------------------- demo feature extractors


def patch_descriptors(image: Float[np.ndarray, "H W 3"], patch: int) -> Float[np.ndarray, "H W D"]:
    """The ``patch x patch`` colour patch around every pixel (edges reflected), flattened:
    ``D = 3 patch^2``.

    >>> patch_descriptors(np.arange(12.0).reshape(2, 2, 3), 1).shape
    (2, 2, 3)
    """
    pad = patch // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(padded, (patch, patch), axis=(0, 1))  # [H, W, 3, p, p]
    return np.ascontiguousarray(win).reshape(image.shape[0], image.shape[1], -1).astype(np.float32)


def daisy_descriptors(image: Float[np.ndarray, "H W 3"], radius: int) -> Float[np.ndarray, "H W 104"]:
    """DAISY (scikit-image, Tola et al. 2010) of the grey image at every pixel (edges reflected):
    2 rings of 6 histograms of 8 orientations, ``radius`` pixels out."""
    from skimage.color import rgb2gray
    from skimage.feature import daisy

    gray = np.pad(rgb2gray(image), radius, mode="reflect")
    return daisy(gray, step=1, radius=radius, rings=2, histograms=6, orientations=8).astype(np.float32)


def pca(samples: Float[np.ndarray, "n D"], dim: int) -> tuple[Float[np.ndarray, " D"], Float[np.ndarray, "k D"]]:
    """Mean and the first ``min(dim, D)`` principal directions (signs fixed: largest entry positive).

    >>> m, c = pca(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.1]]), 1)
    >>> m.round(3).tolist(), np.abs(c).round(2).tolist()
    ([2.0, 0.033], [[1.0, 0.02]])
    """
    mean = samples.mean(0)
    _, _, vt = np.linalg.svd(samples - mean, full_matrices=False)
    vt = vt[:dim]
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
    return mean, vt


def extract_features(data_path: str | Path, out: str | Path, method: str = "patch-pca", dim: int = 16,
                     split: str = "train", patch: int = 5, radius: int = 8, background: str = "white",
                     samples: int = 100_000, seed: int = 0, overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Write demo feature maps ``out/<image name>.npy`` (float16 ``[H, W, dim]``) for the images of
    ``split``: descriptors of the images composited on ``background`` (``patch-pca``: the
    ``patch x patch`` patch around each pixel in CIELAB colour, :func:`patch_descriptors`;
    ``daisy``: :func:`daisy_descriptors`) projected on their first ``dim`` principal directions.
    The PCA is fitted on ``samples`` random pixels of the dataset's *training* images whatever
    ``split`` is, so every split's maps share one basis; with alpha masks only pixels of the object
    (alpha > 0.5) enter it, so the mean is the object's and cosine similarities compare its parts
    (not everything with the empty background). Also writes ``out/features.json`` (method,
    settings, explained variance); refuses an ``out`` holding one unless ``overwrite``."""
    from tqdm.auto import tqdm

    from fieldcraft.io.checkpoint import atomic_write_bytes
    from fieldcraft.io.records import write_json

    check(method in EXTRACTORS, f"--method must be one of {', '.join(EXTRACTORS)}, got {method!r}")
    check(dim >= 1, f"--dim must be >= 1, got {dim}")
    check(patch >= 1 and patch % 2 == 1, f"--patch must be an odd number >= 1, got {patch}")
    check(radius >= 1, f"--radius must be >= 1, got {radius}")
    out = Path(out)
    check(overwrite or not (out / "features.json").exists(),
          f"{out}: already holds extracted features (features.json); --overwrite replaces them")
    bg = background_colour(background)

    def descriptors(data: PosedImages, k: int) -> np.ndarray:
        image = composite(data.image(k), bg).numpy()
        if method == "daisy":
            return daisy_descriptors(image, radius)
        from skimage.color import rgb2lab

        return patch_descriptors((rgb2lab(image) / 100.0).astype(np.float32), patch)

    train = load_posed_images(data_path, "train")
    gen = np.random.default_rng(seed)
    per_view = max(1, samples // len(train))
    rows = []
    for k in tqdm(range(len(train)), desc=f"extract {method}: fit the PCA", disable=not progress):
        d = descriptors(train, k)
        d = d.reshape(-1, d.shape[-1])
        pixels = np.arange(len(d))
        if train.images.shape[-1] == 4:  # the object's pixels only (docstring)
            pixels = np.nonzero(train.image(k)[..., 3].reshape(-1).numpy() > 0.5)[0]
        if len(pixels):
            rows.append(d[gen.choice(pixels, min(per_view, len(pixels)), replace=False)])
    check(bool(rows), f"{train.source}: the training images' alpha masks are empty: no pixels to fit the PCA on")
    fit_rows = np.concatenate(rows)
    mean, basis = pca(fit_rows, dim)
    variance = ((fit_rows - mean) ** 2).sum(0).sum()
    explained = float((((fit_rows - mean) @ basis.T) ** 2).sum() / variance) if variance > 0 else 1.0
    data = train if split == "train" else load_posed_images(data_path, split)
    out.mkdir(parents=True, exist_ok=True)
    for k in tqdm(range(len(data)), desc=f"extract {method} ({split})", disable=not progress):
        d = descriptors(data, k)
        feats = ((d - mean) @ basis.T).astype(np.float16)
        buf = io.BytesIO()
        np.save(buf, feats, allow_pickle=False)
        path = feature_path(out, data.names[k])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    record = {"method": method, "dim": int(len(basis)), "split": split, "views": len(data),
              "data": str(Path(data_path).resolve()), "background": background, "dtype": "float16",
              "layout": "[height, width, channels], one file per image: <image name>.npy",
              "pca": f"fitted on {len(fit_rows)} random pixels of the training images' objects (seed {seed})",
              "explained_variance": explained, **({"patch": patch, "colour": "CIELAB / 100"} if method == "patch-pca" else {"radius": radius})}
    write_json(out / "features.json", record)
    return record


# ------------------------------------------------------------------------------------ rendering


@dataclasses.dataclass(frozen=True)
class Query:
    """A 3-D selection: points whose feature has cosine similarity ``>= threshold`` with one of
    ``vectors`` ``[k, C]``."""

    vectors: Float[Tensor, "k C"]
    threshold: float

    def __post_init__(self) -> None:
        check(-1.0 <= self.threshold <= 1.0, f"--threshold is a cosine similarity in [-1, 1], got {self.threshold}")

    def select(self, features: Float[Tensor, "s C"]) -> Bool[Tensor, " s"]:
        """Which of the features are selected.

        >>> Query(torch.tensor([[1.0, 0.0]]), 0.9).select(torch.tensor([[2.0, 0.1], [0.0, 1.0]])).tolist()
        [True, False]
        """
        q = torch.nn.functional.normalize(self.vectors.to(features), dim=-1)
        cos = torch.nn.functional.normalize(features, dim=-1) @ q.T
        return cos.max(-1).values >= self.threshold


@dataclasses.dataclass(frozen=True)
class Edit:
    """What happens to the selected matter: ``remove`` (density 0) or ``recolour`` to ``colour``."""

    kind: str
    colour: tuple[float, float, float] = (1.0, 0.0, 0.0)

    def record(self) -> dict[str, Any]:
        """For JSON records: the kind, and the colour of a recolouring."""
        return {"kind": self.kind, **({"colour": list(self.colour)} if self.kind == "recolour" else {})}

    @staticmethod
    def parse(text: str) -> Edit:
        """``remove`` or ``recolour:R,G,B`` (components in ``[0, 1]``).

        >>> Edit.parse("recolour:1,0.5,0"), Edit.parse("remove").kind
        (Edit(kind='recolour', colour=(1.0, 0.5, 0.0)), 'remove')
        """
        kind, _, rest = text.partition(":")
        kind = "recolour" if kind == "recolor" else kind
        check(kind in EDITS and (kind == "recolour") == bool(rest),
              f"--edit must be remove or recolour:R,G,B, got {text!r}")
        if kind == "remove":
            return Edit("remove")
        try:
            colour = tuple(float(v) for v in rest.split(","))
        except ValueError:
            colour = ()
        check(len(colour) == 3 and all(0 <= v <= 1 for v in colour),
              f"--edit recolour:R,G,B takes three numbers in [0, 1], got {rest!r}")
        return Edit("recolour", colour)  # type: ignore[arg-type]


def ray_samples(nerf: NerfModel, rays: Rays, colour: bool = True, terminate: bool = True) -> dict[str, Tensor]:
    """:meth:`NerfModel.samples` of the rays with a non-empty range (the others get no samples),
    with ``ri`` indexing ``rays``."""
    hit = (rays.t_max > rays.t_min).nonzero().squeeze(-1)
    if len(hit) == len(rays):
        return nerf.samples(rays, colour=colour, terminate=terminate)
    s = nerf.samples(rays[hit], colour=colour, terminate=terminate)
    s["ri"] = hit[s["ri"]]
    return s


def extend_through_matter(selected: Bool[Tensor, " s"], ri: Tensor, t0: Float[Tensor, " s"], t1: Float[Tensor, " s"],
                          alphas: Float[Tensor, " s"], known: Bool[Tensor, " s"] | None = None, empty: float = 0.01
                          ) -> Bool[Tensor, " s"]:
    """``selected`` (packed samples, ray-major, in order along each ray) extended along each ray to
    the samples behind a selected one whose features were not taught (not ``known``; None: none
    were), up to the next empty stretch (a sample with alpha below ``empty``, or a gap between
    samples: cells the occupancy grid skipped) or the next taught sample. The inside of an object
    is never seen in training, so its distilled features are arbitrary: it goes with the selected
    surface in front of it, while taught matter behind (another object seen from elsewhere) stays.

    >>> sel = torch.tensor([False, True, False, False, False, False, False])
    >>> ri, t0 = torch.tensor([0, 0, 0, 0, 0, 0, 1]), torch.tensor([0.0, 1, 2, 3, 4, 6, 0])
    >>> alphas = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.0, 0.9, 0.9])
    >>> extend_through_matter(sel, ri, t0, t0 + 1, alphas).tolist()
    [False, True, True, True, False, False, False]
    >>> known = torch.tensor([True, True, False, True, False, False, False])
    >>> extend_through_matter(sel, ri, t0, t0 + 1, alphas, known).tolist()
    [False, True, True, False, False, False, False]
    """
    if len(selected) == 0:
        return selected
    new_run = torch.ones_like(selected)
    new_run[1:] = (ri[1:] != ri[:-1]) | (t0[1:] > t1[:-1] + 1e-6 * (t1[:-1] - t0[:-1]).abs().clamp(min=1))
    new_run |= alphas < empty
    if known is not None:
        new_run |= known
    run = torch.cumsum(new_run.long(), 0) - 1
    pos = torch.arange(len(selected), device=selected.device)
    first = torch.full((int(run[-1]) + 1,), len(selected), device=selected.device, dtype=torch.long)
    first.scatter_reduce_(0, run[selected], pos[selected], reduce="amin")
    return (pos >= first[run]) & (alphas >= empty) | selected


def composite_features(field: FeatureField, weights: Float[Tensor, " s"], features: Float[Tensor, "s C"],
                       ri: Tensor, m: int) -> Float[Tensor, "m C"]:
    """``sum_i w_i f_i + (1 - sum_i w_i) b`` per ray (``b``: the field's background feature)."""
    return accumulate(weights, features, ri, m) + (1.0 - accumulate(weights, None, ri, m)) * field.background


def render_rays(nerf: NerfModel, field: FeatureField, rays: Rays, background: Float[Tensor, "#m 3"],
                query: Query | None = None, edit: Edit | None = None) -> dict[str, Tensor]:
    """Render rays with features and an optional edit: ``rgb`` ``[m, 3]`` (edited), ``features``
    ``[m, C]`` (edited scene), ``opacity`` ``[m, 1]`` (edited) and ``selected`` ``[m, 1]`` (the
    opacity of the selected matter in the unedited scene; zeros without a query)."""
    check(edit is None or query is not None, "an edit needs a selection (--select-pixel or --select-feature)")
    m = len(rays)
    s = ray_samples(nerf, rays, colour=True, terminate=edit is None or edit.kind != "remove")
    f = field(s["points"])
    w, rgb = s["weights"], s["rgb"]
    sel = query.select(f) if query is not None else torch.zeros(len(f), dtype=torch.bool, device=f.device)
    if edit is not None and edit.kind == "remove":
        alphas = 1.0 - torch.exp(-s["sigma"] * (s["t1"] - s["t0"]))
        gone = extend_through_matter(sel, s["ri"], s["t0"], s["t1"], alphas, field.known(s["points"]))
        w = weights_from_densities(torch.where(gone, torch.zeros_like(s["sigma"]), s["sigma"]), s["t0"], s["t1"],
                                   s["ri"])[0]
    elif edit is not None:
        rgb = torch.where(sel[:, None], torch.tensor(edit.colour, dtype=rgb.dtype, device=rgb.device), rgb)
    opacity = accumulate(w, None, s["ri"], m)
    return {"rgb": apply_background(accumulate(w, rgb, s["ri"], m), opacity, background),
            "features": composite_features(field, w, f, s["ri"], m), "opacity": opacity,
            "selected": accumulate(s["weights"] * sel, None, s["ri"], m)}


@torch.no_grad()
def render_view(nerf: NerfModel, field: FeatureField, rays: Rays, background: Float[Tensor, "#m 3"], height: int,
                width: int, query: Query | None = None, edit: Edit | None = None, chunk: int = 4096
                ) -> dict[str, Tensor]:
    """:func:`render_rays` of a view's ``height * width`` rays (row-major) in chunks: ``rgb``
    ``[H, W, 3]`` in ``[0, 1]``, ``features`` ``[H, W, C]``, ``opacity`` and ``selected`` ``[H, W]``."""
    parts: dict[str, list[Tensor]] = {"rgb": [], "features": [], "opacity": [], "selected": []}
    for s in range(0, len(rays), chunk):
        out = render_rays(nerf, field, rays[s:s + chunk], background, query, edit)
        for k, chunks in parts.items():
            chunks.append(out[k])
    return {"rgb": torch.cat(parts["rgb"]).clamp(0, 1).reshape(height, width, 3),
            "features": torch.cat(parts["features"]).reshape(height, width, -1),
            "opacity": torch.cat(parts["opacity"]).reshape(height, width),
            "selected": torch.cat(parts["selected"]).reshape(height, width)}


@torch.no_grad()
def pixel_feature(nerf: NerfModel, field: FeatureField, data: PosedImages, view: int, x: int, y: int
                  ) -> Float[Tensor, " C"]:
    """The rendered feature ``F(r)`` of pixel column ``x``, row ``y`` of view ``view`` of ``data``:
    DFF's query by a clicked pixel."""
    check(0 <= view < len(data), f"--select-pixel: view {view} is not among the {len(data)} training views")
    check(0 <= x < data.width and 0 <= y < data.height,
          f"--select-pixel: pixel ({x}, {y}) is outside the {data.width}x{data.height} view")
    device = nerf.aabb.device
    rays = nerf.view_rays(data.cameras, view, data.near, data.far)
    idx = torch.tensor([y * data.width + x], device=device)
    bg = background_colour(nerf.config.background, device)[None]
    return render_rays(nerf, field, rays[idx], bg)["features"][0]


# ------------------------------------------------------------------------------------ fitting


class FeatureDistillation(Objective):
    """MSE between rendered features (:func:`composite_features`, weights of the frozen ``nerf``)
    and the target maps at ``batch`` random training pixels. ``rays``: every training pixel's ray
    (view-major, :func:`~fieldcraft.tasks.nerf.training.training_rays`); ``targets`` ``[N, C]``
    (float16) in the same order. Logs ``loss`` and ``relative`` (loss / the targets' mean
    per-channel variance: 1 is no better than the mean feature)."""

    def __init__(self, nerf: NerfModel, rays, targets: Tensor, batch: int, seed: int) -> None:
        self.nerf, self.rays, self.targets, self.batch = nerf, rays, targets, batch
        self.generators = {"batches": torch.Generator().manual_seed(seed + 1)}
        sample = targets[torch.randint(0, len(targets), (min(len(targets), 1 << 16),),
                                       generator=torch.Generator().manual_seed(seed))].float()
        self.variance = max(float(sample.var(0).mean()), 1e-12) if len(sample) > 1 else 1.0

    @torch.no_grad()
    def background_estimate(self, rays: int = 4096, seed: int = 0) -> Float[Tensor, " C"] | None:
        """The mean target feature of ``rays`` random training pixels the volume leaves empty
        (opacity < 0.01), None when there are none: a starting value for ``FeatureField.background``."""
        idx = torch.randint(0, len(self.targets), (min(rays, len(self.targets)),),
                            generator=torch.Generator().manual_seed(seed)).to(self.targets.device)
        s = ray_samples(self.nerf, self.rays[idx], colour=False)
        empty = accumulate(s["weights"], None, s["ri"], len(idx))[:, 0] < 0.01
        return self.targets[idx[empty]].float().mean(0) if bool(empty.any()) else None

    def loss(self, model: FeatureField, step: int) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randint(0, len(self.targets), (self.batch,), generator=self.generators["batches"])
        idx = idx.to(self.targets.device)
        with torch.no_grad():
            s = ray_samples(self.nerf, self.rays[idx], colour=False)
        model.see(s["points"], s["weights"])
        pred = composite_features(model, s["weights"], model(s["points"]), s["ri"], len(idx))
        loss = torch.mean((pred - self.targets[idx].float()) ** 2)
        value = float(loss.detach())
        return loss, {"loss": value, "relative": value / self.variance}


def check_sampler(nerf: NerfModel, where: str | Path) -> None:
    """Feature fields need the packed samples of the occupancy sampler (module docstring)."""
    if nerf.grid is None:
        from fieldcraft.tasks.nerf.config import PRESETS, nerf_config

        presets = ", ".join(p for p in PRESETS if nerf_config(p).sampler == "occupancy")
        raise FieldcraftError(f"{where}: feature fields need a NeRF fitted with the occupancy sampler (presets "
                              f"{presets}); this run's preset {nerf.config.preset!r} samples {nerf.config.sampler!r}")


def training_views(meta: dict[str, Any], data_path: str | Path | None = None) -> PosedImages:
    """The training views a NeRF run was fitted on (its ``frames`` and first ``n_images``), in its box."""
    from fieldcraft.tasks.nerf.outputs import fitted_views

    data = fitted_views(meta, data_path, "train")
    if meta.get("frames") is not None:
        data = data.subset([int(i) for i in meta["frames"]])
    n = int(meta.get("n_images", len(data)))
    check(len(data) >= n, f"{data.source}: {len(data)} training views, the run was fitted on {n}")
    return data.subset(list(range(n))) if n < len(data) else data


def load_nerf(run_dir: str | Path, device: str | None = None) -> tuple[NerfModel, dict[str, Any]]:
    """The NeRF of ``run_dir`` (averaged weights when kept), frozen, checked for the occupancy sampler."""
    from fieldcraft.tasks.nerf.outputs import load_model

    run_dir = Path(run_dir)
    check((run_dir / "checkpoint.safetensors").is_file(),
          f"{run_dir}: no NeRF run here (checkpoint.safetensors); 'fieldcraft fit nerf DATA --out {run_dir}' makes one")
    nerf, meta = load_model(run_dir, device=device)
    check_sampler(nerf, run_dir)
    nerf.requires_grad_(False)
    return nerf, meta


def distil(run: Run, nerf: NerfModel, data: PosedImages, maps: Float[Tensor, "n H W C"], *,
           meta: dict[str, Any] | None = None, progress: bool = True, checkpoint_seconds: float = 60.0
           ) -> tuple[FeatureField, dict[str, Any]]:
    """Fit a :class:`FeatureField` to ``maps`` (one per view of ``data``, at its size) rendered with
    ``nerf``'s weights, in the (opened) ``run``; returns the field and a summary."""
    from fieldcraft.tasks.nerf.training import training_rays

    config: FeatureFieldConfig = run.config  # type: ignore[assignment]
    check(isinstance(config, FeatureFieldConfig), f"{run.out}: the checkpoint's config is not a feature-field config")
    n, h, w, channels = maps.shape
    check((n, h, w) == (len(data), data.height, data.width),
          f"feature maps {list(maps.shape[:3])} do not match the {len(data)} views of {data.height}x{data.width}")
    if run.resumed:
        check(int(run.meta.get("channels", -1)) == channels,
              f"{run.out}: the run was fitted to {run.meta.get('channels')} channels, the maps have {channels}")
    check_sampler(nerf, run.out)
    device = run.device
    torch.manual_seed(config.seed)
    field = FeatureField(config, channels, nerf.grid.aabb, nerf.grid.resolution).to(device)
    targets = maps.reshape(n * h * w, channels).to(device)
    picked = torch.randint(0, len(targets), (min(len(targets), 1 << 16),), generator=torch.Generator().manual_seed(0))
    field.fit_picture(targets[picked.to(device)].float())
    rays, _ = training_rays(nerf, data)
    objective = FeatureDistillation(nerf, rays, targets, config.rays, config.seed)
    background = objective.background_estimate() if not run.resumed else None
    if background is not None:  # Adam moves a parameter ~lr a step: start it where it belongs
        with torch.no_grad():
            field.background.copy_(background)
    trainer = run.trainer(field, objective, config.optimizer(), prefix="field", checkpoint_seconds=checkpoint_seconds,
                          log_every=10, description="fit features", progress=progress,
                          meta={"channels": channels, "aabb": nerf.grid.aabb.tolist(), **(meta or {})})
    outcome = trainer.run()
    last = outcome.history.values[-1] if outcome.history.values else {}
    return field, {"steps": outcome.step, "fit_seconds": outcome.seconds, "channels": channels,
                   "train_loss": last.get("loss"), "train_relative": last.get("relative"), "out": str(run.out),
                   "device": str(device), "stopped": outcome.stopped}


def fit_features(run_dir: str | Path, features_dir: str | Path | None, budget: Budget | None = None,
                 config: FeatureFieldConfig | None = None, *, resume: bool = False, progress: bool = True,
                 device: str | None = None, given: tuple[str, ...] = (), overwrite: bool = False,
                 checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Distil the maps in ``features_dir`` (module docstring) into ``run_dir/features/`` of the
    fitted NeRF run ``run_dir`` (``features_dir`` None when resuming: the stored one). Returns a summary."""
    nerf, nerf_meta = load_nerf(run_dir, device)
    out = Path(run_dir) / FEATURES_DIR
    run = Run.open(out, TASK, config or FeatureFieldConfig(), resume=resume, given=given, budget=budget,
                   default_budget=DEFAULT_BUDGET, device=nerf.aabb.device, overwrite=overwrite)
    if features_dir is None:
        check(run.resumed, "fit features: give the feature maps' directory (--features DIR)")
        features_dir = run.meta.get("features")
        check(isinstance(features_dir, str), f"{out}: malformed checkpoint: no 'features' directory")
    data = training_views(nerf_meta)
    maps = load_feature_maps(features_dir, data.names, data.height, data.width)
    _, summary = distil(run, nerf, data, maps, progress=progress, checkpoint_seconds=checkpoint_seconds,
                        meta={"features": str(Path(features_dir).resolve()), "nerf_step": nerf_meta.get("step")})
    return summary


def load_field(out: str | Path, aabb: Float[Tensor, "2 3"], device: str | torch.device | None = None
               ) -> tuple[FeatureField, dict[str, Any]]:
    """The feature field checkpointed in ``out`` (a ``features`` run) over the NeRF box ``aabb``,
    frozen, and its header."""
    from fieldcraft.errors import reading
    from fieldcraft.io.checkpoint import build_loaded, load_checkpoint

    out = Path(out)
    tensors, meta = load_checkpoint(out, device=device or aabb.device)
    check(meta.get("task") == TASK, f"{out}: the checkpoint is of task {meta.get('task')!r}, not {TASK!r}")
    with reading(out / "checkpoint.safetensors", "checkpoint"):
        config = Config.from_dict(meta["config"])
        check(isinstance(config, FeatureFieldConfig), f"{out}: the checkpoint's config is not a feature-field config")
        channels = int(meta["channels"])
        resolution = int(tensors["field.seen"].shape[0])
        field = build_loaded(lambda: FeatureField(config, channels, aabb.cpu(), resolution), tensors, "field")
    field = field.to(device or aabb.device).eval()
    field.requires_grad_(False)
    return field, meta


def load_feature_field(run_dir: str | Path, device: str | None = None
                       ) -> tuple[NerfModel, FeatureField, dict[str, Any], dict[str, Any]]:
    """The frozen NeRF of ``run_dir``, its feature field (``run_dir/features/``) and both headers."""
    import warnings

    nerf, nerf_meta = load_nerf(run_dir, device)
    out = Path(run_dir) / FEATURES_DIR
    check((out / "checkpoint.safetensors").is_file(),
          f"{out}: no feature field here; 'fieldcraft fit features {run_dir} --features DIR' fits one")
    field, meta = load_field(out, nerf.grid.aabb)
    if meta.get("nerf_step") != nerf_meta.get("step"):
        warnings.warn(f"{out}: distilled from the NeRF at step {meta.get('nerf_step')}, which is now at step "
                      f"{nerf_meta.get('step')}; refit with 'fit features --overwrite'", stacklevel=2)
    return nerf, field, nerf_meta, meta


def parse_pixel(text: str, data: PosedImages) -> tuple[int, int, int]:
    """``VIEW,X,Y``: a training view (0-based index or image name, with or without extension) and a
    pixel column ``X`` and row ``Y`` of it."""
    parts = text.split(",")
    check(len(parts) == 3, f"--select-pixel takes VIEW,X,Y (view index or image name, column, row), got {text!r}")
    view, xs, ys = parts
    stems = [Path(n).with_suffix("").as_posix() for n in data.names]
    if view.isdigit():
        k = int(view)
    else:
        name = Path(view).with_suffix("").as_posix() if Path(view).suffix.lower() in (".png", ".jpg", ".jpeg") else view
        check(name in stems, f"--select-pixel: no training image named {view!r} (e.g. {stems[0]!r})")
        k = stems.index(name)
    try:
        x, y = int(xs), int(ys)
    except ValueError:
        raise FieldcraftError(f"--select-pixel: X and Y must be integers, got {xs!r}, {ys!r}") from None
    return k, x, y


def render_features(run_dir: str | Path, out: str | Path, *, frames: int | None = 30, split: str | None = None,
                    limit: int | None = None, pixel: str | None = None, feature: str | Path | None = None,
                    threshold: float = 0.9, edit: str | None = None, data_path: str | Path | None = None,
                    fps: int = 15, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Render an orbit of ``frames`` views (or the views of ``split``, the first ``limit``) of a run
    with a feature field, selecting by ``pixel`` (``VIEW,X,Y`` of a training view) or by the
    vectors in ``feature`` (``.npy``), and applying ``edit`` (``remove`` | ``recolour:R,G,B``).
    Writes ``out/rgb/<view>.png`` (edited render), ``out/features/<view>.png`` (feature map as
    RGB), ``out/selection/<view>.png`` (opacity of the selection, with a query), an orbit video
    ``out/orbit.mp4`` (``.gif`` without ffmpeg) and ``out/render.json``; returns that record."""
    from tqdm.auto import tqdm

    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json
    from fieldcraft.io.video import write_video
    from fieldcraft.tasks.nerf.outputs import fitted_views, orbit_cameras

    check(pixel is None or feature is None, "choose one query: --select-pixel or --select-feature")
    check((frames is None) != (split is None), "render features: choose the views: --orbit or --split")
    parsed_edit = Edit.parse(edit) if edit is not None else None
    nerf, field, nerf_meta, _ = load_feature_field(run_dir, device)
    device_ = nerf.aabb.device
    train = training_views(nerf_meta, data_path)
    query, source = None, None
    if pixel is not None:
        view, x, y = parse_pixel(pixel, train)
        query = Query(pixel_feature(nerf, field, train.to(device_), view, x, y)[None], threshold)
        source = {"pixel": {"view": train.names[view], "x": x, "y": y}}
    elif feature is not None:
        query = Query(read_query(feature, field.channels).to(device_), threshold)
        source = {"feature_file": str(Path(feature).resolve())}
    check(parsed_edit is None or query is not None, "--edit needs a selection (--select-pixel or --select-feature)")
    if split is not None:
        views = fitted_views(nerf_meta, data_path, split, max_images=limit)
        cams, names = views.cameras, [Path(n).with_suffix(".png").as_posix() for n in views.names]
    else:
        check(frames >= 1, f"--frames must be >= 1, got {frames}")
        cams, names = orbit_cameras(train, frames), [f"frame_{k:03d}.png" for k in range(frames)]
    out = Path(out)
    bg = background_colour(nerf.config.background, device_)[None]
    record_views, images = [], []
    t0 = time.perf_counter()
    for k in tqdm(range(len(cams)), desc="render features", disable=not progress):
        rays = nerf.view_rays(cams, k, train.near, train.far)
        r = render_view(nerf, field, rays, bg, cams.height, cams.width, query, parsed_edit)
        rgb = r["rgb"].cpu().numpy()
        images.append(rgb)
        write_png(out / "rgb" / names[k], rgb)
        write_png(out / "features" / names[k], field.picture(r["features"]).cpu().numpy())
        entry = {"name": names[k]}
        if query is not None:
            write_png(out / "selection" / names[k], r["selected"].clamp(0, 1).cpu().numpy())
            entry["selected_fraction"] = float((r["selected"] > 0.5).float().mean())
        record_views.append(entry)
    record: dict[str, Any] = {"run": str(Path(run_dir).resolve()), "views": len(names),
                              "cameras": f"split {split}" if split is not None else f"orbit of {frames} frames",
                              "query": source, "threshold": threshold if query is not None else None,
                              "edit": parsed_edit.record() if parsed_edit is not None else None,
                              "selection_rule": "samples whose feature has cosine similarity >= threshold with the "
                                                "query; selected_fraction: pixels whose selected opacity > 0.5",
                              "seconds_per_view": (time.perf_counter() - t0) / max(len(names), 1),
                              "directory": str(out), "per_view": record_views}
    if split is None and frames > 1:
        record["video"] = str(write_video(out / "orbit.mp4", images, fps))
    write_json(out / "render.json", record)
    return record


def evaluate_features(run_dir: str | Path, features_dir: str | Path, split: str = "val",
                      data_path: str | Path | None = None, limit: int | None = None, progress: bool = True,
                      device: str | None = None) -> dict[str, Any]:
    """Render the feature maps of ``split``'s views and compare them with the maps in
    ``features_dir`` (resized to the views' size): mean squared error over pixels and channels,
    ``relative_mse`` (that error / the target maps' mean per-channel variance over the split: 0 is
    exact, 1 no better than their mean feature), mean cosine similarity per pixel. Writes
    ``run_dir/features/eval/<split>/`` (``<view>.png``: target | rendered, as RGB through the run's
    PCA; ``metrics.json``); returns the metrics."""
    from tqdm.auto import tqdm

    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json
    from fieldcraft.tasks.nerf.outputs import fitted_views

    nerf, field, nerf_meta, meta = load_feature_field(run_dir, device)
    device_ = nerf.aabb.device
    data = fitted_views(nerf_meta, data_path, split, max_images=limit)
    maps = load_feature_maps(features_dir, data.names, data.height, data.width)
    check(maps.shape[-1] == field.channels,
          f"{features_dir}: maps of {maps.shape[-1]} channels, the feature field has {field.channels}")
    bg = background_colour(nerf.config.background, device_)[None]
    dest = Path(run_dir) / FEATURES_DIR / "eval" / split
    views, sq, cos, total = [], 0.0, 0.0, 0
    for k in tqdm(range(len(data)), desc=f"eval features {split}", disable=not progress):
        rays = nerf.view_rays(data.cameras, k, data.near, data.far)
        pred = render_view(nerf, field, rays, bg, data.height, data.width)["features"].float()
        target = maps[k].to(device_).float()
        err = float(torch.mean((pred - target) ** 2))
        c = float(torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8).mean())
        sq, cos, total = sq + err, cos + c, total + 1
        name = Path(data.names[k]).with_suffix(".png").as_posix()
        write_png(dest / name, torch.cat([field.picture(target), field.picture(pred)], 1).cpu().numpy())
        views.append({"name": name, "mse": err, "cosine": c})
    variance = float(maps.float().reshape(-1, maps.shape[-1]).var(0).mean()) if total else math.nan
    mse = sq / max(total, 1) if total else math.nan
    metrics = {"split": split, "data": str(data.source), "features": str(Path(features_dir).resolve()),
               "views": total, "channels": field.channels, "step": meta.get("step"), "mse": mse,
               "relative_mse": mse / variance if variance > 0 else math.nan,
               "cosine": cos / total if total else math.nan, "target_variance": variance,
               "definitions": {"mse": "mean over views of the mean over pixels and channels of (rendered - target)^2",
                               "relative_mse": "mse / mean over channels of the target maps' variance over the split",
                               "cosine": "mean over views and pixels of the cosine similarity of rendered and target"},
               "directory": str(dest), "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics

