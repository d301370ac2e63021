"""A first-use check of the compiled CUDA kernels on the GPU at hand, against the pure-torch engine.

Why: the CUDA kernels are tested against the float64 reference on the GPUs the test suite runs on,
but a GPU model, driver or build it never ran on can give wrong numbers without raising (a
fragment layout, a race, a shared-memory limit). A CNF's likelihoods are only as good as its
divergence, and a wrong one trains a wrong model without a sign. So before ``backend="auto"`` (or
``"compiled"``) first hands a field of some shape to the kernels on a device, the kernels run on a
small random case of that shape (d, width, layers, activation, time input, dtype; the TF32 switch
and ``JKOFAST_CUDA_ROWS``, which choose the kernels' code path), under three tile plans (PLANS:
their own for that batch, the smallest tiles on two thread blocks that each loop over several,
and the largest tiles that fit: the code paths of training batches), and each output, with its
gradients, is compared with the pure-torch engine: the ``mlp_field`` and ``mlp_field_div`` ops
(exact and Hutchinson divergence), ``rk4_block`` forwards with the log-determinant and kinetic
energy, with Hutchinson probes, and backwards without a divergence (sampling), and the fused
training step ``jko_block_loss`` (loss, each per-sample term, gradients). On a disagreement
jkofast warns once (:class:`KernelCheckWarning`) and the pure-torch engine runs that shape on that
device; ``backend="compiled"`` raises, naming the output. ``JKOFAST_KERNEL_CHECK=0`` trusts the
kernels without checking (the way past a false alarm, which is a bug to report).

Tolerances, per output (each per-sample term its own): float64 kernels within 1e-9 of the
output's scale of the float64 reference (they sum in another order: a few ulps times the depth;
a wrong term is O(1) of its output). A float32 shape is checked in float64 first (the same code
with another element type: logic errors show there, at that tight tolerance), then in float32,
where the kernels' error against the float64 reference may be at most 4x that of the reference run
in float32 with the same TF32 switch, plus 2^-9 of the scale with TF32 (the kernels round the
first layer's columns too: one more TF32 rounding, 2^-11) or 2^-20 without; the weights' and
biases' gradients, sums over the batch that may cancel, 2^-16 of the case's largest one more. Calibrating on torch's
own error keeps a deep or wide field, whose TF32 error is large for both, from a false alarm.

Cost: once per (device, shape), per process; not yet timed on a GPU (expected milliseconds: a
float64 reference of 19-263 samples and the kernels under three plans; more on GPUs with slow
float64 at the largest shapes). The check runs on a CUDA stream of its own, and the plans are
forced for that stream alone (another thread's work, a CUDA graph being captured, keep theirs,
unless torch's stream pool handed them the same stream: then slower, with the same results). The
check draws from its own generators (the caller's random state is untouched) and runs outside any
autocast, ``no_grad``, ``inference_mode`` or deterministic mode of the caller. Where it cannot run (while torch.compile
traces, under fake tensors or a dispatch mode such as make_fx's, during CUDA-graph capture) it is
not decided there: a shape already found wrong stays refused, any other is checked at the first
call outside. Out of GPU memory, it is left undecided too.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import reference
from ._warn import JkofastWarning, warn_user

CHECKED_DEVICE_TYPES = ("cuda",)  # the CPU kernels are checked by the test suite on the CPUs they build for
SWITCH = "JKOFAST_KERNEL_CHECK"  # "0": trust the kernels without checking
STEPS = 2
# The kernels' tile plans the check runs each case under (csrc/launch_override.h). Its small batch
# alone gets the smallest tiles, one per thread block; a training batch gets larger tiles, and
# blocks that loop over several tiles (float32 gradient totals: csrc/cuda/mlp_params.h).
SMALLEST_TILES, LARGEST_TILES = 1, 1 << 16  # stack rows, clamped to the kernels' range: the smallest / largest that fit
PLANS = (((0, 0), "their own tile plan"),
         ((SMALLEST_TILES, 2), "their smallest tiles on 2 thread blocks, each looping over several tiles"),
         ((LARGEST_TILES, 0), "their largest tiles that fit"))
# The batches: primes (never a multiple of a tile's samples), large enough that 2 blocks of the
# smallest float32 tiles each loop over more tiles than a float32 gradient part sums (mlp_params.h:
# 8 field passes, 1 RK4 tile), so every case reaches the double totals (test_cuda_emulation.py
# checks it at every d). With the exact divergence a smallest tile holds at most 8 samples
# (d = 1), and one from d = 8 on; without tangents it holds 16, with 3 Hutchinson probes 4.
EXACT_BATCH_SMALL_D, EXACT_BATCH, OTHER_BATCH = 137, 19, 263

F64_TOLERANCE = 1e-9
F32_FACTOR = 4.0
F32_FLOOR = {True: 2.0 ** -9, False: 2.0 ** -20}  # of the scale, with and without TF32
# The weights' and biases' gradients sum per-sample terms over the batch, and a sum that cancels
# (a bias gradient of 147 made of terms in the thousands) has the rounding error of its terms,
# not of its value; the kernels also sum a tile's samples in order where torch sums pairwise. So
# these outputs are allowed 2^-16 of the case's largest parameter gradient more (CPU kernels,
# float32 at width 256: 2.9e-6 of it), in any precision: TF32's own rounding is in the 4x term.
F32_SUMMATION_SLACK = 2.0 ** -16


def batches(dim: int) -> tuple[int, int]:
    """The check's batch for the cases with the exact divergence (d tangent rows), and for the others."""
    return (EXACT_BATCH_SMALL_D if dim <= 8 else EXACT_BATCH), OTHER_BATCH


