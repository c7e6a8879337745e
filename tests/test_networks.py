"""MLPs and activations: SIREN initialisation statistics, activation gradients in float64,
initialisations and skips; networks and fields as functions of their weights (batched weights,
modulations); the radiance field's MLPs."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from fieldcraft.config import Config
from fieldcraft.encodings import FourierFeaturesConfig, FrequencyEncodingConfig, HashGridConfig, IdentityEncodingConfig
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import FieldConfig
from fieldcraft.networks import MLPConfig, stack_params
from fieldcraft.networks.mlp import init_bounds


@pytest.mark.parametrize("activation", ["relu", "sine", "gaussian", "tanh"])
def test_mlp_gradients_float64(activation):
    mlp = MLPConfig(hidden_width=8, hidden_layers=2, activation=activation, output_activation="softplus",
                    gaussian_a=0.5).build(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,), eps=1e-6, atol=1e-6)
    if activation != "relu":  # second derivatives (needed by eikonal / Laplacian losses)
        assert torch.autograd.gradgradcheck(mlp, (x,), eps=1e-6, atol=1e-5)


def test_siren_initialisation_statistics():
    """SIREN sec. 3.2: first layer U(-1/n, 1/n); others U(-sqrt(6/n)/omega, sqrt(6/n)/omega), so that
    pre-activations omega*(Wx+b) of hidden layers are ~N(0, 2) -> arcsine-distributed sine outputs."""
    torch.manual_seed(0)
    mlp = MLPConfig(hidden_width=512, hidden_layers=4, activation="sine").build(2, 1)
    first, hidden = mlp.linears[0], mlp.linears[1]
    assert float(first.weight.detach().abs().max()) <= 1 / 2
    bound = math.sqrt(6 / 512) / 30
    assert float(hidden.weight.detach().abs().max()) <= bound
    # uniform(-b, b) has std b / sqrt(3)
    assert abs(float(hidden.weight.detach().std()) - bound / math.sqrt(3)) < 0.02 * bound
    # activations after a hidden layer: std of sin(arcsine) ~ 1/sqrt(2)
    x = torch.rand(20000, 2) * 2 - 1
    with torch.no_grad():
        h = mlp.activations[0](first(x))
        h = mlp.activations[1](hidden(h))
        pre = 30 * mlp.linears[2](h)
    assert abs(float(h.std()) - 1 / math.sqrt(2)) < 0.05
    assert abs(float(pre.std()) - math.sqrt(2)) < 0.2


def test_gaussian_activation_formula():
    mlp = MLPConfig(hidden_width=4, hidden_layers=1, activation="gaussian", gaussian_a=0.3).build(1, 1)
    x = torch.tensor([[0.0], [0.3], [-0.6]])
    assert torch.allclose(mlp.activations[0](x), torch.exp(-0.5 * (x / 0.3) ** 2))


# ------------------------------------------------------------------ config, init, skips


def _old_mlp(config: MLPConfig, in_dim: int, out_dim: int) -> torch.nn.ModuleList:
    """The MLP's linear layers as built before ``skips``/``init`` existed (nn.Linear list + SIREN init)."""
    widths = [in_dim] + [config.hidden_width] * config.hidden_layers + [out_dim]
    linears = torch.nn.ModuleList(torch.nn.Linear(a, b, bias=config.bias) for a, b in zip(widths[:-1], widths[1:]))
    if config.activation == "sine":
        with torch.no_grad():
            for i, lin in enumerate(linears):
                n = lin.in_features
                bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / config.hidden_omega_0
                lin.weight.uniform_(-bound, bound)
    return linears


@pytest.mark.parametrize("activation", ["relu", "sine", "gaussian"])
def test_default_configs_build_the_same_weights_as_before(activation):
    config = MLPConfig(hidden_width=16, hidden_layers=2, activation=activation)
    torch.manual_seed(3)
    mlp = config.build(3, 2)
    torch.manual_seed(3)
    old = _old_mlp(config, 3, 2)
    assert list(mlp.state_dict()) == [f"linears.{k}" for k in old.state_dict()]
    for a, b in zip(mlp.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b)


