"""Shapes as fields: geometry (meshes, winding numbers, distances, marching cubes, MISE,
metrics), the SDF task (regression, eikonal second derivatives, occupancy, auto-decoder) on
the training core, resume, sphere tracing and the command line."""

import json
import os
import signal

import numpy as np
import pytest
import torch
import trimesh
from tests.conftest import shared_data

from fieldcraft.cli import main
from fieldcraft.encodings import HashGridConfig
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import FieldConfig
from fieldcraft.geometry.bvh import build_bvh, closest_points
from fieldcraft.geometry.inside import inside, winding_number, winding_number_exact
from fieldcraft.geometry.marching_cubes import clean_mesh, extract_dense
from fieldcraft.geometry.mesh import load_shape, normalise, save_point_cloud
from fieldcraft.geometry.metrics import mesh_metrics
from fieldcraft.geometry.mise import extract_mise
from fieldcraft.geometry.sampling import signed_distance, surface_samples
from fieldcraft.geometry.shape_field import export_shape_mesh, field_function
from fieldcraft.io.checkpoint import load_checkpoint
from fieldcraft.networks import MLPConfig
from fieldcraft.tasks.sdf import (
    AutoDecoderConfig,
    AutoDecoderObjective,
    SDFObjective,
    SDFTaskConfig,
    eikonal_loss,
    fit_autodecoder,
    fit_shape,
    make_samples,
    spatial_gradient,
)
from fieldcraft.train import Budget, Trainer

SMALL_FIELD = FieldConfig(in_dim=3, out_dim=1,
                          encoding=HashGridConfig(n_levels=6, n_features=2, log2_table_size=15, base_resolution=8,
                                                  max_resolution=128),
                          network=MLPConfig(hidden_width=32, hidden_layers=2))
SMALL_TASK = SDFTaskConfig(field=SMALL_FIELD, n_surface=20_000, n_uniform=5_000, batch_size=4096, lr=1e-2)
TINY_TASK = SMALL_TASK.replace(n_surface=4000, n_uniform=1000, batch_size=2048)
TINY_AUTODECODER = AutoDecoderConfig(latent_dim=8, network=MLPConfig(hidden_width=32, hidden_layers=2),
                                     task=SMALL_TASK.replace(lr=5e-3, n_surface=5000, n_uniform=2000))


def sphere_sdf(p, r=0.6):
    return np.linalg.norm(p, axis=-1) - r


def box_sdf(p, half=np.array([0.5, 0.3, 0.4])):
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


# ---------------------------------------------------------------------------------- geometry

def test_signed_distance_is_exact_on_box_and_sphere():
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, (3000, 3))
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    np.testing.assert_allclose(signed_distance((box.vertices, box.faces), p), box_sdf(p), atol=1e-9)
    # icosphere: exact distance to the polyhedron lies within the tessellation gap of the sphere
    s = trimesh.creation.icosphere(5, radius=0.6)
    err = np.abs(signed_distance((s.vertices, s.faces), p) - sphere_sdf(p))
    assert err.max() < 2e-3


def test_closest_point_matches_brute_force():
    mesh = trimesh.creation.torus(0.5, 0.2)
    p = np.random.default_rng(1).uniform(-1, 1, (200, 3))
    d, c, f = closest_points(build_bvh(mesh.vertices, mesh.faces), p)
    ref_c, ref_d, _ = trimesh.proximity.closest_point_naive(mesh, p)
    np.testing.assert_allclose(d, ref_d, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(c - p, axis=1), d, atol=1e-9)


