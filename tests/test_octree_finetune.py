"""Fine-tuning a baked octree on training images (PlenOctrees sec. 4.3): the differentiable
renderer against ``eval --octree``'s renderers, its gradients, a few steps lowering the training
error on a synthetic scene, Ctrl-C, the written file, and ``export nerf --finetune-steps``."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch
from tests.test_octree import fitted  # noqa: F401 (fixture: a small instant run on tests/data/nerf/lego_mini)

from fieldcraft.data.cameras import Cameras
from fieldcraft.data.scene import PosedImages
from fieldcraft.io.octree_file import Octree, load_octree
from fieldcraft.render.octree import OctreeRenderer, camera_rays_numpy, composite_segments
from fieldcraft.tasks.nerf.bake import FinetuneConfig, OctreeLeaves, Photometric, finetune
from fieldcraft.train import Budget

BOX = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _tree(seed: int = 0, r: int = 16, brick: int = 4, degree: int = 1) -> Octree:
    """A grid over ``BOX`` with a random blob of density and random SH colours (empty bricks at the rim)."""
    rng = np.random.default_rng(seed)
    x = (np.arange(r) + 0.5) / r * 2 - 1
    xx, yy, zz = np.meshgrid(x, x, x, indexing="ij")
    density = 6.0 * np.exp(-(xx**2 + yy**2 + zz**2) / 0.2) * rng.uniform(0.5, 1.5, (r, r, r))
    density[density < 0.3] = 0.0
    k = (degree + 1) ** 2
    sh = rng.normal(0.0, 0.3, (r, r, r, 3, k))
    sh[..., 0] = rng.uniform(0.6, 2.8, (r, r, r, 3))  # colours well inside (0, 1) at every direction
    c = r // brick
    blocks = density.reshape(c, brick, c, brick, c, brick).transpose(0, 2, 4, 1, 3, 5).reshape(c**3, brick**3)
    shb = sh.reshape(c, brick, c, brick, c, brick, 3, k).transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(c**3, brick**3, 3, k)
    keep = blocks.max(1) > 0
    cells = np.stack(np.meshgrid(*[np.arange(c)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert 0 < keep.sum() < c**3
    return Octree(cells[keep].astype(np.int32), blocks[keep].astype(np.float32), shb[keep].astype(np.float32), r, brick,
                  BOX.copy(), degree, np.array([1.0, 1.0, 1.0], np.float32), 0.5, 6.0)


def _look_at(eye) -> np.ndarray:
    eye = np.asarray(eye, np.float64)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back, eye], 1)


def _views(tree: Octree, n: int = 6, size: int = 16) -> PosedImages:
    """``n`` cameras on a ring around the box, with images rendered from ``tree``."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c2w = np.stack([_look_at([2.6 * np.cos(a), 2.6 * np.sin(a), 0.8]) for a in angles])
    f = torch.full((n,), 2.0 * size)
    cams = Cameras(torch.from_numpy(c2w).float(), f, f, torch.full((n,), size / 2), torch.full((n,), size / 2),
                   size, size)
    renderer = OctreeRenderer(tree)
    images = np.stack([renderer.render_camera(c2w[k], float(f[k]), float(f[k]), size / 2, size / 2, size, size)["rgb"]
                       for k in range(n)])
    return PosedImages(torch.from_numpy(images), cams, [f"v{k}.png" for k in range(n)], tree.near, tree.far,
                       torch.from_numpy(BOX).float(), source="synthetic")


def _perturbed(tree: Octree, seed: int = 1) -> Octree:
    rng = np.random.default_rng(seed)
    sh = tree.sh + rng.normal(0.0, 0.4, tree.sh.shape).astype(np.float32)
    return Octree(tree.bricks, tree.density * 0.5, sh, tree.resolution, tree.brick, tree.aabb, tree.sh_degree,
                  tree.background, tree.near, tree.far)


def _mse(tree: Octree, views: PosedImages) -> float:
    renderer, cams = OctreeRenderer(tree), views.cameras
    errs = [np.mean((renderer.render_camera(cams.c2w[k].double().numpy(), float(cams.fx[k]), float(cams.fy[k]),
                                            float(cams.cx[k]), float(cams.cy[k]), cams.height, cams.width)["rgb"]
                     - views.images[k].numpy()) ** 2) for k in range(len(views))]
    return float(np.mean(errs))


