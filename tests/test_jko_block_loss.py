"""The fused training-loss op (jkofast::jko_block_loss) against block_loss on the reference engine."""
from __future__ import annotations

import math

import pytest
import torch

from jkofast._backend import compiled_ops as O
from jkofast.jko_loss import block_loss
from _op_cases import F64, assert_within_float32_rule, block_loss_outputs, field_case, leaf_copies


def loss_both(field, x, h, steps, **kw):
    """block_loss_outputs from the fused op and from the reference."""
    return [block_loss_outputs(field, x, h, steps, backend, **kw) for backend in ("compiled", "torch")]


@pytest.mark.parametrize("transport,divergence,tableau,h", [
    ("endpoint", "exact", "rk4", 0.7),
    ("path", "exact", "rk4-3/8", 0.3),
    ("endpoint", "hutchinson", "rk4", 1.5),
    ("path", "hutchinson", "rk4", 0.5),
    ("endpoint", "exact", "rk4", math.inf),  # a free block: no transport term
])


@pytest.mark.parametrize("shape", [(3, 16, 2, "softplus", True, 37), (2, 8, 3, "tanh", False, 70),
                                   (1, 4, 1, "silu", True, 1)])


def test_matches_reference_float64(transport, divergence, tableau, h, shape):
    dim, hidden, layers, activation, time, batch = shape
    field, x, _, _ = field_case(dim, hidden, layers, activation, time, batch)
    fused, reference = loss_both(field, x, h, 3, transport=transport, divergence=divergence, tableau=tableau,
                                 probes=2)
    for i, (c, r) in enumerate(zip(fused, reference)):
        torch.testing.assert_close(c, r, **F64, msg=lambda m: f"output/grad {i}: {m}")


@pytest.mark.parametrize("backend", ["torch", "auto"])  # (auto: the fused op where the extension is built)
@pytest.mark.parametrize("transport", ["endpoint", "path"])
@pytest.mark.parametrize("h", [0.5, 2.0])
def test_closed_form_of_a_constant_field(backend, transport, h):
    # f = b everywhere (every weight and bias zero but the last bias): x1 = x0 + b exactly under RK4,
    # no divergence, and both transport costs are |b|^2, so the loss is 0.5 E|x0 + b|^2 + |b|^2 / (2h).
    # The engines share the weight 1/(2h): only a closed form sees it wrong in both. (1e-12: RK4
    # adds four equal stages; the sums are exact up to rounding.)
    from jkofast import VelocityField

    field = VelocityField(3, 8, 2).double()
    b = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    with torch.no_grad():
        for p in field.parameters():
            p.zero_()
        field.linears[-1].bias.copy_(b)
    x0 = torch.randn(20, 3, dtype=torch.float64)
    loss, parts = block_loss(field, x0, h, 3, transport=transport, backend=backend)
    want = 0.5 * (x0 + b).square().sum(1).mean() + b.square().sum() / (2 * h)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts["W2"], b.square().sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts["div"], torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(parts["V"], 0.5 * (x0 + b).square().sum(1).mean(), rtol=1e-12, atol=1e-12)


def test_several_tiles_in_one_part_and_a_partial_last_tile_float64():
    # As test_rk4_block's: batch 300 on one thread, three tiles (the last partial) into one part.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        field, x, _, _ = field_case(3, 16, 2, "softplus", True, 300)
        compiled, reference = loss_both(field, x, 0.7, 3)
    finally:
        torch.set_num_threads(threads)
    for i, (c, r) in enumerate(zip(compiled, reference)):
        torch.testing.assert_close(c, r, **F64, msg=lambda m: f"output/grad {i}: {m}")


def test_unfused_compiled_path_gives_the_same_values():
    # fused=False: rk4_block and its backward (what CUDA ran before it had the fused kernel).
    field, x, _, _ = field_case(3, 16, 2, "tanh", True, 40)
    for divergence in ("exact", "hutchinson"):
        fused = block_loss_outputs(field, x, 0.6, 3, "compiled", divergence=divergence, probes=2)
        unfused = block_loss_outputs(field, x, 0.6, 3, "compiled", fused=False, divergence=divergence, probes=2)
        for i, (a, b) in enumerate(zip(fused, unfused)):
            torch.testing.assert_close(a, b, **F64, msg=lambda m: f"{divergence}, output/grad {i}: {m}")


def test_float32_within_twice_torch_float32_error():
    field64, x, _, _ = field_case(3, 16, 2, "softplus", True, 150)
    field32 = field_case(3, 16, 2, "softplus", True, 150, dtype=torch.float32)[0]
    field32.load_state_dict({k: p.float() for k, p in field64.state_dict().items()})
    truth = loss_both(field64, x, 0.5, 3)[1]
    fused32, torch32 = loss_both(field32, x.float(), 0.5, 3)
    for i, (k, tr, ref) in enumerate(zip(fused32, torch32, truth)):
        assert_within_float32_rule(k, tr, ref, f"output/grad {i}")


