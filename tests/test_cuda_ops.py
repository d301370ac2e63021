"""The compiled ops on a CUDA GPU against the float64 reference (marker ``cuda``: skipped without one).

* Fresh random inputs every run: the module draws its seed from the OS (JKOFAST_TEST_SEED
  reproduces a run); failure messages name it.
* Poisoned outputs: every call runs under torch.use_deterministic_algorithms(True), under which
  torch.empty / at::empty fill new memory with NaN, so an output or workspace element a kernel
  forgets to write fails the comparison.
* Tolerances (tests/_op_cases.py): float64 1e-10 relative; float32 at most twice the error of the
  reference run in float32 on the GPU, plus 1e-6 of the output's scale; TF32 at most twice the
  error of the reference run with TF32 matmuls allowed, plus TF32's unit roundoff 2^-11 of the
  output's scale. Why: the kernels round the inputs of the same products to TF32 that cuBLAS rounds
  for the reference, so their errors are of one size, except that for the exact trace the kernels
  also round the first layer's columns (the reference copies them unrounded): at most one more
  TF32 rounding, the floor. A wrong index or a lost term is orders of magnitude above either.
  The measured TF32 errors are printed and, with JKOFAST_TF32_REPORT=path, written there as JSON.

JKOFAST_TEST_DEVICE=cpu runs the same tests on the CPU ops (the CUDA-only ones skip): a check of
this file's own code on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile

import pytest
import torch

import jkofast
from jkofast import _backend
from jkofast import reference as R
from jkofast._backend import compiled_ops as O
from conftest import backward_through, random_field
from _op_cases import block_loss_outputs, field_outputs, leaf_copies

DEVICE = os.environ.get("JKOFAST_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.cuda if DEVICE == "cuda" else []
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="checks CUDA behaviour")

F64 = dict(rtol=1e-10, atol=1e-10)  # atol: of each output's scale (assert_all_close)
TF32_ROUNDOFF = 2.0 ** -11
SEED = int(os.environ.get("JKOFAST_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
TF32_REPORT: dict[str, dict] = {}


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(SEED)  # after conftest's fixed seed: fresh inputs every run
    yield


@contextlib.contextmanager
def poisoned():
    """New CUDA memory (outputs, workspaces) is NaN until written."""
    was = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.utils.deterministic.fill_uninitialized_memory = fill


@contextlib.contextmanager
def tf32(allowed: bool):
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def cuda_field(dim, hidden, layers, activation="softplus", time=True, beta=1.0, dtype=torch.float64):
    """conftest.random_field (weights N(0, 0.7^2)), with wide layers' weights scaled by 4 / sqrt(fan-in)
    so that pre-activations stay O(1-10) at any width, as in a trained field."""
    field = random_field(dim, hidden, layers, activation, time=time, beta=beta, dtype=dtype).to(DEVICE)
    with torch.no_grad():
        for lin in field.linears:
            lin.weight.mul_(min(1.0, 4.0 / lin.in_features ** 0.5))
    return field


def rk4_outputs(field, x, t0, t1, steps, backend, **kw):
    xs = leaf_copies([x])[0]
    gen = torch.Generator(device=x.device).manual_seed(7)
    x1, logdet, kinetic = jkofast.rk4(field, xs, t0, t1, steps, generator=gen, backend=backend, **kw)
    wgen = torch.Generator(device=x.device).manual_seed(3)
    loss = (x1 * torch.randn(x1.shape, generator=wgen, device=x.device, dtype=x1.dtype)).sum() + 0.3 * kinetic.sum()
    if logdet is not None:
        loss = loss - (logdet * torch.randn(logdet.shape, generator=wgen, device=x.device, dtype=x1.dtype)).sum()
    grads = torch.autograd.grad(loss, [xs, *field.parameters()])
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return [x1.detach(), kinetic.detach()] + ([logdet.detach()] if logdet is not None else []) + list(grads)


def assert_all_close(got, want, tol, what):
    """assert_close with the absolute floor taken relative to each output's scale: an entry near zero
    of a large output carries that output's rounding, not its own."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        atol = tol["atol"] * max(w.abs().max().item(), 1.0) if w.numel() else tol["atol"]
        torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=atol,
                                   msg=lambda m: f"{what}, output/grad {i} (seed {SEED}): {m}")


