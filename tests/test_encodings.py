"""Encodings, activations and configs: float64 finite-difference gradient checks,
hash-grid table semantics, JSON round trips."""

import math

import pytest
import torch

from fieldcraft.config import Config
from fieldcraft.encodings import (
    CompositeEncodingConfig,
    CompositePart,
    DenseGridConfig,
    FourierFeaturesConfig,
    FrequencyEncodingConfig,
    HashGridConfig,
    IdentityEncodingConfig,
)
from fieldcraft.encodings.grid import PRIMES, level_resolutions
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import FieldConfig
from fieldcraft.networks import MLPConfig

ENCODINGS = [
    (IdentityEncodingConfig(), 2),
    (FrequencyEncodingConfig(n_frequencies=4), 3),
    (FrequencyEncodingConfig(n_frequencies=3, include_input=False, pi_scale=False), 2),
    (FourierFeaturesConfig(n_features=8, sigma=2.0, seed=3), 2),
    (HashGridConfig(n_levels=3, n_features=2, log2_table_size=6, base_resolution=3, max_resolution=11,
                    init_scale=0.5, backend="torch"), 2),
    (HashGridConfig(n_levels=2, n_features=4, log2_table_size=7, base_resolution=2, max_resolution=9,
                    init_scale=0.5, backend="torch"), 3),
    (DenseGridConfig(resolution=5, n_features=2, init_scale=0.5, backend="torch"), 3),
    (CompositeEncodingConfig(parts=(CompositePart(dims=(0, 1), encoding=HashGridConfig(
        n_levels=2, log2_table_size=6, base_resolution=2, max_resolution=8, init_scale=0.5, backend="torch")),
        CompositePart(dims=(2,), encoding=FrequencyEncodingConfig(n_frequencies=2)))), 3),
]


@pytest.mark.parametrize("config,in_dim", ENCODINGS, ids=lambda v: getattr(v, "type_name", str(v)))
def test_encoding_shapes_and_roundtrip(config, in_dim):
    enc = config.build(in_dim)
    x = torch.rand(4, 5, in_dim) * 2 - 1
    assert enc(x).shape == (4, 5, config.out_dim(in_dim)) == (4, 5, enc.out_dim)
    again = Config.from_json(config.to_json())
    assert again == config
    enc2 = again.build(in_dim)
    enc2.load_state_dict(enc.state_dict())
    assert torch.equal(enc2(x), enc(x))


@pytest.mark.parametrize("config,in_dim", ENCODINGS, ids=lambda v: getattr(v, "type_name", str(v)))
def test_encoding_gradients_float64(config, in_dim):
    """Gradients w.r.t. inputs and parameters match central finite differences in float64."""
    enc = config.build(in_dim).double()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(6, in_dim, generator=gen, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: enc(x), (x,), eps=1e-6, atol=1e-5)
    for p in enc.parameters():
        def f(t, p=p):
            with torch.no_grad():
                saved = p.detach().clone()
                p.copy_(t)
            try:
                return enc(x.detach())
            finally:
                with torch.no_grad():
                    p.copy_(saved)
        # analytic parameter gradient vs finite differences on a random projection
        w = torch.randn(6, enc.out_dim, dtype=torch.float64, generator=gen)
        (enc(x.detach()) * w).sum().backward()
        direction = torch.randn(p.shape, dtype=torch.float64, generator=gen)
        eps = 1e-6
        fd = ((f(p.detach() + eps * direction) * w).sum() - (f(p.detach() - eps * direction) * w).sum()) / (2 * eps)
        assert torch.allclose((p.grad * direction).sum(), fd, rtol=1e-6, atol=1e-8)


def test_frequency_encoding_values():
    enc = FrequencyEncodingConfig(n_frequencies=2).build(1)
    p = torch.tensor([[0.25]])
    expected = [0.25, math.sin(math.pi * 0.25), math.sin(2 * math.pi * 0.25), math.cos(math.pi * 0.25),
                math.cos(2 * math.pi * 0.25)]
    assert torch.allclose(enc(p)[0], torch.tensor(expected), atol=1e-6)


def test_fourier_matrix_is_saved_state():
    enc = FourierFeaturesConfig(n_features=16, sigma=10.0, seed=7).build(2)
    assert "B" in enc.state_dict()
    assert abs(float(enc.B.std()) - 10.0) < 4.0  # 32 samples of N(0, 10^2)
    other = FourierFeaturesConfig(n_features=16, sigma=10.0, seed=8).build(2)
    assert not torch.equal(enc.B, other.B)


def test_level_resolutions_instant_ngp():
    res = level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048 and len(res) == 16
    assert all(b > a for a, b in zip(res, res[1:]))
    assert level_resolutions(3, 4, per_level_scale=2.0) == (4, 8, 16)


@pytest.mark.parametrize("dim", [2, 3])
def test_hash_grid_vertex_values_are_table_entries(dim):
    """At a grid vertex, a level's feature is exactly that vertex's table row (dense and hashed)."""
    cfg = HashGridConfig(n_levels=2, n_features=2, log2_table_size=8 if dim == 2 else 9, base_resolution=4,
                         max_resolution=40, init_scale=1.0, backend="torch")
    enc = cfg.build(dim)
    layout = enc.layout
    assert layout.hashed == (False, True)
    gen = torch.Generator().manual_seed(0)
    for level, (res, size, hashed, off) in enumerate(zip(layout.resolutions, layout.sizes, layout.hashed, layout.offsets)):
        v = torch.randint(0, res + 1, (20, dim), generator=gen)
        x = v.double() / res * 2 - 1
        feats = enc.double()(x)[:, level * 2:(level + 1) * 2]
        if hashed:
            row = torch.zeros(20, dtype=torch.int64)
            for i in range(dim):
                row ^= (v[:, i] * PRIMES[i]) & 0xFFFFFFFF
            row = row % size
        else:
            row = sum(v[:, i] * (res + 1) ** i for i in range(dim))
        assert torch.allclose(feats, enc.table[off + row].double(), atol=1e-12)
        enc.float()


def test_grid_clamps_outside_points():
    enc = HashGridConfig(n_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8, init_scale=1.0,
                         backend="torch").build(2)
    x = torch.tensor([[1.7, -3.0], [0.2, 5.0]])
    assert torch.equal(enc(x), enc(x.clamp(-1, 1)))


def test_bad_configs_are_clear():
    with pytest.raises(FieldcraftError, match="n_features"):
        HashGridConfig(n_features=3).build(2)
    with pytest.raises(FieldcraftError, match="unknown config type"):
        Config.from_dict({"type": "NoSuchThing"})
    with pytest.raises(FieldcraftError, match="no field"):
        Config.from_dict({"type": "HashGrid", "levels": 3})
    with pytest.raises(FieldcraftError, match="activation"):
        MLPConfig(activation="swish").build(2, 1)


def test_field_config_roundtrip_nested():
    cfg = FieldConfig(in_dim=3, out_dim=4, encoding=HashGridConfig(n_levels=4), network=MLPConfig(activation="sine"))
    assert Config.from_json(cfg.to_json()) == cfg
