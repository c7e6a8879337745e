"""Fast CPU grid kernels agree with the PyTorch reference; row-sparse Adam agrees with torch Adam.

Note: the first run compiles one numba kernel set per (dim, F) and caches it on disk
(src/fieldcraft/encodings/__pycache__); later runs load them in about a second.
"""

import warnings

import pytest
import torch

from fieldcraft.encodings import DenseGridConfig, HashGridConfig
from fieldcraft.encodings import grid_autograd as kernels
from fieldcraft.encodings.dispatch import grid_encode
from fieldcraft.encodings.grid import GridLayout, corner_offsets, grid_encode_reference, vertex_rows
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields.field import FieldConfig
from fieldcraft.networks import MLPConfig
from fieldcraft.train.row_sparse_adam import RowSparseAdam, make_optimizer

RTOL = 1e-5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _layout(dim: int, features: int) -> GridLayout:
    # small table: levels 0-1 dense, 2-3 hashed with heavy collisions
    return GridLayout.build(dim, features, (3, 5, 24, 61), 7 if dim == 2 else 8)


def _points(dim: int, resolutions, n_random: int = 600) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    pts = [torch.rand(n_random, dim, generator=g)]
    for res in resolutions:  # exactly on cell boundaries (float32 k / N) of every level
        k = torch.randint(0, res + 1, (40, dim), generator=g).float()
        pts.append(k / res)
    pts.append(torch.tensor([[0.0] * dim, [1.0] * dim, [1.0] + [0.0] * (dim - 1)]))  # domain corners
    outside = torch.rand(50, dim, generator=g) * 2.0 - 0.5  # clamped to the cube
    pts.append(outside)
    return torch.cat(pts).contiguous()


def _check(u: torch.Tensor, layout: GridLayout) -> None:
    g = torch.Generator().manual_seed(2)
    table = torch.nn.Parameter(torch.randn(layout.n_rows, layout.n_features, generator=g))
    grad_out = torch.randn(u.shape[0], layout.n_levels * layout.n_features, generator=g)
    fast = kernels.grid_encode_fast(u, table, layout)
    (g_fast,) = torch.autograd.grad(fast, table, grad_out)
    ref = grid_encode_reference(u, table, layout)
    (g_ref,) = torch.autograd.grad(ref, table, grad_out)
    assert fast.shape == ref.shape
    assert _rel_err(fast, ref) < RTOL
    assert _rel_err(g_fast, g_ref) < RTOL
    # rows no point touches get exactly zero gradient, like the reference
    assert torch.equal(g_fast == 0, g_ref == 0)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("features", [1, 2, 4, 8])
def test_fast_matches_reference(dim, features):
    layout = _layout(dim, features)
    assert layout.hashed == (False, False, True, True)
    _check(_points(dim, layout.resolutions), layout)


def test_hash_collisions_are_present_and_handled():
    layout = _layout(3, 2)
    level = 3
    res, size = layout.resolutions[level], layout.sizes[level]
    u = _points(3, layout.resolutions)
    cell = torch.clamp(torch.floor(u.clamp(0, 1) * res), max=res - 1).long()
    verts = (cell[:, None, :] + corner_offsets(3)[None]).reshape(-1, 3).unique(dim=0)
    rows = vertex_rows(verts, res, size, True)
    assert rows.unique().numel() < verts.shape[0]  # distinct vertices share rows
    _check(u, layout)


@pytest.mark.parametrize("dim,features", [(2, 4), (3, 1)])
def test_dense_grid_single_level(dim, features):
    layout = DenseGridConfig(resolution=9, n_features=features).layout(dim)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # one level, two threads: the point-split backward
        _check(_points(dim, layout.resolutions), layout)
    finally:
        torch.set_num_threads(old)


def test_non_power_of_two_hash_size():
    layout = GridLayout(3, 2, (5, 40), (216, 1000), (False, True))
    _check(_points(3, layout.resolutions), layout)


def test_identical_across_thread_counts():
    layout = HashGridConfig(n_levels=6, n_features=2, log2_table_size=10, max_resolution=300).layout(3)
    u = torch.rand(3000, 3)
    table = torch.nn.Parameter(torch.randn(layout.n_rows, 2))
    g = torch.randn(3000, 12)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = kernels.grid_encode_fast(u, table, layout)
            (grad,) = torch.autograd.grad(out, table, g)
            results.append((out, grad.clone()))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0][0], results[1][0])
    assert _rel_err(results[0][1], results[1][1]) < 1e-6