def test_winding_number_on_mesh_with_hole():
    s = trimesh.creation.icosphere(3)
    keep = s.triangles_center[:, 2] < 0.9  # cut a cap: a hole around +z
    v, f = s.vertices, s.faces[keep]
    cap_solid_angle = 4 * np.pi - winding_number_exact(v, f, np.zeros((1, 3)))[0] * 4 * np.pi
    assert 0.05 < cap_solid_angle < 1.5  # the hole is real
    pts = np.array([[0, 0, 0], [0.3, -0.2, -0.4], [0, 0, 0.95], [0, 0, 2.0], [1.5, 0, 0]], dtype=float)
    w_exact = winding_number_exact(v, f, pts)
    np.testing.assert_allclose(winding_number((v, f), pts), w_exact, atol=3e-2)
    np.testing.assert_allclose(winding_number((v, f), pts, beta=6.0), w_exact, atol=3e-3)
    # the point in the mouth of the hole sees less than half the sphere
    assert inside((v, f), pts).tolist() == [True, True, False, False, False]
    # random points: fast (BVH, dipole far field) agrees with brute force
    q = np.random.default_rng(0).uniform(-1.5, 1.5, (500, 3))
    np.testing.assert_allclose(winding_number((v, f), q), winding_number_exact(v, f, q), atol=3e-2)


def test_surface_samples_normals_point_outwards():
    s = trimesh.creation.icosphere(4)
    p, n = surface_samples(s.vertices, s.faces, 5000, seed=3)
    assert (np.sum(p * n, axis=1) > 0.99).all()


def test_mise_equals_dense_marching_cubes_on_analytic_sdf():
    def fn(p):
        return np.minimum(sphere_sdf(p - np.array([0.2, 0, 0]), 0.5), box_sdf(p + np.array([0.3, 0.1, 0])))

    vd, fd = clean_mesh(*extract_dense(fn, 96, block=40))
    vm, fm, stats = extract_mise(fn, 96, base=12)
    vm, fm = clean_mesh(vm, fm)
    assert stats["evaluations"] < 0.4 * 97**3
    assert len(fm) == len(fd) and len(vm) == len(vd)
    from scipy.spatial import cKDTree

    assert cKDTree(vd).query(vm)[0].max() < 1e-6 and cKDTree(vm).query(vd)[0].max() < 1e-6
    assert trimesh.Trimesh(vm, fm).is_watertight
    # orientation: SDF surfaces come out with outward normals (positive volume)
    assert trimesh.Trimesh(vm, fm).volume > 0


def test_metrics_definitions():
    a = trimesh.creation.icosphere(5, radius=0.8)
    b = trimesh.creation.icosphere(5, radius=0.76)
    same = mesh_metrics((a.vertices, a.faces), (a.vertices, a.faces), n_points=20_000, n_volume=20_000)
    assert same["chamfer_l1"] < 1e-9 and same["normal_consistency"] > 0.999999 and same["iou"] == 1.0
    assert same["f_score"] == 1.0 and same["chamfer_l1_p2p"] > 1e-3  # the point-to-point sampling floor
    m = mesh_metrics((b.vertices, b.faces), (a.vertices, a.faces), n_points=20_000, n_volume=50_000, tau=0.01)
    # GT radius 0.8 is mapped to 1: the shells are 0.04 / 0.8 = 0.05 apart
    assert abs(m["chamfer_l1"] - 0.05) < 1e-3 and abs(m["chamfer_l2"] - 0.0025) < 1e-4
    assert m["f_score"] == 0.0
    assert abs(m["iou"] - (0.95**3)) < 0.02


# ------------------------------------------------------------------------------------- meshes

def _write(path, text):
    path.write_text(text)
    return path


