"""Plenoxels: the voxel radiance field (interpolation, SH colour, TV, upsampling, pruning), the fast
path against the PyTorch reference, a tiny fit, and the ``plenoxels`` NeRF preset's checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fieldcraft.cli import main
from fieldcraft.config import Config
from fieldcraft.encodings import coarse_to_fine
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import PlenoxelFieldConfig
from fieldcraft.fields.plenoxels import strided_rows, total_variation, upsample_grid
from fieldcraft.render.compositing import accumulate, apply_background, weights_from_densities
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
Y00, Y1 = 0.28209479177387814, 0.48860251190291987  # real SH constants of bands 0 and 1


def _random_field(cfg: PlenoxelFieldConfig, seed: int = 0, box: torch.Tensor = BOX):
    field = cfg.build(box)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        field.density_grid.table.copy_(torch.randn(field.density_grid.table.shape, generator=g))
        field.sh_grid.table.copy_(torch.randn(field.sh_grid.table.shape, generator=g) * 0.5)
    return field


def _points(n: int, seed: int = 1, margin: float = 1.0) -> torch.Tensor:
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * margin


def test_interpolation_and_colour_match_a_hand_computation():
    """One cell over the box [0, 2] x [0, 4] x [0, 8]: raw density x + 2y + 4z at corner (x, y, z),
    so at world point (0.5, 1, 6) (u = (1/4, 1/4, 3/4)) it is 1/4 + 2/4 + 4 (3/4) = 3.75;
    sigma = density_scale * relu(raw); colour from constant SH coefficients."""
    box = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 8.0]])
    for backend in ("auto", "torch"):
        field = PlenoxelFieldConfig(resolution=1, density_scale=10.0, backend=backend).build(box)
        with torch.no_grad():
            field.density_grid.table.copy_(torch.tensor([[x + 2.0 * y + 4.0 * z] for z in (0, 1) for y in (0, 1)
                                                         for x in (0, 1)]) - 1.0)
            coeffs = torch.zeros(3, 9)  # [rgb, 9 harmonics], bands 0 and 1 only
            coeffs[:, :4] = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 2.0]])
            field.sh_grid.table.copy_(coeffs.reshape(1, 27).expand(8, 27))
        x = torch.tensor([[0.5, 1.0, 6.0], [0.0, 0.0, 0.0], [-5.0, 0.0, 0.0]])  # the last clamped to the second
        d = torch.tensor([[0.0, 0.0, 2.0]] * 3)  # +z, not unit length: normalised
        sigma, rgb = field(x, d)
        torch.testing.assert_close(sigma, torch.tensor([10.0 * 2.75, 0.0, 0.0]))  # raw -1 at the origin: ReLU
        torch.testing.assert_close(field.density(x), sigma)
        # Y = (Y00, -Y1 y, Y1 z, -Y1 x) = (Y00, 0, Y1, 0) for +z
        expected = torch.tensor([max(0.0, Y00 + 0.5 * Y1 + 0.5), 0.5, max(0.0, -Y00 + 0.5)])
        torch.testing.assert_close(rgb, expected.expand(3, 3))
    sig = PlenoxelFieldConfig(resolution=1, color_activation="sigmoid").build(box)
    with torch.no_grad():
        sig.sh_grid.table.copy_(coeffs.reshape(1, 27).expand(8, 27))
    _, rgb = sig(x[:1], d[:1])
    torch.testing.assert_close(rgb[0], torch.sigmoid(torch.tensor([Y00 + 0.5 * Y1, 0.0, -Y00])))


@pytest.mark.parametrize("steps", [(), (1, 2)])
def test_fast_path_equals_the_reference(steps, monkeypatch):
    """Values and table gradients of the numba path equal the PyTorch reference, at full resolution and
    at a coarse one (every 4th vertex), with ``backend="torch"`` and with ``FIELDCRAFT_KERNELS=reference``."""
    cfg = PlenoxelFieldConfig(resolution=8, upsample_steps=steps)
    fast = _random_field(cfg)
    refs = [_random_field(cfg.replace(backend="torch"))]
    x, d = _points(400, margin=1.1), _points(400, seed=2)
    weights = torch.randn(400, 4, generator=torch.Generator().manual_seed(3))

    def run(field):
        sigma, rgb = field(x, d)
        (torch.cat([sigma[:, None], rgb], 1) * weights).sum().backward()
        return sigma.detach(), rgb.detach(), field.density_grid.table.grad, field.sh_grid.table.grad

    got = run(fast)
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    refs.append(_random_field(cfg))
    for ref in refs:
        for a, b in zip(got, run(ref)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if steps:  # only the vertices in use get gradients
        in_use = strided_rows(torch.ones_like(got[3]), 8, 4)
        assert got[3].abs().sum() == strided_rows(got[3], 8, 4).abs().sum() > 0 and in_use.shape[0] == 27


def test_total_variation_of_a_constant_grid_is_zero_and_of_a_ramp_by_hand():
    field = PlenoxelFieldConfig(resolution=4, tv_density=1.0, tv_sh=0.5, tv_fraction=1.0).build(BOX)
    with torch.no_grad():
        field.density_grid.table.fill_(3.0)
        field.sh_grid.table.fill_(-0.7)
    assert field.regularization(0).item() == 0.0
    # density = x index of the vertex (a ramp of slope 1 per cell): each cell's TV is sqrt(1) = 1, 64 cells
    n1 = 5
    with torch.no_grad():
        field.density_grid.table.copy_(torch.arange(n1).repeat(n1 * n1)[:, None].float())
    torch.testing.assert_close(field.regularization(7), torch.tensor(64.0), atol=0, rtol=1e-4)  # sqrt(eps) aside
    assert field.config.replace(tv_density=0.0, tv_sh=0.0).build(BOX).regularization(0) is None
    # the cells are drawn from the step: same step, same value; another step, other cells
    rough = _random_field(PlenoxelFieldConfig(resolution=8, tv_fraction=0.05))
    assert rough.regularization(3).item() == rough.regularization(3).item() != rough.regularization(4).item()


def test_total_variation_sparse_gradient_adds_up_like_the_dense_one():
    """With a gradient already there the TV's gradient is sparse (rows read only); the sum is the dense one's."""
    table = torch.randn(125, 6, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    cells = torch.randint(0, 4, (30, 3), generator=torch.Generator().manual_seed(1))
    total_variation(table, cells, 4, 1).backward()
    dense = table.grad.clone()
    assert table.grad.layout == torch.strided
    table.grad = torch.ones_like(table)
    total_variation(table, cells, 4, 1).backward()
    assert table.grad.layout == torch.strided
    torch.testing.assert_close(table.grad, dense + 1.0)
    # coarse: cells of a 2-cell grid on the vertices in use (stride 2) equal those of the strided copy
    coarse = total_variation(table, cells % 2, 4, 2)
    torch.testing.assert_close(coarse, total_variation(strided_rows(table, 4, 2), cells % 2, 2, 1))


def test_upsampling_keeps_the_field_and_follows_the_schedule():
    cfg = PlenoxelFieldConfig(resolution=16, upsample_steps=(5, 9))
    field = _random_field(cfg)
    x, d = _points(500, margin=1.1), _points(500, seed=4)
    sigma, rgb = field(x, d)
    assert field.current_resolution == 4
    assert not coarse_to_fine(field, 4)
    assert coarse_to_fine(field, 5) and field.current_resolution == 8
    s8, c8 = field(x, d)
    assert coarse_to_fine(field, 100) and field.current_resolution == 16 and int(field.level) == 2
    assert not coarse_to_fine(field, 101)
    for s, c in ((s8, c8), field(x, d)):
        torch.testing.assert_close(s, sigma, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(c, rgb, rtol=1e-5, atol=1e-5)


def test_upsampled_vertices_hold_the_trilinear_interpolation():
    table = torch.randn(9**3, 2)
    kept = table.clone()
    upsample_grid(table, 8, 4)
    view = table.view(9, 9, 9, 2)
    assert torch.equal(view[::4, ::4, ::4], kept.view(9, 9, 9, 2)[::4, ::4, ::4])
    # vertex (x, y, z) = (2, 4, 6): halfway along x and z in the coarse cell (0..4, 4, 4..8)
    c = kept.view(9, 9, 9, 2)
    expected = 0.25 * (c[4, 4, 0] + c[4, 4, 4] + c[8, 4, 0] + c[8, 4, 4])
    torch.testing.assert_close(view[6, 4, 2], expected)
    with pytest.raises(FieldcraftError, match="full resolution"):
        upsample_grid(table, 8, 1)


def test_pruning_zeroes_empty_vertices_far_from_dense_ones():
    """A dense blob at one corner: at the upsampling, vertices farther than prune_dilate from it are
    zeroed (density and SH); the field near the blob is unchanged."""
    cfg = PlenoxelFieldConfig(resolution=16, upsample_steps=(1,), density_scale=1.0, prune_density=0.5,
                              prune_dilate=1)
    field = _random_field(cfg)
    with torch.no_grad():
        field.density_grid.table.mul_(0.01)  # sigma < 0.5 everywhere ...
        field.density_grid.table.view(17, 17, 17)[0, 0, 0] = 5.0  # ... but at the corner vertex (0, 0, 0)
    near = torch.rand(50, 3) * 0.2 - 1.0  # inside the first coarse cell
    before = field(near, near)
    assert field.prune() == 9**3 - 8  # the corner and its 7 neighbours (dilation 1) are kept
    torch.testing.assert_close(field(near, near)[0], before[0])
    coarse = field.density_grid.table.view(17, 17, 17)[::2, ::2, ::2]
    assert int((coarse != 0).sum()) == 8 and coarse[0, 0, 0].item() == 5.0
    assert field.sh_grid.table.view(17, 17, 17, -1)[::2, ::2, ::2][4, 4, 4].abs().sum().item() == 0.0
    assert coarse_to_fine(field, 1) and field.current_resolution == 16
    far = torch.full((1, 3), 0.5)
    with torch.no_grad():
        assert field.density(far).item() == 0.0 and field(far, far)[1].sub(0.5).abs().max().item() == 0.0


def _render(field, origins, dirs, n: int = 32, bg: float = 1.0):
    """Padded volume rendering of straight rays through the box (t in [0, 2 sqrt(3)])."""
    edges = torch.linspace(0.0, 2 * math.sqrt(3), n + 1).expand(len(origins), n + 1)
    t = 0.5 * (edges[:, :-1] + edges[:, 1:])
    pts = origins[:, None] + t[..., None] * dirs[:, None]
    sigma, rgb = field(pts.reshape(-1, 3), dirs[:, None].expand(-1, n, 3).reshape(-1, 3))
    w, _, _ = weights_from_densities(sigma.reshape(-1, n), edges[:, :-1], edges[:, 1:])
    return apply_background(accumulate(w, rgb.reshape(-1, n, 3)), accumulate(w), torch.full((3,), bg))


def test_a_tiny_fit_of_a_synthetic_scene_lowers_the_loss():
    """Pictures of a coloured ball (a 16^3 Plenoxel field) from four sides; a fresh field with TV,
    upsampling from 8 to 16 cells at step 30 and pruning, fitted with the optimiser of the training
    core, cuts the error by 5x in 80 steps."""
    from fieldcraft.train import OptimizerConfig

    torch.manual_seed(0)
    truth = PlenoxelFieldConfig(resolution=16, density_scale=1.0).build(BOX)
    with torch.no_grad():
        g = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 17)] * 3, indexing="ij"), -1).flip(-1).reshape(-1, 3)
        truth.density_grid.table.copy_(20.0 * (g.norm(dim=-1, keepdim=True) < 0.6))
        truth.sh_grid.table[:, [0, 9, 18]] = g / Y00  # rgb = position / 2 + 1/2
    ij = torch.stack(torch.meshgrid(*[torch.linspace(-0.9, 0.9, 10)] * 2, indexing="ij"), -1).reshape(-1, 2)
    rays = []
    for axis, sign in ((0, 1), (1, 1), (2, -1), (0, -1)):
        o = torch.zeros(len(ij), 3)
        o[:, [a for a in range(3) if a != axis]] = ij
        o[:, axis] = -sign * math.sqrt(3)
        dvec = torch.zeros(len(ij), 3)
        dvec[:, axis] = sign
        rays.append((o, dvec))
    origins, dirs = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])
    with torch.no_grad():
        target = _render(truth, origins, dirs)
    field = PlenoxelFieldConfig(resolution=16, upsample_steps=(30,), density_scale=10.0, prune_density=0.01,
                                tv_density=1e-4, tv_sh=1e-4, tv_fraction=0.1).build(BOX)
    opt = OptimizerConfig(lr=0.1).build(field)
    losses = []
    for step in range(80):
        coarse_to_fine(field, step)
        opt.zero_grad(set_to_none=True)
        loss = ((_render(field, origins, dirs) - target) ** 2).mean()
        loss.backward()
        field.regularization(step).backward()
        opt.step()
        losses.append(loss.item())
    assert field.current_resolution == 16
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_config_round_trip_and_bad_configs():
    cfg = PlenoxelFieldConfig(resolution=32, upsample_steps=(10, 20), color_activation="sigmoid")
    assert Config.from_json(cfg.to_json()) == cfg
    for bad, match in ((dict(resolution=12, upsample_steps=(1, 2, 3)), "divisible"),
                       (dict(upsample_steps=(5, 2)), "increasing"), (dict(sh_degree=5), "sh_degree"),
                       (dict(color_activation="tanh"), "color_activation"), (dict(tv_fraction=0.0), "tv_fraction"),
                       (dict(backend="gpu"), "backend")):
        with pytest.raises(FieldcraftError, match=match):
            cfg.replace(**bad).build(BOX)


def _tiny_preset(**overrides):
    from fieldcraft.tasks import nerf

    cfg = nerf.nerf_config("plenoxels", **overrides)
    field = cfg.field.replace(resolution=16, upsample_steps=(1, 2), tv_density=1e-5, tv_sh=1e-3)
    return cfg.replace(field=field, rays=64, target_samples=2048, grid_resolution=16, render_steps=32)


def test_plenoxels_preset_checkpoint_round_trip(tmp_path, monkeypatch):
    """fit (3 steps, upsampling twice, the TV added by the objective each step), --resume from the
    command line, eval and render: the checkpoint holds the grid at full resolution and the resumed run
    continues from it."""
    from fieldcraft.fields.plenoxels import PlenoxelField
    from fieldcraft.tasks import nerf

    calls = []
    regularization = PlenoxelField.regularization

    def counted(self, step):
        calls.append(step)
        return regularization(self, step)

    monkeypatch.setattr(PlenoxelField, "regularization", counted)
    out = tmp_path / "run"
    summary = nerf.fit(_tiny_preset(), LEGO_MINI, out, Budget(steps=3), progress=False, device="cpu", max_images=4)
    assert calls[-3:] == [0, 1, 2]  # after the warm-up's step on a copy
    assert summary["steps"] == 3 and math.isfinite(summary["train_psnr"]) and summary["preset"] == "plenoxels"
    model, meta = nerf.load_model(out, device="cpu")
    assert meta["config"]["field"]["type"] == "PlenoxelField" and model.field.current_resolution == 16
    assert main(["fit", "nerf", str(LEGO_MINI), "--out", str(out), "--steps", "5", "--resume", "--quiet",
                 "--device", "cpu"]) == 0
    resumed, meta = nerf.load_model(out, device="cpu")
    assert meta["step"] == 5 and int(resumed.field.level) == 2
    assert not torch.equal(resumed.field.sh_grid.table, model.field.sh_grid.table)
    assert main(["eval", "nerf", str(out), "--split", "val", "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "eval" / "val" / "metrics.json").read_text())
    assert metrics["preset"] == "plenoxels" and math.isfinite(metrics["psnr"]) and len(metrics["per_view"]) == 2
    video = tmp_path / "orbit.gif"
    assert main(["render", "nerf", str(out), "--orbit", "--frames", "2", "--out", str(video), "--quiet",
                 "--device", "cpu"]) == 0
    assert video.stat().st_size > 0
    # baking needs a network field: one line, exit 2, no file
    assert main(["export", "nerf", str(out), "--format", "octree", "--out", str(tmp_path / "g.octree")]) == 2
    assert not (tmp_path / "g.octree").exists()


def test_plenoxels_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    """Two steps (one upsampling done, one to come), then resumed to four, with the PyTorch reference
    kernels and a constant learning rate: the same weights, Adam moments and resolution as four in one go."""

    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    # one thread: PyTorch's multi-threaded scatter-adds may sum in another order from run to run, and
    # Adam (eps 1e-15) turns a last-bit difference in a near-zero gradient into a whole step
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_resume(tmp_path):
    from fieldcraft.io.checkpoint import load_checkpoint
    from fieldcraft.tasks import nerf

    cfg = _tiny_preset(grid_update_every=1, box="dataset", schedule="constant")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    nerf.fit(cfg, LEGO_MINI, whole, Budget(steps=4), progress=False, device="cpu", max_images=3)
    nerf.fit(cfg, LEGO_MINI, parts, Budget(steps=2), progress=False, device="cpu", max_images=3)
    assert int(load_checkpoint(parts)[0]["model.field.level"]) == 1
    nerf.fit(None, LEGO_MINI, parts, Budget(steps=4), resume=True, progress=False, device="cpu", max_images=3)
    whole_tensors, _ = load_checkpoint(whole)
    parts_tensors, parts_meta = load_checkpoint(parts)
    assert parts_meta["step"] == 4 and int(whole_tensors["model.field.level"]) == 2
    assert any(name.startswith("optim.") for name in whole_tensors)
    for name, value in whole_tensors.items():
        if not name.startswith("rng."):
            torch.testing.assert_close(parts_tensors[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_nerf_options_a_voxel_field_does_not_support_are_refused():
    from fieldcraft.tasks import nerf

    for bad in (dict(appearance_dim=8), dict(pose_refine=True)):
        with pytest.raises(FieldcraftError, match="Plenoxel"):
            nerf.nerf_config("plenoxels", **bad)
