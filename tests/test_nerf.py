"""NeRF: readers, cameras, rendering core, presets, training on the core, outputs, command line.

Tests needing the shared datasets (lego_100, fern) go through ``conftest.shared_data`` and skip
on a bare clone; the rest use the vendored ``tests/data/nerf/lego_mini`` (13 train / 2 val / 4
test views at 100x100)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldcraft.data.bounds import pixel_resolution
from fieldcraft.data.cameras import Cameras, project
from fieldcraft.data.scene import load_posed_images
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.checkpoint import load_checkpoint
from fieldcraft.render.compositing import (
    accumulate,
    apply_background,
    exclusive_cumsum,
    expected_depth,
    transmittance_from_alphas,
    weights_from_densities,
)
from fieldcraft.render.occupancy_grid import BinaryGrid, OccupancyGrid, march, occupied_range, termination_mask
from fieldcraft.render.rays import camera_rays, make_rays, ndc_rays, pixel_centres, ray_aabb
from fieldcraft.render.samplers import sample_pdf, stratified_edges
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"


# ------------------------------------------------------------------------------------ compositing


def test_compositing_hand_computed():
    # two samples: alpha 0.5 then alpha 0.75 (sigma = ln 4 over unit length); colours red then green
    sig = torch.tensor([[math.log(2.0), math.log(4.0)]])
    t0, t1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 3.0]])
    w, trans, alphas = weights_from_densities(sig, t0, t1)
    assert torch.allclose(alphas, torch.tensor([[0.5, 0.75]]))
    assert torch.allclose(trans, torch.tensor([[1.0, 0.5]]))
    assert torch.allclose(w, torch.tensor([[0.5, 0.375]]))
    rgb = accumulate(w, torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]))
    opacity = accumulate(w)
    assert torch.allclose(opacity, torch.tensor([[0.875]]))
    out = apply_background(rgb, opacity, torch.ones(3))
    assert torch.allclose(out, torch.tensor([[0.625, 0.5, 0.125]]))
    depth = expected_depth(w, 0.5 * (t0 + t1))
    assert torch.allclose(depth, torch.tensor([[(0.5 * 1.5 + 0.375 * 2.5) / 0.875]]))


def _reference_render(sig, t0, t1, rgb):
    """Float64 loop: the textbook recurrence T <- T (1 - a)."""
    out, acc, trans = np.zeros(3), 0.0, 1.0
    for s, a_, b_, c in zip(sig, t0, t1, rgb):
        alpha = 1.0 - math.exp(-s * (b_ - a_))
        out += trans * alpha * np.asarray(c, dtype=np.float64)
        acc += trans * alpha
        trans *= 1.0 - alpha
    return out, acc


def test_packed_and_padded_match_float64_reference():
    g = torch.Generator().manual_seed(0)
    counts = [5, 0, 1, 17, 3]
    n = sum(counts)
    ri = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    sig = torch.rand(n, generator=g) * 5
    length = torch.rand(n, generator=g) * 0.5 + 0.01
    t0 = torch.cat([torch.cumsum(length[ri == r], 0) - length[ri == r] for r in range(len(counts))])
    t1 = t0 + length
    rgb = torch.rand(n, 3, generator=g)
    w, _, _ = weights_from_densities(sig, t0, t1, ri)
    colour = accumulate(w, rgb, ri, len(counts))
    opacity = accumulate(w, None, ri, len(counts))
    for r in range(len(counts)):
        m = ri == r
        ref, acc = _reference_render(sig[m].double().tolist(), t0[m].double().tolist(), t1[m].double().tolist(), rgb[m].double().tolist())
        assert np.allclose(colour[r].numpy(), ref, atol=1e-5)
        assert abs(float(opacity[r]) - acc) < 1e-5
    # padded layout of the 17-sample ray agrees with packed
    m = ri == 3
    wp, _, _ = weights_from_densities(sig[m][None], t0[m][None], t1[m][None])
    assert torch.allclose(wp[0], w[m], atol=1e-6)
    # transmittance from alphas is the same product
    a = 1 - torch.exp(-sig * (t1 - t0))
    assert torch.allclose(transmittance_from_alphas(a, ri) * a, w, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1e4), min_size=1, max_size=40), st.integers(0, 2**31 - 1))
def test_weights_sum_at_most_one(sigmas, seed):
    g = torch.Generator().manual_seed(seed)
    sig = torch.tensor(sigmas)
    t0 = torch.sort(torch.rand(len(sigmas), generator=g) * 4).values
    t1 = t0 + torch.rand(len(sigmas), generator=g) * 0.3
    w, trans, _ = weights_from_densities(sig, t0, t1)
    assert (w >= 0).all() and float(w.sum()) <= 1.0 + 1e-6
    assert (trans[1:] <= trans[:-1] + 1e-7).all()


def test_exclusive_cumsum_segments():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ri = torch.tensor([0, 0, 2, 2, 2])
    assert exclusive_cumsum(x, ri).tolist() == [0.0, 1.0, 0.0, 3.0, 7.0]


# ------------------------------------------------------------------------------------- samplers


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=30), st.integers(1, 64), st.booleans())
def test_sample_pdf_properties(weights, n, deterministic):
    w = torch.tensor([weights])
    bins = stratified_edges(torch.tensor([2.0]), torch.tensor([6.0]), len(weights))
    s = sample_pdf(bins, w, n, deterministic=deterministic, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, n)
    assert (s >= 2.0 - 1e-5).all() and (s <= 6.0 + 1e-5).all()
    if deterministic:
        assert (s[0, 1:] >= s[0, :-1] - 1e-6).all()
    if sum(weights) > 1e-3:
        # with eps = 0 every sample falls in a bin that has mass
        s0 = sample_pdf(bins, w, n, deterministic=deterministic, eps=0.0, generator=torch.Generator().manual_seed(1))
        k = torch.clamp(torch.searchsorted(bins[0], s0[0], right=True) - 1, 0, len(weights) - 1)
        on_edge = (s0[0][:, None] - bins[0][None]).abs().min(-1).values < 1e-5
        assert ((w[0][k] > 0) | on_edge).all()


def test_sample_pdf_follows_the_density():
    bins = torch.linspace(0, 1, 5)[None]
    w = torch.tensor([[1.0, 0.0, 0.0, 3.0]])
    s = sample_pdf(bins, w, 20000, generator=torch.Generator().manual_seed(0), eps=0.0)
    frac_last = float((s > 0.75).float().mean())
    assert abs(frac_last - 0.75) < 0.02 and float(((s > 0.25) & (s < 0.75)).float().mean()) == 0.0


# --------------------------------------------------------------------------------- rays, cameras


def test_rays_project_back_to_their_pixels():
    data = load_posed_images(LEGO_MINI, "train")
    u, v = pixel_centres(data.height, data.width)
    cam = torch.randint(0, len(data), u.shape, generator=torch.Generator().manual_seed(0))
    o, d = camera_rays(data.cameras, cam, u, v)
    t = torch.rand(len(u)) * 4 + 2
    uv, depth = project(data.cameras, o + t[:, None] * d, cam)
    assert torch.allclose(uv[:, 0], u, atol=1e-3) and torch.allclose(uv[:, 1], v, atol=1e-3)
    assert (depth > 0).all()
    # the centre pixel of a Blender camera looks down its -z axis
    c = Cameras.from_fov(data.cameras.c2w[:1], 0.69, 100, 100)
    o, d = camera_rays(c, torch.tensor([0]), torch.tensor([50.0]), torch.tensor([50.0]))
    assert torch.allclose(d[0], -c.c2w[0, :, 2], atol=1e-6)


def test_ray_aabb_and_ndc():
    o = torch.tensor([[0.0, 0.0, 4.0], [5.0, 5.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    t0, t1 = ray_aabb(o, d, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    assert torch.allclose(t0[0], torch.tensor(2.5)) and torch.allclose(t1[0], torch.tensor(5.5))
    assert t0[1] > t1[1]  # miss
    # NDC: points on a ray map to points on the warped ray, z' = 1 + 2 near / z
    on, dn = ndc_rays(torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[0.1, -0.05, -1.0]]), 50.0, 40.0, 100, 80)
    for t in (0.0, 0.5, 0.9):
        p = on[0] + t * dn[0]
        z = 2 * 1.0 / (p[2] - 1)  # invert z' = 1 + 2 near / z
        x = -p[0] * z / (2 * 50.0 / 100)
        world = torch.tensor([0.1, 0.2, 0.0]) + (-z) * torch.tensor([0.1, -0.05, -1.0])
        assert abs(float(x - world[0])) < 1e-4


def test_occupancy_grid_marching_and_termination():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=8)
    # a density blob in the +x half of the box
    grid.update(0, lambda p: (p[:, 0] > 0).float() * 100.0, step_size=0.05, warmup_steps=10)
    assert grid.binary[4:].all() and not grid.binary[:4].any()
    o = torch.tensor([[-3.0, 0.1, 0.1]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    ri, t0, t1 = march(grid, o, d, torch.tensor([2.0]), torch.tensor([4.0]), 0.05)
    mid = 0.5 * (t0 + t1)
    assert len(ri) > 0 and ((o[0, 0] + mid) > -1e-6).all()  # only the occupied half is sampled
    keep = termination_mask(torch.full_like(t0, 100.0), t0, t1, ri)
    assert 0 < int(keep.sum()) < len(keep)  # opaque after a few samples: the rest is dropped


# ------------------------------------------------------------------------------------------ readers


def _blender_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "lego"
    shutil.copytree(LEGO_MINI, dst)
    return dst


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_blender_errors(tmp_path):
    root = _blender_copy(tmp_path)
    (root / "transforms_val.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "val")
    _one_line(e, "transforms_val.json", "malformed JSON")
    os.remove(root / "test" / "r_50.png")
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "test")
    _one_line(e, "r_50.png", "not found")
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][2]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "train")
    _one_line(e, "transforms_train.json", "frame 2", "3x4 or 4x4", "(3, 3)")
    meta["frames"][2]["transform_matrix"] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "train")
    _one_line(e, "transforms_train.json", "pose 2", "NaN")


def test_blender_reader():
    data = load_posed_images(LEGO_MINI, "test")
    assert data.images.shape == (4, 100, 100, 4) and data.names[1] == "r_50.png"
    assert abs(float(data.cameras.fx[0]) - 138.8889) < 1e-2  # the tiny-NeRF focal length
    assert data.near == 2.0 and data.far == 6.0 and not data.ndc


def _nerfstudio_copy(tmp_path: Path, **extra) -> Path:
    src = json.loads((LEGO_MINI / "transforms_train.json").read_text())
    root = tmp_path / "ns"
    shutil.copytree(LEGO_MINI / "train", root / "images")
    f = 0.5 * 100 / math.tan(0.5 * src["camera_angle_x"])
    frames = [{"file_path": "images/" + Path(fr["file_path"]).name + ".png", "transform_matrix": fr["transform_matrix"]}
              for fr in src["frames"]]
    frames[3]["fl_x"] = frames[3]["fl_y"] = 2 * f  # per-frame override
    meta = {"fl_x": f, "fl_y": f, "cx": 50.0, "cy": 50.0, "w": 100, "h": 100, "aabb_scale": 1, "frames": frames, **extra}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_nerfstudio_reader(tmp_path):
    root = _nerfstudio_copy(tmp_path)
    train = load_posed_images(root, "train")
    test = load_posed_images(root, "test")
    assert len(train) + len(test) == 13 and len(test) == 2  # frames 0 and 8 held out
    assert float(train.cameras.fx[2]) == pytest.approx(2 * float(train.cameras.fx[0]))  # frame 3 is train index 2
    assert torch.allclose(train.aabb, torch.tensor([[-1.515] * 3, [1.515] * 3]), atol=1e-3)  # 1 / (2 * 0.33)
    distorted = load_posed_images(_nerfstudio_copy(tmp_path / "d", k1=-0.1, camera_model="OPENCV"), "train")
    assert distorted.cameras.distortion[0].tolist() == pytest.approx([-0.1, 0, 0, 0, 0, 0])  # loaded (test_nerf_real.py)
    bad = _nerfstudio_copy(tmp_path / "e", camera_model="EQUIRECTANGULAR")
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(bad, "train")
    _one_line(e, "transforms.json", "EQUIRECTANGULAR", "not supported")


def test_llff_reader():
    fern = shared_data("nerf", "fern_llff")
    test = load_posed_images(fern, "test")
    train = load_posed_images(fern, "train")
    assert len(test) == 3 and len(train) == 17 and test.ndc and test.images.shape[1:] == (378, 504, 3)
    # recentred: the average pose is (close to) the identity
    c2w = torch.cat([train.cameras.c2w, test.cameras.c2w])
    assert torch.allclose(c2w[:, :, :3].mean(0), torch.eye(3), atol=0.05)
    assert c2w[:, :, 3].mean(0).abs().max() < 1e-4


def test_sixteen_bit_pngs_keep_sixteen_bits(tmp_path):
    """The posed-image reader is fieldcraft's image reader: a 16-bit PNG's codes reach the pixels
    exactly (code / 65535), not rounded to 8 bits."""
    from fieldcraft.io.images import encode_png

    root = _blender_copy(tmp_path)
    codes = np.full((100, 100, 4), 65535, np.uint16)
    codes[..., 0] = 1000 + np.arange(100, dtype=np.uint16)  # 1000 / 65535 lies between two 8-bit codes
    (root / "test" / "r_0.png").write_bytes(encode_png(codes))
    data = load_posed_images(root, "test")
    np.testing.assert_array_equal(data.images[0, ..., 0].numpy(), codes[..., 0].astype(np.float32) / 65535.0)
    assert data.images.shape == (4, 100, 100, 4) and data.images.dtype == torch.float32


def test_llff_errors(tmp_path):
    root = tmp_path / "llff"
    (root / "images_8").mkdir(parents=True)
    np.save(root / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "train")
    _one_line(e, "poses_bounds.npy", "[n, 17]")
    arr = np.ones((3, 17))
    arr[1, 4] = np.nan
    np.save(root / "poses_bounds.npy", arr)
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(root, "train")
    _one_line(e, "poses_bounds.npy", "view 1", "NaN")


# ------------------------------------------------------------------------------- presets, training


def _small(cfg):
    """A preset as defined, with small batches so a test step is fast."""
    return cfg.replace(rays=64, full_image=False, target_samples=4096 if cfg.preset == "instant" else 0)


@pytest.mark.parametrize("preset", ["instant", "vanilla", "tiny"])
def test_two_step_smoke_fit_every_preset_with_reference_kernels(preset, tmp_path, monkeypatch):
    """Every preset fits 2 steps with the PyTorch reference kernels (the path a GPU takes: no numba
    grid kernel, no numba Adam), writes a checkpoint of task nerf with prefix model, and renders
    finite pixels; resuming continues in the same box and hull."""
    from fieldcraft.tasks import nerf

    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    out = tmp_path / preset
    cfg = _small(nerf.nerf_config(preset, hull_resolution=64))
    summary = nerf.fit(cfg, LEGO_MINI, out, Budget(steps=2), progress=False, device="cpu")
    assert summary["steps"] == 2 and math.isfinite(summary["train_psnr"]) and summary["stopped"] is None
    model, meta = nerf.load_model(out, device="cpu")
    assert meta["task"] == "nerf" and meta["config"]["preset"] == preset and meta["step"] == 2
    assert meta["ndc"] is False and meta["near"] == 2.0 and meta["far"] == 6.0 and meta["data"] == str(LEGO_MINI.resolve())
    tensors = load_checkpoint(out)[0]
    assert any(k.startswith("model.field.") for k in tensors) and any(k.startswith("optim.") for k in tensors)
    dataset_box = [[-1.5] * 3, [1.5] * 3]
    assert (meta["aabb"] != dataset_box) == (preset == "tiny")  # tiny samples in the silhouette box
    hull = tensors.get("model.hull.binary")
    assert (hull is not None) == (preset == "tiny") and (hull is None or 0 < hull.float().mean() < 1)
    data = nerf.fitted_views(meta, None, "val", max_images=1)
    rays = model.view_rays(data.cameras, 0, data.near, data.far)[::50]
    with torch.no_grad():
        rgb = model.render(rays, torch.ones(1, 3))["rgb"]
    assert rgb.shape == (len(rays), 3) and bool(torch.isfinite(rgb).all())
    finest = meta["config"]["field"]["position_encoding"].get("max_resolution")
    if preset == "instant":  # finest_from_views: the views' pixel resolution of the box, stored resolved
        train = load_posed_images(LEGO_MINI, "train")
        assert finest == pixel_resolution(train.cameras, torch.tensor(meta["aabb"])) != 512
        assert model.field.position_encoding.config.max_resolution == finest
    # resume continues from step 2, in the same box and hull (and the same finest level)
    summary = nerf.fit(None, LEGO_MINI, out, Budget(steps=3), resume=True, progress=False, device="cpu")
    assert summary["steps"] == 3
    assert nerf.load_model(out, device="cpu")[1]["aabb"] == meta["aabb"]
    assert load_checkpoint(out)[1]["config"]["field"]["position_encoding"].get("max_resolution") == finest
    if hull is not None:
        assert torch.equal(load_checkpoint(out)[0]["model.hull.binary"], hull)


@pytest.mark.parametrize("preset", ["instant", "tiny"])
def test_resume_gives_the_uninterrupted_run(preset, tmp_path, monkeypatch):
    """A run stopped by SIGINT after step 2 of 4 and resumed ends with the same weights, optimiser
    state, occupancy grid, weight average and ray count as the 4 steps in one go (same seed and
    budget: the learning-rate schedule follows the budget): batches, jitter and the adaptive state
    are restored from the checkpoint."""
    import signal

    from fieldcraft.tasks import nerf

    cfg = _small(nerf.nerf_config(preset, n_samples=8, bf16=False, ema_decay=0.5, grid_update_every=1,
                                  grid_resolution=16, hull_resolution=32))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    nerf.fit(cfg, LEGO_MINI, whole, Budget(steps=4), progress=False, device="cpu", max_images=3)
    after_step = nerf.PhotometricLoss.after_step

    def interrupted(self, step):
        after_step(self, step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(nerf.PhotometricLoss, "after_step", interrupted)
    stopped = nerf.fit(cfg, LEGO_MINI, parts, Budget(steps=4), progress=False, device="cpu", max_images=3)
    assert stopped["stopped"] == "SIGINT" and stopped["steps"] == 2
    monkeypatch.setattr(nerf.PhotometricLoss, "after_step", after_step)
    nerf.fit(None, LEGO_MINI, parts, resume=True, progress=False, device="cpu", max_images=3)  # the stored budget
    (a, meta_a), (b, meta_b) = load_checkpoint(whole), load_checkpoint(parts)
    assert meta_b["step"] == 4 and meta_a["extra"] == meta_b["extra"]
    assert set(a) == set(b) and any(k.startswith("extra.ema.") for k in a)
    for k in a:
        if not k.startswith("rng."):
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("preset", ["tiny", "vanilla", "instant"])
def test_rays_that_miss_the_box_render_the_background(preset):
    """A ray outside the scene box samples nothing, even where the field's density is positive."""
    from fieldcraft.tasks import nerf

    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5]]])
    cams = Cameras(c2w, torch.tensor([50.0]), torch.tensor([50.0]), torch.tensor([50.0]), torch.tensor([50.0]), 100, 100)
    u, v = torch.tensor([50.0, 0.5]), torch.tensor([50.0, 0.5])  # centre ray hits, corner ray misses
    rays = make_rays(cams, torch.zeros(2, dtype=torch.long), u, v, 0.1, 100.0, aabb, False)
    assert rays.t_min[1] == rays.t_max[1] and rays.t_max[0] > rays.t_min[0]
    cfg = nerf.nerf_config(preset, bf16=False)
    dense = dict(density_activation="softplus", density_bias=20.0)
    cfg = cfg.replace(field=cfg.field.replace(**dense),
                      fine_field=cfg.fine_field.replace(**dense) if cfg.fine_field is not None else None)
    model = nerf.NerfModel(cfg, aabb, False)
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    with torch.no_grad():
        out = model.render(rays, bg)
    torch.testing.assert_close(out["rgb"][1], bg[0])
    assert float(out["opacity"][1]) == 0.0 and float(out["opacity"][0]) > 0.99


