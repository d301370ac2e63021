"""The activation table: sigma' and sigma'' (used by the tangent rows and by hand-written
backward kernels) equal autograd's derivatives of sigma, in float64."""
import pytest
import torch

from jkofast.reference import ACTIVATIONS, activation_with_derivatives


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("beta", [1.0, 20.0])
def test_derivatives_match_autograd(name, beta):
    z = torch.linspace(-6, 6, 401, dtype=torch.float64, requires_grad=True)
    value, d1, d2 = activation_with_derivatives(name, z, beta)
    (auto_d1,) = torch.autograd.grad(value.sum(), z, create_graph=True)
    (auto_d2,) = torch.autograd.grad(auto_d1.sum(), z)
    torch.testing.assert_close(d1, auto_d1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d2, auto_d2, rtol=1e-10, atol=1e-10)


def test_softplus_matches_torch_and_does_not_overflow():
    z = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4], dtype=torch.float64)
    value, _, _ = activation_with_derivatives("softplus", z, 20.0)
    torch.testing.assert_close(value, torch.nn.functional.softplus(z, beta=20.0))
    assert torch.isfinite(value).all()


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match="expected one of"):
        activation_with_derivatives("relu", torch.zeros(3))