def test_bad_meshes_give_one_clear_line(tmp_path):
    cases = {
        "empty.obj": "# nothing\n",
        "nan.obj": "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n",
        "nonmanifold.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 -1 0\nv 0 0 1\nf 1 2 3\nf 2 1 4\nf 1 2 5\n",
        "garbage.ply": "ply\nformat binary_little_endian 1.0\nelement vertex 99\nproperty banana x\nend_header\n\x00",
        "missing.obj": None,
    }
    expect = {"empty.obj": "empty", "nan.obj": "NaN", "nonmanifold.obj": "non-manifold", "garbage.ply": "unreadable",
              "missing.obj": "no such file"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            _write(path, text)
        with pytest.raises(FieldcraftError) as info:
            load_shape(path)
        msg = str(info.value)
        assert "\n" not in msg and name in msg and expect[name] in msg, msg


def test_cli_prints_one_line_for_bad_mesh(tmp_path, capsys):
    from fieldcraft.cli import main

    bad = _write(tmp_path / "nan.obj", "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    assert main(["eval", "mesh", str(bad), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan.obj" in err[0]


def test_spot_is_watertight_after_loading():
    shape = load_shape(shared_data("meshes", "spot.obj"))
    assert shape.trimesh().is_watertight
    normed, norm = normalise(shape, margin=0.0)
    np.testing.assert_allclose(np.abs(normed.vertices).max(), 1.0)
    np.testing.assert_allclose(norm.inverse(normed.vertices), shape.vertices, atol=1e-12)


def test_point_cloud_roundtrip(tmp_path):
    s = trimesh.creation.icosphere(3)
    save_point_cloud(tmp_path / "pc.ply", s.vertices, s.vertex_normals)
    pc = load_shape(tmp_path / "pc.ply")
    assert not pc.is_mesh and np.allclose(pc.normals, s.vertex_normals, atol=1e-6)


# ---------------------------------------------------------------------------------- fitting

def load_shape_from(mesh):
    from fieldcraft.geometry.mesh import validate_mesh

    return validate_mesh(mesh.vertices, mesh.faces)


def _fit(mesh, config, steps):
    """An in-memory fit on the core (no run directory): field, normalisation, outcome."""
    normed, norm = normalise(load_shape_from(mesh), config.margin)
    samples = make_samples(normed, config, need_sdf=config.loss != "eikonal")
    torch.manual_seed(config.seed)
    field = config.field.build()
    outcome = Trainer(field, SDFObjective(config, samples), config.optimizer(), Budget(steps=steps),
                      progress=False).run()
    return field.eval(), norm, outcome


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    """Tiny meshes on disk: a sphere (320 faces) and a box moved away from the origin."""
    d = tmp_path_factory.mktemp("meshes")
    trimesh.creation.icosphere(2, radius=1.0).export(d / "sphere.obj")
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.5))
    box.apply_translation([10.0, -3.0, 5.0])
    box.export(d / "box.obj")
    return d


def _stop_at(monkeypatch, objective_class, step):
    """SIGINT to this process after optimisation step ``step`` (0-based): the trainer stops after it."""
    def after_step(self, i):
        if i == step:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(objective_class, "after_step", after_step)


def test_optimizer_is_cosine_over_the_budget():
    opt = SDFTaskConfig(lr=1e-2, lr_decay_to=0.1).optimizer()
    assert opt.lr == 1e-2 and opt.schedule.kind == "cosine" and opt.schedule.final_factor == 0.1
    assert AutoDecoderConfig().optimizer().schedule.kind == "constant"  # the auto-decoder keeps a constant lr


@pytest.mark.parametrize("kind", ["sphere", "box"])
def test_regression_recovers_analytic_sdf(kind):
    mesh = trimesh.creation.icosphere(5, radius=1.0) if kind == "sphere" else trimesh.creation.box(extents=(2.0, 1.2, 1.6))
    field, norm, _ = _fit(mesh, SMALL_TASK, 150)
    # analytic SDF in normalised coordinates (scale = norm.scale, centred)
    rng = np.random.default_rng(0)
    s, nrm = surface_samples(mesh.vertices, mesh.faces, 4000, rng)
    p = norm.apply(s + rng.normal(scale=0.02, size=s.shape))
    truth = (sphere_sdf(p / norm.scale, 1.0) if kind == "sphere" else box_sdf(p / norm.scale, np.array([1.0, 0.6, 0.8]))) * norm.scale
    pred = field_function(field)(p)
    err = np.abs(pred - truth)
    assert np.mean(err) < 4e-3 and np.quantile(err, 0.95) < 1.2e-2, (np.mean(err), np.quantile(err, 0.95))


