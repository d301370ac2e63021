"""The compiled field ops (jkofast::mlp_field, jkofast::mlp_field_div) against the reference."""
from __future__ import annotations

import pytest
import torch

from jkofast import reference as R
from jkofast._backend import compiled_ops as O
from _op_cases import F64, assert_within_float32_rule, field_case, field_outputs, leaf_copies

CASES = [  # (dim, hidden, layers, activation, time, batch, probes)
    (3, 16, 2, "softplus", True, 37, None),
    (3, 16, 2, "tanh", False, 37, 2),
    (6, 32, 3, "silu", True, 130, None),   # batch > one tile, not a multiple of it
    (1, 8, 2, "softplus", True, 5, None),  # d = 1
    (2, 1, 2, "tanh", True, 9, None),      # width 1
    (4, 12, 1, "softplus", True, 1, 3),    # one hidden layer, batch of 1
    (5, 20, 2, "silu", True, 0, None),     # empty batch
]


def run_both(field, x, t, v, with_div):
    """(compiled outputs, reference outputs) with gradients of a random linear functional."""
    return [field_outputs(field, x, t, v, with_div, impl) for impl in ("compiled", "reference")]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_div", [False, True])
def test_forward_and_backward_match_reference_float64(case, with_div):
    dim, hidden, layers, activation, time, batch, probes = case
    field, x, t, v = field_case(dim, hidden, layers, activation, time, batch, probes if with_div else None, beta=1.7)
    compiled, reference = run_both(field, x, t, v, with_div)
    for i, (c, r) in enumerate(zip(compiled, reference)):
        torch.testing.assert_close(c, r, **F64, msg=lambda m: f"output/grad {i}: {m}")


@pytest.mark.parametrize("case", CASES[:3])
def test_float32_within_twice_torch_float32_error(case):
    dim, hidden, layers, activation, time, batch, probes = case
    field64, x, t, v = field_case(dim, hidden, layers, activation, time, batch, probes)
    field32 = field_case(dim, hidden, layers, activation, time, batch, probes, dtype=torch.float32)[0]
    field32.load_state_dict({k: p.float() for k, p in field64.state_dict().items()})
    truth = run_both(field64, x, t, v, True)[1]
    kernel32, torch32 = run_both(field32, x.float(), t.float(), None if v is None else v.float(), True)
    for i, (k, tr, ref) in enumerate(zip(kernel32, torch32, truth)):
        assert_within_float32_rule(k, tr, ref, f"output/grad {i}")


def test_float32_weight_gradients_are_summed_in_double_over_a_long_batch():
    # One thread puts all of a 2^22-sample batch's tiles in one gradient part; the CPU ops move each
    # tile's float gradient into a double total (GradShare), so the sum over the batch rounds about
    # once, as torch.sum's does. Summed in float it erred 33x torch's (a mutation test, 2026-12-06:
    # 1.2e-6 relative against 3.6e-8). The last bias's gradient is grad_f's column sums, exactly
    # known; grad_f > 0, so rounding errors add up rather than cancel. (1-2 s.)
    import jkofast

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        field = jkofast.VelocityField(2, hidden=8, layers=1, time=False).float()
        x = torch.randn(2 ** 22, 2)
        grad_f = torch.rand(2 ** 22, 2) + 0.5
        f = O.mlp_field(x, None, field.weights, field.biases, "softplus", 1.0)
        (got,) = torch.autograd.grad(f, [field.biases[-1]], grad_f)
    finally:
        torch.set_num_threads(threads)
    exact = grad_f.double().sum(0)
    error = ((got.double() - exact).abs() / exact).max().item()
    torch_error = ((grad_f.sum(0).double() - exact).abs() / exact).max().item()
    assert error <= 4 * max(torch_error, 2.0 ** -24), (error, torch_error)


def test_non_contiguous_inputs_and_scalar_time():
    field, x, t, v = field_case(4, 16, 2, batch=20, probes=2)
    x_nc = torch.randn(4, 20, dtype=torch.float64).t()           # transposed view
    v_nc = torch.randn(20, 4, 2, dtype=torch.float64).transpose(1, 2)
    t0 = torch.tensor(0.4, dtype=torch.float64)
    got = O.mlp_field_div(x_nc, t0, field.weights, field.biases, probes=v_nc)
    want = R.mlp_velocity_and_divergence(x_nc, t0, field.weights, field.biases, probes=v_nc)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("probes", [None, 2])
def test_gradcheck_wrt_x_t_weights_biases(probes):
    field, x, t, v = field_case(3, 5, 2, "silu", batch=4, probes=probes)
    n = len(field.weights)
    inputs = leaf_copies([x, t, *field.weights, *field.biases])

    def fn(x, t, *wb):
        return O.mlp_field_div(x, t, wb[:n], wb[n:], "silu", 1.0, v)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda x, t, *wb: O.mlp_field(x, t, wb[:n], wb[n:], "silu", 1.0), inputs)


