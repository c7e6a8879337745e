"""Shapes as fields: geometry (meshes, winding numbers, distances, marching cubes, MISE,
metrics), the SDF task (regression, eikonal second derivatives, occupancy, auto-decoder),
sphere tracing and the command line."""

import json
import os

import numpy as np
import pytest
import torch
import trimesh
from tests.conftest import SHARED_DATA

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
from fieldcraft.networks import MLPConfig
from fieldcraft.tasks.sdf import (
    AutoDecoderConfig,
    SDFTaskConfig,
    SDFTrainer,
    eikonal_loss,
    export_shape_mesh,
    field_function,
    fit_autodecoder,
    fit_shape,
    make_samples,
    spatial_gradient,
)
from fieldcraft.train import Budget, run_loop

SMALL_FIELD = FieldConfig(in_dim=3, out_dim=1,
                          encoding=HashGridConfig(n_levels=6, n_features=2, log2_table_size=15, base_resolution=8,
                                                  max_resolution=128),
                          network=MLPConfig(hidden_width=32, hidden_layers=2))
SMALL_TASK = SDFTaskConfig(field=SMALL_FIELD, n_surface=20_000, n_uniform=5_000, batch_size=4096, lr=1e-2)


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
    path = os.path.join(SHARED_DATA, "meshes", "spot.obj")
    assert os.path.exists(path), f"shared test data missing: {path}"
    shape = load_shape(path)
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

def _fit(shape_mesh, config, steps):
    normed, norm = normalise(load_shape_from(shape_mesh), config.margin)
    samples = make_samples(normed, config, need_sdf=config.loss != "eikonal")
    trainer = SDFTrainer(config, samples, total_steps=steps)
    run_loop(trainer.step, Budget(steps=steps), progress=False)
    return trainer.field.eval(), norm


def load_shape_from(mesh):
    from fieldcraft.geometry.mesh import validate_mesh

    return validate_mesh(mesh.vertices, mesh.faces)


@pytest.mark.parametrize("kind", ["sphere", "box"])
def test_regression_recovers_analytic_sdf(kind):
    mesh = trimesh.creation.icosphere(5, radius=1.0) if kind == "sphere" else trimesh.creation.box(extents=(2.0, 1.2, 1.6))
    field, norm = _fit(mesh, SMALL_TASK, 150)
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
    normed, _ = normalise(load_shape_from(mesh), cfg.margin)
    trainer = SDFTrainer(cfg, make_samples(normed, cfg, need_sdf=False), total_steps=60)
    first = trainer.step(0)["loss"]
    _, _, hist = run_loop(trainer.step, Budget(steps=60), start_step=1, progress=False)
    assert hist.column("loss")[-1] < 0.5 * first
    # the zero level set is near the sphere (radius 0.95 after normalisation)
    d = field_function(trainer.field)(np.array([[0.95, 0, 0], [0, -0.95, 0], [0, 0, 0.95]]))
    assert np.abs(d).max() < 0.1


def test_export_back_in_input_coordinates_and_resume(tmp_path):
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.5))
    box.apply_translation([10.0, -3.0, 5.0])
    box.export(tmp_path / "box.obj")
    out = tmp_path / "fit"
    m = fit_shape(tmp_path / "box.obj", out, SMALL_TASK, Budget(steps=150), progress=False, resolution=64, render=True)
    assert (out / "renders" / "view_00.png").exists() and (out / "metrics.json").exists()
    assert m["chamfer_l1"] < 0.02 and m["iou"] > 0.9
    from fieldcraft.tasks.sdf import extract_mesh, load_shape_field

    field, cfg, norm, _ = load_shape_field(out)
    for mise in (True, False):
        stats = export_shape_mesh(out, tmp_path / f"m{mise}.ply", resolution=64, mise=mise)
        assert stats["backend"] == "numpy"  # torch-free evaluation, checked against the module below
        got = trimesh.load(tmp_path / f"m{mise}.ply", process=False)
        np.testing.assert_allclose(got.bounds, box.bounds, atol=0.1)  # a 150-step fit, 64 cells over 2.1 units
        v, f, _ = extract_mesh(field, cfg.loss, 64, mise)
        np.testing.assert_allclose(got.vertices, norm.inverse(v), atol=1e-5)  # exactly the inverse transform
        np.testing.assert_allclose(norm.apply(box.vertices).max(0).max(), 1 - cfg.margin)
    m2 = fit_shape(tmp_path / "box.obj", out, SMALL_TASK, Budget(steps=170), resume=True, progress=False,
                   resolution=32, render=False, evaluate=False)
    assert m2["steps"] == 170
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 170 and meta["normalisation"]["centre"] == pytest.approx([10.0, -3.0, 5.0])


def test_occupancy_and_autodecoder(tmp_path):
    s = trimesh.creation.icosphere(3, radius=1.0)
    b = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    s.export(tmp_path / "sphere.obj")
    b.export(tmp_path / "box.obj")
    occ = SMALL_TASK.replace(loss="occupancy")
    m = fit_shape(tmp_path / "sphere.obj", tmp_path / "occ", occ, Budget(steps=60), progress=False, resolution=32,
                  render=False)
    assert m["iou"] > 0.9
    cfg = AutoDecoderConfig(latent_dim=8, network=MLPConfig(hidden_width=32, hidden_layers=2),
                            task=SMALL_TASK.replace(lr=5e-3, n_surface=5000, n_uniform=2000))
    r = fit_autodecoder([tmp_path / "sphere.obj", tmp_path / "box.obj"], tmp_path / "ad", cfg, Budget(steps=150),
                        interpolate=3, resolution=32, progress=False)
    assert r["meshes"] == ["shape_0.ply", "shape_1.ply", "interp_00.ply", "interp_01.ply", "interp_02.ply"]
    vols = [trimesh.load(tmp_path / "ad" / f"interp_{i:02d}.ply").volume for i in range(3)]
    # sphere (4.19 / scale^3) -> box (8 / scale^3): the middle code gives a middle volume
    assert vols[0] < vols[1] < vols[2]


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