@pytest.mark.parametrize("preset", ["tiny", "vanilla"])
def test_skipping_rays_that_miss_the_box_changes_nothing(preset):
    """``render`` leaves out rays with an empty range; the result equals rendering every ray."""
    from fieldcraft.tasks import nerf

    data = load_posed_images(LEGO_MINI, "test", max_images=1)
    cfg = nerf.nerf_config(preset, bf16=False, n_samples=16, n_importance=16 if preset == "vanilla" else 0,
                           box="dataset")
    model = nerf.NerfModel(cfg, data.aabb, False)
    rays = model.view_rays(data.cameras, 0, data.near, data.far)[::37]
    rays.t_max[::3] = rays.t_min[::3]  # a third of them miss
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    with torch.no_grad():
        skipped, full = model.render(rays, bg), model._render_hits(rays, bg, False, None)
    assert int(skipped["samples"]) < int(full["samples"])
    for key in ("rgb", "opacity", "depth") + (("rgb_coarse",) if preset == "vanilla" else ()):
        torch.testing.assert_close(skipped[key], full[key])


def test_occupied_range_covers_every_cell_a_margin_inside_the_grid():
    """Points of a ray in a cell that has occupied neighbours all round (the hull before it grew by
    one cell) lie inside the ray's :func:`occupied_range`; rays through no occupied cell get an empty
    range. Checked densely (4096 points per ray) on random grids and rays."""
    gen = torch.Generator().manual_seed(3)
    for trial in range(4):
        core = torch.rand(16, 16, 16, generator=gen) < 0.02
        grown = torch.nn.functional.max_pool3d(core[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        grid = BinaryGrid(torch.tensor([[-1.0, -0.5, -1.0], [1.0, 1.5, 0.5]]), 16)
        grid.binary.copy_(grown)
        o = torch.randn(300, 3, generator=gen) * 3
        d = torch.nn.functional.normalize(torch.randn(300, 3, generator=gen) - o / 3, dim=-1)
        t_min, t_max = ray_aabb(o, d, grid.aabb)
        t_min = t_min.clamp(min=0)
        t_max = torch.maximum(t_max, t_min)
        step = 0.5 * float((grid.aabb[1] - grid.aabb[0]).min()) / 16
        lo, hi = occupied_range(grid, o, d, t_min, t_max, step, chunk=64)
        assert bool(((lo >= t_min) & (hi <= t_max) & (hi >= lo)).all())
        t = t_min[:, None] + (t_max - t_min)[:, None] * (torch.arange(4096) + 0.5) / 4096
        pts = o[:, None] + t[..., None] * d[:, None]
        core_grid = BinaryGrid(grid.aabb, 16)
        core_grid.binary.copy_(core)
        in_core = core_grid.occupied(pts.reshape(-1, 3)).reshape(300, 4096)
        in_grid = grid.occupied(pts.reshape(-1, 3)).reshape(300, 4096)
        assert bool((~in_core | ((t >= lo[:, None]) & (t <= hi[:, None]))).all()), trial
        assert bool((hi > lo)[in_core.any(1)].all()) and bool((hi == lo)[~in_grid.any(1)].all())
        assert 0 < int(in_core.any(1).sum()) < 300


def test_silhouette_box_and_hull_hold_the_object():
    """The box around the training views' visual hull (lego_100) is far smaller than the dataset's
    [-1.5, 1.5]^3, and every test-view ray through a pixel the object covers still crosses it; so
    does every such ray's range through the (carved) hull, which is shorter still."""
    from fieldcraft.data.bounds import silhouette_aabb, visual_hull
    from fieldcraft.tasks import nerf

    lego = shared_data("nerf", "lego_100")
    train = load_posed_images(lego, "train")
    box = silhouette_aabb(train)
    volume = float((box[1] - box[0]).prod() / (train.aabb[1] - train.aabb[0]).prod())
    assert 0.15 < volume < 0.5
    test = load_posed_images(lego, "test", max_images=20)
    model = nerf.NerfModel(nerf.nerf_config("tiny", hull_resolution=64), box, False)
    model.hull.binary.copy_(visual_hull(dataclasses.replace(train, aabb=box), 64, grow=1))
    u, v = pixel_centres(test.height, test.width)
    box_len = hull_len = 0.0
    for k in range(len(test)):
        rays = make_rays(test.cameras, torch.full_like(u, k, dtype=torch.long), u, v, test.near, test.far, box, False)
        clipped = model.clip_rays(rays)
        covered = test.images[k, ..., 3].reshape(-1) > 0.01
        assert bool((rays.t_max > rays.t_min)[covered].all()), test.names[k]
        assert bool((clipped.t_max > clipped.t_min)[covered].all()), test.names[k]
        assert bool(((clipped.t_min >= rays.t_min) & (clipped.t_max <= rays.t_max)).all())
        box_len += float((rays.t_max - rays.t_min).sum())
        hull_len += float((clipped.t_max - clipped.t_min).sum())
    assert hull_len < 0.7 * box_len  # measured: 0.35
    with pytest.raises(FieldcraftError, match="RGBA"):
        silhouette_aabb(load_posed_images(shared_data("nerf", "fern_llff"), "train", max_images=2))


def test_pixel_resolution_follows_focal_length_and_distance():
    """A grid cell about a pixel wide: doubling the focal length or halving the distance doubles the
    resolution; the median over the cameras decides; the result is a power of two."""
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])

    def cams(dists, width=64, fov=0.8):
        c2w = torch.eye(4)[None, :3].repeat(len(dists), 1, 1)
        c2w[:, 2, 3] = torch.tensor(dists, dtype=torch.float32)
        return Cameras.from_fov(c2w, fov, width, width)

    f = 32 / math.tan(0.4)  # 75.9 px: 75.9 * 2 / 3 = 50.6 -> 64
    assert pixel_resolution(cams([3.0]), box) == 64 == 2 ** math.ceil(math.log2(f * 2 / 3))
    assert pixel_resolution(cams([3.0], width=128), box) == 128
    assert pixel_resolution(cams([1.5]), box) == 128
    assert pixel_resolution(cams([1.5, 3.0, 3.0]), box) == 64  # the median camera


