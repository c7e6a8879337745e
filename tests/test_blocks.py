"""Scenes in blocks (fieldcraft.tasks.nerf.blocks): camera split, inverse-distance weights, colour
matching, compositing, and ``fit nerf --blocks`` / ``eval nerf`` / ``render nerf`` end to end on the
vendored ``tests/data/nerf/lego_mini`` (13 training views)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fieldcraft.tasks.nerf.blocks import (
    Layout,
    appearance_transforms,
    apply_affine,
    composite_blocks,
    fit_affine,
    idw_weights,
    matching_order,
    split_cameras,
)

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"


def _hemisphere(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 3, generator=g)
    v[:, 2] = v[:, 2].abs()
    return 4.0 * v / v.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("n_blocks", [2, 3, 5])
def test_split_covers_every_camera_with_overlap(n_blocks):
    pts = _hemisphere(100)
    centres, radii, members = split_cameras(pts, n_blocks, overlap=0.5, seed=0)
    assert centres.shape == (n_blocks, 3) and radii.shape == (n_blocks,)
    counts = torch.zeros(len(pts), dtype=torch.long)
    for m in members:
        counts[m] += 1
    assert int(counts.min()) >= 1  # every camera in a block
    assert int((counts >= 2).sum()) > 0  # neighbours share cameras
    d = torch.cdist(pts, centres)
    nearest = d.argmin(dim=1)
    for i in range(len(pts)):  # each camera is in its nearest block
        assert i in members[int(nearest[i])]
    for b, m in enumerate(members):  # the radius reaches exactly the block's farthest camera
        assert float(radii[b]) == pytest.approx(float(d[m, b].max()), rel=1e-5)
    # no overlap: a partition (each camera in its nearest block only); more overlap: more shared cameras
    _, _, alone = split_cameras(pts, n_blocks, overlap=0.0, seed=0)
    assert sum(len(m) for m in alone) == len(pts)
    _, _, wide = split_cameras(pts, n_blocks, overlap=1.0, seed=0)
    assert sum(len(m) for m in wide) > sum(len(m) for m in members) > len(pts)


def test_split_rejects_bad_counts():
    from fieldcraft.errors import FieldcraftError

    with pytest.raises(FieldcraftError, match="--blocks must be"):
        split_cameras(_hemisphere(10), 0)
    with pytest.raises(FieldcraftError, match="distinct camera positions"):
        split_cameras(torch.zeros(4, 3), 2)
    with pytest.raises(FieldcraftError, match="--block-overlap"):
        split_cameras(_hemisphere(10), 2, overlap=-1.0)


def test_idw_weights_sum_to_one_and_favour_the_nearest():
    centres = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]])
    radii = torch.tensor([5.0, 5.0, 5.0])
    pts = torch.rand(200, 3, generator=torch.Generator().manual_seed(1)) * 4
    w = idw_weights(pts, centres, radii, power=4)
    assert torch.allclose(w.sum(dim=1), torch.ones(200), atol=1e-6) and bool((w >= 0).all())
    d = torch.cdist(pts, centres)
    covered = d <= radii
    d_masked = torch.where(covered, d, torch.full_like(d, math.inf))
    expected = torch.where(covered.any(dim=1), d_masked.argmin(dim=1), d.argmin(dim=1))  # none covering: nearest
    assert bool((~covered).all(dim=1).any()) and torch.equal(w.argmax(dim=1), expected)
    # a block whose radius does not reach the camera gets nothing; none reaching: the nearest alone
    w = idw_weights(torch.tensor([[2.5, 0, 0], [20.0, 0, 0]]), centres, torch.tensor([5.0, 1.0, 1.0]))
    assert w[0].tolist() == [1.0, 0.0, 0.0] and w[1].tolist() == [0.0, 1.0, 0.0]
    # a larger power concentrates the weight on the nearest block
    p = torch.tensor([[1.5, 0.0, 0.0]])
    assert float(idw_weights(p, centres, radii, 8)[0, 0]) > float(idw_weights(p, centres, radii, 1)[0, 0]) > 0.5


def test_fit_affine_recovers_a_known_transform():
    g = torch.Generator().manual_seed(2)
    src = torch.rand(2000, 3, generator=g)
    m = torch.tensor([[0.8, 0.1, 0.05, 0.02], [0.05, 1.1, -0.1, -0.03], [0.0, 0.1, 0.9, 0.05]])
    tgt = apply_affine(src, m) + 0.002 * torch.randn(2000, 3, generator=g)
    assert torch.allclose(fit_affine(src, tgt), m, atol=5e-3)
    # colours that span nothing (all white) leave the identity
    white = torch.ones(100, 3)
    assert torch.allclose(apply_affine(white, fit_affine(white, white)), white, atol=1e-5)


def test_colour_matching_anchors_block_zero_and_undoes_each_blocks_cast():
    """Three blocks in a chain (0-1, 1-2 share views); block b renders true colours through a known
    cast C_b; block 1 and 2's transforms must map their renders onto block 0's colours (C_0 = I)."""
    g = torch.Generator().manual_seed(3)
    truth = {v: torch.rand(300, 3, generator=g) for v in range(12)}
    casts = [torch.eye(3, 4),
             torch.tensor([[0.9, 0.0, 0.0, 0.05], [0.0, 0.8, 0.1, 0.0], [0.0, 0.0, 1.1, -0.04]]),
             torch.tensor([[1.1, 0.05, 0.0, -0.02], [0.0, 0.95, 0.0, 0.03], [0.1, 0.0, 0.85, 0.0]])]
    members = [list(range(0, 6)), list(range(4, 10)), list(range(8, 12))]
    assert matching_order(members) == [(0, None), (1, 0), (2, 1)]

    def render(b, views):
        assert set(views) <= set(members[b])
        return torch.cat([apply_affine(truth[v], casts[b]) for v in views])

    transforms = appearance_transforms(members, render)
    assert torch.equal(transforms[0], torch.eye(3, 4))
    probe = torch.rand(50, 3, generator=g)
    for b in (1, 2):
        assert torch.allclose(apply_affine(apply_affine(probe, casts[b]), transforms[b]), probe, atol=2e-3)


def test_composite_blocks_weights_and_visibility():
    rgb = torch.stack([torch.full((2, 2, 3), 0.2), torch.full((2, 2, 3), 0.8)])
    opacity = torch.ones(2, 2, 2)
    out, w = composite_blocks(rgb, opacity, torch.tensor([0.75, 0.25]))
    assert torch.allclose(out, torch.full((2, 2, 3), 0.35)) and torch.allclose(w.sum(0), torch.ones(2, 2, 1))
    opacity[0] = 0.0  # block 0 sees empty space: block 1's colour wins
    out, _ = composite_blocks(rgb, opacity, torch.tensor([0.75, 0.25]))
    assert bool((out > 0.79).all())
    out, _ = composite_blocks(rgb, opacity, torch.tensor([0.75, 0.25]), visibility=False)
    assert torch.allclose(out, torch.full((2, 2, 3), 0.35))


def test_layout_round_trips_and_rejects_malformed(tmp_path):
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.nerf.blocks import read_layout, write_layout

    layout = Layout(((0.0, 1.0, 2.0), (3.0, 4.0, 5.0)), (1.5, 2.5), ((0, 1), (1, 2)), 0.5, 4.0, False, True,
                    (tuple(tuple(r) for r in torch.eye(3, 4).tolist()),) * 2, (3, 4))
    write_layout(tmp_path, layout)
    assert read_layout(tmp_path) == layout
    d = json.loads((tmp_path / "blocks.json").read_text())
    d["radii"] = [1.0]
    (tmp_path / "blocks.json").write_text(json.dumps(d))
    with pytest.raises(FieldcraftError, match="blocks.json: malformed blocks file"):
        read_layout(tmp_path)
    d["radii"] = [1.5, 2.5]
    d["compositing"]["visibility"] = "yes"
    (tmp_path / "blocks.json").write_text(json.dumps(d))
    with pytest.raises(FieldcraftError, match="blocks.json: malformed blocks file: 'compositing'"):
        read_layout(tmp_path)
    (tmp_path / "blocks.json").write_text("{")
    with pytest.raises(FieldcraftError, match="blocks.json: malformed JSON"):
        read_layout(tmp_path)


def test_fit_eval_render_blocks_end_to_end(tmp_path, capsys):
    """``fit nerf --blocks 2`` on lego_mini: blocks.json, one ordinary run per block on its own
    cameras with half the steps each, matched colours; ``eval nerf`` composites the test views with
    the usual outputs; ``--block 1 --resume`` fits that block alone further; bad options: exit 2,
    one line."""
    import imageio.v3 as iio

    from fieldcraft.cli import main
    from fieldcraft.io.checkpoint import load_checkpoint

    out = tmp_path / "blocks"
    fit = ["fit", "nerf", str(LEGO_MINI), "--out", str(out), "--quiet", "--device", "cpu", "--blocks", "2"]
    assert main([*fit, "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "2 blocks of" in printed
    layout = json.loads((out / "blocks.json").read_text())
    assert layout["blocks"] == 2 and layout["overlap"] == 0.5 and len(layout["centres"]) == 2
    assert layout["compositing"] == {"power": 2.0, "visibility": False, "appearance": False}
    cams = [set(c) for c in layout["cameras"]]
    assert cams[0] | cams[1] == set(range(13)) and cams[0] & cams[1]
    for k in range(2):
        meta = load_checkpoint(out / f"block_{k}")[1]
        assert meta["step"] == 2 and meta["frames"] == layout["cameras"][k] and meta["n_images"] == len(cams[k])
    assert layout["appearance"]["block_steps"] == [2, 2] and len(layout["appearance"]["transforms"]) == 2

    assert main(["eval", "nerf", str(out), "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics["views"] == 4 and metrics["blocks"] == 2 and metrics["step"] == 4
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    assert metrics["compositing"] == {"power": 2.0, "visibility": False, "appearance": False}
    assert all(sum(v["block_weights"]) == pytest.approx(1.0, abs=1e-4) for v in metrics["per_view"])
    assert (out / "eval" / "test" / "r_0.png").is_file() and (out / "eval" / "test" / "depth" / "r_0.png").is_file()

    # one block as its own job: only block 1 moves on; the colours are matched again, and now applied
    assert main([*fit, "--block", "1", "--steps", "3", "--resume", "--match-colours"]) == 0
    assert load_checkpoint(out / "block_0")[1]["step"] == 2 and load_checkpoint(out / "block_1")[1]["step"] == 3
    layout = json.loads((out / "blocks.json").read_text())
    assert layout["appearance"]["block_steps"] == [2, 3] and layout["compositing"]["appearance"] is True

    video = tmp_path / "orbit.gif"
    assert main(["render", "nerf", str(out), "--orbit", "--frames", "2", "--out", str(video), "--quiet",
                 "--device", "cpu"]) == 0
    assert iio.imread(video).shape[0] == 2

    capsys.readouterr()
    for bad, needle in [(["--blocks", "0"], "--blocks must be"), (["--blocks", "2", "--block", "2"], "out of range"),
                        (["--block", "1"], "need --blocks"), (["--blocks", "3"], "holds 2 blocks")]:
        args = [a for a in fit if a not in ("--blocks", "2")] + bad + ["--steps", "2"]
        assert main(args) == 2, bad
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, err
    (out / "block_1" / "checkpoint.safetensors").unlink()
    assert main(["eval", "nerf", str(out), "--quiet", "--device", "cpu"]) == 2
    assert "block 1 of 2 has no checkpoint" in capsys.readouterr().err