def test_eikonal_second_derivatives_float64():
    """The eikonal path: d/dtheta |grad_x f| through the PyTorch grid reference, checked by
    gradgradcheck and by finite differences of the loss in a table entry (float64)."""
    cfg = FieldConfig(in_dim=3, out_dim=1,
                      encoding=HashGridConfig(n_levels=3, n_features=2, log2_table_size=8, base_resolution=3,
                                              max_resolution=9, init_scale=0.5),
                      network=MLPConfig(hidden_width=8, hidden_layers=1, activation="tanh"))
    torch.manual_seed(0)
    field = cfg.build().double()
    x = (torch.rand(6, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: field(p), (x,))
    assert torch.autograd.gradgradcheck(lambda p: field(p), (x,))
    # the spatial gradient matches central differences
    _, g = spatial_gradient(field, x.detach(), create_graph=False)
    eps = 1e-6
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = eps
        fd = (field(x.detach() + e) - field(x.detach() - e)).reshape(-1) / (2 * eps)
        torch.testing.assert_close(g[:, k], fd, atol=1e-7, rtol=1e-6)
    # d(loss)/d(table) through the double backward vs finite differences
    surface = x.detach()[:3]
    normals = torch.nn.functional.normalize(torch.randn(3, 3, dtype=torch.float64), dim=-1)
    off = x.detach()[3:]
    task = SDFTaskConfig(loss="eikonal")

    def loss_value():
        return eikonal_loss(field, surface, normals, off, task)[0]

    table = field.encoding.table
    field.zero_grad()
    loss_value().backward()
    grad = table.grad.clone()
    rows = torch.nonzero(grad.abs().sum(1) > 0)[:4, 0]
    assert len(rows) >= 2
    for r in rows.tolist():
        old = table.data[r, 0].item()
        table.data[r, 0] = old + 1e-6
        up = loss_value().item()
        table.data[r, 0] = old - 1e-6
        down = loss_value().item()
        table.data[r, 0] = old
        assert abs((up - down) / 2e-6 - grad[r, 0].item()) < 1e-5 * max(1.0, abs(grad[r, 0].item()))


def test_numerical_gradient_matches_autograd_float64():
    """Central differences agree with autograd to O(eps^2) on a smooth (SIREN) field, and the
    loss built on them is differentiable in the parameters (first order only)."""
    from fieldcraft.tasks.sdf import numerical_gradient, sdf_field_config

    torch.manual_seed(0)
    field = sdf_field_config("siren").build().double()
    x = torch.rand(64, 3, dtype=torch.float64) * 1.6 - 0.8
    y_ref, g_ref = spatial_gradient(field, x, create_graph=False)
    errors = []
    for eps in (1e-2, 5e-3):
        y, g = numerical_gradient(field, x, eps)
        torch.testing.assert_close(y, y_ref)
        errors.append(float((g - g_ref).abs().max().detach() / g_ref.abs().max()))
    assert errors[0] < 0.05 and 3.0 < errors[0] / errors[1] < 5.0, errors  # second order: halving eps quarters it
    _, g = numerical_gradient(field, x, 5e-3)
    g.norm(dim=-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())


@pytest.mark.parametrize("gradient", ["analytic", "numerical"])
def test_eikonal_fit_reduces_loss_on_sphere(gradient):
    mesh = trimesh.creation.icosphere(4)
    cfg = SMALL_TASK.replace(loss="eikonal", batch_size=1024, lr=5e-3, near_sigmas=(), n_uniform=0, gradient=gradient)
    field, _, outcome = _fit(mesh, cfg, 60)
    losses = outcome.history.column("loss")
    assert outcome.step == 60 and losses[-1] < 0.5 * losses[0]
    # the zero level set is near the sphere (radius 0.95 after normalisation)
    d = field_function(field)(np.array([[0.95, 0, 0], [0, -0.95, 0], [0, 0, 0.95]]))
    assert np.abs(d).max() < 0.1


@pytest.mark.parametrize("loss", ["regression", "eikonal", "occupancy"])
def test_reference_kernels_smoke_fit(meshes, tmp_path, monkeypatch, loss):
    """The path a GPU takes (PyTorch grid encoding and Adam, no numba): a few steps, finite outputs."""
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    cfg = TINY_TASK.replace(loss=loss)
    if loss == "eikonal":
        cfg = cfg.replace(batch_size=512, lr=5e-3, near_sigmas=(), n_uniform=0)
    m = fit_shape(meshes / "sphere.obj", tmp_path / loss, cfg, Budget(steps=40), progress=False, device="cpu",
                  resolution=32, render=False, evaluate=False)
    assert m["steps"] == 40 and np.isfinite(m["final_loss"]) and m["stopped"] is None and "mesh_error" not in m
    tensors, meta = load_checkpoint(tmp_path / loss)
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("field."))
    assert meta["task"] == "sdf" and meta["step"] == 40 and "normalisation" in meta and "optim.0.exp_avg" in tensors
    mesh = trimesh.load(tmp_path / loss / "mesh.ply", process=False)
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()