@pytest.mark.parametrize("fused", [True, False])
def test_float32_at_training_size_within_twice_torch_float32_error(fused):
    # A training step's size (d = 6, width 128, 3 hidden layers, batch 2000), where the gradients
    # are sums over 2000 samples x 12 stages of same-signed terms: summed along the batch in one
    # float buffer they were 5-10x torch's error; per tile, then in double (GradShare), they are not.
    field64, x, _, _ = field_case(6, 128, 3, "softplus", True, 2000)
    with torch.no_grad():
        for lin in field64.linears:
            lin.weight.mul_(0.5 * min(1.0, 4.0 / lin.in_features ** 0.5))
            lin.bias.mul_(0.5)
    field32 = field_case(6, 128, 3, "softplus", True, 2000, dtype=torch.float32)[0]
    field32.load_state_dict({k: p.float() for k, p in field64.state_dict().items()})
    truth = block_loss_outputs(field64, x, 0.5, 3, "torch")
    torch32 = block_loss_outputs(field32, x.float(), 0.5, 3, "torch")
    kernel32 = block_loss_outputs(field32, x.float(), 0.5, 3, "compiled", fused=fused)
    for i, (k, tr, ref) in enumerate(zip(kernel32, torch32, truth)):
        assert_within_float32_rule(k, tr, ref, f"output/grad {i}")


def test_gradcheck_wrt_x_weights_biases():
    field, x, _, _ = field_case(2, 5, 2, "softplus", True, 3)
    n = len(field.weights)
    probes = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    for divergence, v, ew, pw in (("exact", None, 0.4, 0.0), ("hutchinson", probes, 0.0, 0.8)):
        def fn(x, *wb):
            return O.jko_block_loss(x, wb[:n], wb[n:], 2, endpoint_weight=ew, path_weight=pw,
                                    divergence=divergence, probes=v)[0]

        assert torch.autograd.gradcheck(fn, leaf_copies([x, *field.weights, *field.biases])), divergence


def test_double_backward_raises():
    field, x, _, _ = field_case(2, 5, 2, batch=4)
    loss, _ = block_loss(field, x, 1.0, 2, backend="compiled")
    with pytest.raises(NotImplementedError, match="no double backward"):
        torch.autograd.grad(loss, [field.weights[0]], create_graph=True)


def test_without_grad_the_plain_forward_gives_the_same_loss():
    # No gradient wanted: block_loss takes rk4's forward (cheaper); the value must not change.
    field, x, _, _ = field_case(3, 16, 2, batch=20)
    with torch.no_grad():
        plain, parts = block_loss(field, x, 0.5, 3, backend="compiled")
    fused, fused_parts = block_loss(field, x, 0.5, 3, backend="compiled")
    assert fused.requires_grad and not plain.requires_grad
    torch.testing.assert_close(fused.detach(), plain, **F64)
    for key in parts:
        torch.testing.assert_close(fused_parts[key], parts[key], **F64)


def test_opcheck():
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    w, b = list(field.weights), list(field.biases)
    probes = torch.randn(2, 5, 1, 2, dtype=torch.float64)
    for div, v in (("exact", None), ("hutchinson", probes), ("none", None)):
        torch.library.opcheck(torch.ops.jkofast.jko_block_loss.default,
                              (x, v, w, b, 0.0, 1.0, 2, "rk4", div, True, "softplus", 1.0, 0.5, 0.25),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be >= 1"),
    (dict(endpoint_weight=float("inf")), "finite"),
    (dict(x0=torch.zeros(0, 2, dtype=torch.float64)), "empty"),
    (dict(divergence="hutchinson"), "probes are required"),
])


def test_op_argument_errors(kwargs, match):
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    args = dict(x0=x, probes=None, weights=list(field.weights), biases=list(field.biases), t0=0.0, t1=1.0, steps=2,
                tableau="rk4", divergence="exact", time=True, activation="softplus", beta=1.0, endpoint_weight=0.5,
                path_weight=0.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        torch.ops.jkofast.jko_block_loss(*args.values())


@pytest.mark.parametrize("fused", [True, False])
def test_an_unknown_transport_cost_is_refused_not_taken_as_the_path_form(fused):
    # Anything but "endpoint" used to fall through to the kinetic energy ("path") on either engine.
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    with pytest.raises(ValueError, match=r"invalid transport 'kinetic'.*\['endpoint', 'path'\]"):
        block_loss(field, x, 0.5, 2, transport="kinetic", fused=fused)
