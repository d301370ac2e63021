"""The first-use check of the compiled kernels (jkofast/_kernel_check.py), run here on the CPU ops:
in production it checks CUDA devices only, so each test lets it check "cpu" too. It must pass
kernels that agree (no false alarm: that would put users on the slow engine), catch a kernel that
is wrong in any one output (the field, the divergence, a gradient, the RK4 log-determinant, the
fused step's loss), and then keep ``backend="auto"`` on the reference, with one warning."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import jkofast
from jkofast import _backend, _kernel_check
from jkofast._backend import compiled_ops as O
from conftest import backward_through

pytestmark = pytest.mark.skipif(not _backend.compiled_available(), reason="needs the compiled extension")


@pytest.fixture(autouse=True)
def checking_the_cpu(monkeypatch):
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cpu", "cuda"))
    _kernel_check.forget()
    yield
    _kernel_check.forget()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", [dict(dim=2, hidden=16, layers=3),
                                    dict(dim=5, hidden=24, layers=2, activation="tanh", time=False),
                                    dict(dim=3, hidden=8, layers=1, activation="silu", beta=3.0)])
def test_kernels_that_agree_pass(config, dtype):
    field = jkofast.VelocityField(**config).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _kernel_check.disagreement(field, torch.zeros(4, config["dim"], dtype=dtype)) is None
    assert _backend.choose("auto", field, torch.zeros(4, config["dim"], dtype=dtype)) == "compiled"


def _off_by(fraction, index):
    """A wrapper of an op whose output ``index`` is scaled by 1 + fraction (through its gradient too)."""
    def wrap(op):
        def wrong(*args, **kwargs):
            out = list(op(*args, **kwargs))
            out[index] = out[index] * (1 + fraction)
            return tuple(out)
        return wrong
    return wrap


_wrong_backward = backward_through(lambda g: g * 1.1)


# (op, how it is broken, what the message names). The float32 rule is 2^-6 of scale: a 10% error is
# above it, so each case fails in both dtypes.
BROKEN = [
    ("mlp_field_div", _off_by(0.1, 1), "mlp_field_div's div"),
    ("mlp_field_div", _off_by(0.1, 0), "mlp_field_div's f"),
    ("mlp_field_div", _wrong_backward, "d/dx"),
    ("rk4_block", _off_by(0.1, 1), "rk4_block's logdet"),
    ("rk4_block", _off_by(0.1, 2), "rk4_block's kinetic"),
    ("jko_block_loss", _off_by(0.1, 0), "jko_block_loss's loss"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op,breaking,named", BROKEN, ids=[f"{b[0]}-{b[2]}" for b in BROKEN])
def test_a_wrong_kernel_is_caught_and_auto_runs_the_reference(monkeypatch, op, breaking, named, dtype):
    monkeypatch.setattr(O, op, breaking(getattr(O, op)))
    field = jkofast.VelocityField(3, 16, 2).to(dtype)
    x = torch.randn(6, 3, dtype=dtype)
    with pytest.warns(_kernel_check.KernelCheckWarning, match=f"failed jkofast's check on cpu: .*{named}"):
        assert _backend.choose("auto", field, x) == "torch"
    with warnings.catch_warnings():  # once per shape: the verdict is kept
        warnings.simplefilter("error")
        assert _backend.choose("auto", field, x) == "torch"
        with pytest.raises(ValueError, match=f"backend='compiled' cannot run this call: .*{named}"):
            _backend.choose("compiled", field, x)
        # the public functions run the reference: the same numbers as backend="torch"
        got = jkofast.rk4(field, x, 0.0, 1.0, 2)
        want = jkofast.rk4(field, x, 0.0, 1.0, 2, backend="torch")
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    other = jkofast.VelocityField(3, 16, 3).to(dtype)  # another shape is checked on its own
    with pytest.warns(_kernel_check.KernelCheckWarning):
        _backend.choose("auto", other, x)


def test_the_check_leaves_the_callers_state_alone():
    field = jkofast.VelocityField(2, 16, 2).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    with torch.inference_mode():  # (the caller's mode: the check still takes its gradients)
        assert _backend.choose("auto", field, x) == "compiled"
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_a_failing_launch_is_a_verdict(monkeypatch):
    def raising(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(O, "rk4_block", raising)
    field = jkofast.VelocityField(2, 8, 2).double()
    with pytest.warns(_kernel_check.KernelCheckWarning, match="rk4_block from t=0.0 to 1.0 raised under their own tile plan: RuntimeError: CUDA "
                      "error: an illegal memory access was encountered [(]a CUDA error leaves the process's GPU"):
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "torch"


def test_a_wrong_float32_divergence_in_the_training_step_is_caught(monkeypatch):
    # Broken in float32 only (the float64 check passes): the fused step's log-det terms halved and
    # the loss without that half. The loss's scale (its |x1|^2 and transport terms) must not hide
    # it: each per-sample term is compared on its own scale.
    real = O.jko_block_loss

    def half_divergence(x0, *args, **kwargs):
        loss, terms = real(x0, *args, **kwargs)
        if x0.dtype != torch.float32:
            return loss, terms
        return loss + 0.5 * terms[:, 1].mean(), terms * torch.tensor([1.0, 0.5, 1.0, 1.0])

    monkeypatch.setattr(O, "jko_block_loss", half_divergence)
    field = jkofast.VelocityField(6, 32, 2).float()
    with pytest.warns(_kernel_check.KernelCheckWarning, match="jko_block_loss's loss .*float32, TF32 off"):
        assert _backend.choose("auto", field, torch.zeros(3, 6)) == "torch"


def test_where_the_check_cannot_run_it_is_not_decided(monkeypatch):
    field = jkofast.VelocityField(2, 8, 2).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake:  # (torch.export, make_fx: no numbers to compare)
        assert _kernel_check.disagreement(field, fake.from_tensor(x)) is None
    assert not _kernel_check._verdicts

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(O, "mlp_field", out_of_memory)
    assert _kernel_check.disagreement(field, x) is None
    assert not _kernel_check._verdicts  # the next call checks again
    monkeypatch.undo()


def test_the_checks_own_failure_is_not_blamed_on_the_kernels(monkeypatch):
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cpu", "cuda"))

    def broken(*args, **kwargs):
        raise TypeError("a bug in the check")

    monkeypatch.setattr(_kernel_check.reference, "mlp_velocity", broken)
    field = jkofast.VelocityField(2, 8, 2).double()
    with pytest.warns(_kernel_check.KernelCheckWarning, match="could not check its compiled kernels on cpu "
                      "[(]TypeError: a bug in the check[)]; they run unchecked"):
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "compiled"


def test_the_switch_trusts_the_kernels(monkeypatch):
    monkeypatch.setattr(O, "mlp_field_div", _off_by(0.5, 1)(O.mlp_field_div))
    monkeypatch.setenv(_kernel_check.SWITCH, "0")
    field = jkofast.VelocityField(2, 8, 2).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "compiled"


@pytest.mark.parametrize("setting,expected", [
    ("pass", False),
    ("torch.backends.cuda.matmul.allow_tf32 = True", True),
    ("torch.set_float32_matmul_precision('high')", True),
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", True),  # (Context::allowTF32CuBLAS raises after it)
    ("torch.backends.fp32_precision = 'tf32'", True),
    ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", False),
])
def test_the_tf32_switch_is_torchs_matmul_rule(setting, expected, tmp_path):
    # The CUDA kernels' switch (csrc/tf32_switch.h) read through _C: the same answer as torch's
    # cuBLAS for each of torch's ways to set it (each in a fresh process: the settings are global;
    # run from tmp_path, so that the installed jkofast is imported, not a checkout's sources).
    code = f"import torch, jkofast; from jkofast import _C; {setting}; print(_C.tf32_matmul_allowed())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def test_not_checked_on_the_cpu_nor_inside_a_trace(monkeypatch):
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cuda",))  # production: the CPU is not checked
    monkeypatch.setattr(O, "mlp_field_div", _off_by(0.5, 1)(O.mlp_field_div))
    field = jkofast.VelocityField(2, 8, 2).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert _kernel_check.disagreement(field, x) is None
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cpu",))
    with monkeypatch.context() as inside:
        inside.setattr(torch.compiler, "is_compiling", lambda: True)  # inside a torch.compile trace
        assert _kernel_check.disagreement(field, x) is None
        assert not _kernel_check._verdicts  # not decided: the next call outside the trace checks
    with pytest.warns(_kernel_check.KernelCheckWarning):
        assert _kernel_check.disagreement(field, x) is not None
    with monkeypatch.context() as inside:  # a shape found wrong stays refused inside a trace
        inside.setattr(torch.compiler, "is_compiling", lambda: True)
        assert "mlp_field_div's div" in _kernel_check.disagreement(field, x)


def test_info_reports_the_check(monkeypatch):
    from jkofast import info

    assert info.kernel_check("cpu").startswith("passed on cpu (the default field")
    with monkeypatch.context() as wrong:
        wrong.setattr(O, "rk4_block", _off_by(0.1, 0)(O.rk4_block))
        report = info.kernel_check("cpu")
    assert report.startswith("FAILED: the compiled kernels failed jkofast's check on cpu: rk4_block's x1"), report
    assert report.count("rk4_block's x1") == 1 and "float64" in report, report  # found by the float64 pass

    def wrong_in_float32(op):
        def wrong(x, *args, **kwargs):
            out = list(op(x, *args, **kwargs))
            if x.dtype == torch.float32:
                out[0] = out[0] * (1 + 1e-3)
            return tuple(out)
        return wrong
    monkeypatch.setattr(O, "rk4_block", wrong_in_float32(O.rk4_block))
    report = info.kernel_check("cpu")
    assert report.startswith("FAILED: ") and "rk4_block's x1" in report and "float32, TF32" in report, report


def test_the_callers_deterministic_mode_is_kept():
    field = jkofast.VelocityField(2, 8, 2).double()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "compiled"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def _under_plan(plan, fault):
    """A wrapper of an op that calls ``fault(outputs)`` only while the kernels run under ``plan``."""
    from jkofast import _C

    def wrap(op):
        def maybe_wrong(*args, **kwargs):
            out = op(*args, **kwargs)
            return fault(out) if _C._cuda_launch_override()[:2] == plan else out
        return maybe_wrong
    return wrap


def test_the_launch_override_is_a_private_knob_of_the_extension():
    from jkofast import _C

    assert _C._cuda_launch_override() == (0, 0, 0)
    _C._set_cuda_launch_override(_kernel_check.LARGEST_TILES, 3, 2**64 - 1)  # (a stream: any pointer value)
    try:
        assert _C._cuda_launch_override() == (_kernel_check.LARGEST_TILES, 3, 2**64 - 1)
    finally:
        _C._set_cuda_launch_override(0, 0, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        _C._set_cuda_launch_override(-1, 0, 0)
    assert _C._cuda_launch_override() == (0, 0, 0)


@pytest.mark.parametrize("plan, named", [((_kernel_check.SMALLEST_TILES, 2), "smallest tiles on 2 thread blocks"),
                                         ((_kernel_check.LARGEST_TILES, 0), "largest tiles that fit")])
def test_a_kernel_wrong_under_one_tile_plan_is_caught_and_the_plan_named(monkeypatch, plan, named):
    # (on a GPU the plans are other code paths: the persistent loop with float32 gradient totals,
    # the tallest tiles; here the CPU ops ignore the override and the fault stands in for them)
    from jkofast import _C

    def scaled(out):
        out = list(out)
        out[0] = out[0] * 1.01
        return tuple(out)
    monkeypatch.setattr(O, "mlp_field_div", _under_plan(plan, scaled)(O.mlp_field_div))
    field = jkofast.VelocityField(3, 16, 2).double()
    with pytest.warns(_kernel_check.KernelCheckWarning, match=named):
        why = _kernel_check.disagreement(field, torch.zeros(5, 3, dtype=torch.float64))
    assert "mlp_field_div's f" in why and named in why, why
    assert _C._cuda_launch_override() == (0, 0, 0)  # cleared after the check
    assert _backend.choose("auto", field, torch.zeros(5, 3, dtype=torch.float64)) == "torch"


def test_the_launch_override_is_cleared_when_a_kernel_raises_under_it(monkeypatch):
    from jkofast import _C

    def launch_failure(out):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(O, "rk4_block", _under_plan((_kernel_check.SMALLEST_TILES, 2), launch_failure)(O.rk4_block))
    why = _kernel_check.verdict_for(jkofast.VelocityField(2, 8, 2), "cpu", torch.float64, False)
    assert "rk4_block from t=0.0 to 1.0 raised under their smallest tiles on 2 thread blocks" in why, why
    assert "restart it" in why, why
    assert _C._cuda_launch_override() == (0, 0, 0)


def test_the_backward_runs_under_the_plan_too(monkeypatch):
    """On a GPU the float32 totals are the backward's: it must run under the forced plan (autograd
    runs it on the forward's stream, which the override holds for)."""
    from jkofast import _C

    plan = (_kernel_check.SMALLEST_TILES, 2)
    # (reads the override as the backward's launches would)
    off_under_the_plan = backward_through(lambda g: g * 1.1 if _C._cuda_launch_override()[:2] == plan else g)
    monkeypatch.setattr(O, "mlp_field_div", off_under_the_plan(O.mlp_field_div))
    why = _kernel_check.verdict_for(jkofast.VelocityField(3, 16, 2), "cpu", torch.float64, False)
    assert why is not None and "mlp_field_div's d/dx" in why and "2 thread blocks" in why, why


