"""Baked octrees: file format, the numba marcher against closed forms and its PyTorch reference,
baking a fitted field, and the ``export nerf`` / ``eval nerf --octree`` / ``render nerf --octree``
commands (on the vendored ``tests/data/nerf/lego_mini``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fieldcraft.encodings.spherical_harmonics import spherical_harmonics
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.octree_file import FORMAT_VERSION, META_KEY, Octree, load_octree, save_octree
from fieldcraft.kernels.octree import Grid, render_view
from fieldcraft.render.octree import OctreeRenderer, ReferenceGrid, camera_rays_numpy
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
BOX = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _dense_tree(density: np.ndarray, sh: np.ndarray, brick: int = 4, background=(1.0, 1.0, 1.0)) -> Octree:
    """An octree over ``BOX`` holding the dense ``density [R, R, R]`` and ``sh [R, R, R, 3, K]``,
    keeping only bricks with some density."""
    r = density.shape[0]
    c = r // brick
    blocks = density.reshape(c, brick, c, brick, c, brick).transpose(0, 2, 4, 1, 3, 5).reshape(c**3, brick**3)
    shb = sh.reshape(c, brick, c, brick, c, brick, 3, -1).transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(c**3, brick**3, 3, -1)
    keep = blocks.max(1) > 0
    cells = np.stack(np.meshgrid(*[np.arange(c)] * 3, indexing="ij"), -1).reshape(-1, 3)
    degree = int(round(math.sqrt(sh.shape[-1]))) - 1
    return Octree(cells[keep].astype(np.int32), blocks[keep].astype(np.float32), shb[keep].astype(np.float32), r, brick,
                  BOX.copy(), degree, np.asarray(background, np.float32), 0.0, 100.0)


def _look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Camera-to-world ``[3, 4]`` (OpenGL axes) at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, np.float64)
    back = eye - np.asarray(target, np.float64)
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0] if abs(back[2]) < 0.9 else [0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back, eye], 1)


def _slab_length(o: np.ndarray, d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Length of each ray's chord through the cube ``[lo, hi]^3``."""
    t0, t1 = (lo - o) / d, (hi - o) / d
    near, far = np.minimum(t0, t1).max(1), np.maximum(t0, t1).min(1)
    return np.clip(far - np.maximum(near, 0.0), 0.0, None)


# ------------------------------------------------------------------------------------ the marcher


def test_constant_cube_has_the_closed_form_opacity_and_colour():
    """A cube ``[-0.5, 0.5]^3`` of density 2 and colour (0.2, 0.4, 0.6), seen obliquely: opacity
    ``1 - exp(-2 L)`` for the chord length ``L`` of each pixel's ray, colour over white."""
    r = 16
    density = np.zeros((r, r, r))
    density[4:12, 4:12, 4:12] = 2.0
    sh = np.zeros((r, r, r, 3, 1))
    sh[..., 0] = np.array([0.2, 0.4, 0.6]) / 0.28209479177387814
    tree = _dense_tree(density, sh)
    c2w = _look_at([2.5, 1.5, 1.0])
    out = render_view(Grid(tree), c2w, 20.0, 20.0, 12.0, 12.0, 24, 24, eps=0.0)
    o, d = camera_rays_numpy(c2w, 20.0, 20.0, 12.0, 12.0, 24, 24)
    length = _slab_length(o, d, -0.5, 0.5).reshape(24, 24)
    expected = 1.0 - np.exp(-2.0 * length)
    assert (length > 0.5).sum() > 30 and (length == 0).sum() > 100  # the view shows the cube and the background
    np.testing.assert_allclose(out["opacity"], expected, atol=1e-5)
    colour = np.array([0.2, 0.4, 0.6])
    np.testing.assert_allclose(out["rgb"], expected[..., None] * colour + (1 - expected[..., None]), atol=1e-5)