def test_export_back_in_input_coordinates(meshes, tmp_path):
    out = tmp_path / "fit"
    m = fit_shape(meshes / "box.obj", out, SMALL_TASK, Budget(steps=150), progress=False, device="cpu",
                  resolution=64, render=True)
    assert (out / "renders" / "view_00.png").exists() and (out / "metrics.json").exists()
    assert m["chamfer_l1"] < 0.02 and m["iou"] > 0.9 and m["steps"] == 150 and m["stopped"] is None
    assert json.loads((out / "metrics.json").read_text())["chamfer_l1"] == pytest.approx(m["chamfer_l1"])
    from fieldcraft.tasks.sdf import extract_mesh, load_shape_field

    box = trimesh.load(meshes / "box.obj", process=False)
    field, cfg, norm, meta = load_shape_field(out, "cpu")
    assert meta["normalisation"]["centre"] == pytest.approx([10.0, -3.0, 5.0]) and meta["source"].endswith("box.obj")
    for mise in (True, False):
        stats = export_shape_mesh(out, tmp_path / f"m{mise}.ply", resolution=64, mise=mise)
        assert stats["backend"] == "numpy"  # torch-free evaluation, checked against the module below
        got = trimesh.load(tmp_path / f"m{mise}.ply", process=False)
        np.testing.assert_allclose(got.bounds, box.bounds, atol=0.1)  # a 150-step fit, 64 cells over 2.1 units
        v, f, _ = extract_mesh(field, cfg.loss, 64, mise)
        np.testing.assert_allclose(got.vertices, norm.inverse(v), atol=1e-5)  # exactly the inverse transform
        np.testing.assert_allclose(norm.apply(box.vertices).max(0).max(), 1 - cfg.margin)


