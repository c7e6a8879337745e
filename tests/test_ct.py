"""CT: projector vs analytic line integrals, adjointness, grid operator and fixed-point fields,
HDF5 validation, centre of rotation, short fits (fast and reference kernels), resume, CLI."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_data

from fieldcraft.cli import main
from fieldcraft.coords import pixel_centres
from fieldcraft.data import ct as ctdata
from fieldcraft.encodings import DenseGridConfig, HashGridConfig
from fieldcraft.encodings.grid import grid_encode_reference, grid_operator
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import FieldConfig
from fieldcraft.fields.fixed_points import FixedPointsField
from fieldcraft.io.images import read_png
from fieldcraft.networks import MLPConfig
from fieldcraft.render import line_integrals as li
from fieldcraft.tasks import ct
from fieldcraft.train import Budget


def _rays(kind, n_angles=7, n_det=41):
    angles = torch.linspace(0, math.pi, n_angles + 1, dtype=torch.float64)[:-1] + 0.1
    u = torch.linspace(-0.95, 0.95, n_det, dtype=torch.float64)
    if kind == "parallel":
        return li.parallel_beam_rays(angles, u, (0.03, -0.02))
    return li.fan_beam_rays(angles, 2.0 * u, source_distance=3.0, detector_distance=1.5, center=(0.03, -0.02))


def _ellipse_chords(o, d, centre, a, b, phi):
    """Analytic chord length of the lines o + t d (unit d) through an ellipse (float64)."""
    c, s = math.cos(phi), math.sin(phi)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)  # ellipse frame -> world
    scale = torch.tensor([a, b], dtype=torch.float64)
    op = ((o - torch.tensor(centre, dtype=torch.float64)) @ rot) / scale
    dp = (d @ rot) / scale
    qa, qb, qc = (dp * dp).sum(-1), (op * dp).sum(-1), (op * op).sum(-1) - 1.0
    disc = (qb * qb - qa * qc).clamp_min(0.0)
    return 2.0 * torch.sqrt(disc) / qa


def _quadrature_of_indicator(o, d, inside, n_samples=4000):
    t0, t1 = li.chord_interval(o, d, radius=1.5, center=(0.03, -0.02))
    pts, w = li.quadrature_points(o, d, t0, t1, n_samples)
    return li.line_integrals(lambda p: inside(p).to(p.dtype), pts, w, chunk=64)


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_disc_line_integrals_match_chord_lengths(kind):
    o, d = _rays(kind)
    centre, r = (0.2, -0.1), 0.55
    got = _quadrature_of_indicator(o, d, lambda p: ((p - torch.tensor(centre, dtype=p.dtype)) ** 2).sum(-1) <= r * r)
    want = _ellipse_chords(o, d, centre, r, r, 0.0)
    assert (want > 0).sum() > 50  # the rays do hit the disc
    # midpoint rule on a discontinuous integrand: error <= one step (3 / 4000) per edge
    assert torch.allclose(got, want, atol=2e-3)


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_ellipse_line_integrals_match_analytic(kind):
    o, d = _rays(kind)
    centre, a, b, phi = (-0.15, 0.1), 0.6, 0.3, 0.4

    def inside(p):
        c, s = math.cos(phi), math.sin(phi)
        q = p - torch.tensor(centre, dtype=p.dtype)
        x, y = q[..., 0] * c + q[..., 1] * s, -q[..., 0] * s + q[..., 1] * c
        return (x / a) ** 2 + (y / b) ** 2 <= 1.0

    got = _quadrature_of_indicator(o, d, inside)
    want = _ellipse_chords(o, d, centre, a, b, phi)
    assert (want > 0).sum() > 30
    assert torch.allclose(got, want, atol=2e-3)


def test_projection_matrix_of_gaussian_matches_analytic_and_callable():
    n = 96
    centre, sig = torch.tensor([0.1, -0.05], dtype=torch.float64), 0.15
    pix = pixel_centres(n, n, dtype=torch.float64).reshape(n, n, 2)
    image = torch.exp(-((pix - centre) ** 2).sum(-1) / (2 * sig**2))
    theta = np.array([0.0, 33.0, 90.0, 151.0])
    a, at = ct.projector(n, theta)
    got = li.project(image.float(), a, at).double()
    o, d, c = ct.geometry(n, theta)
    # Radon transform of the Gaussian: sqrt(2 pi) sigma exp(-dist^2 / 2 sigma^2), dist = distance to the line
    rel = centre.float() - o
    dist = (rel[..., 0] * d[..., 1] - rel[..., 1] * d[..., 0]).double()
    want = math.sqrt(2 * math.pi) * sig * torch.exp(-dist**2 / (2 * sig**2))
    assert torch.allclose(got, want.reshape(-1), atol=5e-3 * want.max().item())
    # the sparse matrix is exactly the quadrature of the bilinear interpolant (image_field)
    t0, t1 = li.chord_interval(o, d, 1.0, c)
    pts, w = li.quadrature_points(o, d, t0, t1, 2 * n)
    via_callable = li.line_integrals(li.image_field(image.float()), pts, w).reshape(-1)
    assert torch.allclose(li.project(image.float(), a, at), via_callable, atol=1e-5)


def test_projector_matches_skimage_radon_convention():
    from skimage.transform import radon

    n = 64
    image = ctdata.shepp_logan(n)
    theta = np.array([0.0, 20.0, 45.0, 90.0, 135.0, 170.0])
    a, at = ct.projector(n, theta)
    ours = (li.project(torch.from_numpy(image), a, at) * (n / 2)).reshape(len(theta), n).numpy()
    ref = radon(image, theta=theta, circle=True).T
    assert np.abs(ours - ref).max() < 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("path", ["matrix", "callable"])
def test_projection_is_adjoint_of_autograd_backprojection(path):
    """<A x, y> == <x, A^T y> with A^T y = vjp of the forward projection (float64)."""
    g = torch.Generator().manual_seed(1)
    n = 24
    theta = np.array([3.0, 50.0, 111.0])
    x = torch.rand(n, n, generator=g, dtype=torch.float64)
    o, d, c = ct.geometry(n, theta)
    t0, t1 = li.chord_interval(o.double(), d.double(), 1.0, c)
    pts, w = li.quadrature_points(o.double(), d.double(), t0, t1, 2 * n)
    if path == "matrix":
        a = li.projection_matrix(pts, w, n)
        at = li.transpose_csr(a)
        forward = lambda img: li.project(img, a, at)
    else:
        forward = lambda img: li.line_integrals(li.image_field(img), pts, w).reshape(-1)
    y = torch.rand(len(theta) * n, generator=g, dtype=torch.float64)
    ax = forward(x)
    _, aty = torch.autograd.functional.vjp(forward, x, y)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    # and A^T from the matrix path equals A^T from autograd through grid_sample
    if path == "matrix":
        ref = torch.autograd.functional.vjp(lambda img: li.line_integrals(li.image_field(img), pts, w).reshape(-1), x, y)[1]
        assert torch.allclose(aty, ref, atol=1e-10)


def test_beer_lambert_noise_is_unbiased_and_poisson():
    p = torch.full((20000,), 1.0)
    noisy = li.beer_lambert(p, 1e4, torch.Generator().manual_seed(0))
    assert li.beer_lambert(p, None) is p
    assert abs(noisy.mean().item() - 1.0) < 2e-3
    # std of -ln(I/I0) ~ 1 / sqrt(I0 exp(-p))
    assert noisy.std().item() == pytest.approx(1 / math.sqrt(1e4 * math.exp(-1.0)), rel=0.05)


# ----------------------------------------------------------------------------- HDF5 reader


def _write_h5(path, data=(6, 2, 32), white=(3, 2, 32), dark=(3, 2, 32), theta=6, skip=()):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        if "data" not in skip:
            f["/exchange/data"] = rng.uniform(100, 200, size=data).astype(np.float32)
        if "white" not in skip:
            f["/exchange/data_white"] = np.full(white, 300.0, np.float32)
        if "dark" not in skip:
            f["/exchange/data_dark"] = np.full(dark, 10.0, np.float32)
        if theta:
            f["/exchange/theta"] = np.linspace(0, 180, theta, endpoint=False)


@pytest.mark.parametrize("kwargs, words", [
    ({"skip": ("white",)}, ["missing dataset /exchange/data_white"]),
    ({"skip": ("data",)}, ["missing dataset /exchange/data"]),
    ({"white": (3, 2, 31)}, ["/exchange/data_white", "(2, 31)", "(2, 32)"]),
    ({"data": (6, 32)}, ["/exchange/data", "(6, 32)", "3-D"]),
    ({"theta": 5}, ["/exchange/theta", "5 angles"]),
])
def test_data_exchange_errors_are_one_clear_line(tmp_path, kwargs, words):
    path = str(tmp_path / "bad.h5")
    _write_h5(path, **kwargs)
    with pytest.raises(FieldcraftError) as info:
        ctdata.read_data_exchange(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(path)
    for w in words:
        assert w in msg


def test_data_exchange_missing_and_not_hdf5(tmp_path):
    with pytest.raises(FieldcraftError, match="no such file"):
        ctdata.read_data_exchange(str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(FieldcraftError, match="not a readable HDF5"):
        ctdata.read_data_exchange(str(junk))


def test_cli_prints_one_line_for_bad_file(tmp_path, capsys):
    from fieldcraft.cli import main

    path = str(tmp_path / "bad.h5")
    _write_h5(path, skip=("dark",))
    code = main(["fit", "ct", path, "--out", str(tmp_path / "out"), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert path in err and "/exchange/data_dark" in err


def test_synthetic_h5_flat_dark_and_centring(tmp_path):
    """A point absorber on the centre of rotation lands on bin N // 2 with the right -ln value."""
    path = str(tmp_path / "point.h5")
    n_ang, cols, centre = 8, 40, 21.0
    data = np.full((n_ang, 1, cols), 290.0, np.float32)  # (290 - 10) / (300 - 10) transmission background
    data[:, 0, int(centre)] = 10.0 + 290.0 * math.exp(-2.0)  # -ln = 2 at the centre column
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = data
        f["/exchange/data_white"] = np.full((2, 1, cols), 300.0, np.float32)
        f["/exchange/data_dark"] = np.full((2, 1, cols), 10.0, np.float32)
    proj = ctdata.read_data_exchange(path)
    assert np.allclose(proj.theta_deg, np.arange(n_ang) * 22.5)
    sino = ctdata.log_sinogram(proj, 0)
    assert sino[0, int(centre)] == pytest.approx(2.0, abs=1e-5)
    assert sino[0, 0] == pytest.approx(-math.log(280 / 290), abs=1e-5)
    centred = ctdata.centre_sinogram(sino, centre, 22)  # 1 px per bin here: half-width 21.5 px
    assert np.argmax(centred[0]) == 11 and centred[0, 11] == pytest.approx(2.0, abs=1e-5)