def test_finest_from_views_leaves_forward_facing_and_unbounded_scenes():
    """The rule is for object scenes: an NDC scene and a contracted one keep their preset's level,
    a grid-less field is untouched, and the flag off keeps the configured level."""
    from fieldcraft.tasks import nerf
    from fieldcraft.tasks.nerf.training import finest_from_views

    data = load_posed_images(LEGO_MINI, "train")
    box = data.aabb
    inst = nerf.nerf_config("instant")
    got = finest_from_views(inst, data, box).field.position_encoding.max_resolution
    assert got == pixel_resolution(data.cameras, box) < 512
    near = dataclasses.replace(data, cameras=data.cameras.rescaled(16 * data.width, 16 * data.height))
    assert pixel_resolution(near.cameras, box) > 512  # the views resolve more: the preset's level caps it
    assert finest_from_views(inst, near, box) == inst
    off = inst.replace(finest_from_views=False)
    assert finest_from_views(off, data, box) == off
    assert finest_from_views(inst.replace(contraction=True), data, box) == inst.replace(contraction=True)
    assert finest_from_views(inst, dataclasses.replace(data, ndc=True), box) == inst
    assert nerf.nerf_config("instant", ndc=True).finest_from_views is False
    assert nerf.nerf_config("nerfacto").finest_from_views is False
    vanilla = nerf.nerf_config("vanilla", finest_from_views=True)
    assert finest_from_views(vanilla, data, box) == vanilla