def test_mlp_config_round_trips_with_skips_and_init():
    config = MLPConfig(hidden_width=8, hidden_layers=4, activation="sine", skips=(2, 3), init="glorot")
    back = Config.from_dict(json.loads(config.to_json()))
    assert back == config and back.skips == (2, 3) and isinstance(back.skips, tuple)
    with pytest.raises(FieldcraftError, match="skips"):
        MLPConfig(hidden_layers=3, skips=(0,)).build(2, 1)
    with pytest.raises(FieldcraftError, match="skips"):
        MLPConfig(hidden_layers=3, skips=(3,)).build(2, 1)
    with pytest.raises(FieldcraftError, match="init"):
        MLPConfig(init="he").build(2, 1)


def test_mlp_skips_equal_the_radiance_trunk_computation():
    """The former hand-written NeRF trunk: ``if i in skips and i > 0: h = cat([h, enc])`` before hidden
    linear ``i``, ReLU, then a linear output layer."""
    skips = (2, 3)
    mlp = MLPConfig(hidden_width=12, hidden_layers=4, activation="relu", skips=skips).build(5, 4)
    assert [lin.in_features for lin in mlp.linears] == [5, 12, 17, 17, 12]
    enc = torch.randn(30, 5)
    h = enc
    for i, lin in enumerate(mlp.linears[:-1]):
        if i in skips and i > 0:
            h = torch.cat([h, enc], -1)
        h = torch.relu(lin(h))
    torch.testing.assert_close(mlp(enc), mlp.linears[-1](h))


def test_glorot_and_siren_initialisations():
    glorot = MLPConfig(hidden_width=64, hidden_layers=2, init="glorot", skips=(1,)).build(3, 4)
    for lin in glorot.linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert 0.8 * bound < float(lin.weight.detach().abs().max()) <= bound
        assert float(lin.bias.detach().abs().max()) == 0.0
    batched = glorot.batched_params(3, torch.Generator().manual_seed(0))
    assert all(float(batched[f"linears.{i}.bias"].detach().abs().max()) == 0.0 for i in range(3))
    # init="siren" on a ReLU MLP uses SIREN's bounds; "torch" on a sine MLP keeps nn.Linear's
    siren = MLPConfig(hidden_width=64, hidden_layers=2, activation="relu", init="siren").build(2, 1)
    assert float(siren.linears[0].weight.detach().abs().max()) <= 1 / 2
    assert float(siren.linears[1].weight.detach().abs().max()) <= math.sqrt(6 / 64) / 30
    plain = MLPConfig(hidden_width=64, hidden_layers=2, activation="sine", init="torch").build(2, 1)
    assert float(plain.linears[1].weight.detach().abs().max()) > math.sqrt(6 / 64) / 30


@pytest.mark.parametrize("init", ["torch", "siren", "glorot"])
def test_batched_params_draw_the_modules_distribution(init):
    """``batched_params`` draws each weight as the module's initialisation does: same bounds, same spread."""
    mlp = MLPConfig(hidden_width=128, hidden_layers=2, activation="sine", init=init).build(3, 2)
    params = mlp.batched_params(64, torch.Generator().manual_seed(0))
    own = {k: v.detach() for k, v in mlp.named_parameters()}
    assert set(params) == set(own) and all(p.requires_grad and p.is_leaf for p in params.values())
    for i, lin in enumerate(mlp.linears):
        for name, bound in zip(("weight", "bias"), init_bounds(init, i, lin.in_features, lin.out_features, 30.0)):
            p, mine = params[f"linears.{i}.{name}"].detach(), own[f"linears.{i}.{name}"]
            assert p.shape == (64, *mine.shape)
            assert float(mine.abs().max()) <= bound and 0.95 * bound <= float(p.abs().max()) <= bound
            if mine.numel() > 100:
                assert abs(float(p.std()) - float(mine.std())) <= 0.1 * float(mine.std())
    assert not torch.equal(params["linears.1.weight"][0], params["linears.1.weight"][1])  # independent draws


# ------------------------------------------------------------------ networks as functions of their weights


