"""Forward-mode divergence against torch.func's Jacobian trace, and Hutchinson's unbiasedness."""
import pytest
import torch
from torch.func import jacrev, vmap

import jkofast
from jkofast import Field, divergence
from conftest import LinearField, random_field


def jacobian_trace(field, x, t):
    """tr(df/dx) per sample from the full Jacobian (torch.func, reverse mode): the oracle."""
    tt = torch.as_tensor(t, dtype=x.dtype)
    jac = vmap(jacrev(lambda xi: field(xi[None], tt)[0]))(x)
    return jac.diagonal(dim1=1, dim2=2).sum(-1), jac


@pytest.mark.parametrize("dim,hidden,layers", [(1, 8, 2), (2, 16, 3), (5, 7, 1), (9, 32, 4)])
@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu"])
@pytest.mark.parametrize("time", [True, False])
@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_exact_equals_jacobian_trace(dim, hidden, layers, activation, time, backend):
    field = random_field(dim, hidden, layers, activation, time=time)
    x = torch.randn(13, dim, dtype=torch.float64)
    f, div = divergence(field, x, 0.3, method="exact", backend=backend)
    want, _ = jacobian_trace(field, x, 0.3)
    torch.testing.assert_close(f, field(x, torch.tensor(0.3, dtype=torch.float64)), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(div, want, rtol=1e-10, atol=1e-10)


def test_per_sample_times_and_beta():
    field = random_field(3, 16, 2, "softplus", beta=20.0)
    x, t = torch.randn(7, 3, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    _, div = divergence(field, x, t)
    want = torch.stack([jacobian_trace(field, x[i:i + 1], t[i])[0][0] for i in range(7)])
    torch.testing.assert_close(div, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "auto"])  # (auto: the compiled op where the extension is built)
def test_given_probes_give_v_J_v(backend):
    field = random_field(4)
    x = torch.randn(6, 4, dtype=torch.float64)
    v = torch.randn(6, 3, 4, dtype=torch.float64)
    _, div = divergence(field, x, 0.0, method="hutchinson", probes=v, backend=backend)
    _, jac = jacobian_trace(field, x, 0.0)
    want = torch.einsum("bki,bij,bkj->bk", v, jac, v).mean(1)
    torch.testing.assert_close(div, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    field = random_field(5)
    x = torch.randn(4, 5, dtype=torch.float64).repeat(4000, 1)   # 4000 independent probes per point
    g = torch.Generator().manual_seed(0)
    _, est = divergence(field, x, 0.1, method="hutchinson", probes=1, noise=noise, generator=g)
    est = est.reshape(4000, 4)
    _, exact = divergence(field, x[:4], 0.1)
    se = est.std(0) / 4000 ** 0.5
    assert ((est.mean(0) - exact).abs() < 4 * se).all(), (est.mean(0), exact, se)


def test_generic_field_uses_autograd_trace():
    a = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    _, div = divergence(LinearField(a), x)
    torch.testing.assert_close(div, torch.full((5,), float(a.trace()), dtype=torch.float64))
    with torch.no_grad():  # the d passes share one graph, which must survive until the last
        f, div_ng = divergence(LinearField(a), x)
    torch.testing.assert_close(div_ng, div)
    assert not f.requires_grad and not div_ng.requires_grad
    v = torch.randn(5, 2, 3, dtype=torch.float64)
    _, est = divergence(LinearField(a), x, method="hutchinson", probes=v)
    torch.testing.assert_close(est, torch.einsum("bki,ij,bkj->bk", v, a, v).mean(1))


@pytest.mark.parametrize("probes", [None, 2])
def test_gradcheck_wrt_x_t_weights_biases(probes):
    # The reference is the oracle for the compiled backward: its own gradients (autograd through
    # the tangent rows, which needs sigma'') must be right, wrt every input.
    from jkofast.reference import mlp_velocity_and_divergence

    field = random_field(3, 5, 2, "silu")
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, dtype=torch.float64, requires_grad=True)
    v = None if probes is None else torch.randn(4, probes, 3, dtype=torch.float64)
    ws = [w.detach().clone().requires_grad_(True) for w in field.weights]
    bs = [b.detach().clone().requires_grad_(True) for b in field.biases]
    n = len(ws)

    def fn(x, t, *wb):
        f, div = mlp_velocity_and_divergence(x, t, wb[:n], wb[n:], "silu", 1.0, v)
        return f, div

    assert torch.autograd.gradcheck(fn, (x, t, *ws, *bs))
    assert torch.autograd.gradgradcheck(fn, (x, t, *ws, *bs))


@pytest.mark.parametrize("bad,match", [
    (torch.randn(4), "shape"), (torch.randn(4, 3), "columns"), (torch.randn(4, 2).float(), "dtype"),
    (torch.zeros(4, 2, dtype=torch.int64), "floating"),
])
def test_bad_inputs_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        divergence(random_field(2), bad)


def test_a_half_precision_field_runs_on_the_reference_and_the_compiled_ops_refuse_it():
    field = random_field(2).to(torch.bfloat16)
    x = torch.randn(5, 2, dtype=torch.bfloat16)
    auto, reference = divergence(field, x, 0.3, backend="auto"), divergence(field, x, 0.3, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(auto, reference))
    if jkofast._backend.compiled_available():
        with pytest.raises(ValueError, match=r"dtype torch.bfloat16 \(the ops take float32 and float64\)"):
            divergence(field, x, 0.3, backend="compiled")


def test_bad_method_and_backend():
    field, x = random_field(2), torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        divergence(field, x, method="trace")
    with pytest.raises(ValueError, match="backend"):
        divergence(field, x, backend="cuda")
    with pytest.raises(ValueError, match="compiled.*not jkofast's MLP VelocityField"):
        divergence(LinearField(torch.eye(2)), torch.randn(3, 2), backend="compiled")
    with pytest.raises(ValueError, match="probes"):
        divergence(field, x, method="hutchinson", probes=torch.randn(3, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="t must be"):
        divergence(field, x, torch.zeros(4))
    with pytest.raises(ValueError, match="t must be finite"):
        divergence(field, x, float("inf"))
    with pytest.raises(ValueError, match="k >= 1"):   # (the torch engine averaged over no probe: NaN)
        divergence(field, x, method="hutchinson", probes=torch.empty(3, 0, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="probes must be a floating-point"):   # (bool probes were cast to 0/1)
        divergence(field, x, method="hutchinson", probes=torch.ones(3, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="method='exact' takes none"):   # (they were ignored)
        divergence(field, x, probes=torch.randn(3, 1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a jkofast.Field, got Linear: subclass"):
        divergence(torch.nn.Linear(2, 2).double(), x)


def test_field_constructor_checks():
    with pytest.raises(ValueError, match="layers"):
        jkofast.VelocityField(2, layers=0)
    with pytest.raises(ValueError, match="activation"):
        jkofast.VelocityField(2, activation="relu")


@pytest.mark.parametrize("activation,beta", [("softplus", 1.0), ("softplus", 20.0), ("silu", 1.0), ("tanh", 1.0)])
@pytest.mark.parametrize("time", [True, False])
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_velocity_compiled_equals_the_field(activation, beta, time, per_sample_t):
    # jkofast.velocity is the interpolant method's hot call; its compiled branch passes beta and the
    # time column itself, so check it (value and gradients) against the field's own forward.
    field = random_field(3, 16, 3, activation, time=time, beta=beta)
    x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(11, dtype=torch.float64) if per_sample_t else 0.7
    f = jkofast.velocity(field, x, t, backend="compiled")
    want = field(x, torch.as_tensor(t, dtype=torch.float64))
    torch.testing.assert_close(f, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(f)
    params = [x, *field.parameters()]
    got = torch.autograd.grad((f * w).sum(), params)
    ref = torch.autograd.grad((want * w).sum(), params)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_a_field_takes_a_float_time_like_the_functions_do():
    field = random_field(3, 8, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(field(x, 0.3), field(x, torch.tensor(0.3, dtype=torch.float64)), rtol=0, atol=0)
    torch.testing.assert_close(field(x, 0.3), jkofast.velocity(field, x, 0.3, backend="torch"), rtol=0, atol=0)


def test_velocity_input_errors():
    field = random_field(3, 8, 2)
    with pytest.raises(ValueError, match="3 columns|shape"):
        jkofast.velocity(field, torch.randn(4, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="dtype"):
        jkofast.velocity(field.half(), torch.randn(4, 3).half(), 0.5, backend="compiled")
    field.double()
    with pytest.raises(TypeError, match="dtype torch.float32 but the model's parameters are torch.float64"):
        jkofast.velocity(field, torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="backend"):
        jkofast.velocity(field, torch.randn(4, 3, dtype=torch.float64), 0.5, backend="cuda")


def test_torch_func_transforms_run_the_torch_engine():
    """The compiled ops have no forward-mode or batching rule: torch.func's jvp/jacfwd would
    treat them as constants (zero derivatives, no error) and vmap/jacrev refuse them. Under a
    transform, "auto" runs the torch engine and "compiled" says why it cannot."""
    from torch.autograd import forward_ad

    field, x = random_field(2), torch.randn(3, 2, dtype=torch.float64)
    for fn in (lambda u, b: jkofast.velocity(field, u, 0.3, backend=b),
               lambda u, b: divergence(field, u, 0.3, backend=b)[1],
               lambda u, b: jkofast.rk4(field, u, 0.0, 1.0, 2, backend=b)[:2]):
        want = torch.func.jacrev(lambda u: fn(u, "torch"))(x)
        for transform in (torch.func.jacfwd, torch.func.jacrev):
            torch.testing.assert_close(transform(lambda u: fn(u, "auto"))(x), want, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="torch.func transform .* is active"):
            torch.func.jacfwd(lambda u: fn(u, "compiled"))(x)
    assert torch.func.jacfwd(lambda u: jkofast.velocity(field, u, 0.3))(x).abs().max() > 0.01
    torch.testing.assert_close(torch.func.vmap(lambda u: divergence(field, u[None], 0.3)[1])(x)[:, 0],
                               divergence(field, x, 0.3)[1], rtol=1e-12, atol=1e-12)
    v = torch.randn_like(x)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(jkofast.velocity(field, forward_ad.make_dual(x, v), 0.3)).tangent
    torch.testing.assert_close(tangent, torch.func.jvp(lambda u: jkofast.velocity(field, u, 0.3, backend="torch"),
                                                       (x,), (v,))[1], rtol=1e-12, atol=1e-12)
    # the tangent on a weight, x plain: forward-mode AD is active all the same
    name, w = next(iter(field.named_parameters()))
    dw = torch.randn_like(w)

    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = field

        def forward(self, u, backend):
            return jkofast.velocity(self.f, u, 0.3, backend=backend)

    def weight_tangent(backend):
        with forward_ad.dual_level():
            out = torch.func.functional_call(Velocity(), {f"f.{name}": forward_ad.make_dual(w, dw)}, (x, backend))
            return forward_ad.unpack_dual(out).tangent

    torch.testing.assert_close(weight_tangent("auto"), weight_tangent("torch"), rtol=1e-12, atol=1e-12)
    assert weight_tangent("auto").abs().max() > 1e-3


def test_inference_mode_keeps_the_autograd_divergence():
    """A Field's divergence by autograd under torch.inference_mode (enable_grad() alone records
    no graph there: it came out 0), also on inputs made in inference mode."""
    a = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    field, x = LinearField(a), torch.randn(4, 2, dtype=torch.float64)
    with torch.inference_mode():
        for probes in (None, torch.randn(4, 3, 2, dtype=torch.float64)):
            method = "exact" if probes is None else "hutchinson"
            f, div = divergence(field, torch.randn(4, 2, dtype=torch.float64), torch.zeros(4), method=method,
                                probes=1 if probes is None else probes)
            want = torch.full((4,), 5.0, dtype=torch.float64) if probes is None else \
                torch.einsum("bkd,ed,bke->b", probes, a, probes) / 3
            torch.testing.assert_close(div, want)
            assert not f.requires_grad and not div.requires_grad
        logdet = jkofast.rk4(field, x, 0.0, 1.0, 3)[1]
    torch.testing.assert_close(logdet, torch.full((4,), 5.0, dtype=torch.float64))


def test_a_field_made_under_inference_mode_is_named_where_autograd_needs_it():
    """Tensors made under inference_mode cannot be saved for backward: where autograd needs to save
    a field's (training; any autograd divergence), the error names the field and the cause, where
    torch's names neither. Where it need not (frozen, no_grad, a buffer only added), they serve."""
    with torch.inference_mode():
        mlp = jkofast.VelocityField(2, 16, 2).double()
        linear = LinearField(torch.nn.Parameter(torch.eye(2, dtype=torch.float64)))
        frozen = jkofast.VelocityField(2, 16, 2).double().requires_grad_(False)
    x = torch.randn(4, 2, dtype=torch.float64)
    named = r"the {}'s parameters were made under torch.inference_mode\(\), and autograd cannot save them"
    for backend in ("auto", "torch"):
        with pytest.raises(RuntimeError, match=named.format("VelocityField")):
            divergence(mlp, x, 0.0, backend=backend)
        with pytest.raises(RuntimeError, match=named.format("VelocityField")):
            jkofast.rk4(mlp, x, 0.0, 1.0, 2, backend=backend)
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                torch.testing.assert_close(divergence(mlp, x, 0.0, backend=backend)[1],
                                           divergence(mlp, x, 0.0, backend="torch")[1])
                with pytest.raises(RuntimeError, match=named.format("LinearField")):
                    divergence(linear, x, 0.0, backend=backend)
        divergence(frozen, x, 0.0, backend=backend)[1].sum()   # frozen, x without a gradient: nothing saved

    class Shifted(Field):   # a buffer made under inference_mode, only subtracted: nothing of it is saved
        def __init__(self):
            super().__init__()
            self.dim, self.lin = 2, torch.nn.Linear(2, 2).double()
            with torch.inference_mode():
                self.register_buffer("center", torch.ones(2, dtype=torch.float64))

        def forward(self, u, t):
            return torch.tanh(self.lin(u - self.center))

    f, div = divergence(Shifted(), x.requires_grad_(), 0.0)
    (f.sum() + div.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_probes_that_require_a_gradient_get_it():
    """The compiled op computes no gradient for the probes: "auto" runs the torch engine then."""
    field, x = random_field(2), torch.randn(3, 2, dtype=torch.float64)
    probes = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: divergence(field, x, 0.3, method="hutchinson", probes=v)[1], (probes,))
    with pytest.raises(ValueError, match="probes require a gradient"):
        divergence(field, x, 0.3, method="hutchinson", probes=probes, backend="compiled")