def test_dispatch_and_accumulation():
    cfg = HashGridConfig(n_levels=4, n_features=2, log2_table_size=8, max_resolution=64)
    enc = cfg.build(3)
    x = torch.rand(500, 3) * 2 - 1
    u = (x + 1) * 0.5
    # two uses in one graph: gradients add up
    (enc(x).sum() + 2 * enc(x).sum()).backward()
    ref = torch.autograd.grad(grid_encode_reference(u, enc.table, enc.layout).sum(), enc.table)[0]
    assert _rel_err(enc.table.grad, 3 * ref) < RTOL
    # a held gradient is never overwritten by a later backward (buffer reuse is safe)
    held = enc.table.grad
    snapshot = held.clone()
    enc.table.grad = None
    enc(x).pow(2).sum().backward()
    assert torch.equal(held, snapshot)
    # a second backward accumulates into an existing grad
    first = enc.table.grad.clone()
    enc(x).pow(2).sum().backward()
    assert _rel_err(enc.table.grad, 2 * first) < RTOL
    # points that need gradients take the reference path (e.g. eikonal losses)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(enc(xr).sum(), xr)
    assert gx.shape == x.shape and torch.isfinite(gx).all() and gx.abs().sum() > 0
    with pytest.raises(FieldcraftError):
        grid_encode(u.double(), enc.table, enc.layout, "fast")


def test_nan_points_do_not_crash():
    layout = _layout(3, 2)
    u = torch.rand(10, 3)
    u[3, 1] = float("nan")
    out = kernels.grid_encode_fast(u, torch.randn(layout.n_rows, 2), layout)
    assert torch.isnan(out[3]).all() and torch.isfinite(out[torch.arange(10) != 3]).all()


