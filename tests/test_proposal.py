"""Real captures: Mip-NeRF 360's distortion loss, proposal sampling and its interlevel loss
(fieldcraft.render.losses, fieldcraft.render.proposal, the ``proposal`` sampler of NerfModel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fieldcraft.errors import FieldcraftError
from fieldcraft.io.checkpoint import load_checkpoint
from fieldcraft.render.compositing import accumulate
from fieldcraft.render.losses import (
    distance_from_normalized,
    distortion_loss,
    distortion_loss_reference,
    normalized_distance,
    sample_losses,
)
from fieldcraft.render.proposal import interlevel_loss, pdf_edges, proposal_bound, uniform_edges
from fieldcraft.render.rays import Rays
from fieldcraft.tasks import nerf
from fieldcraft.tasks.nerf.model import NerfModel
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"


def _packed(seed: int, n_rays: int = 7):
    """Random packed samples: per ray 0-12 sorted intervals of [0, 1] with gaps between them."""
    g = torch.Generator().manual_seed(seed)
    ri, s0, s1 = [], [], []
    for r in range(n_rays):
        k = int(torch.randint(0, 13, (1,), generator=g))
        edges = torch.sort(torch.rand(2 * k, generator=g, dtype=torch.float64)).values
        ri += [r] * k
        s0.append(edges[0::2])
        s1.append(edges[1::2])
    w = torch.rand(len(ri), generator=g, dtype=torch.float64) / 4
    return w, torch.cat(s0), torch.cat(s1), torch.tensor(ri, dtype=torch.long)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distortion_loss_is_the_double_sum_and_differentiable(seed):
    w, s0, s1, ri = _packed(seed)
    w.requires_grad_(True)
    fast = distortion_loss(w, s0, s1, ri, 8)
    ref = distortion_loss_reference(w, s0, s1, ri, 8)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    assert float(fast[7].detach()) == 0.0 and float(ref.sum().detach()) > 0  # ray 7 has no samples
    (g_fast,) = torch.autograd.grad(fast.sum(), w)
    (g_ref,) = torch.autograd.grad(ref.sum(), w)
    assert bool(torch.isfinite(g_fast).all())
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-10)
    # float32 (what training uses) agrees too
    fast32 = distortion_loss(w.detach().float(), s0.float(), s1.float(), ri, 8)
    torch.testing.assert_close(fast32.double(), ref.detach(), rtol=1e-4, atol=1e-6)


def test_distortion_loss_prefers_concentrated_weight():
    ri = torch.zeros(4, dtype=torch.long)
    s0, s1 = torch.tensor([0.0, 0.25, 0.5, 0.75]), torch.tensor([0.25, 0.5, 0.75, 1.0])
    spread = distortion_loss(torch.full((4,), 0.25), s0, s1, ri, 1)
    peaked = distortion_loss(torch.tensor([0.0, 1.0, 0.0, 0.0]), s0, s1, ri, 1)
    assert float(peaked) == pytest.approx(0.25 / 3) and float(spread) > float(peaked)


def test_normalized_distance_round_trip():
    t = torch.tensor([0.3, 1.0, 5.0, 40.0])
    lo, hi = torch.full_like(t, 0.2), torch.full_like(t, 100.0)
    for half in (None, 2.0):
        s = normalized_distance(t, lo, hi, half)
        assert bool(((s >= 0) & (s <= 1)).all()) and bool((s[1:] > s[:-1]).all())
        torch.testing.assert_close(distance_from_normalized(s, lo, hi, half), t, rtol=1e-4, atol=1e-5)


def test_interlevel_loss_zero_when_bounded_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    edges = uniform_edges(5, 12, jitter=False)
    w = torch.rand(5, 12, generator=g)
    w = w / w.sum(-1, keepdim=True) * 0.9
    # proposal: every 3 NeRF intervals merged, weight = their sum (+ some): it bounds the weights
    prop_edges = edges[:, ::3]
    prop_w = w.reshape(5, 4, 3).sum(-1)
    assert float(interlevel_loss(edges, w, prop_edges, prop_w).abs().max()) == 0.0
    assert float(interlevel_loss(edges, w, prop_edges, prop_w + 0.1).abs().max()) == 0.0
    # each NeRF interval sees exactly its own coarse interval's weight (touching neighbours do not count)
    torch.testing.assert_close(proposal_bound(edges, prop_edges, prop_w), prop_w.repeat_interleave(3, -1))
    # too little proposal weight somewhere: positive, and the gradient raises the proposal there
    low = prop_w.clone()
    low[:, 1] *= 0.1  # below the largest of the three weights it covers
    low.requires_grad_(True)
    loss = interlevel_loss(edges, w, prop_edges, low)
    assert bool((loss > 0).all())
    (grad,) = torch.autograd.grad(loss.sum(), low)
    assert bool((grad[:, 1] < 0).all()) and float(grad[:, [0, 2, 3]].abs().max()) == 0.0
    # the NeRF weights get no gradient (stop-gradient)
    assert not interlevel_loss(edges, w.clone().requires_grad_(True), prop_edges, low.detach()).requires_grad


def test_pdf_edges_follow_the_histogram():
    edges = uniform_edges(2, 4, jitter=False)
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    torch.manual_seed(0)
    for jitter in (False, True):
        e = pdf_edges(edges, w, 16, jitter=jitter)
        assert e.shape == (2, 17) and bool((e[:, 1:] >= e[:, :-1]).all())
        assert bool(((e >= 0) & (e <= 1)).all())
        inside = ((e[0] >= 0.5) & (e[0] <= 0.75)).float().mean()
        assert float(inside) > 0.9  # padding 0.01 a bin leaves the rest nearly empty
        assert float((e[1, 1:] - e[1, :-1]).max()) < 0.15  # uniform histogram: evenly spread edges
    jittered = uniform_edges(3, 8, jitter=True)
    assert bool((jittered[:, 0] == 0).all() and (jittered[:, -1] == 1).all())
    assert bool((jittered[:, 1:] > jittered[:, :-1]).all())


def test_config_checks_and_default_presets_unchanged():
    for preset in nerf.PRESETS:
        cfg = nerf.nerf_config(preset)
        assert cfg.distortion_weight == 0.0
        assert cfg.sampler == ("stratified" if preset in ("vanilla", "tiny") else "occupancy")
    assert nerf.nerf_config("nerfacto").contraction
    with pytest.raises(FieldcraftError, match="distortion loss needs"):
        nerf.nerf_config("vanilla", distortion_weight=0.01)
    with pytest.raises(FieldcraftError, match="proposal_samples"):
        nerf.nerf_config("nerfacto", sampler="proposal", proposal_samples=(64, 32))
    with pytest.raises(FieldcraftError, match="sampler"):
        nerf.nerf_config("nerfacto", sampler="nope")


def _rays(m: int, seed: int = 0) -> Rays:
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(m, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.2 * torch.randn(m, 3, generator=g), dim=-1)
    t_min, t_max = torch.full((m,), 0.5), torch.full((m,), 20.0)
    t_max[::3] = 0.5  # every third ray has an empty range
    return Rays(o, d, d, t_min, t_max, camera=torch.arange(m) % 2)


@pytest.mark.parametrize("sampler", ["occupancy", "proposal"])
def test_render_with_samples(sampler):
    """The sample outputs are the radiance field's: weights add up to the opacity of each ray, normalised
    distances in [0, 1], ray indices of the whole batch (rays with empty ranges have none)."""
    torch.manual_seed(0)
    cfg = nerf.nerf_config("nerfacto", sampler=sampler, proposal_samples=(24, 12, 8), distortion_weight=0.01)
    model = NerfModel(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3]), ndc=False, n_images=2)
    rays = _rays(12)
    out = model.render(rays, torch.ones(1, 3), train=True, step=0, with_samples=True)
    ri, w = out["ray_indices"], out["weights"]
    assert not bool((ri % 3 == 0).any())
    torch.testing.assert_close(accumulate(w, None, ri, 12), out["opacity"], rtol=1e-5, atol=1e-6)
    assert bool(((out["s_starts"] >= 0) & (out["s_ends"] <= 1) & (out["s_ends"] >= out["s_starts"])).all())
    plain = model.render(rays, torch.ones(1, 3), train=False)
    assert "weights" not in plain and plain["rgb"].shape == (12, 3)
    total = sample_losses(out, 12, cfg.distortion_weight, cfg.interlevel_weight)
    total.backward()
    if sampler == "proposal":
        assert out["interlevel"].shape == (12,) and float(out["interlevel"][::3].detach().abs().max()) == 0.0
        assert float(model.proposals[0].encoding.table.grad.abs().sum()) > 0  # trained by the interlevel loss
    assert float(model.field.position_encoding.table.grad.abs().sum()) > 0


def test_proposal_fit_checkpoints_resumes_and_evaluates(tmp_path):
    cfg = nerf.nerf_config("nerfacto", sampler="proposal", proposal_samples=(16, 8, 8), distortion_weight=0.002,
                           target_samples=2048, proposal_anneal_steps=4)
    out = tmp_path / "run"
    first = nerf.fit(cfg, LEGO_MINI, out, Budget(steps=3), progress=False, device="cpu", max_images=3)
    assert first["steps"] == 3
    tensors, meta = load_checkpoint(out)
    assert any(k.startswith("model.proposals.1.") for k in tensors)
    assert meta["config"]["sampler"] == "proposal"
    second = nerf.fit(None, LEGO_MINI, out, Budget(steps=5), resume=True, progress=False, device="cpu", max_images=3)
    assert second["steps"] == 5 and second["preset"] == "nerfacto"
    metrics = nerf.evaluate(out, "test", max_images=1, progress=False, device="cpu")
    assert metrics["views"] == 1 and 5 < metrics["psnr"] < 60


def test_command_line_sampler_and_distortion_weight(tmp_path, capsys):
    """``fit nerf --sampler proposal --distortion-weight W`` reach the stored config; a weight the
    stratified sampler cannot use is one line, exit 2."""
    from fieldcraft.cli import main

    out = tmp_path / "p"
    args = ["fit", "nerf", str(LEGO_MINI), "--out", str(out), "--quiet", "--steps", "2"]
    assert main([*args, "--sampler", "proposal", "--distortion-weight", "0.001"]) == 0
    config = load_checkpoint(out)[1]["config"]
    assert config["sampler"] == "proposal" and config["distortion_weight"] == 0.001
    capsys.readouterr()
    assert main([*args, "--overwrite", "--sampler", "stratified", "--distortion-weight", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distortion" in err[0]
