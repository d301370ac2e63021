"""The compiled RK4 block op (jkofast::rk4_block) against the reference integrator."""
from __future__ import annotations

import pytest
import torch

import jkofast
from jkofast import rk4
from jkofast._backend import compiled_ops as O
from _op_cases import F64, assert_within_float32_rule, field_case, leaf_copies


def integrate_both(field, x, t0, t1, steps, **kw):
    """[(x1, logdet, kinetic, grads...)] for the compiled op and the reference, same probes."""
    outs = []
    for backend in ("compiled", "torch"):
        xs = leaf_copies([x])[0]
        params = list(field.parameters())
        gen = torch.Generator().manual_seed(7)
        x1, logdet, kinetic = rk4(field, xs, t0, t1, steps, generator=gen, backend=backend, **kw)
        wgen = torch.Generator().manual_seed(3)
        loss = (x1 * torch.randn(x1.shape, generator=wgen, dtype=x1.dtype)).sum() + 0.3 * kinetic.sum()
        if logdet is not None:
            loss = loss - (logdet * torch.randn(logdet.shape, generator=wgen, dtype=x1.dtype)).sum()
        grads = torch.autograd.grad(loss, [xs, *params])
        outs.append([x1.detach(), kinetic.detach()] + ([logdet.detach()] if logdet is not None else []) + list(grads))
    return outs


@pytest.mark.parametrize("divergence,tableau,t0,t1,noise", [
    ("exact", "rk4", 0.0, 1.0, "rademacher"),
    ("exact", "rk4-3/8", 0.2, 0.9, "rademacher"),
    ("hutchinson", "rk4", 0.0, 1.0, "rademacher"),
    ("hutchinson", "rk4", 0.0, 1.0, "gaussian"),   # (the compiled path draws the probes rk4 is told to)
    ("exact", "rk4", 1.0, 0.0, "rademacher"),      # inversion: backwards in time, with the log-det
    (None, "rk4", 1.0, 0.0, "rademacher"),         # sampling: backwards in time, no divergence
])
@pytest.mark.parametrize("shape", [(3, 16, 2, "softplus", True, 37), (2, 8, 3, "tanh", False, 70),
                                   (1, 4, 1, "silu", True, 1)])
def test_matches_reference_float64(divergence, tableau, t0, t1, noise, shape):
    dim, hidden, layers, activation, time, batch = shape
    field, x, _, _ = field_case(dim, hidden, layers, activation, time, batch)
    compiled, reference = integrate_both(field, x, t0, t1, 3, divergence=divergence, tableau=tableau, probes=2,
                                         noise=noise)
    for i, (c, r) in enumerate(zip(compiled, reference)):
        torch.testing.assert_close(c, r, **F64, msg=lambda m: f"output/grad {i}: {m}")


def test_several_tiles_in_one_part_and_a_partial_last_tile_float64():
    # Batch 300 on one thread: forward tiles of 128, 128 and 44 samples whose gradients go into one
    # part (the cases above fit one tile), where a tile buffer not zeroed between tiles or a stride
    # of the partial tile would show (mutation tests, 2026-12-06: both were seen by float32 tests only).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        field, x, _, _ = field_case(3, 16, 2, "softplus", True, 300)
        compiled, reference = integrate_both(field, x, 0.0, 1.0, 3, divergence="exact")
    finally:
        torch.set_num_threads(threads)
    for i, (c, r) in enumerate(zip(compiled, reference)):
        torch.testing.assert_close(c, r, **F64, msg=lambda m: f"output/grad {i}: {m}")


def test_float32_within_twice_torch_float32_error():
    # (A field of moderate Lipschitz constant: on a stiff one both float32 runs drift chaotically.)
    field64, x, _, _ = field_case(3, 16, 2, "softplus", True, 150)
    field32 = field_case(3, 16, 2, "softplus", True, 150, dtype=torch.float32)[0]
    field32.load_state_dict({k: p.float() for k, p in field64.state_dict().items()})
    truth = integrate_both(field64, x, 0.0, 1.0, 3)[1]
    kernel32, torch32 = integrate_both(field32, x.float(), 0.0, 1.0, 3)
    for i, (k, tr, ref) in enumerate(zip(kernel32, torch32, truth)):
        assert_within_float32_rule(k, tr, ref, f"output/grad {i}")


def test_gradcheck_wrt_x_weights_biases():
    field, x, _, _ = field_case(2, 5, 2, "softplus", True, 3)
    n = len(field.weights)
    probes = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    for divergence, v in (("exact", None), ("hutchinson", probes), (None, None)):
        def fn(x, *wb):
            return O.rk4_block(x, wb[:n], wb[n:], 0.0, 0.5, 2, divergence=divergence, probes=v)

        assert torch.autograd.gradcheck(fn, leaf_copies([x, *field.weights, *field.biases])), divergence