def test_a_backward_kernels_failure_is_the_kernels_not_the_checks(monkeypatch):
    """A backward kernel runs inside autograd, outside the forward's _kernel wrapper: its failure
    must still be a verdict against the kernels, not 'could not check'."""
    def fails(g):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(O, "mlp_field", backward_through(fails)(O.mlp_field))
    why = _kernel_check.verdict_for(jkofast.VelocityField(2, 8, 2), "cpu", torch.float64, False)
    assert why.startswith("the compiled kernels failed jkofast's check on cpu: mlp_field's kernels under their own "
                          "tile plan raised: RuntimeError: CUDA error"), why


def test_each_switch_of_the_kernels_code_path_is_checked_on_its_own(monkeypatch):
    # The verdict is kept per shape (d, width, layers, activation, time input, dtype), TF32 switch
    # and JKOFAST_CUDA_ROWS: a change in any of them is another code path, checked again.
    from jkofast import _C

    checked = []
    monkeypatch.setattr(_kernel_check, "verdict_for", lambda field, device, dtype, tf32: checked.append(
        (field.activation, field.time, dtype, tf32, _kernel_check.os.environ.get("JKOFAST_CUDA_ROWS"))))
    monkeypatch.delenv("JKOFAST_CUDA_ROWS", raising=False)
    x = torch.zeros(3, 2, dtype=torch.float64)
    field = jkofast.VelocityField(2, 8, 2).double()
    for _ in range(2):   # (once)
        assert _kernel_check.disagreement(field, x) is None
    _kernel_check.disagreement(jkofast.VelocityField(2, 8, 2, activation="tanh").double(), x)
    _kernel_check.disagreement(jkofast.VelocityField(2, 8, 2, time=False).double(), x)
    _kernel_check.disagreement(field.float(), x.float())
    monkeypatch.setattr(_C, "tf32_matmul_allowed", lambda: True)
    _kernel_check.disagreement(field, x.float())   # (field.float() above converted it in place)
    _kernel_check.disagreement(field.double(), x)   # float64 has no TF32 path: the first verdict
    monkeypatch.setenv("JKOFAST_CUDA_ROWS", "32")
    _kernel_check.disagreement(field.double(), x)
    assert checked == [("softplus", True, torch.float64, False, None), ("tanh", True, torch.float64, False, None),
                       ("softplus", False, torch.float64, False, None), ("softplus", True, torch.float32, False, None),
                       ("softplus", True, torch.float32, True, None), ("softplus", True, torch.float64, False, "32")]


