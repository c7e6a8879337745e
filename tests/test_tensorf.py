"""Tri-plane and TensoRF (VM, CP) encodings, coarse-to-fine upsampling, and the ``tensorf`` NeRF preset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fieldcraft.config import Config
from fieldcraft.encodings import (
    TensoRFCPConfig,
    TensoRFVMConfig,
    TriPlaneConfig,
    coarse_to_fine,
)
from fieldcraft.encodings.triplane import grid_points, sample, sample_reference, upsample_stack
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import FieldConfig
from fieldcraft.io.checkpoint import load_checkpoint, save_checkpoint
from fieldcraft.networks import MLPConfig
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"

CONFIGS = {
    "triplane_sum": TriPlaneConfig(resolution=16, n_features=4),
    "triplane_concat_levels": TriPlaneConfig(resolution=16, n_features=3, reduce="concat", levels=2,
                                             upsample_steps=(2,)),
    "vm_concat": TensoRFVMConfig(resolution=16, n_components=5, upsample_steps=(1, 3)),
    "vm_sum": TensoRFVMConfig(resolution=8, n_components=4, reduce="sum"),
    "cp": TensoRFCPConfig(resolution=16, n_components=6, upsample_steps=(2,)),
}
OUT_DIMS = {"triplane_sum": 4, "triplane_concat_levels": 18, "vm_concat": 15, "vm_sum": 4, "cp": 6}


def _points(n: int, seed: int = 0, margin: float = 1.1) -> torch.Tensor:
    """Points in ``[-margin, margin]^3`` (some outside the cube: clamped)."""
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * margin


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_gradients_and_fast_kernel_equal_reference(name):
    cfg = CONFIGS[name]
    enc = cfg.build(3)
    ref = cfg.replace(backend="torch").build(3)
    ref.load_state_dict(enc.state_dict())
    x = _points(300)
    y, y_ref = enc(x.reshape(10, 30, 3)), ref(x)
    assert enc.out_dim == cfg.out_dim(3) == OUT_DIMS[name] and y.shape == (10, 30, OUT_DIMS[name])
    torch.testing.assert_close(y.reshape(300, -1), y_ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn(300, enc.out_dim, generator=torch.Generator().manual_seed(1))
    (y.reshape(300, -1) * weights).sum().backward()
    (y_ref * weights).sum().backward()
    for (n, p), (_, q) in zip(enc.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)
    assert enc(torch.zeros(0, 3)).shape == (0, enc.out_dim)


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_with_respect_to_points_take_the_reference_path(name):
    """An eikonal-style loss needs d features / d x: points that require gradients get finite ones."""
    enc = CONFIGS[name].build(3)
    x = _points(50, margin=0.9).requires_grad_(True)
    (gx,) = torch.autograd.grad(enc(x).square().sum(), x)
    assert gx.shape == (50, 3) and bool(torch.isfinite(gx).all()) and gx.abs().sum() > 0


def test_reference_sampling_is_bilinear_by_hand():
    """One plane, 2 x 2 cells (vertex (i, j) holds i + 10 j), and the same plane used at stride 2."""
    table = torch.tensor([[float(i + 10 * j)] for j in range(3) for i in range(3)]).reshape(1, 9, 1)
    t = torch.tensor([[[0.25, 0.75]], [[1.2, -0.3]]])  # the second point is clamped to (1, 0)
    out = sample_reference(t, table, 2, 1).flatten()
    torch.testing.assert_close(out, torch.tensor([0.5 + 15.0, 2.0]))
    # stride 2: corners (0, 0), (2, 0), (0, 2), (2, 2) only; a bilinear plane interpolates itself exactly
    torch.testing.assert_close(sample_reference(t, table, 2, 2).flatten(), out)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_json_round_trip(name):
    cfg = CONFIGS[name]
    back = Config.from_json(cfg.to_json())
    assert back == cfg and type(back) is type(cfg)
    field = FieldConfig(in_dim=3, out_dim=1, encoding=cfg)
    assert Config.from_dict(field.to_dict()) == field


def test_bad_configs_raise_one_line_errors():
    with pytest.raises(FieldcraftError, match="3-D points"):
        TriPlaneConfig().build(2)
    with pytest.raises(FieldcraftError, match="divisible"):
        TensoRFVMConfig(resolution=12, upsample_steps=(1, 2, 3)).build(3)
    with pytest.raises(FieldcraftError, match="increasing"):
        TensoRFCPConfig(upsample_steps=(5, 2)).build(3)
    with pytest.raises(FieldcraftError, match="reduce"):
        TriPlaneConfig(reduce="product").build(3)
    with pytest.raises(FieldcraftError, match="backend"):
        TensoRFVMConfig(backend="gpu").build(3)


@pytest.mark.parametrize("name", ["triplane_sum", "vm_concat", "cp"])
def test_a_tiny_3d_fit_decreases_the_loss(name):
    """A field (encoding + small MLP) fits a smooth 3-D function: 60 Adam steps cut the MSE 5-fold."""
    torch.manual_seed(0)
    field = FieldConfig(in_dim=3, out_dim=1, encoding=CONFIGS[name],
                        network=MLPConfig(hidden_width=32, hidden_layers=1)).build()
    x = _points(2048, seed=2, margin=1.0)
    y = (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:2]) + x[:, 2:]) * 0.5
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = ((field(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


@pytest.mark.parametrize("name", ["triplane_concat_levels", "vm_concat", "cp"])
def test_upsampling_keeps_the_function(name):
    """Doubling the resolution fills the new vertices by (bi)linear interpolation: the encoding gives
    the same values everywhere, and the resolution follows the step schedule."""
    enc = CONFIGS[name].build(3)
    steps = CONFIGS[name].upsample_steps
    x = _points(500, seed=3)
    before = enc(x).detach()
    start = [s.current_resolution for s in enc.stacks()]
    assert not coarse_to_fine(enc, steps[0] - 1)  # not yet
    assert coarse_to_fine(enc, steps[-1])  # every step reached at once
    assert [s.current_resolution for s in enc.stacks()] == [r << len(steps) for r in start]
    assert [s.current_resolution for s in enc.stacks()] == [s.resolution for s in enc.stacks()]
    torch.testing.assert_close(enc(x).detach(), before, rtol=1e-5, atol=1e-6)
    assert not coarse_to_fine(enc, steps[-1] + 100)  # already at full resolution


def test_upsampled_plane_holds_the_coarse_values_at_the_new_vertices():
    """At the vertices an upsampling brings into use the stored values equal the coarse plane's
    bilinear interpolation there; the old vertices are untouched."""
    res = 8
    table = torch.randn(2, (res + 1) ** 2, 3)
    kept = table.clone()
    upsample_stack(table, res, 4, 2)
    assert torch.equal(table.view(2, res + 1, res + 1, 3)[:, ::4, ::4], kept.view(2, res + 1, res + 1, 3)[:, ::4, ::4])
    fine = table.view(2, res + 1, res + 1, 3)[:, ::2, ::2].permute(1, 2, 0, 3).reshape(-1, 2, 3)  # vertices (j, i)
    pts = grid_points(res, 2, 2)[:, [1, 0]]  # grid_points is i-major; the table is j-major
    coarse = sample_reference(pts[:, None, :].expand(-1, 2, -1).contiguous(), kept, res, 4)
    torch.testing.assert_close(fine, coarse, rtol=1e-5, atol=1e-6)


def test_resolution_survives_a_checkpoint(tmp_path):
    """The current resolution is a buffer: a checkpoint restores it and the same values."""
    cfg = CONFIGS["vm_concat"]
    enc = cfg.build(3)
    coarse_to_fine(enc, 1)  # one of two doublings
    save_checkpoint(tmp_path, {f"enc.{k}": v for k, v in enc.state_dict().items()}, {"task": "test"})
    tensors, _ = load_checkpoint(tmp_path)
    back = cfg.build(3)
    back.load_state_dict({k[4:]: v for k, v in tensors.items()})
    assert [s.current_resolution for s in back.stacks()] == [8, 8]
    x = _points(100)
    torch.testing.assert_close(back(x), enc(x))


def test_fast_sampling_of_a_strided_line_matches_the_reference():
    table = torch.randn(3, 17, 5)
    t = torch.rand(200, 3, 1)
    for stride in (1, 2, 4, 16):
        torch.testing.assert_close(sample(t, table, 16, stride), sample_reference(t, table, 16, stride))


def _tiny_tensorf(**overrides):
    from fieldcraft.tasks import nerf

    cfg = nerf.nerf_config("tensorf", **overrides)
    enc = cfg.field.position_encoding.replace(resolution=32, n_components=4, upsample_steps=(1, 2))
    return cfg.replace(field=cfg.field.replace(position_encoding=enc), rays=64, target_samples=2048)


def test_tensorf_preset_smoke_fit_and_resume_with_reference_kernels(tmp_path, monkeypatch):
    """The tensorf preset fits 3 steps on lego_mini with the PyTorch reference kernels (the GPU's path),
    upsampling twice; the checkpoint holds the full resolution; a resumed run continues from it."""
    from fieldcraft.tasks import nerf

    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    out = tmp_path / "run"
    cfg = _tiny_tensorf(grid_resolution=16)
    summary = nerf.fit(cfg, LEGO_MINI, out, Budget(steps=3), progress=False, device="cpu")
    assert summary["steps"] == 3 and math.isfinite(summary["train_psnr"]) and summary["preset"] == "tensorf"
    model, meta = nerf.load_model(out, device="cpu")
    assert meta["config"]["field"]["position_encoding"]["type"] == "TensoRFVM"
    stacks = model.field.position_encoding.stacks()
    assert [s.current_resolution for s in stacks] == [32, 32]
    data = nerf.fitted_views(meta, None, "val", max_images=1)
    rays = model.view_rays(data.cameras, 0, data.near, data.far)[::50]
    with torch.no_grad():
        rgb = model.render(rays, torch.ones(1, 3))["rgb"]
    assert bool(torch.isfinite(rgb).all())
    summary = nerf.fit(None, LEGO_MINI, out, Budget(steps=4), resume=True, progress=False, device="cpu")
    assert summary["steps"] == 4


def test_tensorf_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    """Stopped during step 2 of 4 (SIGINT from the coarse-to-fine hook; one upsampling done, one to come)
    and resumed: the same weights, optimiser state and resolution as 4 steps in one go."""
    import signal

    from fieldcraft.tasks import nerf
    from fieldcraft.tasks.nerf import model as nerf_model

    cfg = _tiny_tensorf(grid_update_every=1, grid_resolution=16, box="dataset")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    nerf.fit(cfg, LEGO_MINI, whole, Budget(steps=4), progress=False, device="cpu", max_images=3)
    hook = nerf_model.coarse_to_fine

    def hook_then_stop(module, step):
        if step == 1:  # the loop finishes this step, checkpoints and stops
            signal.raise_signal(signal.SIGINT)
        return hook(module, step)

    monkeypatch.setattr(nerf_model, "coarse_to_fine", hook_then_stop)
    first = nerf.fit(cfg, LEGO_MINI, parts, Budget(steps=4), progress=False, device="cpu", max_images=3)
    monkeypatch.setattr(nerf_model, "coarse_to_fine", hook)
    assert first["stopped"] == "SIGINT" and first["steps"] == 2
    nerf.fit(None, LEGO_MINI, parts, resume=True, progress=False, device="cpu", max_images=3)
    whole_tensors, whole_meta = load_checkpoint(whole)
    parts_tensors, parts_meta = load_checkpoint(parts)
    assert parts_meta["step"] == 4 and parts_meta["extra"] == whole_meta["extra"]
    assert int(whole_tensors["model.field.position_encoding.planes.level"]) == 2
    for name, value in whole_tensors.items():
        if not name.startswith("rng."):
            torch.testing.assert_close(parts_tensors[name], value, rtol=1e-5, atol=1e-6, msg=name)