def test_inverse_undoes_forward_and_memory_is_states_only():
    field, x, _, _ = field_case(3, 16, 2, batch=50)
    x1, _, _, states = torch.ops.jkofast.rk4_block(x, None, list(field.weights), list(field.biases), 0.0, 1.0, 40,
                                                   "rk4", "exact", True, "softplus", 1.0)
    assert states.shape == (40, 50, 3)  # all the forward keeps for backward: O(B d S)
    torch.testing.assert_close(states[0], x, rtol=0, atol=0)
    back, _, _ = O.rk4_block(x1, field.weights, field.biases, 1.0, 0.0, 40, divergence=None)
    # Backward RK4 inverts forward RK4 up to the schemes' O(h^4) error, ~1e-6 at 40 steps here.
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)


def test_opcheck():
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    w, b = list(field.weights), list(field.biases)
    probes = torch.randn(2, 5, 1, 2, dtype=torch.float64)
    full = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for grad in (False, True):
        xs = x.detach().clone().requires_grad_(grad)
        ws, bs = [[a.detach().clone().requires_grad_(grad) for a in g] for g in (w, b)]
        for div, v in (("exact", None), ("hutchinson", probes), ("none", None)):
            torch.library.opcheck(torch.ops.jkofast.rk4_block.default,
                                  (xs, v, ws, bs, 0.0, 1.0, 2, "rk4", div, True, "softplus", 1.0), test_utils=full)
    x1, logdet, kinetic, states = torch.ops.jkofast.rk4_block(x, None, w, b, 0.0, 1.0, 2, "rk4", "exact", True,
                                                              "softplus", 1.0)
    torch.library.opcheck(torch.ops.jkofast.rk4_block_backward.default,
                          (torch.randn_like(x1), torch.randn_like(logdet), torch.randn_like(kinetic), states, x, None,
                           w, b, 0.0, 1.0, 2, "rk4", "exact", True, "softplus", 1.0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be >= 1"),
    (dict(divergence="hutchinson"), "probes are required"),
    (dict(tableau="euler"), "unknown tableau"),
    (dict(t1=float("nan")), "finite"),
])
def test_op_argument_errors(kwargs, match):
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    args = dict(x=x, probes=None, weights=list(field.weights), biases=list(field.biases), t0=0.0, t1=1.0, steps=2,
                tableau="rk4", divergence="exact", time=True, activation="softplus", beta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        torch.ops.jkofast.rk4_block(*args.values())


def test_backend_choice():
    field, x, _, _ = field_case(2, 6, 2, batch=5)
    with pytest.raises(ValueError, match="dtype"):
        rk4(field.half(), x.half(), 0.0, 1.0, 2, backend="compiled")
    with pytest.raises(ValueError, match="steps"):
        rk4(field.double(), x, 0.0, 1.0, 0, backend="compiled")


def test_auto_runs_the_compiled_ops_wherever_they_fit(monkeypatch, moons):
    # "auto" is every user's default: a regression that sent it to the reference would pass every
    # agreement test (the reference against itself) and only cost speed, so count the op's calls.
    from conftest import SHORT_RUN, LinearField
    from jkofast import _backend

    field, x, _, _ = field_case(2, 6, 2, batch=5)
    for dtype in (torch.float32, torch.float64):
        assert _backend.choose("auto", field.to(dtype), x.to(dtype)) == "compiled"
    assert _backend.choose("auto", field.half(), x.half()) == "torch"
    assert _backend.choose("auto", LinearField(torch.eye(2, dtype=torch.float64)), x.double()) == "torch"

    calls = {"rk4_block": 0, "jko_block_loss": 0}
    for name in calls:
        def counted(*args, _real=getattr(O, name), _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(O, name, counted)
    field, x = field.double(), x.double()
    x1, logdet, _ = rk4(field, x, 0.0, 1.0, 2)
    assert calls["rk4_block"] == 1
    ref = rk4(field, x, 0.0, 1.0, 2, backend="torch")
    torch.testing.assert_close((x1, logdet), ref[:2], rtol=1e-10, atol=1e-12)
    # half precision does not fit the ops: auto runs the reference, with the same numbers
    x1_half, _, _ = rk4(field.half(), x.half(), 0.0, 1.0, 2)
    assert calls["rk4_block"] == 1 and x1_half.dtype == torch.float16
    torch.testing.assert_close(x1_half, rk4(field.half(), x.half(), 0.0, 1.0, 2, backend="torch")[0], rtol=0, atol=0)
    # and training (the default backend) takes the fused loss-and-gradient op
    jkofast.train(moons[0][:500], progress=False, **dict(SHORT_RUN, blocks=1, iters=3, batch=100))
    assert calls["jko_block_loss"] == 3


def test_training_with_compiled_backend_reaches_reference_nll(moons):
    # Same seed, same data, same settings: the two engines differ only by float32 rounding, so the
    # validation NLLs agree far within the run-to-run noise of different seeds (~0.02 nats).
    from conftest import SHORT_RUN

    options = dict(SHORT_RUN, blocks=2, iters=100)
    nll = {}
    for backend in ("torch", "compiled"):
        flow = jkofast.train(moons[0], val=moons[1], progress=False, backend=backend, **options)
        nll[backend] = float(-flow.log_prob(moons[1], backend="torch").mean().detach())
    assert abs(nll["compiled"] - nll["torch"]) < 0.01, nll