def _loop(module, params, x, modulations=None):
    """Reference: one ``torch.func.functional_call`` per signal (batched entries have one more dim
    than the module's parameter; modulations are ``[B, layers, width]``)."""
    dims = {k: p.dim() for k, p in module.named_parameters()}
    out = []
    for b in range(len(x)):
        own = {k: v[b] if v.dim() > dims[k] else v for k, v in params.items()}
        mods = None if modulations is None else {k: m[b] for k, m in modulations.items()}
        out.append(functional_call(module, own, (x[b],), {"modulations": mods}))
    return torch.stack(out)


MLP_CASES = {
    "relu": MLPConfig(hidden_width=16, hidden_layers=3, activation="relu", output_activation="sigmoid"),
    "sine-skip": MLPConfig(hidden_width=16, hidden_layers=3, activation="sine", skips=(2,)),
    "gauss-nobias": MLPConfig(hidden_width=16, hidden_layers=2, activation="gaussian", gaussian_a=0.5, bias=False),
    "linear": MLPConfig(hidden_width=16, hidden_layers=0),
}


@pytest.mark.parametrize("name", sorted(MLP_CASES))
def test_batched_forward_equals_a_loop_over_signals(name):
    mlp = MLP_CASES[name].build(3, 2)
    params = mlp.batched_params(5, torch.Generator().manual_seed(1))
    x = torch.rand(5, 40, 3) * 2 - 1
    y = mlp(x, params)
    assert y.shape == (5, 40, 2)
    torch.testing.assert_close(y, _loop(mlp, params, x))
    # unbatched params act like the module's own; some batched and some shared mix freely
    own = {k: v.detach().clone() for k, v in mlp.named_parameters()}
    torch.testing.assert_close(mlp(x[0], own), mlp(x[0]))
    mixed = {**own, "linears.0.weight": params["linears.0.weight"]}
    torch.testing.assert_close(mlp(x, mixed), _loop(mlp, mixed, x))


def test_batched_gradients_equal_per_signal_gradients():
    mlp = MLP_CASES["sine-skip"].build(3, 2)
    params = mlp.batched_params(4, torch.Generator().manual_seed(2))
    x, target = torch.rand(4, 30, 3), torch.rand(4, 30, 2)
    loss = ((mlp(x, params) - target) ** 2).sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    for b in range(4):
        own = {k: v[b].detach().requires_grad_() for k, v in params.items()}
        loss_b = ((functional_call(mlp, own, (x[b],)) - target[b]) ** 2).sum()
        for g, g_b in zip(grads, torch.autograd.grad(loss_b, list(own.values()))):
            torch.testing.assert_close(g[b], g_b)


def test_modulations_shift_and_film():
    mlp = MLPConfig(hidden_width=8, hidden_layers=2, activation="sine", first_omega_0=3.0).build(2, 1)
    x = torch.rand(3, 20, 2)
    plain = mlp(x)
    zeros, ones = torch.zeros(3, 2, 8), torch.ones(3, 2, 8)
    torch.testing.assert_close(mlp(x, modulations={"shift": zeros}), plain)
    torch.testing.assert_close(mlp(x, modulations={"scale": ones, "shift": zeros}), plain)
    torch.testing.assert_close(mlp(x, modulations={"shift": torch.zeros(2, 8)}), plain)  # shared by all points

    # functa: the shift sits inside the sine, sin(omega_0 (W h + b + phi)); FiLM: act(gamma (W h + b) + beta)
    shift, scale = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    (l0, l1, l2), (w0, w1) = mlp.linears, (3.0, 30.0)
    h = torch.sin(w0 * (l0(x) + shift[:, None, 0]))
    h = torch.sin(w1 * (l1(h) + shift[:, None, 1]))
    torch.testing.assert_close(mlp(x, modulations={"shift": shift}), l2(h))
    h = torch.sin(w0 * (scale[:, None, 0] * l0(x) + shift[:, None, 0]))
    h = torch.sin(w1 * (scale[:, None, 1] * l1(h) + shift[:, None, 1]))
    torch.testing.assert_close(mlp(x, modulations={"scale": scale, "shift": shift}), l2(h))

    # gradients reach the modulations, per signal, together with batched weights
    params = mlp.batched_params(3)
    shift.requires_grad_()
    out = mlp(x, params, {"shift": shift})
    (g,) = torch.autograd.grad(out[1].sum(), shift)
    assert float(g[1].abs().sum()) > 0 and float(g[0].abs().sum()) == 0.0 == float(g[2].abs().sum())