class KernelCheckWarning(JkofastWarning):
    """The compiled kernels disagreed with the pure-torch engine on this device: jkofast runs the
    pure-torch engine for that shape instead."""


class _KernelFailed(Exception):
    """A kernel raised during the check (a launch failure, an illegal address)."""


_verdicts: dict[tuple, str | None] = {}  # (shape, switches) -> why the kernels must not run it, or None
_refused: dict[tuple, str] = {}  # shape -> the first verdict against it, for the calls that cannot check
_lock = threading.RLock()  # (verdict_for takes it too: one check at a time sets the launch override)
_UNDECIDED = object()


def disagreement(field, x: torch.Tensor) -> str | None:
    """Why the compiled kernels must not run ``field`` on ``x``'s device and dtype (they disagreed
    with the pure-torch engine on a small case of the same shape), or None. Checked once per
    (device, shape, dtype, TF32 switch, rows knob); warns the first time it finds a disagreement."""
    if x.device.type not in CHECKED_DEVICE_TYPES:
        return None
    if torch.compiler.is_compiling():  # (first: nothing below is traceable)
        return _refused.get(_shape(field, x)) if _refused else None
    if _cannot_run(x):
        return _refused.get(_shape(field, x))
    from . import _C

    tf32 = x.dtype == torch.float32 and _C.tf32_matmul_allowed()
    key = (_shape(field, x), tf32, os.environ.get("JKOFAST_CUDA_ROWS", ""))
    verdict = _verdicts.get(key, _UNDECIDED)
    if verdict is None:  # (the common case, first: one environment read per call)
        return None
    if os.environ.get(SWITCH) == "0":
        return None
    if verdict is _UNDECIDED:
        with _lock:  # (one check per key, one warning, whichever thread comes first)
            if key not in _verdicts:
                _decide(key, field, x, tf32)
        verdict = _verdicts.get(key)
    return verdict


def _shape(field, x: torch.Tensor) -> tuple:
    """What chooses the kernels' code path, but the switches (beta is a number the code takes)."""
    index = x.device.index
    if x.device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return (x.device.type, index, x.dtype, field.dim, field.hidden, field.layers, field.activation, field.time)