def assert_within_twice(kernel, peer, truth, what, floor=1e-6):
    """Each output: |kernel - truth| <= 2 |peer - truth| + floor * scale; returns the errors."""
    errors = []
    for i, (k, p, t) in enumerate(zip(kernel, peer, truth)):
        assert torch.isfinite(k).all(), f"{what}, output/grad {i} (seed {SEED}): not finite"
        scale = max(t.abs().max().item(), 1.0)
        k_err = (k.double() - t).abs().max().item()
        p_err = (p.double() - t).abs().max().item()
        errors.append({"output": i, "kernel": k_err, "torch": p_err, "scale": scale})
        assert k_err <= 2 * p_err + floor * scale, \
            f"{what}, output/grad {i} (seed {SEED}): kernel error {k_err:.3g}, torch {p_err:.3g}"
    return errors


def report(name, errors):
    TF32_REPORT[name] = errors
    worst = max(e["kernel"] / e["scale"] for e in errors)
    print(f"TF32 {name}: worst kernel error / scale {worst:.3g} (seed {SEED})")
    if path := os.environ.get("JKOFAST_TF32_REPORT"):
        with open(path, "w") as fh:
            json.dump({"seed": SEED, "cases": TF32_REPORT}, fh, indent=1)


# ----------------------------------------------------------------------------- field ops
FIELD_CASES = [  # (dim, hidden, layers, activation, time, batch, probes)
    (3, 16, 2, "softplus", True, 37, None),
    (3, 16, 2, "tanh", False, 37, 2),
    (6, 128, 3, "silu", True, 1000, None),  # many tiles; batch not a multiple of the tile
    (1, 8, 2, "softplus", True, 5, None),   # d = 1
    (2, 1, 2, "tanh", True, 9, None),       # width 1
    (4, 12, 1, "softplus", True, 1, 3),     # one hidden layer, batch of 1
    (5, 20, 2, "silu", True, 0, None),      # empty batch
    (12, 37, 2, "softplus", True, 333, 40),  # width and d + 1 off the 16-column grid; 40 probes
    (63, 256, 3, "softplus", True, 300, None),   # the d = 63 benchmark shape
    (128, 512, 2, "tanh", True, 70, None),   # at the limits: tangent rows in several passes
]


@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("with_div", [False, True])
def test_field_ops_match_reference_float64(case, with_div):
    dim, hidden, layers, activation, time, batch, k = case
    field = cuda_field(dim, hidden, layers, activation, time, beta=1.7)
    x = torch.randn(batch, dim, dtype=torch.float64, device=DEVICE)
    t = torch.rand(batch, dtype=torch.float64, device=DEVICE)
    probes = torch.randn(batch, k, dim, dtype=torch.float64, device=DEVICE) if with_div and k else None
    want = field_outputs(field, x, t, probes, with_div, "reference")
    with poisoned():
        got = field_outputs(field, x, t, probes, with_div, "compiled")
    assert_all_close(got, want, F64, f"{case} div={with_div}")


@pytest.mark.parametrize("case", [FIELD_CASES[0], FIELD_CASES[1], FIELD_CASES[2], FIELD_CASES[7]],
                         ids=lambda c: "-".join(map(str, c)))
