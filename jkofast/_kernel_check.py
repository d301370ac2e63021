"""A first-use check of the compiled CUDA kernels on the GPU at hand, against the pure-torch engine.

Why: the CUDA kernels are tested against the float64 reference on the GPUs the test suite runs on,
but a GPU model, driver or build it never ran on can give wrong numbers without raising (a
fragment layout, a race, a shared-memory limit). A CNF's likelihoods are only as good as its
divergence, and a wrong one trains a wrong model without a sign. So before ``backend="auto"`` (or
``"compiled"``) first hands a field of some shape to the kernels on a device, the kernels run once
on a small random case of that shape (d, width, layers, activation, time input, dtype, the TF32
switch) and each output, with its gradients, is compared with the pure-torch engine in float64:
the ``mlp_field_div`` op's field with its exact divergence and a Hutchinson estimate, ``rk4_block``'s end points,
log-determinants and kinetic energies over 2 steps, and the fused training step
(``jko_block_loss``). On a disagreement jkofast warns once (:class:`KernelCheckWarning`) and the
pure-torch engine runs that shape on that device; ``backend="compiled"`` raises, naming the output.

Cost: a few milliseconds per (device, shape, dtype), once per process; the check draws from its
own generator (the caller's random state is untouched) and runs outside any autocast,
``no_grad`` or ``inference_mode`` of the caller. It is skipped (the kernels trusted, checked at
the next call made outside) while torch.compile traces or a CUDA graph is being captured, where
it could not run.

Tolerances: float64 outputs within 1e-9 of their scale (the kernels sum in another order than
torch: a few ulps times the depth; a wrong term is O(1)); float32 within 2^-6 of their scale:
TF32 products round their inputs to 10 mantissa bits (2^-11 relative), and the emulated kernels'
worst TF32 output was 1.9 x 2^-11 of its scale (bench/gpu_notes.md), so 2^-6 leaves 16x.
"""
from __future__ import annotations

import math

import torch

from . import reference
from ._warn import JkofastWarning, warn_user

CHECKED_DEVICE_TYPES = ("cuda",)  # the CPU kernels are checked by the test suite on the CPUs they build for
BATCH = 37  # not a multiple of any tile height (16 rows and up), so the last tile is ragged
STEPS = 2
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2.0 ** -6}


class KernelCheckWarning(JkofastWarning):
    """The compiled kernels disagreed with the pure-torch engine on this device: jkofast runs the
    pure-torch engine for that shape instead."""


_verdicts: dict[tuple, str | None] = {}


def disagreement(field, x: torch.Tensor) -> str | None:
    """Why the compiled kernels must not run ``field`` on ``x``'s device and dtype (they disagreed
    with the pure-torch engine on a small case of the same shape), or None. Checked once per
    (device, shape, dtype, TF32 switch); warns the first time it finds a disagreement."""
    if x.device.type not in CHECKED_DEVICE_TYPES or torch.compiler.is_compiling():
        return None
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    device = x.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    key = (str(device), x.dtype, tf32, tuple(sorted(field.config().items())))
    if key not in _verdicts:
        _verdicts[key] = _verdict(field, device, x.dtype)
        if _verdicts[key] is not None:
            warn_user(_verdicts[key] + "; jkofast runs its pure-torch engine for this field on this device. "
                      "Please report it with the output of `jkofast info`", KernelCheckWarning)
    return _verdicts[key]


def _verdict(field, device: torch.device, dtype: torch.dtype) -> str | None:
    # The caller's torch.use_deterministic_algorithms(True) would make the reference's cuBLAS
    # products raise without CUBLAS_WORKSPACE_CONFIG (the kernels alone need none): off meanwhile.
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        return _compare(field, device, dtype)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _compare(field, device: torch.device, dtype: torch.dtype) -> str | None:
    config = field.config()
    try:
        # (fork_rng: building the fields' nn.Linear layers draws from the global generator)
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), \
                torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for op, names, kernel, truth in _comparisons(config, device, dtype):
                for name, k, r in zip(names, kernel, truth):
                    scale = max(r.abs().max().item(), 1.0)
                    error = (k.double() - r).abs().max().item()
                    if not error <= TOLERANCE[dtype] * scale:  # (NaN fails too)
                        return (f"the compiled kernels failed jkofast's check on {_named(device)}: {op}'s {name} is "
                                f"{error:.3g} from the pure-torch engine's (scale {scale:.3g}; {dtype}, field {config})")
    except torch.OutOfMemoryError:
        raise  # (the GPU is full, not wrong: no verdict, the next call checks again)
    except Exception as e:  # (a launch failure, an illegal address: the same verdict, with torch's words)
        return f"the compiled kernels failed jkofast's check on {_named(device)}: {type(e).__name__}: {e}"
    return None


