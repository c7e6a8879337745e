"""MLPs and activations: SIREN initialisation statistics, activation gradients in float64."""

import math

import pytest
import torch

from fieldcraft.networks import MLPConfig


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