def test_field_ops_float32_and_tf32(case):
    dim, hidden, layers, activation, time, batch, k = case
    field64 = cuda_field(dim, hidden, layers, activation, time)
    field32 = cuda_field(dim, hidden, layers, activation, time, dtype=torch.float32)
    field32.load_state_dict({n: p.float() for n, p in field64.state_dict().items()})
    x = torch.randn(batch, dim, dtype=torch.float64, device=DEVICE)
    t = torch.rand(batch, dtype=torch.float64, device=DEVICE)
    probes = torch.randn(batch, k, dim, dtype=torch.float64, device=DEVICE) if k else None
    truth = field_outputs(field64, x, t, probes, True, "reference")
    args32 = (x.float(), t.float(), None if probes is None else probes.float(), True)
    with tf32(False):
        torch32 = field_outputs(field32, *args32, "reference")
        with poisoned():
            kernel32 = field_outputs(field32, *args32, "compiled")
    assert_within_twice(kernel32, torch32, truth, f"float32 {case}")
    with tf32(True):
        torch_tf32 = field_outputs(field32, *args32, "reference")
        with poisoned():
            kernel_tf32 = field_outputs(field32, *args32, "compiled")
    report(f"field-{'-'.join(map(str, case))}",
           assert_within_twice(kernel_tf32, torch_tf32, truth, f"TF32 {case}", floor=TF32_ROUNDOFF))


@cuda_only
def test_tf32_switch_is_torchs_and_never_applies_to_float64():
    field = cuda_field(6, 128, 3, dtype=torch.float32)
    x, t = torch.randn(500, 6, device=DEVICE), torch.rand(500, device=DEVICE)
    with tf32(False):
        exact = O.mlp_field_div(x, t, field.weights, field.biases)
    with tf32(True):
        rounded = O.mlp_field_div(x, t, field.weights, field.biases)
    assert not torch.equal(exact[0], rounded[0]), "allow_tf32 did not change the float32 products"
    field64, x64, t64 = field.double(), x.double(), t.double()
    with tf32(False):
        a = O.mlp_field_div(x64, t64, field64.weights, field64.biases)
    with tf32(True):
        b = O.mlp_field_div(x64, t64, field64.weights, field64.biases)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_field_ops_are_deterministic():
    # No atomics: per-block gradient parts summed in a fixed order.
    field = cuda_field(6, 128, 3, dtype=torch.float32)
    x, t = torch.randn(5000, 6, device=DEVICE), torch.rand(5000, device=DEVICE)
    first = field_outputs(field, x, t, None, True, "compiled")
    again = field_outputs(field, x, t, None, True, "compiled")
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("probes", [None, 2])
def test_gradcheck_on_cuda(probes):
    field = cuda_field(3, 5, 2, "silu")
    x = torch.randn(4, 3, dtype=torch.float64, device=DEVICE)
    t = torch.rand(4, dtype=torch.float64, device=DEVICE)
    v = torch.randn(4, probes, 3, dtype=torch.float64, device=DEVICE) if probes else None
    n = len(field.weights)
    inputs = leaf_copies([x, t, *field.weights, *field.biases])
    assert torch.autograd.gradcheck(lambda x, t, *wb: O.mlp_field_div(x, t, wb[:n], wb[n:], "silu", 1.0, v), inputs)
    assert torch.autograd.gradcheck(lambda x, t, *wb: O.mlp_field(x, t, wb[:n], wb[n:], "silu", 1.0), inputs)
    xr = leaf_copies([x])[0]
    vs = torch.randn(2, 4, 2, 3, dtype=torch.float64, device=DEVICE)
    for divergence, pv in (("exact", None), ("hutchinson", vs), (None, None)):
        assert torch.autograd.gradcheck(
            lambda x, *wb: O.rk4_block(x, wb[:n], wb[n:], 0.0, 0.5, 2, divergence=divergence, probes=pv),
            [xr, *inputs[2:]]), divergence