def test_functional_forward_rejects_bad_input():
    mlp = MLPConfig(hidden_width=8, hidden_layers=2).build(2, 1)
    params = mlp.batched_params(3)
    with pytest.raises(FieldcraftError, match=r"points of shape \[3, n, dim\], got \[20, 2\]"):
        mlp(torch.rand(20, 2), params)
    with pytest.raises(FieldcraftError, match="unknown parameter"):
        mlp(torch.rand(3, 20, 2), {"linears.9.weight": torch.zeros(8, 2)})
    with pytest.raises(FieldcraftError, match="shape"):
        mlp(torch.rand(3, 20, 2), {"linears.0.weight": torch.zeros(3, 8, 5)})
    with pytest.raises(FieldcraftError, match="modulation 'shift'"):
        mlp(torch.rand(3, 20, 2), modulations={"shift": torch.zeros(3, 3, 8)})
    with pytest.raises(FieldcraftError, match="unknown modulation"):
        mlp(torch.rand(3, 20, 2), modulations={"bias": torch.zeros(3, 2, 8)})
    with pytest.raises(FieldcraftError, match="disagree"):
        mlp(torch.rand(3, 20, 2), params, {"shift": torch.zeros(4, 2, 8)})


def test_stack_params_repeats_a_module_differentiably():
    mlp = MLPConfig(hidden_width=8, hidden_layers=1).build(2, 1)
    stacked = stack_params([dict(mlp.named_parameters())] * 3)
    x = torch.rand(3, 10, 2)
    torch.testing.assert_close(mlp(x, stacked), mlp(x))
    mlp(x, stacked).sum().backward()  # gradients of the copies add up in the module's own weights
    torch.testing.assert_close(mlp.linears[0].bias.grad, torch.autograd.grad(mlp(x).sum(), mlp.linears[0].bias)[0])


# ------------------------------------------------------------------ fields


FIELD_ENCODINGS = {
    "identity": IdentityEncodingConfig(),
    "frequency": FrequencyEncodingConfig(n_frequencies=3),
    "fourier": FourierFeaturesConfig(n_features=8, sigma=2.0),
    "hash": HashGridConfig(n_levels=3, n_features=2, log2_table_size=8, base_resolution=4, max_resolution=32),
}


@pytest.mark.parametrize("name", sorted(FIELD_ENCODINGS))
def test_batched_field_equals_a_loop_over_signals(name):
    config = FieldConfig(in_dim=2, out_dim=3, encoding=FIELD_ENCODINGS[name],
                         network=MLPConfig(hidden_width=16, hidden_layers=2, activation="sine", skips=(1,)),
                         output_scale=0.5, output_offset=0.25)
    field = config.build()
    params = field.batched_params(4, torch.Generator().manual_seed(0))
    own = dict(field.named_parameters())
    assert set(params) == set(own) and all(params[k].shape == (4, *own[k].shape) for k in own)
    x = torch.rand(4, 25, 2) * 2 - 1
    y = field(x, params)
    assert y.shape == (4, 25, 3)
    torch.testing.assert_close(y, _loop(field, params, x), atol=1e-5, rtol=1e-4)
    mods = {"shift": torch.randn(4, 2, 16), "scale": 1 + torch.randn(4, 2, 16)}
    torch.testing.assert_close(field(x, params, mods), _loop(field, params, x, mods), atol=1e-5, rtol=1e-4)
    loss = field(x, params).square().sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_batched_field_rejects_batched_composite_grids():
    from fieldcraft.encodings import CompositeEncodingConfig, CompositePart

    grid = FIELD_ENCODINGS["hash"]
    composite = CompositeEncodingConfig(parts=(CompositePart((0,), grid), CompositePart((1,), grid)))
    field = FieldConfig(in_dim=2, out_dim=1, encoding=composite, network=MLPConfig(8, 1)).build()
    table = field.encoding.parts[0].table
    with pytest.raises(FieldcraftError, match="Composite encoding are unsupported"):
        field(torch.rand(2, 5, 2), {"encoding.parts.0.table": table.detach().expand(2, -1, -1)})
    with pytest.raises(FieldcraftError, match="unsupported"):
        field.batched_params(2)
    with pytest.raises(FieldcraftError, match="unknown field parameters"):
        field(torch.rand(5, 2), {"linears.0.weight": torch.zeros(1)})
    x = torch.rand(2, 5, 2)  # batched network weights over the shared composite grid work
    network = stack_params([{f"network.{k}": v for k, v in field.network.named_parameters()}] * 2)
    torch.testing.assert_close(field(x, network), field(x))