def _cannot_run(x: torch.Tensor) -> bool:
    """Inside a trace with fake or proxy tensors, or a CUDA graph's capture: no numbers to compare."""
    # (fake and functional tensors are subclasses; a FakeTensorMode or make_fx's proxy mode is a
    # dispatch mode; torch._guards.detect_fake_mode would cost 40 us on every call)
    if type(x) not in (torch.Tensor, torch.nn.Parameter) or _get_current_dispatch_mode() is not None:
        return True
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _decide(key: tuple, field, x: torch.Tensor, tf32: bool) -> None:
    device = torch.device(x.device.type, key[0][1]) if x.device.type == "cuda" else x.device
    try:
        verdict = verdict_for(field, device, x.dtype, tf32)
    except torch.OutOfMemoryError:
        return  # the GPU is full, not wrong: undecided, the next call checks again
    except Exception as e:  # the check's own failure: say so, and do not blame the kernels
        _verdicts[key] = None
        warn_user(f"jkofast could not check its compiled kernels on {_named(device)} ({type(e).__name__}: {e}); "
                  "they run unchecked. Please report it with the output of `jkofast info`", KernelCheckWarning)
        return
    _verdicts[key] = verdict
    if verdict is not None:
        _refused.setdefault(key[0], verdict)
        warn_user(verdict + "; jkofast runs its pure-torch engine for this field on this device. Please report "
                  f"it with the output of `jkofast info` ({SWITCH}=0 runs the kernels unchecked)", KernelCheckWarning)


def verdict_for(field, device: torch.device | str, dtype: torch.dtype, tf32: bool) -> str | None:
    """The check of ``field``'s shape on ``device`` in ``dtype`` (TF32 products or not), uncached:
    None where the kernels agree with the pure-torch engine, else which output did not, or which
    kernel raised. Raises where the check itself cannot run (out of memory, among others)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        with _lock:
            return _verdict(field, device, dtype, tf32)
    except _KernelFailed as e:
        cause = e.__cause__
        after = " (a CUDA error leaves the process's GPU context unusable: restart it)" \
            if "CUDA error" in str(cause) else ""
        return f"the compiled kernels failed jkofast's check on {_named(device)}: {e}: " \
               f"{type(cause).__name__}: {cause}{after}"


def _verdict(field, device: torch.device, dtype: torch.dtype, tf32: bool) -> str | None:
    """The check itself: None where every output agrees, else which did not."""
    # The caller's torch.use_deterministic_algorithms(True) would make the reference's cuBLAS
    # products raise without CUBLAS_WORKSPACE_CONFIG (the kernels alone need none): off meanwhile.
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        # (fork_rng: building the fields' nn.Linear layers draws from the global generator)
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), \
                torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            config = dict(dim=field.dim, hidden=field.hidden, layers=field.layers,
                          activation=field.activation, time=field.time, beta=field.beta)
            # On a stream of its own: the launch override holds there alone (launch_override.h).
            with _own_stream(device):
                return _compare(config, device, torch.float64, tf32=False) or \
                    (_compare(config, device, dtype, tf32) if dtype != torch.float64 else None)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _compare(config: dict, device: torch.device, dtype: torch.dtype, tf32: bool) -> str | None:
    for op, names, kernel, truth, torch_low, summed in _cases(config, device, dtype):
        scales = [max(r.abs().max().item(), 1.0) for r in truth]
        summed_scale = max([scale for name, scale in zip(names, scales) if name in summed], default=1.0)
        if dtype == torch.float64:
            allowances = [F64_TOLERANCE * scale for scale in scales]
        else:
            allowances = [F32_FACTOR * (low.double() - r).abs().max().item() + F32_FLOOR[tf32] * scale
                          + (F32_SUMMATION_SLACK * summed_scale if name in summed else 0.0)
                          for name, r, low, scale in zip(names, truth, torch_low, scales)]
        for plan, plan_name in PLANS:  # (the same allowances: the plans change the kernels' order of sums only)
            outputs = _run_kernels(kernel, device, plan, plan_name, op)
            for name, k, r, scale, allowed in zip(names, outputs, truth, scales, allowances):
                error = (k.double() - r).abs().max().item()
                if not error <= allowed:  # (NaN fails too)
                    precision = "float64" if dtype == torch.float64 else f"float32, TF32 {'on' if tf32 else 'off'}"
                    return (f"the compiled kernels failed jkofast's check on {_named(device)}: {op}'s {name} is "
                            f"{error:.3g} from the pure-torch engine's, above the {allowed:.3g} allowed (scale "
                            f"{scale:.3g}; {precision}; the kernels under {plan_name}; field {config})")
    return None


@contextlib.contextmanager
def _own_stream(device: torch.device):
    """Meanwhile, a new CUDA stream is the current one on a CUDA ``device`` (waited for after)."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def _run_kernels(kernel, device: torch.device, plan: tuple[int, int], plan_name: str, op: str):
    """``kernel()``'s outputs with the CUDA kernels under the forced (stack rows, grid cap) ``plan``
    ((0, 0): their own), on the current stream only. A kernel's failure, at its launch or while it
    runs (seen at the synchronization), is the kernels' (_KernelFailed), named with the plan."""
    from . import _C

    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    try:
        _C._set_cuda_launch_override(*plan, stream)
        outputs = kernel()  # (the backward too: autograd runs it on the forward's stream)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        return outputs
    except torch.OutOfMemoryError:
        raise
    except _KernelFailed as e:
        raise _KernelFailed(f"{e} under {plan_name}") from e.__cause__
    except Exception as e:  # (a backward kernel, run by autograd, or an asynchronous fault)
        raise _KernelFailed(f"{op}'s kernels under {plan_name} raised") from e
    finally:
        _C._set_cuda_launch_override(0, 0, 0)