def test_opcheck_on_cuda():
    field = cuda_field(3, 8, 2)
    x = torch.randn(6, 3, dtype=torch.float64, device=DEVICE)
    t = torch.rand(6, dtype=torch.float64, device=DEVICE)
    v = torch.randn(6, 2, 3, dtype=torch.float64, device=DEVICE)
    w, b = list(field.weights), list(field.biases)
    full = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    backward = ("test_schema", "test_autograd_registration", "test_faketensor")
    ops = torch.ops.jkofast
    for grad in (False, True):
        xs, ts = [a.detach().clone().requires_grad_(grad) for a in (x, t)]
        ws, bs = [[a.detach().clone().requires_grad_(grad) for a in g] for g in (w, b)]
        torch.library.opcheck(ops.mlp_field.default, (xs, ts, ws, bs, "softplus", 1.0), test_utils=full)
        torch.library.opcheck(ops.mlp_field_div.default, (xs, ts, v, ws, bs, "tanh", 1.0), test_utils=full)
        vs = torch.randn(2, 6, 1, 3, dtype=torch.float64, device=DEVICE)
        for div, pv in (("exact", None), ("hutchinson", vs), ("none", None)):
            torch.library.opcheck(ops.rk4_block.default, (xs, pv, ws, bs, 0.0, 1.0, 2, "rk4", div, True, "softplus", 1.0),
                                  test_utils=full)
    g = torch.randn(6, 3, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(ops.mlp_field_div_backward.default,
                          (g, torch.randn(6, dtype=torch.float64, device=DEVICE), x, t, v, w, b, "softplus", 1.0),
                          test_utils=backward)
    x1, logdet, kinetic, states = ops.rk4_block(x, None, w, b, 0.0, 1.0, 2, "rk4", "exact", True, "softplus", 1.0)
    torch.library.opcheck(ops.rk4_block_backward.default,
                          (torch.randn_like(x1), torch.randn_like(logdet), torch.randn_like(kinetic), states, x, None,
                           w, b, 0.0, 1.0, 2, "rk4", "exact", True, "softplus", 1.0), test_utils=backward)


@cuda_only
def test_compiles_and_captures_in_a_cuda_graph():
    field = cuda_field(6, 64, 3, dtype=torch.float32)
    x = torch.randn(3000, 6, device=DEVICE)

    def step():
        x1, logdet, kinetic = O.rk4_block(x, field.weights, field.biases, 0.0, 1.0, 3)
        return x1.square().sum() - logdet.sum() + kinetic.sum()

    eager = step()
    compiled = torch.compile(step, fullgraph=True)()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture (workspace allocations)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- rk4_block
def moderate_field(dim, hidden, layers, activation="softplus", time=True, dtype=torch.float64):
    field = cuda_field(dim, hidden, layers, activation, time, dtype=dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(0.5)  # a moderate Lipschitz constant keeps 3 RK4 steps well conditioned
    return field


@pytest.mark.parametrize("divergence,tableau,t0,t1", [
    ("exact", "rk4", 0.0, 1.0),
    ("exact", "rk4-3/8", 0.2, 0.9),
    ("hutchinson", "rk4", 0.0, 1.0),
    (None, "rk4", 1.0, 0.0),
])
@pytest.mark.parametrize("shape", [(3, 16, 2, "softplus", True, 37), (2, 8, 3, "tanh", False, 70),
                                   (1, 4, 1, "silu", True, 1), (6, 128, 3, "softplus", True, 2001),
                                   (40, 96, 2, "softplus", True, 50)])
def test_rk4_block_matches_reference_float64(divergence, tableau, t0, t1, shape):
    dim, hidden, layers, activation, time, batch = shape
    field = moderate_field(dim, hidden, layers, activation, time)
    x = torch.randn(batch, dim, dtype=torch.float64, device=DEVICE)
    kw = dict(divergence=divergence, tableau=tableau, probes=3)
    want = rk4_outputs(field, x, t0, t1, 3, "torch", **kw)
    with poisoned():
        got = rk4_outputs(field, x, t0, t1, 3, "compiled", **kw)
    assert_all_close(got, want, F64, f"rk4 {shape} {divergence} {tableau}")


def test_rk4_block_float32_and_tf32():
    field64 = moderate_field(6, 128, 3)
    field32 = moderate_field(6, 128, 3, dtype=torch.float32)
    field32.load_state_dict({n: p.float() for n, p in field64.state_dict().items()})
    x = torch.randn(2000, 6, dtype=torch.float64, device=DEVICE)
    truth = rk4_outputs(field64, x, 0.0, 1.0, 3, "torch")
    with tf32(False):
        torch32 = rk4_outputs(field32, x.float(), 0.0, 1.0, 3, "torch")
        with poisoned():
            kernel32 = rk4_outputs(field32, x.float(), 0.0, 1.0, 3, "compiled")
    assert_within_twice(kernel32, torch32, truth, "rk4 float32")
    with tf32(True):
        torch_tf32 = rk4_outputs(field32, x.float(), 0.0, 1.0, 3, "torch")
        with poisoned():
            kernel_tf32 = rk4_outputs(field32, x.float(), 0.0, 1.0, 3, "compiled")
    report("rk4-d6-h128-l3-b2000",
           assert_within_twice(kernel_tf32, torch_tf32, truth, "rk4 TF32", floor=TF32_ROUNDOFF))


def test_rk4_probes_held_per_step_match_reference():
    field = cuda_field(4, 32, 2)
    x = torch.randn(64, 4, dtype=torch.float64, device=DEVICE)
    want = rk4_outputs(field, x, 0.0, 1.0, 4, "torch", divergence="hutchinson", probes=5, noise="gaussian")
    got = rk4_outputs(field, x, 0.0, 1.0, 4, "compiled", divergence="hutchinson", probes=5, noise="gaussian")
    assert_all_close(got, want, F64, "rk4 gaussian probes")


# ----------------------------------------------------------------------------- jko_block_loss
@pytest.mark.parametrize("transport,divergence,tableau,h", [
    ("endpoint", "exact", "rk4", 0.7),
    ("path", "hutchinson", "rk4-3/8", 0.4),
    ("endpoint", "exact", "rk4", math.inf),  # a free block
])
@pytest.mark.parametrize("shape", [(3, 16, 2, "softplus", True, 37), (2, 8, 3, "tanh", False, 70),
                                   (1, 4, 1, "silu", True, 1), (6, 128, 3, "softplus", True, 2001),
                                   (40, 96, 2, "softplus", True, 50)])
def test_jko_block_loss_matches_reference_float64(transport, divergence, tableau, h, shape):
    dim, hidden, layers, activation, time, batch = shape
    field = moderate_field(dim, hidden, layers, activation, time)
    x = torch.randn(batch, dim, dtype=torch.float64, device=DEVICE)
    kw = dict(transport=transport, divergence=divergence, tableau=tableau, probes=3)
    want = block_loss_outputs(field, x, h, 3, "torch", **kw)
    with poisoned():
        got = block_loss_outputs(field, x, h, 3, "compiled", **kw)
    assert_all_close(got, want, F64, f"jko_block_loss {shape} {transport} {divergence} {tableau}")


# The plan rule on an H100's (or H200's) 132 blocks: batch 256 goes down to 16 rows, 128 tiles of 2
# samples, one per block (each block's float part is its whole sum: no double totals); 2000 takes
# 32 rows, 500 tiles of 4 samples, ~4 per block; 16384 keeps 128 rows, ~900 tiles of 18, ~7 per
# block. In the last two each block moves its float part into a double total after every tile.
@pytest.mark.parametrize("batch", [256, 2000, 16384])
def test_jko_block_loss_float32_and_tf32(batch):
    field64 = moderate_field(6, 128, 3)
    field32 = moderate_field(6, 128, 3, dtype=torch.float32)
    field32.load_state_dict({n: p.float() for n, p in field64.state_dict().items()})
    x = torch.randn(batch, 6, dtype=torch.float64, device=DEVICE)
    truth = block_loss_outputs(field64, x, 0.5, 3, "torch")
    with tf32(False):
        torch32 = block_loss_outputs(field32, x.float(), 0.5, 3, "torch")
        with poisoned():
            kernel32 = block_loss_outputs(field32, x.float(), 0.5, 3, "compiled")
    assert_within_twice(kernel32, torch32, truth, "jko_block_loss float32")
    with tf32(True):
        torch_tf32 = block_loss_outputs(field32, x.float(), 0.5, 3, "torch")
        with poisoned():
            kernel_tf32 = block_loss_outputs(field32, x.float(), 0.5, 3, "compiled")
    report(f"jko-block-loss-d6-h128-l3-b{batch}",
           assert_within_twice(kernel_tf32, torch_tf32, truth, "jko_block_loss TF32", floor=TF32_ROUNDOFF))


def test_jko_block_loss_gradcheck_opcheck_and_determinism():
    field = cuda_field(2, 5, 2, "softplus")
    x = torch.randn(3, 2, dtype=torch.float64, device=DEVICE)
    n = len(field.weights)
    probes = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=DEVICE)
    for divergence, v, ew, pw in (("exact", None, 0.4, 0.0), ("hutchinson", probes, 0.0, 0.8)):
        def fn(x, *wb):
            return O.jko_block_loss(x, wb[:n], wb[n:], 2, endpoint_weight=ew, path_weight=pw,
                                    divergence=divergence, probes=v)[0]

        assert torch.autograd.gradcheck(fn, leaf_copies([x, *field.weights, *field.biases])), divergence
        torch.library.opcheck(torch.ops.jkofast.jko_block_loss.default,
                              (x, v, list(field.weights), list(field.biases), 0.0, 1.0, 2, "rk4", divergence, True,
                               "softplus", 1.0, ew, pw), test_utils=("test_schema", "test_faketensor"))
    # No atomics: per-block gradient parts summed in a fixed order.
    field32 = cuda_field(6, 128, 3, dtype=torch.float32)
    x32 = torch.randn(5000, 6, device=DEVICE)
    first = block_loss_outputs(field32, x32, 1.0, 3, "compiled")
    again = block_loss_outputs(field32, x32, 1.0, 3, "compiled")
    for a, b in zip(first, again):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- limits and fallback
@cuda_only
def test_beyond_the_limits_auto_falls_back_and_compiled_refuses():
    limits = _backend.cuda_limits()
    for dim, hidden, layers in ((limits["dim"] + 1, 8, 2), (2, limits["hidden"] + 1, 2),
                                (2, 8, limits["weights"])):  # layers hidden layers = weights + 1 matrices
        field = cuda_field(dim, hidden, layers, dtype=torch.float32)
        x = torch.randn(10, dim, device=DEVICE)
        assert _backend.choose("auto", field, x) == "torch"
        with pytest.raises(ValueError, match="CUDA kernels take"):
            _backend.choose("compiled", field, x)
        with pytest.raises(ValueError, match="CUDA kernels take"):  # the op itself refuses too
            torch.ops.jkofast.mlp_field_div(x, None if not field.time else torch.zeros(10, device=DEVICE),
                                            None, field.weights, field.biases, "softplus", 1.0)
        f, div = jkofast.divergence(field, x, 0.0, backend="auto")  # the reference runs it
        want = R.mlp_velocity_and_divergence(x, torch.zeros(10, device=DEVICE), field.weights, field.biases)
        torch.testing.assert_close(f, want[0])
    at_limit = cuda_field(limits["dim"], limits["hidden"], 2, dtype=torch.float32)
    assert _backend.choose("auto", at_limit, torch.randn(3, limits["dim"], device=DEVICE)) == "compiled"


@pytest.mark.parametrize("dtype,tf32", [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
def test_first_use_check_passes_on_this_gpu(dtype, tf32):
    # backend="auto" hands a shape to the kernels only after they agree with the reference on a
    # small case of it (jkofast/_kernel_check.py): a false alarm would put every user of this GPU
    # on the pure-torch engine. Here: the sizes of the benchmarks, a deep field (TF32's error grows
    # with depth, for torch's products too) and both limits.
    from jkofast import _kernel_check

    limits = _backend.cuda_limits()
    shapes = [(2, 64, 3, "softplus", True), (6, 128, 3, "tanh", True), (63, 256, 3, "softplus", False),
              (2, 512, limits["weights"] - 1, "silu", True),
              (limits["dim"], limits["hidden"], 2, "silu", True)][:None if DEVICE == "cuda" else 1]  # (CPU: minutes)
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for dim, hidden, layers, activation, time in shapes:
            field = jkofast.VelocityField(dim, hidden, layers, activation, time=time).to(DEVICE, dtype)
            assert _kernel_check.verdict_for(field, DEVICE, dtype, tf32) is None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


@cuda_only
def test_the_kernel_checks_plan_reaches_the_backward_on_its_own_stream():
    # The first-use check forces tile plans on its own stream only (csrc/launch_override.h); the
    # backward kernels see them because autograd runs a node on its forward's stream.
    from jkofast import _C, _kernel_check

    seen = []
    probe = backward_through(lambda g: seen.append((torch.cuda.current_stream().cuda_stream,
                                                    _C._cuda_launch_override())) or g)(lambda x: x)
    x = torch.randn(5, 2, device="cuda", requires_grad=True)
    with _kernel_check._own_stream(x.device):
        mine = torch.cuda.current_stream().cuda_stream
        _kernel_check._run_kernels(lambda: torch.autograd.grad(probe(x).sum(), x), x.device, (1, 2),
                                   "a plan", "a probe")
    assert mine != torch.cuda.current_stream().cuda_stream and mine != 0
    assert seen == [(mine, (1, 2, mine))]
    assert _C._cuda_launch_override() == (0, 0, 0)


def _kernel_launches(run) -> list[dict]:
    """(name, grid, shared memory) of each CUDA kernel ``run()`` launched, as CUPTI saw them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(os.path.join(tmp, "trace.json"))
        with open(os.path.join(tmp, "trace.json")) as f:
            events = json.load(f)["traceEvents"]
    kernels = sorted((e for e in events if str(e.get("cat")).lower() == "kernel"), key=lambda e: e["ts"])
    assert kernels, "the profiler saw no kernel (no CUPTI?)"
    return [{"name": e["name"], "grid": e["args"]["grid"][0], "smem": e["args"]["shared memory"]}
            for e in kernels if "jkofast" in e["name"]]


@cuda_only
def test_the_launch_override_sets_the_launched_grid_and_tiles_on_its_stream_only():
    # What the kernel check's plans rest on, seen as launched (CUPTI's record of each kernel): under
    # the override, the kernels on its stream, the backward's included, run the forced grid and
    # tiles (smaller tiles: less shared memory); launches on any other stream keep their own plan.
    from jkofast import _C, _kernel_check

    field = cuda_field(6, 128, 3, dtype=torch.float32)
    # 2000 samples: the kernels' own plan takes small tiles (the largest make too few to fill the
    # GPU twice: ops/tile_plan.h), so the largest-tile plan differs from it
    x = torch.randn(2000, 6, device=DEVICE, requires_grad=True)

    def forward_and_backward():
        f, div = O.mlp_field_div(x, torch.tensor(0.3, device=DEVICE), field.weights, field.biases)
        torch.autograd.grad((f.square().sum() + div.sum()), [x, *field.weights])

    def under(plan, *, on_its_stream=True):
        def run():
            with _kernel_check._own_stream(x.device):
                if on_its_stream:
                    _kernel_check._run_kernels(forward_and_backward, x.device, plan, "a plan", "mlp_field_div")
                    return
                mine, other = torch.cuda.current_stream().cuda_stream, torch.cuda.Stream(x.device)
                assert other.cuda_stream not in (mine, 0)
                other.wait_stream(torch.cuda.current_stream())
                try:
                    _C._set_cuda_launch_override(*plan, mine)
                    with torch.cuda.stream(other):
                        forward_and_backward()
                    other.synchronize()
                finally:
                    _C._set_cuda_launch_override(0, 0, 0)
        field_kernels = [k for k in _kernel_launches(run) if "mlp_field" in k["name"]]
        assert ["backward" in k["name"] for k in field_kernels] == [False, True], field_kernels
        return field_kernels

    own = under((0, 0))
    assert all(k["grid"] > 2 for k in own), own
    smallest = under((1, 2))
    assert all(k["grid"] == 2 for k in smallest), smallest
    assert all(s["smem"] <= o["smem"] for s, o in zip(smallest, own)), (smallest, own)
    largest = under((1 << 16, 0))
    assert all(g["smem"] > o["smem"] for g, o in zip(largest, own)), (largest, own)
    elsewhere = under((1, 2), on_its_stream=False)
    assert [(k["grid"], k["smem"]) for k in elsewhere] == [(k["grid"], k["smem"]) for k in own], (elsewhere, own)
    assert _C._cuda_launch_override() == (0, 0, 0)


@cuda_only
def test_x_on_the_cpu_with_cuda_weights_is_a_value_error():
    # Any CUDA argument sends the dispatcher to the CUDA kernels; x itself on the CPU must get the
    # same ValueError as any other argument on the wrong device, not c10's device-guard error.
    field = cuda_field(3, 8, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.zeros(5, dtype=torch.float64, device=DEVICE)
    w, b = list(field.weights), list(field.biases)
    ops = torch.ops.jkofast
    calls = {
        "mlp_field": lambda: ops.mlp_field(x, t, w, b, "softplus", 1.0),
        "mlp_field_div": lambda: ops.mlp_field_div(x, t, None, w, b, "softplus", 1.0),
        "rk4_block": lambda: ops.rk4_block(x, None, w, b, 0.0, 1.0, 2, "rk4", "exact", True, "softplus", 1.0),
        "jko_block_loss": lambda: ops.jko_block_loss(x, None, w, b, 0.0, 1.0, 2, "rk4", "exact", True, "softplus",
                                                     1.0, 0.5, 0.0),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"jkofast::{name}: x is on cpu but other arguments are on CUDA"):
            call()


@pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.device_count() < 2, reason="needs two GPUs (cuda)")
def test_inputs_on_a_device_other_than_the_current_one():
    # The ops guard x's device (cuda_glue.h device_guard): run on cuda:1 while cuda:0 is current.
    field = random_field(4, 16, 2).to("cuda:1")
    x = torch.randn(20, 4, dtype=torch.float64, device="cuda:1")
    t0 = torch.tensor(0.4, dtype=torch.float64, device="cuda:1")
    with torch.cuda.device(0), poisoned():
        got = O.mlp_field_div(x, t0, field.weights, field.biases)
        x1 = O.rk4_block(x, field.weights, field.biases, 0.0, 1.0, 2)[0]
    assert got[0].device == x1.device == x.device
    want = R.mlp_velocity_and_divergence(x, t0, field.weights, field.biases)
    assert_all_close(list(got), list(want), F64, "cuda:1")
    assert_all_close([x1], [jkofast.rk4(field, x, 0.0, 1.0, 2, backend="torch")[0]], F64, "cuda:1 rk4")


def test_non_contiguous_inputs():
    field = cuda_field(4, 16, 2)
    x = torch.randn(4, 20, dtype=torch.float64, device=DEVICE).t()  # transposed view
    v = torch.randn(20, 4, 2, dtype=torch.float64, device=DEVICE).transpose(1, 2)
    t0 = torch.tensor(0.4, dtype=torch.float64, device=DEVICE)
    with poisoned():
        got = O.mlp_field_div(x, t0, field.weights, field.biases, probes=v)
    want = R.mlp_velocity_and_divergence(x, t0, field.weights, field.biases, probes=v)
    assert_all_close(list(got), list(want), F64, "non-contiguous")


def test_training_on_cuda_with_compiled_backend_matches_reference(moons):
    from conftest import SHORT_RUN

    options = dict(SHORT_RUN, blocks=2, iters=60)
    nll = {}
    for backend in ("torch", "compiled"):
        flow = jkofast.train(moons[0], val=moons[1], progress=False, backend=backend, device=DEVICE, **options)
        with torch.no_grad():
            nll[backend] = float(-flow.log_prob(moons[1].to(DEVICE), backend="torch").mean())
    assert abs(nll["compiled"] - nll["torch"]) < 0.01, nll