def test_tooth_file_reads_and_its_centre_is_estimated():
    path = shared_data("ct", "tooth.h5")
    proj = ctdata.read_data_exchange(path)
    assert proj.data.shape == (181, 2, 640) and proj.white.shape[1:] == (2, 640)
    log = ctdata.log_sinogram(proj, 0)
    centre, how = ctdata.rotation_centre(proj, log)
    # the file records no centre; tomopy's tutorials use about 295.5 px (measured here: 295.57)
    assert abs(centre - 295.5) < 1.0 and how.startswith("estimated")
    sino = ctdata.centre_sinogram(log, centre, 64)
    # the object is inside the field of view: low attenuation at both ends of the detector
    assert sino.shape == (181, 64) and sino[:, 28:36].mean() > 5 * np.abs(sino[:, :2]).mean()


# ----------------------------------------------------------------------------- centre of rotation


def _offcentre_sinogram(centre, theta_deg, n_det=96):
    """Line integrals of a 64 x 64 phantom on a detector whose bin ``centre`` sees the axis."""
    image = torch.from_numpy(ctdata.shepp_logan(64))
    u = li.detector_positions(n_det, 2.0 / 64, center_index=centre)
    o, d = li.parallel_beam_rays(torch.tensor(np.deg2rad(theta_deg), dtype=torch.float32), u)
    t0, t1 = li.chord_interval(o, d, 1.5)
    pts, w = li.quadrature_points(o, d, t0, t1, 200)
    return li.line_integrals(li.image_field(image), pts, w, chunk=4096).numpy()