def test_batched_siren_images_fit():
    """Four SIREN image fields fitted at once with Adam over their batched weights."""
    field = FieldConfig(in_dim=2, out_dim=1, network=MLPConfig(hidden_width=32, hidden_layers=2, activation="sine"),
                        output_scale=0.5, output_offset=0.5).build()
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 12), torch.linspace(-1, 1, 12), indexing="ij")
    coords = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(4, -1, -1)
    images = torch.stack([0.5 + 0.4 * torch.sin(k * 3 * coords[0, :, :1]) for k in range(1, 5)])  # [4, 144, 1]
    params = field.batched_params(4, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    losses = []
    for _ in range(30):
        per_signal = ((field(coords, params) - images) ** 2).mean((1, 2))
        optimizer.zero_grad()
        per_signal.sum().backward()
        optimizer.step()
        losses.append(per_signal.detach())
    assert (losses[-1] < 0.2 * losses[0]).all(), (losses[0], losses[-1])


# ------------------------------------------------------------------ radiance field


def test_radiance_field_is_built_from_mlps():
    from fieldcraft.encodings import SphericalHarmonicsConfig
    from fieldcraft.fields.radiance import RadianceFieldConfig
    from fieldcraft.networks import MLP

    aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])
    configs = {
        "instant": RadianceFieldConfig(position_encoding=FIELD_ENCODINGS["hash"].replace(n_levels=2),
                                       direction_encoding=SphericalHarmonicsConfig(degree=3), density_bias=-1.0),
        "vanilla": RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=4), trunk_width=32,
                                       trunk_layers=4, skips=(2,), n_features=16, density_activation="relu",
                                       direction_encoding=FrequencyEncodingConfig(n_frequencies=2), color_layers=1),
        "tiny": RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=3, pi_scale=False),
                                    positions="world", init="glorot", trunk_width=32, trunk_layers=4, skips=(2,),
                                    n_features=3, color_layers=-1, density_activation="softplus"),
    }
    x, d = torch.rand(50, 3) * 3 - 1.5, torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    for name, cfg in configs.items():
        field = cfg.build(aabb)
        assert isinstance(field.trunk, MLP) and field.trunk.out_dim == 1 + cfg.n_features
        assert (field.color is None) == (cfg.color_layers < 0)
        assert not [m for m in field.children() if isinstance(m, torch.nn.Linear)]
        sigma, rgb = field(x, d)
        assert sigma.shape == (50,) and rgb.shape == (50, 3), name
        assert torch.isfinite(sigma).all() and (sigma >= 0).all() and ((rgb > 0) & (rgb < 1)).all(), name
        torch.testing.assert_close(field.density(x), sigma)
        assert Config.from_dict(cfg.to_dict()) == cfg
    # the trunk is the old computation: ReLU layers with the encoded position at the skips, linear output
    field = configs["vanilla"].build(aabb)
    enc = field.position_encoding(field.normalize(x))
    h = enc
    for i, lin in enumerate(field.trunk.linears[:-1]):
        h = torch.relu(lin(torch.cat([h, enc], -1) if i == 2 else h))
    out = field.trunk.linears[-1](h)
    torch.testing.assert_close(field.density(x), torch.relu(out[:, 0]))
    feat = torch.cat([out[:, 1:], field.direction_encoding(d)], -1)
    rgb = torch.sigmoid(field.color.linears[1](torch.relu(field.color.linears[0](feat))))
    torch.testing.assert_close(field(x, d)[1], rgb)


# ------------------------------------------------------------------ docs


def test_architecture_docs_example_runs():
    """The example of "Fields as functions of their weights" in docs/architecture.md runs as written."""
    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    section = text.split("## Fields as functions of their weights", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/architecture.md", "exec"), {})