def test_fallback_warns_once(monkeypatch):
    layout = _layout(2, 2)
    u, table = torch.rand(50, 2), torch.randn(layout.n_rows, 2)
    monkeypatch.setattr(kernels, "_fallback_reason", lambda d, f, backward=True: "numba unavailable (test)")
    monkeypatch.setattr(kernels, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = kernels.grid_encode_fast(u, table, layout)
        kernels.grid_encode_fast(u, table, layout)
    assert len([w for w in caught if "fast grid kernel unavailable" in str(w.message)]) == 1
    assert torch.equal(a, grid_encode_reference(u, table, layout))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_matches_torch_when_all_rows_touched(sparse, dtype):
    g = torch.Generator().manual_seed(3)
    init = torch.randn(300, 4, generator=g, dtype=dtype)
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    bias_a, bias_b = torch.nn.Parameter(torch.zeros(4, dtype=dtype)), torch.nn.Parameter(torch.zeros(4, dtype=dtype))
    ref = torch.optim.Adam([a, bias_a], lr=3e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-3)
    opt = RowSparseAdam([{"params": [b], "sparse_rows": sparse}, {"params": [bias_b]}], lr=3e-2,
                        betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-3)
    for _ in range(15):
        grad = torch.randn(300, 4, generator=g, dtype=dtype)
        gb = torch.randn(4, generator=g, dtype=dtype)
        a.grad, b.grad, bias_a.grad, bias_b.grad = grad.clone(), grad.clone(), gb.clone(), gb.clone()
        ref.step()
        opt.step()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert _rel_err(b.detach(), a.detach()) < tol
    assert _rel_err(bias_b.detach(), bias_a.detach()) < tol
    assert _rel_err(opt.state[b]["exp_avg_sq"], ref.state[a]["exp_avg_sq"]) < tol
    opt.load_state_dict(opt.state_dict())  # round trip keeps working
    opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_adam_leaves_untouched_rows(dtype):
    p = torch.nn.Parameter(torch.randn(200, 2, dtype=dtype))
    opt = RowSparseAdam([{"params": [p], "sparse_rows": True}], lr=1e-2)
    p.grad = torch.randn(200, 2, dtype=dtype)
    opt.step()  # every row now has nonzero moments
    before = [t.clone() for t in (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]
    grad = torch.zeros(200, 2, dtype=dtype)
    touched = torch.tensor([0, 5, 6, 7, 150, 199])
    grad[touched] = torch.randn(len(touched), 2, dtype=dtype)
    grad[6, 0] = 0.0  # a row with one zero component still counts as touched
    p.grad = grad
    opt.step()
    after = (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[touched] = False
    for x, y in zip(before, after):
        assert torch.equal(x[untouched], y[untouched])
        assert (x[touched] != y[touched]).any(1).all()


def test_make_optimizer_groups_grid_tables():
    field = FieldConfig(in_dim=3, out_dim=1, encoding=HashGridConfig(n_levels=2, log2_table_size=8),
                        network=MLPConfig(hidden_width=8, hidden_layers=1)).build()
    opt = make_optimizer(field, lr=1e-2)
    sparse = [p for grp in opt.param_groups if grp["sparse_rows"] for p in grp["params"]]
    assert len(sparse) == 1 and sparse[0] is field.encoding.table
    assert sum(len(grp["params"]) for grp in opt.param_groups) == len(list(field.parameters()))
    x = torch.rand(64, 3) * 2 - 1
    before = field.encoding.table.detach().clone()
    field(x).pow(2).sum().backward()
    opt.step()
    changed = (field.encoding.table.detach() != before).any(1)
    assert changed.any() and (~changed).any()  # touched rows moved, the rest did not


def test_inference_mode_forward():
    enc = HashGridConfig(n_levels=3, n_features=2, log2_table_size=8, max_resolution=40).build(2)
    x = torch.rand(100, 2) * 2 - 1
    with torch.inference_mode():
        y = enc(x)
    ref = grid_encode_reference((x + 1) * 0.5, enc.table.detach(), enc.layout)
    assert _rel_err(y, ref) < RTOL


@pytest.mark.parametrize("jitter", [False, True])
def test_march_kernel_matches_reference(monkeypatch, jitter):
    """The numba march (kernels/march.py) gives the reference's intervals bit for bit, in order,
    including rays with an empty range, rays starting outside the box and the no-grid case."""
    from fieldcraft.render.occupancy_grid import BinaryGrid, march

    g = torch.Generator().manual_seed(3)
    grid = BinaryGrid(torch.tensor([[-1.5, -1.0, -0.5], [1.5, 1.0, 1.5]]), 16)
    grid.binary.copy_(torch.rand(16, 16, 16, generator=g) < 0.3)
    o = torch.randn(300, 3, generator=g) * 3
    d = torch.nn.functional.normalize(-o + 0.3 * torch.randn(300, 3, generator=g), dim=-1)
    t_min = torch.rand(300, generator=g)
    t_max = t_min + 6 * torch.rand(300, generator=g)
    t_max[::9] = t_min[::9]  # empty ranges
    results = {}
    for mode in ("reference", "fast"):
        monkeypatch.setenv("FIELDCRAFT_KERNELS", mode)
        for name, bg in (("grid", grid), ("none", None)):
            torch.manual_seed(5)
            results[mode, name] = march(bg, o, d, t_min, t_max, 0.05, jitter=jitter, max_steps=100)
    for name in ("grid", "none"):
        ref, fast = results["reference", name], results["fast", name]
        assert len(ref[0]) > 100
        for a, b in zip(ref, fast):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert len(results["fast", "grid"][0]) < len(results["fast", "none"][0])


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_radiance_field_reuses_a_no_grad_encoding(monkeypatch, mode):
    """``RadianceField(x, d, encoded=encode(x))`` (the early-termination pass's encoding reused,
    NerfModel._render_packed) gives the outputs and parameter gradients of a fresh forward."""
    from fieldcraft.encodings import SphericalHarmonicsConfig
    from fieldcraft.fields.radiance import RadianceFieldConfig

    monkeypatch.setenv("FIELDCRAFT_KERNELS", mode)
    torch.manual_seed(0)
    cfg = RadianceFieldConfig(position_encoding=HashGridConfig(n_levels=4, n_features=2, log2_table_size=10,
                                                               base_resolution=4, max_resolution=32),
                              direction_encoding=SphericalHarmonicsConfig(degree=2))
    field = cfg.build(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    x = torch.rand(200, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    grads = []
    for reuse in (False, True):
        field.zero_grad(set_to_none=True)
        with torch.no_grad():
            enc = field.encode(x)
        sigma, rgb = field(x, d, encoded=enc if reuse else None)
        (sigma.sum() + rgb.square().sum()).backward()
        grads.append((sigma.detach(), rgb.detach(), {n: p.grad.clone() for n, p in field.named_parameters()}))
    (s0, c0, g0), (s1, c1, g1) = grads
    assert torch.equal(s0, s1) and torch.equal(c0, c1)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-6, atol=1e-7), n
    assert g1["position_encoding.table"].abs().sum() > 0


def test_adam_on_sparse_gradients_updates_exactly_their_rows():
    """A sparse gradient (an embedding with ``sparse=True``) updates the rows it holds as torch Adam
    updates them alone; other rows keep parameters and moments."""
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(10, 3))
    rows = torch.tensor([1, 4, 4, 7])
    reference = torch.nn.Parameter(table.detach()[[1, 4, 7]].clone())
    opt = RowSparseAdam([table], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    ref_opt = torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    before = table.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        w = torch.arange(12.0).reshape(4, 3)
        (torch.nn.functional.embedding(rows, table, sparse=True) * w).sum().backward()
        assert table.grad.is_sparse
        (reference[[0, 1, 1, 2]] * w).sum().backward()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(table.detach()[[1, 4, 7]], reference.detach(), rtol=1e-5, atol=1e-6)
    untouched = [0, 2, 3, 5, 6, 8, 9]
    assert torch.equal(table.detach()[untouched], before[untouched])
    assert torch.count_nonzero(opt.state[table]["exp_avg"][untouched]) == 0