def test_radiance_field_world_positions_and_glorot_init():
    """``positions='world'`` encodes world coordinates as they are: the same field as ``box`` over
    the box [-1, 1]^3 (where normalising is the identity), whatever the box. ``init='glorot'``:
    Glorot-uniform weights within sqrt(6 / (fan_in + fan_out)), zero biases."""
    from fieldcraft.encodings import FrequencyEncodingConfig, HashGridConfig
    from fieldcraft.fields.radiance import RadianceFieldConfig

    torch.manual_seed(0)
    cfg = RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=3, pi_scale=False), trunk_width=32,
                              trunk_layers=3, skips=(2,), n_features=3, color_layers=-1, density_activation="softplus")
    unit = cfg.build(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    world = cfg.replace(positions="world").build(torch.tensor([[-3.0, -2.0, -1.0], [4.0, 2.0, 1.5]]))
    world.load_state_dict({k: v for k, v in unit.state_dict().items() if k != "aabb"}, strict=False)
    x = torch.rand(50, 3) * 2 - 1
    for a, b in zip(world(x), unit(x)):
        torch.testing.assert_close(a, b)
    moved = cfg.build(torch.tensor([[-3.0, -2.0, -1.0], [4.0, 2.0, 1.5]]))
    moved.load_state_dict(world.state_dict())
    assert not torch.allclose(moved(x)[0], world(x)[0])  # a box field normalises; the world field does not

    glorot = cfg.replace(init="glorot").build(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    linears = [m for m in glorot.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound, top = math.sqrt(6.0 / (fan_in + fan_out)), float(lin.weight.detach().abs().max())
        assert 0.8 * bound < top <= bound
        assert float(lin.bias.detach().abs().max()) == 0.0
    with pytest.raises(FieldcraftError, match="positions='world'"):
        cfg.replace(position_encoding=HashGridConfig(), positions="world").build(torch.tensor([[-1.0] * 3, [1.0] * 3]))


def _tiny_views(box: float | None = None):
    """Two lego_mini views cut to 13x13 pixels (a small full-image batch), optionally in a smaller box."""
    data = load_posed_images(LEGO_MINI, "train", max_images=2)
    data.images = data.images[:, 2::8, 2::8].contiguous()
    data.cameras = data.cameras.rescaled(13, 13)
    if box is not None:
        data.aabb = torch.tensor([[-box] * 3, [box] * 3])
    return data


def _objective(cfg, data):
    from fieldcraft.tasks import nerf

    torch.manual_seed(cfg.seed)
    model = nerf.NerfModel(cfg, data.aabb, False)
    rays, pixels = nerf.training_rays(model, data)
    return model, nerf.PhotometricLoss(cfg, rays, pixels, data.height * data.width, model)


def test_micro_batches_give_the_whole_batch_gradient():
    """Backpropagating a batch in pieces adds up to the gradient of the whole batch (same jitter:
    stratified jitter drawn piece by piece is the same stream as drawn at once)."""
    from fieldcraft.tasks import nerf

    data = _tiny_views(box=0.7)  # a box some rays miss: they are left out of every piece
    grads = []
    for micro in (0, 40):
        cfg = nerf.nerf_config("tiny", micro_batch_rays=micro, bf16=False, n_samples=16, seed=1, box="dataset")
        model, objective = _objective(cfg, data)
        miss = objective.rays.t_max == objective.rays.t_min
        assert 0 < int(miss.sum()) < len(miss)
        torch.manual_seed(3)
        loss, scalars = objective.loss(model, 0)
        assert loss is None and math.isfinite(scalars["loss"]) and scalars["rays"] == 169
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_the_loss_renders_with_the_model_it_is_given():
    """The training core's warm-up hands the objective a deep copy of the model: the loss must
    update that copy's occupancy grid and put gradients on that copy only."""
    import copy

    from fieldcraft.tasks import nerf

    cfg = _small(nerf.nerf_config("instant", grid_resolution=16))
    model, objective = _objective(cfg, _tiny_views())
    clone = copy.deepcopy(model)
    objective.loss(clone, 0)
    assert clone.grid.density.abs().sum() > 0 and model.grid.density.abs().sum() == 0
    assert any(p.grad is not None for p in clone.parameters()) and all(p.grad is None for p in model.parameters())


def test_instant_learns_lego_mini(tmp_path):
    """A real threshold on real data: 80 instant steps on 13 views beat the best constant image
    (11.5 dB; an all-white guess scores 10.5 dB) by 2.5 dB on the 4 held-out test views."""
    from fieldcraft.metrics import SSIM_DEFINITION
    from fieldcraft.tasks import nerf

    cfg = nerf.nerf_config("instant", target_samples=4096, grid_warmup=16, grid_resolution=32)
    nerf.fit(cfg, LEGO_MINI, tmp_path / "run", Budget(steps=80), progress=False, device="cpu")
    m = nerf.evaluate(tmp_path / "run", "test", progress=False, device="cpu")
    assert m["views"] == 4 and m["psnr"] > 14.0, m["psnr"]
    out = tmp_path / "run" / "eval" / "test"
    assert (out / "r_150.png").is_file() and (out / "depth" / "r_150.png").is_file()
    written = json.loads((out / "metrics.json").read_text())
    assert written["per_view"][0]["name"] == "r_0.png" and written["ssim_definition"].startswith(SSIM_DEFINITION)
    assert written["psnr"] == pytest.approx(np.mean([v["psnr"] for v in written["per_view"]]))


def test_command_line(tmp_path, capsys):
    """fit / eval / render on lego_mini with --device cpu; --resume extends the run; a folder that is
    not a dataset is a one-line error (exit 2)."""
    import imageio.v3 as iio

    from fieldcraft.cli import main

    out = tmp_path / "cli"
    fit = ["fit", "nerf", str(LEGO_MINI), "--out", str(out), "--quiet", "--device", "cpu"]
    assert main([*fit, "--steps", "3"]) == 0
    assert (out / "checkpoint.safetensors").is_file() and (out / "history.jsonl").is_file()
    assert main([*fit, "--steps", "3"]) == 2  # a fresh run does not overwrite a checkpoint unasked
    assert main([*fit, "--steps", "4", "--resume"]) == 0
    assert load_checkpoint(out)[1]["step"] == 4
    assert main(["eval", "nerf", str(out), "--split", "val", "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "eval" / "val" / "metrics.json").read_text())
    assert metrics["views"] == 2 and metrics["step"] == 4 and all(math.isfinite(v["psnr"]) for v in metrics["per_view"])
    assert metrics["device"] == "cpu"
    video = tmp_path / "orbit.gif"
    assert main(["render", "nerf", str(out), "--orbit", "--frames", "3", "--out", str(video), "--quiet",
                 "--device", "cpu"]) == 0
    assert iio.imread(video).shape[0] == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    capsys.readouterr()
    assert main(["fit", "nerf", str(bad), "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "not a NeRF dataset" in capsys.readouterr().err


def test_orbit_cameras_circle_the_training_views():
    """The orbit of an object scene stays at the training cameras' mean distance and height and
    looks at the origin; the shared camera helper gives sphere tracing the same poses."""
    from fieldcraft.render.cameras import look_at
    from fieldcraft.tasks import nerf

    data = load_posed_images(LEGO_MINI, "train")
    cams = nerf.orbit_cameras(data, 8)
    centres = cams.c2w[:, :, 3]
    mean_dist = float(data.cameras.c2w[:, :, 3].norm(dim=-1).mean())
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((8,), mean_dist), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cams.c2w[:, :, 2], centres / centres.norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert len(cams) == 8 and cams.width == data.width and float(cams.fx[3]) == float(data.cameras.fx[0])
    torch.testing.assert_close(look_at(centres[0])[:3, 2], cams.c2w[0, :, 2], atol=1e-5, rtol=0)


def test_spherical_harmonics_orthonormal():
    from fieldcraft.encodings import SphericalHarmonicsConfig

    enc = SphericalHarmonicsConfig(degree=4).build(3)
    n = 20000  # Fibonacci sphere: near-uniform directions
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    r = torch.sqrt(1 - z * z)
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    y = enc(d * 3.0)  # scale is ignored: directions are normalised
    gram = 4 * math.pi * (y.T @ y) / n
    assert y.shape == (n, 16) and torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_weight_average_follows_its_definition_and_survives_resume(tmp_path):
    """``ema_decay``: after every step ``ema <- d * ema + (1 - d) * w`` with ``d = min(decay, (1 + step) /
    (10 + step))`` (checked against the weights recorded step by step); the checkpoint keeps it,
    ``load_model`` uses it (or the last weights on request) and a resumed run continues it."""
    from fieldcraft.tasks import nerf

    cfg = nerf.nerf_config("tiny", rays=32, full_image=False, n_samples=8, bf16=False, ema_decay=0.5, box="dataset")
    model, objective = _objective(cfg, load_posed_images(LEGO_MINI, "train", max_images=2))
    optimizer = cfg.optimizer(nerf.has_grid(model)).build(model)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(3):
        optimizer.zero_grad()
        objective.loss(model, step)
        optimizer.step()
        objective.after_step(step)
        d = min(0.5, (1 + step) / (10 + step))
        expected = {n: d * expected[n] + (1 - d) * p.detach() for n, p in model.named_parameters()}
    for n, t in objective.ema.items():
        torch.testing.assert_close(t, expected[n])
    assert objective.rays_seen == 3 * 32

    out = tmp_path / "ema"
    nerf.fit(cfg, LEGO_MINI, out, Budget(steps=2), progress=False, max_images=2, device="cpu")
    tensors, _ = load_checkpoint(out)
    averaged, _ = nerf.load_model(out, device="cpu")
    last, _ = nerf.load_model(out, averaged=False, device="cpu")
    name, _ = next(iter(averaged.named_parameters()))
    torch.testing.assert_close(dict(averaged.named_parameters())[name].detach(), tensors[f"extra.ema.{name}"])
    torch.testing.assert_close(dict(last.named_parameters())[name].detach(), tensors[f"model.{name}"])
    assert not torch.equal(tensors[f"extra.ema.{name}"], tensors[f"model.{name}"])
    # resuming restores the average: one more step moves it from the saved one, not from the weights
    nerf.fit(None, LEGO_MINI, out, Budget(steps=3), resume=True, progress=False, max_images=2, device="cpu")
    resumed = load_checkpoint(out)[0]
    d = min(0.5, (1 + 2) / (10 + 2))  # the third step is step 2
    torch.testing.assert_close(resumed[f"extra.ema.{name}"],
                               d * tensors[f"extra.ema.{name}"] + (1 - d) * resumed[f"model.{name}"])