@pytest.mark.parametrize("theta", [np.arange(36) * 10.0, np.arange(90) * 2.0], ids=["360-degree", "180-degree"])
def test_centre_estimate_of_an_offcentre_sinogram(theta):
    true = 52.37  # 4.37 px right of the middle of the 96-bin detector
    centre, how = ctdata.estimate_centre(_offcentre_sinogram(true, theta), theta)
    assert abs(centre - true) < 0.5, how
    assert how.startswith("estimated") and "\n" not in how


def test_centre_recorded_in_the_file_is_used(tmp_path):
    path = str(tmp_path / "c.h5")
    _write_h5(path)
    with h5py.File(path, "a") as f:
        f["/measurement/instrument/rotation_center"] = 15.25
    proj = ctdata.read_data_exchange(path)
    assert ctdata.rotation_centre(proj, ctdata.log_sinogram(proj, 0)) == (
        15.25, "recorded in the file at /measurement/instrument/rotation_center")
    with h5py.File(path, "a") as f:
        del f["/measurement/instrument/rotation_center"]
        f["/exchange"].attrs["center_of_rotation"] = 16.0
    assert ctdata.centre_from_file(path) == (16.0, "/exchange@center_of_rotation")


def test_opposite_pairs():
    pairs, gap = ctdata.opposite_pairs(np.arange(181) * (180.0 / 181))
    assert pairs == [(0, 180)] and gap == pytest.approx(180.0 / 181)
    with pytest.raises(FieldcraftError, match="--centre"):
        ctdata.estimate_centre(np.ones((3, 16)), np.array([0.0, 10.0, 20.0]))