@pytest.mark.parametrize("breaking, named", [
    (_off_by(1e-6, 1), "mlp_field_div's div"),                             # float64: 1e-9 of the scale
    (lambda op: lambda *a, **k: [o.clone().fill_(float("nan")) if i == 1 else o
                                 for i, o in enumerate(op(*a, **k))], "mlp_field_div's div is nan")])
def test_a_slightly_wrong_or_nan_output_is_caught(monkeypatch, breaking, named):
    monkeypatch.setattr(O, "mlp_field_div", breaking(O.mlp_field_div))
    why = _kernel_check.verdict_for(jkofast.VelocityField(3, 16, 2), "cpu", torch.float64, False)
    assert why is not None and named in why, why


def test_the_summation_slack_is_the_parameter_gradients_alone(monkeypatch):
    # float32, no TF32: the field's value is held to 4x torch's float32 error plus 2^-20 of its
    # scale; the slack for sums over the batch (2^-16 of the largest parameter gradient) is not its.
    real = O.mlp_field

    def off_in_float32(x, *args, **kwargs):
        f = real(x, *args, **kwargs)
        return f * (1 + 2e-5) if x.dtype == torch.float32 else f
    monkeypatch.setattr(O, "mlp_field", off_in_float32)
    why = _kernel_check.verdict_for(jkofast.VelocityField(3, 16, 2), "cpu", torch.float32, False)
    assert why is not None and "mlp_field's f is" in why and "float32, TF32 off" in why, why
