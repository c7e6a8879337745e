"""Camera refinement (BARF): the coarse-to-fine window, pose corrections, their recovery of a known
perturbation on the vendored lego_mini scene, checkpoints / resume, poses.json, the reference kernels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fieldcraft.data.scene import load_posed_images
from fieldcraft.encodings import FrequencyEncodingConfig, HashGridConfig, SphericalHarmonicsConfig
from fieldcraft.encodings.annealing import WindowedEncoding, barf_window, feature_bands
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields.radiance import RadianceFieldConfig
from fieldcraft.io.checkpoint import load_checkpoint
from fieldcraft.io.records import write_json
from fieldcraft.render.pose_refinement import PoseCorrections, compose, perturb_poses, pose_errors, so3_exp
from fieldcraft.tasks import nerf
from fieldcraft.tasks.nerf.outputs import load_model, refined_poses
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"


# ------------------------------------------------------------------------------------ window


def test_window_is_zero_before_one_after_and_monotone():
    n, start, end = 8, 0.1, 0.5
    assert torch.equal(barf_window(0.0, n, start, end), torch.zeros(n))
    assert torch.equal(barf_window(start, n, start, end), torch.zeros(n))
    assert torch.equal(barf_window(end, n, start, end), torch.ones(n))
    assert torch.equal(barf_window(1.0, n, start, end), torch.ones(n))
    ws = torch.stack([barf_window(p, n, start, end) for p in torch.linspace(0, 1, 101).tolist()])
    assert bool((ws.diff(dim=0) >= 0).all())  # every band opens monotonically with progress
    assert bool((ws.diff(dim=1) <= 0).all())  # coarser bands are never less open than finer ones
    half = barf_window(0.125, n, start, end)  # alpha = 8 * (0.125 - 0.1) / 0.4 = 0.5: band 0 half open
    assert abs(float(half[0]) - 0.5) < 1e-6 and float(half[1:].abs().max()) == 0
    assert torch.equal(barf_window(0.3, 3, 0.3, 0.3), torch.ones(3))  # end == start: a step


def test_windowed_hash_grid_keeps_the_coarsest_level_and_opens_the_others():
    enc = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=16,
                         init_scale=1.0).build(3)
    bands, n = feature_bands(enc)
    assert n == 3 and bands.tolist() == [-1, -1, 0, 0, 1, 1, 2, 2]
    w = WindowedEncoding(enc, 0.0, 1.0)
    x = torch.rand(5, 3) * 2 - 1
    full = enc(x)
    w.set_progress(0.0)
    y = w(x)
    assert torch.equal(y[:, :2], full[:, :2]) and bool((y[:, 2:] == 0).all())
    w.set_progress(1.0)
    assert torch.equal(w(x), full)
    with pytest.raises(FieldcraftError, match="levels or frequency bands"):
        feature_bands(SphericalHarmonicsConfig(degree=2).build(3))


# ------------------------------------------------------------------------------------ poses


def test_pose_corrections_start_at_the_given_poses_and_have_exact_gradients():
    c2w = perturb_poses(torch.eye(4)[None, :3].repeat(3, 1, 1), 10.0, 1.0, torch.Generator().manual_seed(1))
    pc = PoseCorrections(3, gain=0.5, scene_size=2.0)
    assert torch.equal(pc(c2w), c2w)
    # d/d(omega) of exp at zero is the cross-product matrix: compare with finite differences in float64
    w = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: compose(c2w[:1].double(), torch.cat([v, v * 0.3], -1)), (w,))
    assert torch.autograd.gradcheck(so3_exp, (torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64,
                                                            requires_grad=True),))


def _perturbed(src: Path, dst: Path, degrees: float, fraction: float, seed: int) -> float:
    """A copy of ``src`` (Blender layout) with every training pose perturbed; returns the scene size."""
    size = float(load_posed_images(src, "train").aabb.diff(dim=0).norm())
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "transforms_train.json":
            (dst / entry.name).symlink_to(entry.resolve())
    meta = json.loads((src / "transforms_train.json").read_text())
    c2w = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)[:, :3]
    noisy = perturb_poses(c2w, degrees, fraction * size, torch.Generator().manual_seed(seed))
    for frame, m in zip(meta["frames"], noisy):
        frame["transform_matrix"] = torch.cat([m, torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)]).tolist()
    write_json(dst / "transforms_train.json", meta)
    return size


def _small_config(**kw) -> nerf.NerfConfig:
    """A cheap field (6 octaves, 3x64 MLP, 16 stratified samples, 256 rays) with pose refinement."""
    field = RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=6), trunk_width=64,
                                trunk_layers=3, n_features=3, direction_encoding=None, color_layers=-1,
                                density_activation="softplus", density_bias=-1.0)
    base = dict(preset="test", field=field, sampler="stratified", n_samples=16, rays=256, lr=1e-2, schedule="exp",
                background="white", box="silhouette", pose_refine=True, pose_lr=2e-3)
    return nerf.NerfConfig(**{**base, **kw})


def test_refinement_reduces_a_known_pose_perturbation(tmp_path):
    noisy = tmp_path / "noisy"
    _perturbed(LEGO_MINI, noisy, 3.0, 0.05, seed=0)
    truth = load_posed_images(LEGO_MINI, "train").cameras.c2w
    rot0, dist0 = (e.mean() for e in pose_errors(load_posed_images(noisy, "train").cameras.c2w, truth))
    nerf.fit(_small_config(), noisy, tmp_path / "run", Budget(steps=150), progress=False)
    model, meta = load_model(tmp_path / "run")
    _, refined = refined_poses(model, meta)
    rot1, dist1 = (e.mean() for e in pose_errors(refined, truth))
    assert float(rot1) < 0.9 * float(rot0), (float(rot0), float(rot1))
    assert float(dist1) < 0.9 * float(dist0), (float(dist0), float(dist1))
    # poses.json holds the refined matrices of every training view
    poses = json.loads((tmp_path / "run" / "poses.json").read_text())
    assert [f["file_path"] for f in poses["frames"]] == load_posed_images(noisy, "train").names
    got = torch.tensor([f["transform_matrix"] for f in poses["frames"]])[:, :3]
    assert torch.allclose(got, refined, atol=1e-6)
    assert max(f["rotation_degrees"] for f in poses["frames"]) > 0.1


def test_checkpoint_keeps_the_corrections_and_resume_continues_them(tmp_path):
    # a constant learning rate and an open window: 6 + 6 steps are then 12 steps whatever the budget
    cfg = _small_config(rays=64, n_samples=8, schedule="constant", c2f_start=0.0, c2f_end=0.0)
    nerf.fit(cfg, LEGO_MINI, tmp_path / "straight", Budget(steps=12), progress=False, checkpoint_seconds=1e9)
    nerf.fit(cfg, LEGO_MINI, tmp_path / "resumed", Budget(steps=6), progress=False, checkpoint_seconds=1e9)
    tensors, _ = load_checkpoint(tmp_path / "resumed")
    delta6 = tensors["model.poses.delta"].clone()
    assert float(delta6.abs().max()) > 0  # the corrections moved and are in the checkpoint
    nerf.fit(None, LEGO_MINI, tmp_path / "resumed", Budget(steps=12), resume=True, progress=False)
    straight, _ = load_checkpoint(tmp_path / "straight")
    resumed, _ = load_checkpoint(tmp_path / "resumed")
    assert not torch.equal(resumed["model.poses.delta"], delta6)
    assert torch.allclose(resumed["model.poses.delta"], straight["model.poses.delta"], atol=1e-6)
    model, meta = load_model(tmp_path / "resumed")
    assert torch.allclose(model.poses.delta.detach().cpu(), resumed["model.poses.delta"])
    assert torch.equal(model.field.position_encoding.window, resumed["model.field.position_encoding.window"])


def test_reference_kernels_and_align_on_a_hash_grid(tmp_path, monkeypatch):
    """The GPU's path (PyTorch reference kernels) on the instant preset's kind of field (hash grid,
    occupancy grid): the corrections get finite, non-zero updates; eval --align runs."""
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    cfg = nerf.nerf_config("instant", pose_refine=True, rays=128, target_samples=0, grid_warmup=4, render_steps=64)
    cfg = cfg.replace(field=cfg.field.replace(position_encoding=HashGridConfig(
        n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, max_resolution=32)))
    nerf.fit(cfg, LEGO_MINI, tmp_path / "run", Budget(steps=4), progress=False)
    model, meta = load_model(tmp_path / "run")
    delta = model.poses.delta.detach()
    assert bool(torch.isfinite(delta).all()) and float(delta.abs().max()) > 0
    m = nerf.evaluate(tmp_path / "run", "test", max_images=1, progress=False, align=True)
    assert m["aligned"] and (tmp_path / "run" / "eval" / "test-aligned" / "metrics.json").exists()


def test_refine_poses_off_leaves_the_model_unchanged_and_align_needs_it(tmp_path):
    cfg = _small_config(pose_refine=False, rays=64, n_samples=8)
    model = nerf.NerfModel(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3]), False, n_images=3)
    assert model.poses is None and not any("window" in k or "poses" in k for k in model.state_dict())
    nerf.fit(cfg, LEGO_MINI, tmp_path / "run", Budget(steps=1), progress=False)
    assert not (tmp_path / "run" / "poses.json").exists()
    with pytest.raises(FieldcraftError, match="--refine-poses"):
        nerf.evaluate(tmp_path / "run", "test", max_images=1, progress=False, align=True)
    shutil.rmtree(tmp_path / "run")


def test_fast_point_gradients_of_a_hash_grid_match_the_reference():
    from fieldcraft.encodings.grid import grid_encode_reference
    from fieldcraft.encodings.grid_points import fast_point_gradients, grid_encode_with_points

    torch.manual_seed(0)
    enc = HashGridConfig(n_levels=6, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=64,
                         init_scale=1.0).build(3)
    assert sum(enc.layout.hashed) > 0  # hashed and dense levels
    x = (torch.rand(300, 3) * 2.4 - 1.2).requires_grad_(True)  # some points outside the cube: zero gradient there
    w = torch.randn(300, enc.out_dim)
    assert fast_point_gradients(enc, x)
    y = grid_encode_with_points(enc, x)
    gx, gt = torch.autograd.grad((y * w).sum(), (x, enc.table))
    ref = grid_encode_reference((x + 1) * 0.5, enc.table, enc.layout)
    rx, rt = torch.autograd.grad((ref * w).sum(), (x, enc.table))
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.allclose(gx, rx, atol=1e-3, rtol=1e-4) and float(gx.abs().max()) > 0
    assert torch.allclose(gt, rt, atol=1e-5)


def test_command_line(tmp_path, capsys):
    from fieldcraft.cli import main

    out = tmp_path / "run"
    fit = ["fit", "nerf", str(LEGO_MINI), "--out", str(out), "--quiet", "--device", "cpu", "--steps", "2"]
    assert main([*fit, "--pose-lr", "1e-3"]) == 2
    assert "--pose-lr needs --refine-poses" in capsys.readouterr().err
    assert main([*fit, "--refine-poses", "--pose-lr", "2e-3"]) == 0
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["pose_refine"] is True and stored["pose_lr"] == 2e-3
    assert (out / "poses.json").exists()
    assert main(["eval", "nerf", str(out), "--limit", "1", "--align", "--quiet", "--device", "cpu"]) == 0
    assert "test-aligned" in capsys.readouterr().out