def test_view_dependent_colour_is_the_sh_sum_of_the_first_voxel():
    """An opaque grid with SH degree 2 colour: each pixel shows ``clamp(sum_k c_k Y_k(d))`` of the
    voxel its ray enters first (the numba basis equals the SH encoding's)."""
    r = 8
    rng = np.random.default_rng(0)
    density = np.full((r, r, r), 1e4)
    sh = np.zeros((r, r, r, 3, 9))
    coef = rng.normal(0.0, 0.6, (3, 9))
    coef[:, 0] += 1.0
    sh[:] = coef
    tree = _dense_tree(density, sh)
    c2w = _look_at([1.5, -2.0, 2.2])
    out = render_view(Grid(tree), c2w, 8.0, 8.0, 4.0, 4.0, 8, 8)
    o, d = camera_rays_numpy(c2w, 8.0, 8.0, 4.0, 4.0, 8, 8)
    y = spherical_harmonics(torch.from_numpy(d), 3).numpy()
    expected = np.clip(y @ coef.T, 0, 1).reshape(8, 8, 3)
    hit = out["opacity"] > 0.999
    assert hit.sum() > 20
    np.testing.assert_allclose(out["rgb"][hit], expected[hit], atol=2e-3)


def _random_tree(seed: int = 0, r: int = 16, degree: int = 2) -> Octree:
    rng = np.random.default_rng(seed)
    density = rng.exponential(3.0, (r, r, r)) * (rng.random((r, r, r)) < 0.3)
    density[:, :, : r // 4] = 0.0  # whole empty bricks too
    sh = rng.normal(0.3, 0.3, (r, r, r, 3, (degree + 1) ** 2))
    return _dense_tree(density, sh, background=(0.2, 0.5, 1.0))


def test_reference_equals_numba(monkeypatch):
    """The PyTorch reference (FIELDCRAFT_KERNELS=reference) renders what the numba kernel renders."""
    tree = _random_tree()
    cam = (_look_at([2.0, 1.2, 0.7]), 14.0, 15.0, 9.5, 10.0, 20, 19)
    fast = OctreeRenderer(tree).render_camera(*cam)
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    slow = OctreeRenderer(tree)
    assert not slow.fast
    ref = slow.render_camera(*cam)
    assert 0.2 < fast["opacity"].mean() < 0.99
    for key in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(fast[key], ref[key], atol=2e-5, err_msg=key)


def test_early_termination_changes_little_and_reference_follows_it():
    tree = _random_tree(1)
    cam = (_look_at([-2.0, 1.0, 1.5]), 12.0, 12.0, 8.0, 8.0, 16, 16)
    o, d = camera_rays_numpy(*cam)
    grid, ref = Grid(tree), ReferenceGrid(tree)
    for eps in (1e-3, 1e-2):
        fast = render_view(grid, *cam, eps=eps)
        slow = ref.render(torch.from_numpy(o), torch.from_numpy(d), eps)
        np.testing.assert_allclose(fast["rgb"].reshape(-1, 3), slow["rgb"], atol=2e-5)
    full = render_view(grid, *cam, eps=0.0)
    stopped = render_view(grid, *cam, eps=1e-3)
    assert np.abs(full["rgb"] - stopped["rgb"]).max() < 2e-3


# -------------------------------------------------------------------------------------- the file


def test_format_round_trip(tmp_path):
    tree = _random_tree(2, degree=1)
    path = save_octree(tmp_path / "a.octree", tree)
    back = load_octree(path)
    assert back.resolution == 16 and back.brick == 4 and back.sh_degree == 1
    np.testing.assert_array_equal(back.bricks, tree.bricks)
    np.testing.assert_allclose(back.density, tree.density, rtol=1e-3)
    np.testing.assert_allclose(back.sh, tree.sh, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(back.background, tree.background)


def _rewrite(path: Path, out: Path, meta_edit=None, drop: str | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()[META_KEY])
        arrays = {k: f.get_tensor(k) for k in f.keys() if k != drop}
    if meta_edit:
        meta_edit(meta)
    save_file(arrays, str(out), metadata={META_KEY: json.dumps(meta)})
    return out


def test_bad_files_are_one_line_errors(tmp_path):
    path = save_octree(tmp_path / "a.octree", _random_tree(3, r=8))
    (tmp_path / "junk.octree").write_bytes(b"\x00" * 40)
    cases = {
        tmp_path / "missing.octree": "no such octree file",
        tmp_path / "junk.octree": "unreadable octree file",
        _rewrite(path, tmp_path / "new.octree", lambda m: m.update(format=FORMAT_VERSION + 1)): "newer",
        _rewrite(path, tmp_path / "nosh.octree", drop="sh"): "missing tensors sh",
        _rewrite(path, tmp_path / "res.octree", lambda m: m.update(resolution=10)): "multiple of the brick",
        _rewrite(path, tmp_path / "kind.octree", lambda m: m.update(kind="mesh")): "kind",
        _rewrite(path, tmp_path / "nores.octree", lambda m: m.pop("resolution")): "missing 'resolution'",
    }
    for bad, needle in cases.items():
        with pytest.raises(FieldcraftError) as e:
            load_octree(bad)
        assert needle in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------- baking a fitted field


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    from fieldcraft.tasks import nerf

    out = tmp_path_factory.mktemp("octree") / "run"
    cfg = nerf.nerf_config("instant", target_samples=4096, grid_warmup=16, grid_resolution=32)
    nerf.fit(cfg, LEGO_MINI, out, Budget(steps=150), progress=False, device="cpu")
    return out


def test_baked_octree_renders_what_the_field_renders(fitted):
    """The octree's render of a test view is close to the field's (PSNR between them), and scores
    within 1 dB of the field against the ground truth (150 instant steps: about 16-18 dB)."""
    from fieldcraft.data.scene import composite
    from fieldcraft.metrics import psnr
    from fieldcraft.tasks.nerf import background_colour, fitted_views, load_model
    from fieldcraft.tasks.nerf.bake import BakeConfig, bake

    tree, stats = bake(fitted, BakeConfig(resolution=96, sh_degree=1, directions=16), device="cpu", progress=False)
    assert 0 < stats["bricks"] <= stats["candidate_bricks"] and stats["voxels"] > 1000
    model, meta = load_model(fitted, device="cpu")
    data = fitted_views(meta, None, "test", max_images=2)
    bg = background_colour(model.config.background)
    renderer = OctreeRenderer(tree)
    for k in range(2):
        rays = model.view_rays(data.cameras, k, data.near, data.far)
        field = model.render_image(rays, bg[None], data.height, data.width)["rgb"].numpy()
        c = data.cameras
        octree = renderer.render_camera(c.c2w[k].numpy(), float(c.fx[k]), float(c.fy[k]), float(c.cx[k]),
                                        float(c.cy[k]), c.height, c.width)["rgb"]
        gt = composite(data.image(k), bg).numpy()
        assert psnr(octree, field) > 25.0
        assert psnr(octree, gt) > psnr(field, gt) - 1.0


def test_command_line(fitted, tmp_path, capsys):
    """export nerf --format octree, eval nerf --octree (own output folder, milliseconds per view),
    render nerf --octree; a bad octree file is exit 2 with one line."""
    from fieldcraft.cli import main

    octree = tmp_path / "lego.octree"
    assert main(["export", "nerf", str(fitted), "--format", "octree", "--out", str(octree), "--resolution", "64",
                 "--sh-degree", "1", "--quiet", "--device", "cpu"]) == 0
    assert load_octree(octree).resolution == 64
    assert main(["eval", "nerf", str(fitted), "--octree", str(octree), "--limit", "2", "--quiet"]) == 0
    dest = fitted / "eval" / "test-octree"
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["views"] == 2 and metrics["psnr"] > 14.0 and metrics["ms_per_view"] > 0
    assert (dest / "r_0.png").is_file() and (dest / "depth" / "r_0.png").is_file()
    assert not (fitted / "eval" / "test").exists()  # the field's evaluation folder is untouched
    video = tmp_path / "orbit.gif"
    assert main(["render", "nerf", str(fitted), "--octree", str(octree), "--orbit", "--frames", "2",
                 "--out", str(video), "--quiet"]) == 0
    assert video.stat().st_size > 0
    capsys.readouterr()
    (tmp_path / "bad.octree").write_bytes(b"not a safetensors file")
    assert main(["eval", "nerf", str(fitted), "--octree", str(tmp_path / "bad.octree"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fieldcraft: error:") and "bad.octree" in err and "\n" not in err
