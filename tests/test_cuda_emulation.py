"""The CUDA kernels of csrc/cuda/, run on the CPU by tests/cuda_emulation/ (no GPU needed), against
the float64 reference; and the CUDA fit rule of jkofast/_backend.py against the C++ one.

The emulation runs the kernels' own code: every thread of a block is a fiber, barriers and warp
shuffles are emulated, TF32 fragments are whole tiles with the hardware's rounding. Every output
and every workspace starts as NaN, so an element a kernel forgets to write fails the comparison;
each case runs under two thread schedules (threads released by a barrier in ascending and in
descending order), so a missing barrier changes the result. Stack heights (``rows``) and grids are
chosen to force what small problems would not reach on a GPU: tangent rows in several passes,
several tiles per block, blocks without a tile, several column passes of a product.
It does not replace the GPU run (tests/test_cuda_ops.py): fragment layouts, the memory model and
timing are the hardware's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jkofast
from jkofast import _backend
from jkofast import reference as R
from jkofast.divergence import draw_probes
from conftest import random_field
from _op_cases import assert_within_float32_rule

EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
sys.path.insert(0, str(EMULATION))
from driver import Emulator, build  # noqa: E402

# Set by .ci/emulation_sanitized, which builds the emulation with a sanitizer: "address"
# (AddressSanitizer and UBSan) or "thread" (ThreadSanitizer).
SANITIZER = os.environ.get("JKOFAST_EMULATION_SANITIZER") or None
# The float64 cases run under two schedules (ascending, descending), so that a missing barrier
# changes a result; a sanitized run looks for memory errors and races, which it sees in any order.
SCHEDULES = (0,) if SANITIZER else (0, 1)
F64 = dict(rtol=1e-10, atol=1e-12)
# TF32 products (10 mantissa bits, float accumulation): |error| / max|truth| far below this on these
# O(1) fields (measured about 1e-3); a wrong index or a lost term gives O(1).
TF32_REL = 1e-2


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    emulator = Emulator(build())
    if SANITIZER != emulator.sanitizer:
        pytest.fail(f"JKOFAST_EMULATION_SANITIZER={SANITIZER} but the emulation was built with sanitizer "
                    f"{emulator.sanitizer} (JKOFAST_EMULATION_FLAGS): this run would not check what it says")
    return emulator


# What every child below starts with: the emulation's driver, from the folder given as its first argument.
CHILD_PRELUDE = """
import sys
sys.path.insert(0, sys.argv[1])
from driver import Emulator, build
"""


def run_child(code: str, tmp_path: Path, options: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run CHILD_PRELUDE + `code` in a Python child (arguments: the emulation's folder, then args)
    with every sanitizer's reports sent to tmp_path, not to the run's logs; options: the
    sanitizer's options variable and its value (ASAN_OPTIONS=...). Returns the child and its reports."""
    name, value = options.split("=", 1)
    env = dict(os.environ, **{v: f"log_path={tmp_path / 'report'}" for v in ("ASAN_OPTIONS", "UBSAN_OPTIONS",
                                                                            "TSAN_OPTIONS")})
    env[name] = f"{value}:log_path={tmp_path / 'report'}"
    child = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + code, str(EMULATION), *args], env=env,
                           capture_output=True, text=True, timeout=300)
    return child, "".join(f.read_text() for f in tmp_path.glob("report*"))


# A probe of emulate.cpp (its name, then its int argument) run in a child: prints "probe <result>".
PROBE_CHILD = """
print("probe", getattr(Emulator(build()).lib, sys.argv[2])(int(sys.argv[3])))
"""


# A kernel told that x holds one sample more than it does reads past x's end (and writes past its
# outputs'): the sanitized run must stop there with AddressSanitizer's report. Without it the
# checks of the other tests could be silently absent (a runtime not loaded, torch's allocations
# not seen). Run in a child process: the report ends the process.
OVERFLOW_CHILD = """
import torch
emu = Emulator(build())
call = emu._call
def claim_one_more_sample(fn, ints, reals, ptrs):
    ints[5] += 1  # batch
    return call(fn, ints, reals, ptrs)
emu._call = claim_one_more_sample
ws = [torch.randn(16, 3, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)]
bs = [torch.randn(16, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
emu.field(torch.randn(37, 3, dtype=torch.float64), None, ws, bs, rows=16, grid=2)
print("no report")
"""


ONLY_ADDRESS = pytest.mark.skipif(SANITIZER != "address", reason="the AddressSanitizer run only "
                                  "(.ci/emulation_sanitized): elsewhere reads past the end would be undefined "
                                  "behaviour, not a report")


@ONLY_ADDRESS
def test_address_sanitized_run_reports_a_kernel_reading_past_its_input(emu, tmp_path):
    child, reports = run_child(OVERFLOW_CHILD, tmp_path, "ASAN_OPTIONS=detect_leaks=0")
    assert child.returncode != 0 and "no report" not in child.stdout, child.stdout + child.stderr
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in reports, reports + child.stderr
    assert "mlp_field_forward_kernel" in reports, reports


