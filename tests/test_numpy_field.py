"""Torch-free evaluation of saved fields (fieldcraft.kernels.field) against Field.forward,
and the torch-free mesh export built on it."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fieldcraft.encodings import (
    DenseGridConfig,
    FrequencyEncodingConfig,
    HashGridConfig,
    IdentityEncodingConfig,
)
from fieldcraft.fields import FieldConfig
from fieldcraft.io.checkpoint import load_checkpoint_arrays, module_tensors, save_checkpoint
from fieldcraft.kernels.field import numpy_field
from fieldcraft.networks import MLPConfig

HASH = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, max_resolution=64)
CASES = {
    "hash-relu": FieldConfig(3, 1, HASH, MLPConfig(32, 2, "relu")),
    "hash2d-softplus": FieldConfig(2, 3, HASH, MLPConfig(16, 1, "relu", output_activation="softplus")),
    "dense-tanh-sigmoid": FieldConfig(3, 2, DenseGridConfig(resolution=9, n_features=4),
                                      MLPConfig(16, 2, "tanh", output_activation="sigmoid")),
    "siren-scaled": FieldConfig(2, 3, IdentityEncodingConfig(), MLPConfig(32, 3, "sine"), output_scale=0.5,
                                output_offset=0.5),
    "gauss-exp-nobias": FieldConfig(3, 1, IdentityEncodingConfig(),
                                    MLPConfig(32, 2, "gaussian", output_activation="exp", gaussian_a=0.3, bias=False)),
    "linear-relu-out": FieldConfig(3, 2, IdentityEncodingConfig(), MLPConfig(8, 0, output_activation="relu")),
    "hash-relu-skips": FieldConfig(3, 1, HASH, MLPConfig(16, 4, "relu", skips=(2, 3), init="glorot")),
    "siren-skip": FieldConfig(2, 3, IdentityEncodingConfig(), MLPConfig(16, 3, "sine", skips=(1,)), output_scale=0.5,
                              output_offset=0.5),
}


def _arrays(field) -> dict:
    return {k: v.detach().numpy() for k, v in module_tensors(field, "field").items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_field_matches_torch(name):
    torch.manual_seed(0)
    config = CASES[name]
    field = config.build()
    if hasattr(field.encoding, "table"):  # grid tables start near zero: make every term matter
        torch.nn.init.uniform_(field.encoding.table, -1.0, 1.0)
    x = torch.rand(5000, config.in_dim) * 2.2 - 1.1  # a little outside [-1, 1]: clamping agrees too
    with torch.no_grad():
        want = field(x).numpy()
    fn = numpy_field(config.to_dict(), _arrays(field))
    assert fn is not None
    got = fn(x.numpy())
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_numpy_field_declines_what_it_does_not_cover():
    torch.manual_seed(0)
    freq = FieldConfig(3, 1, FrequencyEncodingConfig(n_frequencies=4), MLPConfig(16, 1))
    assert numpy_field(freq.to_dict(), _arrays(freq.build())) is None
    cfg = CASES["hash-relu"]
    arrays = _arrays(cfg.build())
    assert numpy_field({**cfg.to_dict(), "type": "RadianceField"}, arrays) is None
    half = {k: v.astype(np.float16) for k, v in arrays.items()}
    assert numpy_field(cfg.to_dict(), half) is None  # only float32 weights
    missing = {k: v for k, v in arrays.items() if "linears.1" not in k}
    assert numpy_field(cfg.to_dict(), missing) is None


def test_checkpoint_arrays_are_filtered_by_prefix(tmp_path):
    lin = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, {**module_tensors(lin, "field"), "optim.0.exp_avg": torch.zeros(5)}, {"task": "t"})
    arrays, meta = load_checkpoint_arrays(tmp_path, "field")
    assert sorted(arrays) == ["field.bias", "field.weight"] and meta["task"] == "t"
    np.testing.assert_array_equal(arrays["field.weight"], lin.weight.detach().numpy())
    (tmp_path / "other").mkdir()
    from fieldcraft.errors import FieldcraftError

    with pytest.raises(FieldcraftError, match="no checkpoint"):
        load_checkpoint_arrays(tmp_path / "other", "field")


def _export_without_torch(directory, out) -> subprocess.CompletedProcess:
    code = ("import sys; from fieldcraft.cli import main; "
            f"rc = main(['export', 'mesh', {str(directory)!r}, '--resolution', '32', '--mise', '--out', {str(out)!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_export_mesh_command_does_not_import_torch(tmp_path):
    """``export mesh`` of a covered field runs on numpy/numba alone (it saves ~1.4 s of start-up)."""
    import trimesh

    from fieldcraft.geometry.mesh import Normalisation
    from fieldcraft.tasks.sdf import SDFTaskConfig

    cfg = SDFTaskConfig(field=FieldConfig(3, 1, IdentityEncodingConfig(), MLPConfig(8, 0)))
    field = cfg.field.build()
    with torch.no_grad():  # f(x) = x_0 - 0.2: the plane x_0 = 0.2 in normalised coordinates
        field.network.linears[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        field.network.linears[0].bias.fill_(-0.2)
    norm = Normalisation(centre=(1.0, 2.0, 3.0), scale=2.0)
    meta = {"task": "sdf", "config": cfg.to_dict(), "normalisation": norm.to_dict()}
    save_checkpoint(tmp_path / "plane", module_tensors(field, "field"), meta)
    run = _export_without_torch(tmp_path / "plane", tmp_path / "plane.ply")
    assert run.returncode == 0, run.stderr
    mesh = trimesh.load(tmp_path / "plane.ply", process=False)
    np.testing.assert_allclose(mesh.vertices[:, 0], 0.2 / 2.0 + 1.0, atol=1e-5)  # back in input coordinates
    np.testing.assert_allclose(mesh.bounds[:, 1:], [[1.5, 2.5], [2.5, 3.5]], atol=1e-5)

    with torch.no_grad():  # a constant field has no surface: one clear line, still without torch
        field.network.linears[0].weight.zero_()
    save_checkpoint(tmp_path / "empty", module_tensors(field, "field"), meta)
    run = _export_without_torch(tmp_path / "empty", tmp_path / "empty.ply")
    assert run.returncode == 2 and "no surface" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "empty.ply").exists()