def _named(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def _comparisons(config: dict, device: torch.device, dtype: torch.dtype):
    """(op, output names, kernel outputs, float64 reference outputs) of each op on one random case."""
    from ._backend import compiled_ops as ops, has_kernel
    from .field import VelocityField
    from .integrate import _integrate

    gen = torch.Generator(device=device).manual_seed(20261206)
    truth_field = VelocityField(**config).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for lin in truth_field.linears:  # O(1) pre-activations at any width: every layer nonlinear
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, device=device, dtype=torch.float64)
                             * (1.5 / math.sqrt(lin.weight.shape[1])))
            lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=gen, device=device, dtype=torch.float64))
    field = VelocityField(**config).to(device=device, dtype=dtype)
    field.load_state_dict(truth_field.state_dict())
    truth_field.load_state_dict(field.state_dict())  # float32 cases: the reference sees the same rounded weights
    x = torch.randn(BATCH, config["dim"], generator=gen, device=device, dtype=dtype)
    t = torch.rand(BATCH, generator=gen, device=device, dtype=dtype)
    time = config["time"]
    act, beta = config["activation"], config["beta"]

    def grads(outputs, leaves, seed):
        """The outputs, then the gradients of a random weighting of them with respect to ``leaves``."""
        g = torch.Generator(device=device).manual_seed(seed)
        total = sum((o * torch.randn(o.shape, generator=g, device=device, dtype=torch.float64).to(o.dtype)).sum()
                    for o in outputs)
        found = torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)
        return [o.detach() for o in outputs] + list(found)

    param_names = ["d/d" + name for name, _ in field.named_parameters()]
    field_names = ["f", "div", "d/dx", *param_names] + (["d/dt"] if time else [])
    rk4_names = ["x1", "logdet", "kinetic", "d/dx0", *param_names]

    def leaves(f, dt):
        """Fresh leaves: x, t and the parameters of ``f`` in ``dt`` (t only where the field takes it)."""
        xs, ts = (v.detach().to(dt).clone().requires_grad_(True) for v in (x, t))
        return xs, (ts if time else None), [*f.parameters()] + ([ts] if time else [])

    # the field and its exact divergence
    xs, ts, wrt = leaves(field, dtype)
    kernel = grads(ops.mlp_field_div(xs, ts, field.weights, field.biases, act, beta), [xs, *wrt], 1)
    xs, ts, wrt = leaves(truth_field, torch.float64)
    truth = grads(reference.mlp_velocity_and_divergence(xs, ts, truth_field.weights, truth_field.biases, act, beta),
                  [xs, *wrt], 1)
    yield "mlp_field_div", field_names, kernel, truth

    # the Hutchinson estimate, its probes being tangent rows of their own
    probes = torch.randn(BATCH, 3, config["dim"], generator=gen, device=device, dtype=torch.float64)
    xs, ts, wrt = leaves(field, dtype)
    kernel = grads(ops.mlp_field_div(xs, ts, field.weights, field.biases, act, beta, probes.to(dtype)), [xs, *wrt], 3)
    xs, ts, wrt = leaves(truth_field, torch.float64)
    truth = grads(reference.mlp_velocity_and_divergence(xs, ts, truth_field.weights, truth_field.biases, act, beta,
                                                        probes.to(dtype).double()), [xs, *wrt], 3)
    yield "mlp_field_div (Hutchinson probes)", field_names, kernel, truth

    # an RK4 integration with its log-determinant and kinetic energy
    xs, params = x.detach().clone().requires_grad_(True), list(field.parameters())
    kernel = grads(ops.rk4_block(xs, field.weights, field.biases, 0.0, 1.0, STEPS, time=time, activation=act,
                                 beta=beta), [xs, *params], 2)
    xs64, params64 = x.detach().double().requires_grad_(True), list(truth_field.parameters())
    truth = grads(_integrate(truth_field, xs64, 0.0, 1.0, STEPS, "torch", "exact", 1, "rademacher", "rk4", None),
                  [xs64, *params64], 2)
    yield "rk4_block", rk4_names, kernel, truth

    # the fused training step: loss, per-sample terms and gradients
    if not has_kernel("jko_block_loss", device.type):
        return
    loss, terms = ops.jko_block_loss(xs, field.weights, field.biases, STEPS, endpoint_weight=0.7, path_weight=0.3,
                                     time=time, activation=act, beta=beta)
    kernel = [loss.detach(), terms] + list(torch.autograd.grad(loss, [xs, *params]))
    x1, logdet, kinetic = _integrate(truth_field, xs64, 0.0, 1.0, STEPS, "torch", "exact", 1, "rademacher", "rk4", None)
    terms64 = torch.stack([0.5 * x1.square().sum(1), logdet, (x1 - xs64).square().sum(1), kinetic], 1)
    loss64 = (terms64[:, 0] - terms64[:, 1] + 0.7 * terms64[:, 2] + 0.3 * terms64[:, 3]).mean()
    truth = [loss64.detach(), terms64.detach()] + list(torch.autograd.grad(loss64, [xs64, *params64]))
    yield "jko_block_loss", ["loss", "per-sample terms", *rk4_names[3:]], kernel, truth


def forget() -> None:
    """Drop the verdicts (tests; a process that swapped its GPU driver would need it too)."""
    _verdicts.clear()