# ----------------------------------------------------------------------------- grid operator, fixed points


@pytest.mark.parametrize("encoding, dim", [
    (HashGridConfig(n_levels=4, n_features=2, log2_table_size=8, base_resolution=4, max_resolution=64), 2),
    (HashGridConfig(n_levels=3, n_features=2, log2_table_size=10, base_resolution=2, max_resolution=16), 3),
    (DenseGridConfig(resolution=7, n_features=4), 2),
], ids=["hash-2d", "hash-3d", "dense-2d"])
def test_grid_operator_equals_reference_encoding(encoding, dim):
    grid = encoding.build(dim)
    g = torch.Generator().manual_seed(0)
    table = torch.rand(grid.table.shape, generator=g) * 2 - 1
    u = torch.rand(300, dim, generator=g)
    u[:4] = torch.tensor([0.0, 1.0, 1.2, -0.1])[:, None]  # cube corners, and points clamped to it
    s = grid_operator(u, grid.layout)
    assert s.layout == torch.sparse_csr and s.shape == (300 * grid.layout.n_levels, grid.layout.n_rows)
    assert torch.allclose((s @ table).reshape(300, -1), grid_encode_reference(u, table, grid.layout), atol=1e-5)


@pytest.mark.parametrize("preset", ["hash", "dense", "fourier"])
def test_fixed_points_field_equals_field(preset, monkeypatch):
    """Values and gradients, output scale and offset included; a copy is evaluated with its own weights."""
    import copy

    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")  # no JIT compilation: the test stays cheap
    field = ct.ct_field_config(preset, 32).replace(output_scale=2.5, output_offset=-0.3).build()
    with torch.no_grad():
        for p in field.encoding.parameters():
            p.uniform_(-1, 1)
    pts = pixel_centres(32, 32)[::3]
    fixed = FixedPointsField(field, pts)
    assert fixed.mode == ("constant" if preset == "fourier" else "grid")
    got, want = fixed(), field(pts)
    assert torch.allclose(got, want, atol=1e-5) and want.std() > 0.01
    params = [p for p in field.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(got.square().sum(), params), torch.autograd.grad(want.square().sum(), params)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    clone = copy.deepcopy(field)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    assert torch.allclose(fixed(clone), clone(pts), atol=1e-5)


def test_fixed_points_field_on_other_encodings_calls_the_field():
    from fieldcraft.encodings import CompositeEncodingConfig, CompositePart

    enc = CompositeEncodingConfig(parts=(CompositePart(dims=(0, 1), encoding=DenseGridConfig(resolution=4)),))
    field = FieldConfig(in_dim=2, out_dim=1, encoding=enc, network=MLPConfig(hidden_width=8, hidden_layers=1),
                        output_offset=1.0).build()
    pts = pixel_centres(4, 4)
    fixed = FixedPointsField(field, pts)
    assert fixed.mode == "call" and torch.allclose(fixed(), field(pts))


# ----------------------------------------------------------------------------- fits


@pytest.fixture(scope="module")
def phantom_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct")
    cfg = ct.CTTaskConfig(size=128, views=16, field=ct.ct_field_config("hash", 128), sart_iterations=3)
    metrics = ct.fit_ct(cfg, out, Budget(steps=200), progress=False, device="cpu")
    return cfg, out, metrics


def test_short_phantom_fit_beats_fbp_and_writes_outputs(phantom_fit):
    cfg, out, result = phantom_fit
    m = json.loads((out / "metrics.json").read_text())
    assert m["psnr"] == pytest.approx(result["psnr"]) and m["steps"] == 200 and m["stopped"] is None
    # measured: FBP 15.6, SART (3 passes) 22.8, field 30.7 dB
    assert m["psnr"] > 28.0
    assert m["psnr"] > m["fbp_psnr"] + 10.0
    assert m["psnr"] > m["sart_psnr"] + 3.0
    assert m["ssim"] > m["sart_ssim"]
    assert "Gaussian window" in m["ssim_definition"] and "phantom" in m["psnr_definition"]
    assert m["centre_of_rotation"] is None and m["device"] == "cpu"
    for name in ("reconstruction.png", "comparison.png", "psnr_vs_time.png", "checkpoint.safetensors",
                 "history.jsonl"):
        assert (out / name).is_file()
    import imageio.v3 as iio

    png = iio.imread(out / "reconstruction.png")
    assert png.dtype == np.uint16 and png.shape == (128, 128)
    image = np.load(out / "reconstruction.npy")
    assert np.abs(png / 65535.0 - np.clip(image, 0, 1)).max() < 1e-4  # 65535 = the phantom's maximum, 1
    # the checkpoint rebuilds the field: at the fitted size it reproduces reconstruction.npy
    field, cfg2, scale = ct.load_fitted(out, "cpu")
    assert cfg2 == cfg and scale == pytest.approx(m["value_scale"])
    assert np.allclose(ct.render(field, 128, scale), image, atol=1e-6)


def test_fit_with_reference_kernels(tmp_path, monkeypatch):
    """The PyTorch reference path (what a GPU runs): grid encoding and Adam without numba."""
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    cfg = ct.CTTaskConfig(size=32, views=6, field=ct.ct_field_config("hash", 32), sart_iterations=1)
    m = ct.fit_ct(cfg, tmp_path, Budget(steps=5), progress=False, device="cpu")
    assert m["steps"] == 5 and math.isfinite(m["psnr"]) and m["psnr"] > m["fbp_psnr"] - 10
    assert np.isfinite(np.load(tmp_path / "reconstruction.npy")).all()


def test_stopped_fit_resumes_to_the_same_result(tmp_path, monkeypatch):
    """SIGINT at step 5 stops after the step (outputs written, exit 130 from the CLI); --resume
    continues to the stored budget and ends where an uninterrupted run ends."""
    import os
    import signal

    cfg = ct.CTTaskConfig(size=32, views=6, field=ct.ct_field_config("hash", 32), sart_iterations=1)
    straight = ct.fit_ct(cfg, tmp_path / "straight", Budget(steps=12), progress=False, device="cpu")
    loss = ct.SinogramResidual.loss

    def interrupted(self, model, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, model, step)

    monkeypatch.setattr(ct.SinogramResidual, "loss", interrupted)
    stopped = ct.fit_ct(cfg, tmp_path / "run", Budget(steps=12), progress=False, device="cpu")
    assert stopped["stopped"] == "SIGINT" and stopped["steps"] == 6
    assert (tmp_path / "run" / "reconstruction.png").is_file()
    monkeypatch.setattr(ct.SinogramResidual, "loss", loss)
    resumed = ct.fit_ct(cfg, tmp_path / "run", resume=True, progress=False, device="cpu")
    assert resumed["steps"] == 12 and resumed["stopped"] is None
    a, b = np.load(tmp_path / "straight" / "reconstruction.npy"), np.load(tmp_path / "run" / "reconstruction.npy")
    assert np.allclose(a, b, atol=1e-5)
    assert resumed["psnr"] == pytest.approx(straight["psnr"], abs=1e-3)


def test_noisy_phantom_simulation_is_seeded():
    cfg = ct.CTTaskConfig(size=32, views=4, photons=1e3)
    a, b = ct.prepare(cfg), ct.prepare(cfg)
    clean = ct.prepare(cfg.replace(photons=None))
    assert np.array_equal(a.sinogram, b.sinogram)
    assert 0 < np.abs(a.sinogram - clean.sinogram).mean() < 0.2 * np.abs(clean.sinogram).mean()


# ----------------------------------------------------------------------------- command line


def test_cli_fit_and_render(tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", "ct", "sample:shepp-logan", "--out", str(out), "--size", "32", "--views", "6", "--steps", "3",
            "--sart-iterations", "1", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["steps"] == 3 and "psnr" in printed and "fbp_psnr" in printed
    assert main(argv) == 2  # a second fit does not overwrite the first
    assert "--overwrite" in capsys.readouterr().err
    assert main(["render", "ct", str(out), "--size", "48", "--device", "cpu"]) == 0
    png = read_png(out / "render_48.png")
    assert png.shape == (48, 48, 1) and png.max() == 1.0 and png[0, 0, 0] == 0.0  # outside the disc


def test_cli_tooth_reports_the_centre(tmp_path, capsys):
    path = shared_data("ct", "tooth.h5")
    out = tmp_path / "tooth"
    assert main(["fit", "ct", path, "--out", str(out), "--size", "32", "--views", "10", "--steps", "2",
                 "--sart-iterations", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "centre of rotation 295.57 px (estimated" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["centre_of_rotation"] == pytest.approx(295.57) and m["centre_source"].startswith("estimated")
    assert main(["fit", "ct", path, "--out", str(out), "--size", "32", "--views", "10", "--steps", "2",
                 "--sart-iterations", "1", "--quiet", "--centre", "300", "--overwrite"]) == 0
    assert "centre of rotation 300.00 px (given (--centre))" in capsys.readouterr().err