def _op_samples():
    field, x, t, v = field_case(3, 8, 2, batch=6, probes=2)
    w, b = list(field.weights), list(field.biases)
    autonomous_w0 = w[0][:, :3]
    for grad in (False, True):
        xs, ts, w0 = [a.detach().clone().requires_grad_(grad) for a in (x, t, autonomous_w0)]
        ws, bs = [[a.detach().clone().requires_grad_(grad) for a in group] for group in (w, b)]
        yield torch.ops.jkofast.mlp_field.default, (xs, ts, ws, bs, "softplus", 1.0)
        yield torch.ops.jkofast.mlp_field.default, (xs, None, [w0] + ws[1:], bs, "softplus", 1.0)
        yield torch.ops.jkofast.mlp_field_div.default, (xs, ts, None, ws, bs, "tanh", 1.0)
        yield torch.ops.jkofast.mlp_field_div.default, (xs, ts, v, ws, bs, "silu", 1.0)
    g = torch.randn(6, 3, dtype=torch.float64)
    yield torch.ops.jkofast.mlp_field_backward.default, (g, x, t, w, b, "softplus", 1.0)
    yield torch.ops.jkofast.mlp_field_div_backward.default, (g, torch.randn(6, dtype=torch.float64), x, t, v, w, b,
                                                             "softplus", 1.0)


# The backward ops refuse to be differentiated (no double backward), so opcheck's AOT test, which
# differentiates every op it traces, is left out for them.
BACKWARD_OP_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("op,args", list(_op_samples()))
def test_opcheck(op, args):
    is_backward = op.name().endswith("_backward")
    torch.library.opcheck(op, args, test_utils=BACKWARD_OP_TESTS if is_backward else
                          ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_compiles_without_graph_breaks():
    field, x, t, _ = field_case(3, 8, 2, batch=6)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(x, t, w, b):
        f, div = O.mlp_field_div(x, t, w, b)
        return f.square().sum() - div.sum()

    w, b = leaf_copies(field.weights), leaf_copies(field.biases)
    got = loss(x, t, w, b)
    got.backward()
    w2, b2 = leaf_copies(field.weights), leaf_copies(field.biases)
    f, div = R.mlp_velocity_and_divergence(x, t, w2, b2)
    want = f.square().sum() - div.sum()
    want.backward()
    torch.testing.assert_close(got, want, **F64)
    for a, c in zip(w + b, w2 + b2):
        torch.testing.assert_close(a.grad, c.grad, **F64)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(x=a["x"][:, :2]), r"weights\[0\] should have shape"),
    (lambda a: a.update(x=a["x"].float()), "dtype"),
    (lambda a: a.update(t=a["t"][:3]), "t should have shape"),
    (lambda a: a.update(activation="relu"), "unknown activation"),
    (lambda a: a.update(probes=torch.randn(6, 2, 5, dtype=torch.float64)), "probes should have shape"),
    (lambda a: a.update(biases=a["biases"][:1]), "2 weights but 1 biases"),
])
def test_bad_arguments_are_named(mutate, match):
    field, x, t, _ = field_case(3, 8, 1, batch=6)
    args = dict(x=x, t=t, probes=None, weights=list(field.weights), biases=list(field.biases),
                activation="softplus", beta=1.0)
    mutate(args)
    with pytest.raises(ValueError, match=match):
        torch.ops.jkofast.mlp_field_div(*args.values())


def test_double_backward_is_refused_clearly():
    field, x, t, _ = field_case(3, 8, 1, batch=4)
    xs = x.clone().requires_grad_(True)
    f = O.mlp_field(xs, t, field.weights, field.biases)
    (g,) = torch.autograd.grad(f.sum(), xs, create_graph=True)
    with pytest.raises(NotImplementedError, match="no double backward.*backend='torch'"):
        g.sum().backward()


@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_pre_activations_stay_finite_and_exact(activation, dtype):
    # The kernels evaluate exp and log1p by their own polynomials (csrc/ops/activation_math.h):
    # pre-activations from -1e4 to 1e4 (and softplus beta 20) must neither overflow nor lose
    # accuracy against torch's own functions.
    field, x, t, _ = field_case(2, 64, 2, activation, batch=50, beta=20.0, dtype=dtype)
    with torch.no_grad():
        field.linears[0].weight.mul_(3000.0)
    got = O.mlp_field_div(x.to(dtype), t.to(dtype), field.weights, field.biases, activation, 20.0)
    want = R.mlp_velocity_and_divergence(x.to(dtype), t.to(dtype), field.weights, field.biases, activation, 20.0)
    truth = R.mlp_velocity_and_divergence(x.double(), t.double(), [w.double() for w in field.weights],
                                          [b.double() for b in field.biases], activation, 20.0)
    for g, w, ref, name in zip(got, want, truth, ("f", "div")):
        assert torch.isfinite(g).all()
        if dtype == torch.float64:
            # Saturated tanh: sigma' = 1 - y^2 cancels in both engines, so the floor scales
            # with the output's size rather than each (near-zero) entry's.
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10 * float(w.detach().abs().max()))
        else:  # outputs up to ~1e5 here: the same 2x rule as everywhere else
            assert_within_float32_rule(g, w, ref, name)