def _named(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def _kernel(fn, *args, what: str, **kwargs):
    """Run a compiled op; an exception it raises is the kernels' failure, not the check's."""
    try:
        return fn(*args, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:
        raise _KernelFailed(f"{what} raised") from e


def _cases(config: dict, device: torch.device, dtype: torch.dtype):
    """(op, output names, a function computing the kernel outputs, float64 reference outputs,
    reference outputs in ``dtype``, the names of the outputs summed over the batch: the weights'
    and biases' gradients) of each case, on one random field and batch."""
    from ._backend import compiled_ops as ops, has_kernel
    from .field import VelocityField
    from .integrate import _integrate

    dim, time, act, beta = config["dim"], config["time"], config["activation"], config["beta"]
    exact_batch, other_batch = batches(dim)
    batch = max(exact_batch, other_batch)  # (drawn once; an exact case takes the first exact_batch)
    gen = torch.Generator(device=device).manual_seed(20261206)
    fields = {torch.float64: VelocityField(**config).to(device=device, dtype=torch.float64)}
    with torch.no_grad():
        for lin in fields[torch.float64].linears:  # O(1) pre-activations at any width: every layer nonlinear
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, device=device, dtype=torch.float64)
                             * (1.5 / math.sqrt(lin.weight.shape[1])))
            lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=gen, device=device, dtype=torch.float64))
    if dtype != torch.float64:  # the same weights rounded, and the float64 truth of those
        fields[dtype] = VelocityField(**config).to(device=device, dtype=dtype)
        fields[dtype].load_state_dict(fields[torch.float64].state_dict())
        fields[torch.float64].load_state_dict(fields[dtype].state_dict())
    x = torch.randn(batch, dim, generator=gen, device=device, dtype=torch.float64).to(dtype)
    t = torch.rand(batch, generator=gen, device=device, dtype=torch.float64).to(dtype)
    probes = torch.randn(batch, 3, dim, generator=gen, device=device, dtype=torch.float64).to(dtype)

    param_names = ["d/d" + name for name, _ in fields[dtype].named_parameters()]
    field_names = ["f", "div", "d/dx", *param_names] + (["d/dt"] if time else [])
    rk4_names = ["x1", "logdet", "kinetic", "d/dx0", *param_names]

    def run(engine, dt, case, seed, n):
        """A case's outputs on the first n samples, then the gradients of a random weighting of
        them, with fresh leaves."""
        f = fields[dt]
        xs, ts = (v[:n].detach().to(dt).clone().requires_grad_(True) for v in (x, t))
        outputs, leaves = case(engine, f, xs, ts if time else None)
        g = torch.Generator(device=device).manual_seed(seed)
        total = sum((o * torch.randn(o.shape, generator=g, device=device, dtype=torch.float64).to(o.dtype)).sum()
                    for o in outputs)
        found = torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)
        return [o.detach() for o in outputs] + list(found)

    def field_case(hutchinson, with_div):
        def case(engine, f, xs, ts):
            v = probes[:len(xs)].to(xs.dtype) if hutchinson else None
            if engine == "kernel":
                out = _kernel(ops.mlp_field_div, xs, ts, f.weights, f.biases, act, beta, v, what="mlp_field_div") \
                    if with_div else [_kernel(ops.mlp_field, xs, ts, f.weights, f.biases, act, beta, what="mlp_field")]
            else:
                out = reference.mlp_velocity_and_divergence(xs, ts, f.weights, f.biases, act, beta, v) \
                    if with_div else [reference.mlp_velocity(xs, ts, f.weights, f.biases, act, beta)]
            return list(out), [xs, *f.parameters()] + ([ts] if time else [])
        return case

    def rk4_case(t0, t1, divergence):
        def case(engine, f, xs, ts):
            pgen = torch.Generator(device=device).manual_seed(7)  # (Rademacher: the same probes in any dtype)
            out = _kernel(_integrate, f, xs, t0, t1, STEPS, "compiled", divergence, 1, "rademacher", "rk4", pgen,
                          what=f"rk4_block from t={t0} to {t1}") if engine == "kernel" else \
                _integrate(f, xs, t0, t1, STEPS, "torch", divergence, 1, "rademacher", "rk4", pgen)
            return [o for o in out if o is not None], [xs, *f.parameters()]
        return case

    def loss_outputs(engine, dt):
        """The loss, its per-sample terms and its gradients (no random weighting: one scalar)."""
        f, xs = fields[dt], x[:exact_batch].detach().to(dt).clone().requires_grad_(True)
        if engine == "kernel":
            loss, terms = _kernel(ops.jko_block_loss, xs, f.weights, f.biases, STEPS, endpoint_weight=0.7,
                                  path_weight=0.3, time=time, activation=act, beta=beta, what="jko_block_loss")
        else:
            x1, logdet, kinetic = _integrate(f, xs, 0.0, 1.0, STEPS, "torch", "exact", 1, "rademacher", "rk4", None)
            terms = torch.stack([0.5 * x1.square().sum(1), logdet, (x1 - xs).square().sum(1), kinetic], 1)
            loss = (terms[:, 0] - terms[:, 1] + 0.7 * terms[:, 2] + 0.3 * terms[:, 3]).mean()
        return [loss.detach(), *terms.detach().unbind(1), *torch.autograd.grad(loss, [xs, *f.parameters()])]

    cases = [  # (op, names, case, seed of the output weighting, batch)
        ("mlp_field", ["f", *field_names[2:]], field_case(False, False), 1, other_batch),
        ("mlp_field_div", field_names, field_case(False, True), 2, exact_batch),
        ("mlp_field_div (Hutchinson probes)", field_names, field_case(True, True), 3, other_batch),
        ("rk4_block", rk4_names, rk4_case(0.0, 1.0, "exact"), 4, exact_batch),
        ("rk4_block (Hutchinson probes)", rk4_names, rk4_case(0.0, 1.0, "hutchinson"), 5, other_batch),
        ("rk4_block backwards, no divergence (sampling)", ["x1", "kinetic", *rk4_names[3:]],
         rk4_case(1.0, 0.0, None), 6, other_batch),
    ]
    for op, names, case, seed, n in cases:
        yield op, names, functools.partial(run, "kernel", dtype, case, seed, n), \
            run("torch", torch.float64, case, seed, n), run("torch", dtype, case, seed, n), set(param_names)
    if has_kernel("jko_block_loss", device.type):
        names = ["loss", "|x1|^2/2 terms", "logdet terms", "|x1 - x0|^2 terms", "kinetic terms", *rk4_names[3:]]
        yield "jko_block_loss", names, functools.partial(loss_outputs, "kernel", dtype), \
            loss_outputs("torch", torch.float64), loss_outputs("torch", dtype), set(param_names)


def forget() -> None:
    """Drop the verdicts (tests; a process that swapped its GPU driver would need it too)."""
    _verdicts.clear()
    _refused.clear()