# A thread's local array read one past its end after a barrier: ASan's swapcontext interceptor
# cleared a resumed fiber's whole stack shadow (redzones too) until the emulation stopped giving
# it the stack's size; in bounds (index 3) nothing is reported.


@ONLY_ADDRESS
@pytest.mark.parametrize("index, overrun", [(3, False), (4, True)], ids=["last-element", "one-past-the-end"])
def test_address_sanitized_run_reports_a_local_overrun_after_a_barrier(emu, tmp_path, index, overrun):
    child, reports = run_child(PROBE_CHILD, tmp_path, "ASAN_OPTIONS=detect_leaks=0", "emu_local_overrun_probe",
                               str(index))
    if overrun:
        assert child.returncode != 0 and "ERROR: AddressSanitizer: stack-buffer-overflow" in reports, \
            reports + child.stdout + child.stderr
        assert "local_overrun_kernel" in reports, reports
    else:
        assert child.returncode == 0 and "probe 4.0" in child.stdout, child.stdout + child.stderr
        assert "ERROR" not in reports, reports


# ThreadSanitizer's counterpart: emulate.cpp's race probes must be reported exactly where the
# hardware gives no order, or a clean run would mean nothing: a shared word read in the phase
# another thread writes it (the first phase; a later phase, between two barriers: a barrier model
# that handed a fast thread's next phase to a slow one would hide it), across a shuffle (which
# moves registers, not memory), one device word that two blocks add to; and not behind a
# __syncthreads or a __syncwarp.
RACE_PROBES = [("race_in_first_phase_kernel", True), ("ordered_by_syncthreads_kernel", False),
               ("race_between_blocks_kernel", True), ("race_in_later_phase_kernel", True),
               ("race_across_shuffle_kernel", True), ("ordered_by_syncwarp_kernel", False)]


@pytest.mark.skipif(SANITIZER != "thread", reason="the ThreadSanitizer run only (.ci/emulation_sanitized)")
@pytest.mark.parametrize("kind", range(len(RACE_PROBES)), ids=[name for name, _ in RACE_PROBES])
def test_thread_sanitized_run_reports_exactly_the_unordered_accesses(emu, tmp_path, kind):
    kernel, racy = RACE_PROBES[kind]
    child, reports = run_child(PROBE_CHILD, tmp_path, "TSAN_OPTIONS=exitcode=66", "emu_race_probe", str(kind))
    assert "probe" in child.stdout, child.stdout + child.stderr
    if racy:
        assert child.returncode == 66 and "WARNING: ThreadSanitizer: data race" in reports, reports + child.stderr
        assert kernel in reports, reports
        assert not any(other in reports for other, _ in RACE_PROBES if other != kernel), reports
    else:
        assert child.returncode == 0 and reports == "", reports + child.stderr