def test_stopped_and_resumed_fit_equals_uninterrupted(meshes, tmp_path, monkeypatch):
    """80 steps straight == stopped by SIGINT after 40 steps, then --resume to the stored budget:
    same samples (drawn from the seed), batches (registered generator), Adam state and schedule."""
    kw = dict(progress=False, device="cpu", resolution=32, render=False, evaluate=False)
    straight = fit_shape(meshes / "sphere.obj", tmp_path / "straight", TINY_TASK, Budget(steps=80), **kw)
    with monkeypatch.context() as mp:
        _stop_at(mp, SDFObjective, 39)
        stopped = fit_shape(meshes / "sphere.obj", tmp_path / "resumed", TINY_TASK, Budget(steps=80), **kw)
    assert stopped["stopped"] == "SIGINT" and stopped["steps"] == 40
    assert (tmp_path / "resumed" / "mesh.ply").exists()  # outputs are written when stopped too
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["stopped"] == "SIGINT"
    resumed = fit_shape(meshes / "sphere.obj", tmp_path / "resumed", TINY_TASK, resume=True, **kw)
    assert resumed["steps"] == 80 and resumed["stopped"] is None
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5, abs=1e-7)
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "resumed")
    assert sorted(a) == sorted(b)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    hist = [json.loads(line) for line in (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(10, 81, 10))


def test_occupancy_fit(meshes, tmp_path):
    occ = SMALL_TASK.replace(loss="occupancy")
    m = fit_shape(meshes / "sphere.obj", tmp_path / "occ", occ, Budget(steps=60), progress=False, device="cpu",
                  resolution=32, render=False)
    assert m["iou"] > 0.9
    from fieldcraft.tasks.sdf import render_shape

    with pytest.raises(FieldcraftError, match="occupancy"):
        render_shape(tmp_path / "occ", tmp_path / "views")


def test_autodecoder_interpolates_and_resumes(tmp_path, monkeypatch):
    trimesh.creation.icosphere(3, radius=1.0).export(tmp_path / "sphere.obj")
    trimesh.creation.box(extents=(2.0, 2.0, 2.0)).export(tmp_path / "box.obj")
    sources = [tmp_path / "sphere.obj", tmp_path / "box.obj"]
    r = fit_autodecoder(sources, tmp_path / "ad", TINY_AUTODECODER, Budget(steps=150), interpolate=3,
                        resolution=32, progress=False, device="cpu")
    assert r["meshes"] == ["shape_0.ply", "shape_1.ply", "interp_00.ply", "interp_01.ply", "interp_02.ply"]
    vols = [trimesh.load(tmp_path / "ad" / f"interp_{i:02d}.ply").volume for i in range(3)]
    # sphere (4.19 / scale^3) -> box (8 / scale^3): the middle code gives a middle volume
    assert vols[0] < vols[1] < vols[2]
    # stopped after 70 steps and resumed to the stored 150: the same decoder and codes
    with monkeypatch.context() as mp:
        _stop_at(mp, AutoDecoderObjective, 69)
        s = fit_autodecoder(sources, tmp_path / "ad2", TINY_AUTODECODER, Budget(steps=150), interpolate=0,
                            resolution=32, progress=False, device="cpu")
    assert s["stopped"] == "SIGINT" and s["steps"] == 70
    t, meta = load_checkpoint(tmp_path / "ad2")
    assert meta["task"] == "autodecoder" and meta["step"] == 70 and len(meta["normalisations"]) == 2
    assert any(k.startswith("optim.") for k in t) and "rng.batches" in t
    s2 = fit_autodecoder(sources, tmp_path / "ad2", TINY_AUTODECODER, resume=True, interpolate=0, resolution=32,
                         progress=False, device="cpu")
    assert s2["steps"] == 150 and s2["stopped"] is None
    a, _ = load_checkpoint(tmp_path / "ad")
    b, _ = load_checkpoint(tmp_path / "ad2")
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(FieldcraftError, match="2 shape"):
        fit_autodecoder(sources[:1], tmp_path / "ad2", TINY_AUTODECODER, resume=True, progress=False, device="cpu")


# ------------------------------------------------------------------------------ command line

def _cli(args):
    return main([str(a) for a in args])


def test_cli_fit_sdf_then_render_export_eval(meshes, tmp_path, capsys):
    out = tmp_path / "sdf"
    assert _cli(["fit", "sdf", meshes / "sphere.obj", "--out", out, "--steps", "20", "--resolution", "32",
                 "--batch-size", "4096", "--no-render", "--quiet", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 20 and m["stopped"] is None and m["device"] == "cpu" and "chamfer_l1" in m
    assert (out / "mesh.ply").exists() and (out / "history.jsonl").exists() and not (out / "renders").exists()
    assert _cli(["fit", "sdf", meshes / "sphere.obj", "--out", out, "--steps", "5", "--quiet"]) == 2  # has a fit
    assert "--resume continues it" in capsys.readouterr().err

    assert _cli(["render", "sdf", out, "--out", tmp_path / "views", "--views", "2", "--size", "24",
                 "--device", "cpu"]) == 0
    from fieldcraft.io.images import read_png

    assert read_png(tmp_path / "views" / "view_01.png").shape == (24, 24, 3)

    assert _cli(["export", "mesh", out, "--resolution", "32", "--mise", "--out", tmp_path / "m.ply"]) == 0
    assert "(numpy)" in capsys.readouterr().out
    assert _cli(["export", "mesh", out, "--resolution", "32", "--out", tmp_path / "t.obj", "--device", "cuda:0"
                 ]) == (0 if torch.cuda.is_available() else 2)
    assert _cli(["eval", "mesh", tmp_path / "m.ply", meshes / "sphere.obj", "--points", "2000",
                 "--out", tmp_path / "e.json"]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert {"chamfer_l1", "normal_consistency", "f_score", "iou"} <= set(e) and e["chamfer_l1"] < 0.5


def test_cli_fit_occupancy(meshes, tmp_path, capsys):
    out = tmp_path / "occ"
    assert _cli(["fit", "occupancy", meshes / "sphere.obj", "--out", out, "--steps", "20", "--resolution", "32",
                 "--batch-size", "4096", "--quiet", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss"] == "occupancy" and m["steps"] == 20 and "iou" in m and not (out / "renders").exists()
    assert _cli(["render", "sdf", out, "--out", tmp_path / "views"]) == 2  # no sphere tracing of occupancies
    pc = trimesh.creation.icosphere(2)
    save_point_cloud(tmp_path / "pc.ply", pc.vertices, pc.vertex_normals)
    assert _cli(["fit", "occupancy", tmp_path / "pc.ply", "--out", tmp_path / "pc", "--steps", "1", "--quiet"]) == 2
    assert "needs a mesh" in capsys.readouterr().err


def test_cli_fit_autodecoder_and_resume(meshes, tmp_path, capsys):
    out = tmp_path / "ad"
    srcs = [meshes / "sphere.obj", meshes / "box.obj"]
    assert _cli(["fit", "autodecoder", *srcs, "--out", out, "--steps", "4", "--resolution", "32",
                 "--interpolate", "2", "--latent-dim", "4", "--quiet", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 4 and m["stopped"] is None and set(m["meshes"]) <= {"shape_0.ply", "shape_1.ply",
                                                                             "interp_00.ply", "interp_01.ply"}
    assert _cli(["fit", "autodecoder", *srcs, "--out", out, "--steps", "6", "--resume", "--resolution", "32",
                 "--interpolate", "2", "--latent-dim", "8", "--quiet"]) == 0
    assert "latent_dim=4 (given 8)" in capsys.readouterr().err  # the stored config is kept
    t, meta = load_checkpoint(out)
    assert meta["step"] == 6 and meta["config"]["latent_dim"] == 4 and t["model.latents"].shape == (2, 4)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_sphere_tracing_hits_analytic_sphere():
    from fieldcraft.render.sphere_tracing import camera_rays, look_at, render_sdf, sphere_trace

    sdf = lambda x: x.norm(dim=-1) - 0.5
    c2w = look_at(torch.tensor([0.0, 0.0, 3.0]))
    o, d = camera_rays(c2w, 48, 48)
    t, hit = sphere_trace(sdf, o, d)
    b = (o * d).sum(-1)
    disc = b**2 - (o.square().sum(-1) - 0.25)
    expected = disc > 0
    assert (hit == expected).float().mean() > 0.995
    both = hit & expected
    p = o[both] + t[both, None] * d[both]
    assert ((p.norm(dim=-1) - 0.5).abs() < 1e-3).all()  # hit points lie on the sphere
    frontal = both & (disc > 0.02)  # away from grazing rays, t is the first intersection
    torch.testing.assert_close(t[frontal], (-b - disc.clamp(min=0).sqrt())[frontal], atol=2e-3, rtol=0)
    img = render_sdf(sdf, c2w, 32, 32)
    assert img.shape == (32, 32, 3) and img[16, 16].min() < 250 and img[0, 0].min() == 255


@pytest.mark.parametrize("suffix", ["ply", "obj"])
def test_save_mesh_round_trip(tmp_path, suffix):
    """Our PLY/OBJ writer reads back (through trimesh, an independent reader) with the same
    vertices, faces and normals; clean_mesh welds duplicates and drops degenerate faces."""
    import trimesh

    from fieldcraft.geometry.marching_cubes import clean_mesh, vertex_normals
    from fieldcraft.geometry.mesh import save_mesh

    box = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    # duplicate every vertex once and add a degenerate face: clean_mesh must undo both
    v2 = np.concatenate([v, v])
    f2 = np.concatenate([f[: len(f) // 2], f[len(f) // 2:] + len(v), [[0, 0, 1]]])
    vc, fc = clean_mesh(v2, f2)
    assert len(vc) == len(v) and len(fc) == len(f)
    n = vertex_normals(vc, fc)
    save_mesh(tmp_path / f"m.{suffix}", vc, fc, n)
    got = trimesh.load(tmp_path / f"m.{suffix}", process=False)
    np.testing.assert_allclose(got.vertices, vc, atol=1e-6)
    np.testing.assert_array_equal(got.faces, fc)
    np.testing.assert_allclose(got.vertex_normals, n, atol=1e-5)
    assert got.is_watertight