@pytest.mark.parametrize("kernels", ["numba", "reference"])
def test_differentiable_render_is_the_octree_renderer(kernels, monkeypatch):
    """The fine-tuning renderer (segments from numba or from the PyTorch reference, composited with
    fieldcraft.render.compositing) gives what ``eval --octree`` renders, pixel for pixel."""
    tree = _tree(0, degree=2)
    cam = (_look_at([2.0, 1.2, 0.7]), 30.0, 32.0, 9.5, 10.0, 20, 19)
    fast = OctreeRenderer(tree).render_camera(*cam)
    if kernels == "reference":
        monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    leaves = OctreeLeaves(tree)
    assert leaves.segments.fast == (kernels == "numba")
    o, d = camera_rays_numpy(*cam)
    out = leaves(torch.from_numpy(o), torch.from_numpy(d))
    assert 0.2 < fast["opacity"].mean() < 0.95 and out["rgb"].requires_grad
    occupied = leaves(torch.from_numpy(o), torch.from_numpy(d), empty=False)  # voxels of zero density left out
    for key in ("rgb", "opacity", "depth"):
        np.testing.assert_allclose(out[key].detach().numpy().reshape(fast[key].shape), fast[key], atol=1e-5,
                                   err_msg=key)
        np.testing.assert_allclose(occupied[key].detach().numpy(), out[key].detach().numpy(), atol=1e-6, err_msg=key)


def test_gradients_match_finite_differences():
    """Gradients with respect to densities and SH coefficients (float64 gradcheck on a few rays)."""
    tree = _tree(2, r=8, brick=2, degree=1)
    leaves = OctreeLeaves(tree)
    o, d = camera_rays_numpy(_look_at([2.0, -1.5, 0.9]), 3.0, 3.0, 2.0, 2.0, 4, 4)
    ray, voxel, t = leaves.segments(torch.from_numpy(o), torch.from_numpy(d), leaves.density.detach().reshape(-1))
    assert len(ray) > 20
    sigma = leaves.density.detach().double()[voxel, 0].requires_grad_()   # each segment's leaf values
    coef = leaves.sh.detach().double()[voxel].reshape(len(voxel), 3, -1).requires_grad_()
    assert (sigma == 0).any() and (sigma > 0).sum() > 10  # empty voxels get gradients too
    dirs, bg = torch.from_numpy(d), torch.ones(3, dtype=torch.float64)

    def render(sigma, coef):
        out = composite_segments(sigma, coef, ray, t, dirs, tree.sh_degree, bg, 0.0, len(o))
        return out["rgb"], out["opacity"], out["depth"]

    assert torch.autograd.gradcheck(render, (sigma, coef), eps=1e-6, atol=1e-5)