def mlp(dim, hidden, layers, time=True, dtype=torch.float64, scale=0.7):
    """Random weights and biases of a field with `layers` weight matrices."""
    sizes = [dim + int(time)] + [hidden] * (layers - 1) + [dim]
    ws = [torch.randn(o, i, dtype=dtype) * scale for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [torch.randn(o, dtype=dtype) * scale for o in sizes[1:]]
    return ws, bs


def reference_field(x, t, ws, bs, activation, beta, divergence, probes, grad_f, grad_div):
    """(f, div, grad_x, grad_t, grad_w, grad_b) by the reference and autograd."""
    leaves = [a.detach().clone().requires_grad_(True) for a in [x, *ws, *bs]]
    xs, W, B = leaves[0], leaves[1:1 + len(ws)], leaves[1 + len(ws):]
    ts = None if t is None else t.detach().clone().requires_grad_(True)
    if divergence is None:
        f, div = R.mlp_velocity(xs, ts, W, B, activation, beta), None
        loss = (f * grad_f).sum()
    else:
        f, div = R.mlp_velocity_and_divergence(xs, ts, W, B, activation, beta, probes)
        loss = (f * grad_f).sum() + (div * grad_div).sum()
    grads = torch.autograd.grad(loss, leaves + ([ts] if ts is not None else []))
    gx, gw, gb = grads[0], grads[1:1 + len(ws)], grads[1 + len(ws):1 + 2 * len(ws)]
    gt = grads[-1] if ts is not None else None
    return f.detach(), None if div is None else div.detach(), gx, gt, list(gw), list(gb)


def emulated_field(emu, x, t, ws, bs, activation, beta, divergence, probes, grad_f, grad_div, **kw):
    f, div = emu.field(x, t, ws, bs, activation, beta, divergence, probes, **kw)
    gx, gt, gw, gb = emu.field(x, t, ws, bs, activation, beta, divergence, probes, grad_f=grad_f,
                               grad_div=grad_div, **kw)
    return f, div, gx, gt, gw, gb


def flat(outputs):
    return [o for o in outputs if o is not None and not isinstance(o, list)] + \
        [t for o in outputs if isinstance(o, list) for t in o]


FIELD_CASES = [  # dim, hidden, layers, activation, time, batch, divergence, probes, rows, grid
    (3, 16, 3, "softplus", True, 37, "exact", None, 16, 2),      # several tiles per block
    (3, 16, 3, "tanh", False, 37, "hutchinson", 2, 32, 3),
    (4, 24, 2, "silu", True, 29, None, None, 16, 2),             # the field alone
    (12, 20, 2, "silu", True, 9, "exact", None, 8, 3),           # 12 tangent rows in 2 passes of 7 rows
    (5, 8, 4, "softplus", False, 11, "hutchinson", 19, 16, 2),   # 19 probes in 2 passes
    (1, 1, 3, "softplus", True, 6, "exact", None, 16, 1),        # d = 1, width 1
    (2, 5, 2, "tanh", True, 1, "exact", None, 32, 3),            # batch 1; blocks without a tile
    (16, 37, 3, "softplus", True, 23, "exact", None, 64, 2),     # d + 1 = 17 and width 37: padded columns
    (6, 80, 3, "silu", True, 10, "hutchinson", 3, 64, 2),        # width 80 > 64 columns per pass (double)
]


@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_field_kernels_match_reference_float64(emu, case):
    dim, hidden, layers, activation, time, batch, divergence, k, rows, grid = case
    ws, bs = mlp(dim, hidden, layers, time)
    x = torch.randn(batch, dim, dtype=torch.float64)
    t = torch.rand(batch, dtype=torch.float64) if time else None
    probes = torch.randn(batch, k, dim, dtype=torch.float64) if k else None
    grad_f, grad_div = torch.randn(batch, dim, dtype=torch.float64), torch.randn(batch, dtype=torch.float64)
    want = flat(reference_field(x, t, ws, bs, activation, 1.7, divergence, probes, grad_f, grad_div))
    for schedule in SCHEDULES:
        emu.set_schedule(schedule)
        got = flat(emulated_field(emu, x, t, ws, bs, activation, 1.7, divergence, probes, grad_f, grad_div,
                                  rows=rows, grid=grid))
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            torch.testing.assert_close(g, w, **F64, msg=lambda m: f"schedule {schedule}, output {i}: {m}")


def test_tf32_operands_are_rounded_to_nearest_not_truncated(emu):
    # 10 mantissa bits kept: 1 + 3 * 2^-12 rounds up to 1 + 2^-10, 1 + 2^-12 down to 1, the tie
    # 1 + 2^-11 away from zero, and negative values alike. (A truncation's outputs stay within every
    # TF32 error bound these tests set; only its bias, one direction for every product, tells it.)
    ulp = 2.0 ** -10
    for value, rounded in ((1 + 3 * ulp / 4, 1 + ulp), (1 + ulp / 4, 1.0), (1 + ulp / 2, 1 + ulp),
                           (-(1 + 3 * ulp / 4), -(1 + ulp)), (3.0, 3.0), (0.0, 0.0)):
        assert emu.lib.emu_tf32_round(value) == rounded, (value, rounded)


def test_scalar_time_is_read_through_stride_zero(emu):
    ws, bs = mlp(3, 16, 3)
    x = torch.randn(20, 3, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64).reshape(1).expand(20)  # stride 0, as the op wrapper passes it
    f, div = emu.field(x, t, ws, bs, "softplus", 1.0, "exact", None, rows=32, grid=2)
    want = R.mlp_velocity_and_divergence(x, t.contiguous(), ws, bs)
    torch.testing.assert_close(f, want[0], **F64)
    torch.testing.assert_close(div, want[1], **F64)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_field_float32_and_tf32(emu, divergence):
    dim, hidden, batch = 6, 80, 45  # 80 columns: two column passes at 128 rows (TF32: 64 per pass)
    ws, bs = mlp(dim, hidden, 3, scale=0.3)
    x, t = torch.randn(batch, dim, dtype=torch.float64), torch.rand(batch, dtype=torch.float64)
    probes = torch.randn(batch, 2, dim, dtype=torch.float64) if divergence == "hutchinson" else None
    grad_f, grad_div = torch.randn(batch, dim, dtype=torch.float64), torch.randn(batch, dtype=torch.float64)
    truth = flat(reference_field(x, t, ws, bs, "softplus", 1.0, divergence, probes, grad_f, grad_div))
    f32 = lambda v: None if v is None else (v.float() if not isinstance(v, list) else [a.float() for a in v])  # noqa: E731
    args = [f32(a) for a in (x, t, ws, bs)] + ["softplus", 1.0, divergence, f32(probes), f32(grad_f), f32(grad_div)]
    torch32 = flat(reference_field(*args))
    emu.set_schedule(2)
    # grid 1, all tiles in one block. 128 rows: 2-3 tiles, one float part (no totals: at most
    # field_tiles_per_total = 8 tiles per block). 16 rows: 23 tiles of 2 samples (exact) or 9 of 5
    # (2 probes), so the part moves into the block's double total after every 8th tile and after
    # the last (BlockBackward::end_tile, moves_part_after).
    for rows in (128, 16):
        simt = flat(emulated_field(emu, *args, rows=rows, grid=1))
        tf32 = flat(emulated_field(emu, *args, rows=rows, grid=1, tf32=True))
        check_float32_and_tf32(simt, tf32, torch32, truth)


def check_float32_and_tf32(simt, tf32, torch32, truth):
    for i, (s, tt, t32, ref) in enumerate(zip(simt, tf32, torch32, truth)):
        assert_within_float32_rule(s, t32, ref, f"float32 output {i}")
        scale = ref.abs().max().item()
        err_tf32 = (tt.double() - ref).abs().max().item()
        err_simt = (s.double() - ref).abs().max().item()
        assert err_tf32 <= TF32_REL * scale, f"TF32 output {i}: error {err_tf32:.3g} of {scale:.3g}"
        # The TF32 path really rounds: its error is well above float32's.
        assert err_tf32 > err_simt or err_tf32 < 1e-6 * scale, f"output {i}: TF32 {err_tf32:.3g}, fp32 {err_simt:.3g}"


# ----------------------------------------------------------------------------- rk4_block
def moderate_field(dim, hidden, layers, activation="softplus", time=True, beta=1.0, scale=0.6,
                   dtype=torch.float64):
    """random_field with `layers` weight matrices, scaled to a moderate Lipschitz constant: 3 RK4
    steps stay accurate."""
    field = random_field(dim, hidden, layers - 1, activation, time=time, beta=beta, dtype=dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(scale)
    return field


def float64_and_float32(dim, hidden):
    """The same moderate 2-matrix softplus field in float64 and in float32."""
    field64 = moderate_field(dim, hidden, 3, scale=0.5)
    field32 = random_field(dim, hidden, 2, "softplus", time=True, dtype=torch.float32)
    field32.load_state_dict({k: v.float() for k, v in field64.state_dict().items()})
    return field64, field32


def reference_rk4(field, x, t0, t1, steps, divergence, k, tableau, grads):
    xs = x.clone().requires_grad_(True)
    x1, logdet, kinetic = jkofast.rk4(field, xs, t0, t1, steps, divergence=divergence, probes=k, tableau=tableau,
                                      generator=torch.Generator().manual_seed(5), backend="torch")
    loss = (x1 * grads[0]).sum() + (kinetic * grads[2]).sum()
    if logdet is not None:
        loss = loss + (logdet * grads[1]).sum()
    g = torch.autograd.grad(loss, [xs, *field.weights, *field.biases])
    logdet = torch.zeros_like(kinetic) if logdet is None else logdet
    return [x1.detach(), logdet.detach(), kinetic.detach(), *g]


def emulated_rk4(emu, field, x, t0, t1, steps, divergence, k, tableau, grads, **kw):
    gen = torch.Generator().manual_seed(5)  # the same probes, in the same order, as jkofast.rk4 draws
    probes = torch.stack([draw_probes(x, k, "rademacher", gen) for _ in range(steps)]) \
        if divergence == "hutchinson" else None
    common = dict(time=field.time, activation=field.activation, beta=field.beta, tableau=tableau,
                  divergence=divergence, probes=probes, **kw)
    x1, logdet, kinetic, states = emu.rk4(x, field.weights, field.biases, t0, t1, steps, **common)
    torch.testing.assert_close(states[0], x, rtol=0, atol=0)
    gx, gw, gb = emu.rk4(x, field.weights, field.biases, t0, t1, steps, grad=grads, states=states, **common)
    return [x1, logdet, kinetic, gx, *gw, *gb]


RK4_CASES = [  # dim, hidden, layers, activation, time, batch, divergence, k, tableau, t0, t1, rows, grid
    (3, 16, 3, "softplus", True, 37, "exact", 1, "rk4", 0.0, 1.0, 32, 2),
    (2, 8, 2, "tanh", True, 20, "hutchinson", 2, "rk4-3/8", 0.2, 0.9, 16, 3),
    (2, 8, 3, "tanh", False, 13, None, 1, "rk4", 1.0, 0.0, 16, 2),             # sampling: backwards, no div
    (9, 12, 2, "silu", True, 5, "exact", 1, "rk4", 0.0, 1.0, 8, 2),            # tangent rows in 2 passes
]


@pytest.mark.parametrize("case", RK4_CASES, ids=lambda c: "-".join(map(str, c)))
def test_rk4_block_kernels_match_reference_float64(emu, case):
    dim, hidden, layers, activation, time, batch, divergence, k, tableau, t0, t1, rows, grid = case
    field = moderate_field(dim, hidden, layers, activation, time, beta=1.3)
    x = torch.randn(batch, dim, dtype=torch.float64)
    grads = [torch.randn(batch, dim, dtype=torch.float64), torch.randn(batch, dtype=torch.float64),
             torch.randn(batch, dtype=torch.float64)]
    want = reference_rk4(field, x, t0, t1, 3, divergence, k, tableau, grads)
    for schedule in SCHEDULES:
        emu.set_schedule(schedule)
        got = emulated_rk4(emu, field, x, t0, t1, 3, divergence, k, tableau, grads, rows=rows, grid=grid)
        for i, (g, w) in enumerate(zip(got, want)):
            torch.testing.assert_close(g, w, **F64, msg=lambda m: f"schedule {schedule}, output {i}: {m}")


def test_rk4_block_float32_and_tf32(emu):
    field64, field32 = float64_and_float32(3, 40)
    x = torch.randn(30, 3, dtype=torch.float64)
    grads = [torch.randn(30, 3, dtype=torch.float64), torch.randn(30, dtype=torch.float64),
             torch.randn(30, dtype=torch.float64)]
    truth = reference_rk4(field64, x, 0.0, 1.0, 3, "exact", 1, "rk4", grads)
    g32 = [g.float() for g in grads]
    torch32 = reference_rk4(field32, x.float(), 0.0, 1.0, 3, "exact", 1, "rk4", g32)
    emu.set_schedule(3)
    # grid 1: both tiles (16 samples each) in one block (BlockBackward::end_tile between them)
    simt = emulated_rk4(emu, field32, x.float(), 0.0, 1.0, 3, "exact", 1, "rk4", g32, rows=64, grid=1)
    tf32 = emulated_rk4(emu, field32, x.float(), 0.0, 1.0, 3, "exact", 1, "rk4", g32, rows=64, grid=1, tf32=True)
    for i, (s, tt, t32, ref) in enumerate(zip(simt, tf32, torch32, truth)):
        assert_within_float32_rule(s, t32, ref, f"float32 output {i}")
        scale = ref.abs().max().item()
        assert (tt.double() - ref).abs().max().item() <= TF32_REL * scale, f"TF32 output {i}"


# ----------------------------------------------------------------------------- jko_block_loss
def reference_jko_loss(field, x, steps, ew, pw, divergence, k, tableau):
    """[per-sample terms (B, 4), grad x0, grads of the weights and biases] of the JKO block loss
    mean(|x1|^2/2 - logdet + ew |x1 - x0|^2 + pw kinetic), by the reference and autograd."""
    xs = x.clone().requires_grad_(True)
    x1, logdet, kinetic = jkofast.rk4(field, xs, 0.0, 1.0, steps, divergence=divergence, probes=k, tableau=tableau,
                                      generator=torch.Generator().manual_seed(5), backend="torch")
    logdet = torch.zeros_like(kinetic) if logdet is None else logdet
    terms = torch.stack([0.5 * x1.square().sum(1), logdet, (x1 - xs).square().sum(1), kinetic], 1)
    loss = (terms[:, 0] - terms[:, 1] + ew * terms[:, 2] + pw * terms[:, 3]).mean()
    g = torch.autograd.grad(loss, [xs, *field.weights, *field.biases])
    return [terms.detach(), *g]


def emulated_jko_loss(emu, field, x, steps, ew, pw, divergence, k, tableau, **kw):
    gen = torch.Generator().manual_seed(5)  # the same probes, in the same order, as jkofast.rk4 draws
    probes = torch.stack([draw_probes(x, k, "rademacher", gen) for _ in range(steps)]) \
        if divergence == "hutchinson" else None
    terms, gx, gw, gb = emu.jko_loss(x, field.weights, field.biases, steps, endpoint_weight=ew, path_weight=pw,
                                     time=field.time, activation=field.activation, beta=field.beta, tableau=tableau,
                                     divergence=divergence, probes=probes, **kw)
    return [terms, gx, *gw, *gb]


JKO_LOSS_CASES = [  # dim, hidden, layers, activation, time, batch, divergence, k, tableau, ew, pw, rows, grid
    (3, 16, 3, "softplus", True, 37, "exact", 1, "rk4", 0.7, 0.0, 32, 2),       # several tiles per block
    (2, 8, 2, "tanh", True, 20, "hutchinson", 2, "rk4-3/8", 0.0, 0.4, 16, 3),   # path cost, probes
    (9, 12, 2, "silu", False, 5, "exact", 1, "rk4", 0.3, 0.2, 8, 2),            # tangent rows in 2 passes
    (2, 8, 3, "softplus", True, 13, None, 1, "rk4", 0.5, 0.0, 16, 2),           # no divergence: logdet 0
    (4, 20, 2, "softplus", True, 1, "exact", 1, "rk4", 0.0, 0.0, 16, 3),        # batch 1, a free block
    # 43 rows per sample in 128: the tangent passes' products cover 96 rows (3 of a SIMT thread's 4
    # row groups), the velocity passes' 16 (1 group for half the threads, none for the others)
    (42, 12, 2, "softplus", True, 5, "exact", 1, "rk4", 0.3, 0.1, 128, 2),
]


@pytest.mark.parametrize("case", JKO_LOSS_CASES, ids=lambda c: "-".join(map(str, c)))
def test_jko_block_loss_kernel_matches_reference_float64(emu, case):
    dim, hidden, layers, activation, time, batch, divergence, k, tableau, ew, pw, rows, grid = case
    field = moderate_field(dim, hidden, layers, activation, time, beta=1.3)
    x = torch.randn(batch, dim, dtype=torch.float64)
    want = reference_jko_loss(field, x, 3, ew, pw, divergence, k, tableau)
    for schedule in SCHEDULES:
        emu.set_schedule(schedule)
        got = emulated_jko_loss(emu, field, x, 3, ew, pw, divergence, k, tableau, rows=rows, grid=grid)
        for i, (g, w) in enumerate(zip(got, want)):
            torch.testing.assert_close(g, w, **F64, msg=lambda m: f"schedule {schedule}, output {i}: {m}")


@pytest.mark.parametrize("dim,hidden,batch,rows", [(3, 40, 30, 64), (20, 24, 7, 16)])  # 2nd: 2 tangent passes
def test_jko_block_loss_kernel_float32_and_tf32(emu, dim, hidden, batch, rows):
    field64, field32 = float64_and_float32(dim, hidden)
    x = torch.randn(batch, dim, dtype=torch.float64)
    truth = reference_jko_loss(field64, x, 3, 0.5, 0.1, "exact", 1, "rk4")
    torch32 = reference_jko_loss(field32, x.float(), 3, 0.5, 0.1, "exact", 1, "rk4")
    emu.set_schedule(3)
    simt = emulated_jko_loss(emu, field32, x.float(), 3, 0.5, 0.1, "exact", 1, "rk4", rows=rows, grid=2)
    tf32 = emulated_jko_loss(emu, field32, x.float(), 3, 0.5, 0.1, "exact", 1, "rk4", rows=rows, grid=2,
                             tf32=True)
    for i, (s, tt, t32, ref) in enumerate(zip(simt, tf32, torch32, truth)):
        assert_within_float32_rule(s, t32, ref, f"float32 output {i}")
        scale = ref.abs().max().item()
        assert (tt.double() - ref).abs().max().item() <= TF32_REL * scale, f"TF32 output {i}"


def test_tf32_pairs_refuse_misaligned_memory(emu):
    # The TF32 products move shared-memory values in 8-byte pairs (the weight gradient's operand
    # loads, the products' result stores) and the gradient parts in 16-byte quads; the hardware
    # faults on a vector access its size does not divide. The TF32 tests above pass with the
    # check on, so the plans keep every pair aligned; shared memory shifted by 4 bytes must be
    # refused. (Dynamic shared memory starts 128-byte aligned: the kernels declare it so.)
    field64, field32 = float64_and_float32(3, 40)
    x = torch.randn(9, 3)
    args = (emu, field32, x, 3, 0.5, 0.1, "exact", 1, "rk4")
    emu.set_smem_offset(4)
    try:
        with pytest.raises(RuntimeError, match="8-byte alignment"):
            emulated_jko_loss(*args, rows=32, grid=1, tf32=True)
        emulated_jko_loss(*args, rows=32, grid=1, tf32=False)  # the SIMT path has no such rule
    finally:
        emu.set_smem_offset(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_staging_stores_are_free_of_bank_conflicts(emu, dtype):
    # Each chunk of weights is stored to shared memory once per chunk of every product, in the order
    # it is read from global memory (tile::stage_position). That order must cover the stage exactly
    # once, and no store may put two words on one bank: the forward's Transposed weights once walked q
    # alone, 4 ways per store (on the TF32 path a third as many shared-memory cycles as its fragment
    # loads). Double plans with 2 stage rows (8 stack rows, width >= 512) can do no better than 2.
    for rows in ([16, 32, 64, 128] if dtype == torch.float32 else [8, 16, 32, 64, 128]):
        for dim, hidden, tangent_rows in ((2, 64, 2), (6, 128, 6), (63, 256, 0), (100, 512, 100)):
            for transposed in (False, True):
                ways = emu.stage_store_ways(dim, True, hidden, tangent_rows, dtype, rows, transposed)
                bound = 2 if dtype == torch.float64 and rows == 8 else 1  # the plans with 2 stage rows
                assert 1 <= ways <= bound, (rows, dim, hidden, transposed, ways)


def test_tf32_fragment_loads_are_free_of_bank_conflicts(emu):
    # The TF32 products load an A fragment from a stack and B fragments from the weight stage at
    # every k step: the most frequent shared-memory accesses of the kernels. In mma.m16n8k8's
    # lane layout (block_gemm_tf32.cuh: tf32_block_product) A lanes step rows by lane / 4 and B lanes
    # step rows by lane % 4, so the stack's row stride must be 4 words past a multiple of 32 and
    # the stage's 8 (tile::stage_skew): the stage's old 4-value skew gave every B load 2 ways.
    for rows in (16, 32, 64, 128):
        for dim, hidden, tangent_rows in ((2, 64, 2), (6, 128, 6), (63, 256, 0), (100, 512, 100)):
            for operand in ("a", "b"):
                ways = emu.fragment_load_ways(dim, True, hidden, tangent_rows, rows, operand)
                assert ways == 1, (rows, dim, hidden, operand, ways)


def test_tf32_weight_gradient_loads_are_free_of_bank_conflicts(emu):
    # The weight-gradient product reads both operands from stacks along their rows, as wmma could
    # only do with lanes stepping rows by lane % 4: 2 ways at the stack's skew. Its mma.sync path
    # loads 8-byte pairs at tf32_pair_offset (mma_tf32.cuh), which must meet every bank once per
    # half-warp on every float plan (the stacks' row stride, width + 4, must stay 4 mod 16 words).
    for rows in (16, 32, 64, 128):
        for dim, hidden, tangent_rows in ((2, 64, 2), (6, 128, 6), (63, 256, 0), (100, 512, 100), (3, 40, 3)):
            ways = emu.weight_grad_load_ways(dim, True, hidden, tangent_rows, rows)
            assert ways == 1, (rows, dim, hidden, ways)


def test_float_parts_move_into_totals_every_few_tiles_and_after_the_last(emu):
    # The schedule of BlockBackward::end_tile (mlp_params.h), which no result can show (it only
    # bounds how long float sums run): block b runs tiles b, b + grid, ...; it moves its part after
    # its every-th, 2 every-th, ... tile and after its last, so a part never sums more than `every`
    # tiles and nothing stays behind in it; totals exist exactly when some block runs more.
    lib = emu.lib
    for tiles in range(1, 41):
        for grid in range(1, min(tiles, 9) + 1):
            for every in range(1, 10):
                runs = [list(range(b, tiles, grid)) for b in range(grid)]
                assert bool(lib.emu_needs_totals(tiles, grid, every)) == (max(map(len, runs)) > every)
                for b, mine in enumerate(runs):
                    moved = [k for k, t in enumerate(mine) if lib.emu_moves_part_after(t, tiles, b, grid, every)]
                    want = sorted({k for k in range(len(mine)) if (k + 1) % every == 0} | {len(mine) - 1})
                    assert moved == want, (tiles, grid, every, b)
    # The field's backward moves once ~8 passes are summed: a tile is `chunks` passes.
    for dim, hidden, tangent_rows, rows in ((6, 128, 6, 128), (100, 512, 100, 16), (12, 64, 200, 32), (2, 64, 0, 64)):
        chunks = emu.plan(dim, True, hidden, tangent_rows, torch.float32, rows)["chunks"]
        every = lib.emu_field_tiles_per_total(dim, dim + 1, hidden, tangent_rows, rows)
        assert every >= 1 and (every * chunks <= 8 or every == 1) and (every + 1) * chunks > 8, (chunks, every)


# ----------------------------------------------------------------------------- fit rule and plan
def test_backend_fit_rule_matches_the_cpp_rule(emu):
    # _backend's rule (constants exported by jkofast._C from ops/tile_plan.h) against the C++
    # within_limits() the CUDA glue calls, on both sides of every limit.
    lib = emu.lib
    lib.emu_within_limits.restype = int
    limits = _backend.cuda_limits()
    assert limits == {"dim": 128, "hidden": 512, "weights": 16}  # as documented (README, csrc/cuda/README.md)
    for dim in (1, 2, 127, 128, 129, 500):
        for hidden in (1, 64, 511, 512, 513):
            for weights in (2, 4, 16, 17):
                cpp = bool(lib.emu_within_limits(dim, hidden, weights))
                py = _backend.cuda_misfit(dim, hidden, weights) is None
                assert cpp == py, (dim, hidden, weights)


@pytest.mark.parametrize("itemsize", [4, 8])
def test_every_size_within_the_limits_has_a_plan_on_every_gpu(emu, itemsize):
    # The limits promise a plan within 99 KB of shared memory (the smallest per-block opt-in limit of
    # the GPUs our sm_80 code runs on), for every width, dimension and tangent-row count.
    dtype = torch.float32 if itemsize == 4 else torch.float64
    budget = 99 * 1024
    for dim in (1, 2, 6, 31, 32, 63, 64, 100, 127, 128):
        for hidden in (1, 7, 64, 100, 128, 255, 256, 300, 511, 512):
            for tangent_rows in {0, 1, dim, 2 * dim + 1}:
                for time in (False, True):
                    rows = emu.choose_rows(dim, time, hidden, tangent_rows, dtype, budget)
                    assert rows >= (16 if itemsize == 4 else 8), (dim, hidden, tangent_rows, time)
                    plan = emu.plan(dim, time, hidden, tangent_rows, dtype, rows)
                    assert plan["smem_bytes"] <= budget
                    assert plan["samples"] * (1 + plan["tangents"]) <= plan["rows"]
                    assert plan["tangents"] * plan["chunks"] >= tangent_rows
                    assert plan["samples"] >= 1
                    # Tangent rows in several passes only with one sample per tile: rk4_tile_backward's
                    # barrier after the gy sums is then not needed (each thread rereads what it
                    # wrote), and would be if a plan ever put several samples in such a tile.
                    assert plan["chunks"] == 1 or plan["samples"] == 1, (dim, hidden, tangent_rows, plan)


# ----------------------------------------------------------------------------- launch plan (glue)
def test_the_launch_rule_fills_the_gpu_twice_else_takes_the_most_tiles(emu):
    # cuda_glue.cpp: plan_launch's rule (tile::choose_launch) on an H100-sized GPU: a large batch
    # gets the tallest tiles (fewest weight passes per sample), a small one the smallest (most blocks).
    for dtype, smallest in ((torch.float32, 16), (torch.float64, 8)):
        small = emu.choose_launch(6, True, 128, 6, dtype, 37)
        assert small["found"] and small["rows"] == smallest and small["grid"] == -(-37 // small["samples"])
        large = emu.choose_launch(2, True, 64, 0, dtype, 1 << 20)
        assert large["found"] and large["rows"] == 128
        assert 0 < large["grid"] <= 132 * 8  # the persistent grid: at most the resident blocks
        # a plan that does not fit the block's shared memory is never chosen
        tight = emu.choose_launch(128, True, 512, 128, dtype, 1 << 20, smem_per_block=99 * 1024)
        assert tight["found"] and emu.plan(128, True, 512, 128, dtype, tight["rows"])["smem_bytes"] <= 99 * 1024


def test_forced_rows_and_grid_cap_of_the_kernel_check_and_jkofast_cuda_rows(emu):
    # The kernel check's override: the most rows <= forced that fit (clamped), and a grid cap.
    for dtype, smallest in ((torch.float32, 16), (torch.float64, 8)):
        assert emu.choose_launch(6, True, 128, 6, dtype, 37, forced_rows=1)["rows"] == smallest
        assert emu.choose_launch(6, True, 128, 6, dtype, 37, forced_rows=1 << 16)["rows"] == \
            emu.choose_rows(6, True, 128, 6, dtype, 232448) == (128 if dtype == torch.float32 else 64)
        assert emu.choose_launch(6, True, 128, 6, dtype, 37, forced_rows=100)["rows"] == 64
        capped = emu.choose_launch(6, True, 128, 6, dtype, 1000, forced_rows=1, grid_cap=2)
        assert capped["grid"] == 2 and -(-1000 // capped["samples"]) > 2
    # where 128 rows do not fit, "largest" is the most that do (width 512, d = 128, 99 KB)
    budget = 99 * 1024
    largest = emu.choose_launch(128, True, 512, 128, torch.float32, 19, smem_per_block=budget, forced_rows=1 << 16)
    assert largest["found"] and largest["rows"] == emu.choose_rows(128, True, 512, 128, torch.float32, budget)
    # JKOFAST_CUDA_ROWS: those rows exactly, or no plan (the glue then says how much memory they need)
    assert emu.choose_launch(6, True, 128, 6, torch.float32, 37, forced_rows=64, exact_rows=True)["rows"] == 64
    assert not emu.choose_launch(128, True, 512, 128, torch.float32, 19, smem_per_block=budget, forced_rows=128,
                                 exact_rows=True)["found"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_checks_two_block_plan_loops_and_reaches_the_float32_totals(emu, dtype):
    # jkofast/_kernel_check.py's claim, at every d: under its smallest tiles on 2 blocks every case
    # loops (each block runs several tiles) and, in float32, runs more tiles per block than a
    # gradient part sums, so the double totals are used. The cases' tangent rows: none (mlp_field,
    # RK4 without divergence), 3 probes (the field's Hutchinson case), 1 probe (RK4's), d (exact).
    from jkofast import _kernel_check

    rows, grid = _kernel_check.SMALLEST_TILES, 2
    for dim in range(1, 129):
        exact_batch, other_batch = _kernel_check.batches(dim)
        for tangent_rows, batch, field_op in ((0, other_batch, True), (0, other_batch, False), (3, other_batch, True),
                                              (1, other_batch, False), (dim, exact_batch, True),
                                              (dim, exact_batch, False)):
            launch = emu.choose_launch(dim, True, 64, tangent_rows, dtype, batch, forced_rows=rows, grid_cap=grid)
            tiles = -(-batch // launch["samples"])
            assert launch["grid"] == grid and tiles >= 2 * grid, (dim, tangent_rows, launch)
            if dtype == torch.float32:
                every = emu.lib.emu_field_tiles_per_total(dim, dim + 1, 64, tangent_rows, launch["rows"]) \
                    if field_op else 1  # (RK4 kernels: kRk4TilesPerTotal)
                assert emu.lib.emu_needs_totals(tiles, grid, every), (dim, tangent_rows, field_op, launch, every)
