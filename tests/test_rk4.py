"""rk4: order of accuracy, log-determinant, kinetic energy, time reversal, argument checks."""
import math

import pytest
import torch
from torch.func import jacrev

from jkofast import Field, rk4
from conftest import LinearField, random_field


def _matrix(d=3):
    g = torch.Generator().manual_seed(3)
    return torch.randn(d, d, generator=g, dtype=torch.float64) * 0.8


@pytest.mark.parametrize("tableau", ["rk4", "rk4-3/8"])
def test_fourth_order_convergence(tableau):
    a = _matrix()
    x0 = torch.randn(5, 3, dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(a * 1.5).t()
    errors = [float((rk4(LinearField(a), x0, 0.0, 1.5, s, tableau=tableau)[0] - exact).detach().abs().max())
              for s in (8, 16, 32)]
    # Halving the step divides a 4th-order global error by 2^4 = 16 (up to higher-order terms).
    for coarse, fine in zip(errors, errors[1:]):
        assert 14.0 < coarse / fine < 18.0, errors


@pytest.mark.parametrize("t0,t1", [(0.0, 2.0), (2.0, 0.0)])  # backwards: sampling and inversion's log-det
def test_logdet_of_linear_map(t0, t1):
    a = _matrix()
    x0 = torch.randn(4, 3, dtype=torch.float64)
    _, logdet, _ = rk4(LinearField(a), x0, t0, t1, 40)
    exact = torch.linalg.slogdet(torch.linalg.matrix_exp((t1 - t0) * a))[1]   # = (t1 - t0) tr(A)
    torch.testing.assert_close(logdet, exact.expand(4), rtol=1e-12, atol=1e-12)


def test_logdet_matches_jacobian_of_nonlinear_flow():
    # log|det d x1/d x0| of the integrated map (torch.func) against the integrated divergence:
    # they differ by the RK4 discretisation error, which must shrink at 4th order.
    field = random_field(3, 16, 2, "tanh")
    x0 = torch.randn(4, 3, dtype=torch.float64) * 0.5

    def gap(steps):
        _, logdet, _ = rk4(field, x0, 0.0, 1.0, steps)
        # torch.func cannot see through the compiled ops: the Jacobian goes through the reference.
        jac = [jacrev(lambda x: rk4(field, x[None], 0.0, 1.0, steps, divergence=None, backend="torch")[0][0])(xi)
               for xi in x0]
        return float((logdet - torch.stack([torch.linalg.slogdet(j)[1] for j in jac])).detach().abs().max())

    # (This random field is stiff: the 4th-order regime starts around 64 steps.)
    coarse, fine = gap(64), gap(128)
    assert fine < 1e-6 and coarse / fine > 12.0, (coarse, fine)


@pytest.mark.parametrize("backend", ["torch", "auto"])  # (auto: the compiled op where the extension is built)
def test_backwards_inverts_forwards(backend):
    field = random_field(2, 16, 3, "softplus")
    x0 = torch.randn(50, 2, dtype=torch.float64)

    @torch.no_grad()
    def round_trip(steps):
        x1, ld_fwd, _ = rk4(field, x0, 0.0, 1.0, steps, backend=backend)
        x_back, ld_back, _ = rk4(field, x1, 1.0, 0.0, steps, backend=backend)
        return float((x_back - x0).abs().max()), float((ld_back + ld_fwd).abs().max())

    (ex_coarse, ed_coarse), (ex_fine, ed_fine) = round_trip(100), round_trip(200)
    # Exact inverse up to the discretisation error, which falls at (at least) 4th order.
    assert ex_fine < 1e-6 and ed_fine < 1e-6, (ex_fine, ed_fine)
    assert ex_coarse / ex_fine > 12.0 and ed_coarse / ed_fine > 12.0


def test_kinetic_energy_of_constant_and_linear_fields():
    class Constant(Field):
        dim = 2

        def forward(self, x, t):
            return torch.tensor([3.0, -4.0], dtype=x.dtype).expand_as(x)

    x0 = torch.zeros(3, 2, dtype=torch.float64)
    for t0, t1 in ((0.0, 2.0), (2.0, 0.0)):
        x1, logdet, kinetic = rk4(Constant(), x0, t0, t1, 3)
        torch.testing.assert_close(kinetic, torch.full((3,), 25.0 * 2, dtype=torch.float64))
        torch.testing.assert_close(x1[0], torch.tensor([3.0, -4.0], dtype=torch.float64) * (t1 - t0))
    # Rotation field f = J x keeps |x| = r, so int_0^T |f|^2 dt = r^2 T.
    rot = LinearField(torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))
    x0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    _, _, kinetic = rk4(rot, x0, 0.0, 3.0, 200)
    torch.testing.assert_close(kinetic, torch.tensor([12.0], dtype=torch.float64), rtol=1e-8, atol=0)


def test_without_divergence_returns_none_and_same_path():
    field = random_field(2)
    x0 = torch.randn(5, 2, dtype=torch.float64)
    x1, logdet, kinetic = rk4(field, x0, 0.0, 1.0, 3, divergence=None)
    assert logdet is None
    torch.testing.assert_close(x1, rk4(field, x0, 0.0, 1.0, 3)[0], rtol=1e-14, atol=1e-14)


def test_hutchinson_logdet_is_reproducible_and_close():
    field = random_field(4, 16, 2)
    x0 = torch.randn(3, 4, dtype=torch.float64).repeat(3000, 1)
    run = lambda seed: rk4(field, x0, 0.0, 1.0, 2, divergence="hutchinson", probes=1,
                           generator=torch.Generator().manual_seed(seed))[1]
    torch.testing.assert_close(run(0), run(0))
    est = run(1).reshape(3000, 3)
    exact = rk4(field, x0[:3], 0.0, 1.0, 2)[1]
    assert ((est.mean(0) - exact).abs() < 4 * est.std(0) / math.sqrt(3000)).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(divergence="trace"), "divergence"),
    (dict(tableau="euler"), "tableau"), (dict(t1=float("nan")), "finite"),
    (dict(t0=torch.zeros(3)), "t0 must be a number"),
    (dict(t1=torch.tensor(1.0, requires_grad=True)), "t1 requires a gradient"),   # (it was detached)
])
def test_argument_errors(kwargs, match):
    args = dict(t0=0.0, t1=1.0, steps=3) | kwargs
    with pytest.raises(ValueError, match=match):
        rk4(random_field(2), torch.randn(3, 2, dtype=torch.float64), args.pop("t0"), args.pop("t1"),
            args.pop("steps"), **args)


def test_a_module_that_is_not_a_field_is_named():
    with pytest.raises(TypeError, match="field must be a jkofast.Field, got Linear"):
        rk4(torch.nn.Linear(2, 2).double(), torch.randn(3, 2, dtype=torch.float64), 0.0, 1.0, 2)