def test_finetuning_lowers_the_training_error_and_writes_the_file(tmp_path):
    """A grid with halved densities and noisy colours, fine-tuned 40 steps on 6 views of the
    original: the error of full renders over the training views falls several times; the file
    written holds the tuned values, loads and renders as the tuned grid does."""
    truth = _tree(0)
    views = _views(truth)
    start = _perturbed(truth)
    before = _mse(start, views)
    out = tmp_path / "tuned.octree"
    config = FinetuneConfig(batch_rays=512, lr_density=0.3, lr_sh=0.05)
    tuned, summary = finetune(start, views, out, config, Budget(steps=40), progress=False)
    after = _mse(tuned, views)
    assert before > 2e-3 and after < 0.2 * before, (before, after)
    assert summary["steps"] == 40 and summary["stopped"] is None
    assert summary["train_psnr_last"] > summary["train_psnr_first"] + 3
    back = load_octree(out)
    np.testing.assert_array_equal(back.bricks, start.bricks)
    assert back.resolution == start.resolution and back.sh_degree == start.sh_degree
    np.testing.assert_allclose(back.density, tuned.density, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(back.sh, tuned.sh, rtol=1e-3, atol=1e-3)
    assert (back.density >= 0).all() and not np.allclose(back.density, start.density, atol=1e-2)
    assert back.source["finetune"]["steps"] == 40 and back.source["finetune"]["batch_rays"] == 512
    assert abs(_mse(back, views) - after) < 0.05 * after + 1e-6


def test_reference_path_fine_tunes_alike(tmp_path, monkeypatch):
    """FIELDCRAFT_KERNELS=reference (the GPU's path: segments from PyTorch) fine-tunes as the numba path does."""
    truth = _tree(5)
    views = _views(truth, n=4, size=12)
    start = _perturbed(truth)
    config = FinetuneConfig(batch_rays=512, lr_density=0.3, lr_sh=0.05)
    fast, _ = finetune(start, views, tmp_path / "a.octree", config, Budget(steps=15), progress=False)
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    ref, _ = finetune(start, views, tmp_path / "b.octree", config, Budget(steps=15), progress=False)
    before, after_fast, after_ref = _mse(start, views), _mse(fast, views), _mse(ref, views)
    assert after_ref < 0.5 * before and abs(after_ref - after_fast) < 0.2 * after_fast, (before, after_fast, after_ref)


def test_empty_voxels_stay_empty_unless_grow(tmp_path):
    """Voxels emptied in the start grid (dense in the truth) stay empty by default; with ``grow``
    they take part, and some regain density."""
    truth = _tree(3)
    views = _views(truth, n=4, size=12)
    start = _perturbed(truth)
    rng = np.random.default_rng(0)
    holes = (start.density > 1.0) & (rng.random(start.density.shape) < 0.3)
    start.density[holes] = 0.0
    empty = start.density == 0
    kept, _ = finetune(start, views, tmp_path / "a.octree", FinetuneConfig(batch_rays=512),
                       Budget(steps=10), progress=False)
    assert (kept.density[empty] == 0).all() and (kept.density >= 0).all()
    grown, _ = finetune(start, views, tmp_path / "b.octree", FinetuneConfig(batch_rays=512, grow=True),
                        Budget(steps=10), progress=False)
    assert (grown.density[holes] > 0).mean() > 0.3


def test_ctrl_c_writes_what_it_has(tmp_path, monkeypatch):
    """SIGINT during the fine-tuning ends it after the current step; the file holds that step's values."""
    truth = _tree(4)
    views = _views(truth, n=4, size=12)
    loss = Photometric.loss

    def interrupted(self, model, step):
        if step == 2 and model is self.leaves:
            signal.raise_signal(signal.SIGINT)
        return loss(self, model, step)

    monkeypatch.setattr(Photometric, "loss", interrupted)
    out = tmp_path / "stopped.octree"
    tuned, summary = finetune(_perturbed(truth), views, out, FinetuneConfig(batch_rays=256), Budget(steps=1000),
                              progress=False)
    assert summary["stopped"] == "SIGINT" and summary["steps"] == 3
    back = load_octree(out)
    assert back.source["finetune"]["steps"] == 3 and back.source["finetune"]["stopped"] == "SIGINT"
    np.testing.assert_allclose(back.sh, tuned.sh, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------- the command line


def test_command_line(fitted, tmp_path, capsys):  # noqa: F811 (the fixture imported above)
    """export nerf --format octree --finetune-steps: the file loads in eval nerf --octree, records
    its fine-tuning, and --octree FILE fine-tunes an existing bake; bad input is one line, exit 2."""
    from fieldcraft.cli import main

    baked, tuned = tmp_path / "baked.octree", tmp_path / "tuned.octree"
    common = ["--format", "octree", "--resolution", "32", "--quiet", "--device", "cpu"]
    assert main(["export", "nerf", str(fitted), *common, "--out", str(baked)]) == 0
    assert "finetune" not in load_octree(baked).source
    capsys.readouterr()
    assert main(["export", "nerf", str(fitted), *common, "--out", str(tuned), "--octree", str(baked),
                 "--finetune-steps", "6", "--finetune-batch", "512"]) == 0
    assert "fine-tuned 6 steps" in capsys.readouterr().out
    tree = load_octree(tuned)
    assert tree.source["finetune"]["steps"] == 6 and tree.source["finetune"]["views"] == 13
    np.testing.assert_array_equal(tree.bricks, load_octree(baked).bricks)
    assert main(["eval", "nerf", str(fitted), "--octree", str(tuned), "--limit", "1", "--quiet"]) == 0
    metrics = json.loads((fitted / "eval" / "test-octree" / "metrics.json").read_text())
    assert metrics["views"] == 1 and math.isfinite(metrics["psnr"])
    from fieldcraft.commands.view import octree_scene

    scene = octree_scene(tuned, 24, 24, None)  # what 'fieldcraft view FILE' shows
    picture = scene.render(scene.c2w, scene.fov, 24, 24)
    assert picture.shape == (24, 24, 3) and picture.std() > 0.01
    capsys.readouterr()
    bad = [(["--octree", str(baked), "--finetune-steps", "2", "--data", str(tmp_path / "nowhere")], "nowhere"),
           (["--octree", str(tmp_path / "missing.octree"), "--finetune-steps", "2"], "missing.octree"),
           (["--octree", str(baked)], "--finetune-steps")]
    for extra, needle in bad:
        assert main(["export", "nerf", str(fitted), *common, "--out", str(tmp_path / "x.octree"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fieldcraft: error:") and needle in err and "\n" not in err, err
    assert main(["export", "nerf", str(fitted), "--format", "ply", "--out", str(tmp_path / "x.ply"),
                 "--finetune-steps", "2", "--quiet"]) == 2
    assert "apply to --format octree" in capsys.readouterr().err
    assert not (tmp_path / "x.octree").exists() and not (tmp_path / "x.ply").exists()
