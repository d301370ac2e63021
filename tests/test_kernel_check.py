"""The first-use check of the compiled kernels (jkofast/_kernel_check.py), run here on the CPU ops:
in production it checks CUDA devices only, so each test lets it check "cpu" too. It must pass
kernels that agree (no false alarm: that would put users on the slow engine), catch a kernel that
is wrong in any one output (the field, the divergence, a gradient, the RK4 log-determinant, the
fused step's loss), and then keep ``backend="auto"`` on the reference, with one warning."""
from __future__ import annotations

import warnings

import pytest
import torch

import jkofast
from jkofast import _backend, _kernel_check
from jkofast._backend import compiled_ops as O

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


class _GradientOff(torch.autograd.Function):
    """Identity forward; the gradient scaled: a kernel whose backward alone is wrong."""
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.1


def _wrong_backward(op):
    def wrong(x, *args, **kwargs):
        return op(_GradientOff.apply(x), *args, **kwargs)
    return wrong


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
    with pytest.warns(_kernel_check.KernelCheckWarning, match="RuntimeError: CUDA error: an illegal memory access"):
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "torch"


def test_not_checked_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cuda",))  # production: the CPU is not checked
    monkeypatch.setattr(O, "mlp_field_div", _off_by(0.5, 1)(O.mlp_field_div))
    field = jkofast.VelocityField(2, 8, 2).double()
    assert _kernel_check.disagreement(field, torch.zeros(3, 2, dtype=torch.float64)) is None
    monkeypatch.setattr(_kernel_check, "CHECKED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # inside a torch.compile trace
    assert _kernel_check.disagreement(field, torch.zeros(3, 2, dtype=torch.float64)) is None
    assert not _kernel_check._verdicts  # not decided: the next call outside the trace checks


def test_info_reports_the_check(monkeypatch):
    from jkofast import info

    assert info.kernel_check("cpu").startswith("passed on cpu (the default field")
    monkeypatch.setattr(O, "rk4_block", _off_by(0.1, 0)(O.rk4_block))
    report = info.kernel_check("cpu")
    assert report.startswith("FAILED: the compiled kernels failed jkofast's check on cpu: rk4_block's x1") \
        and "float32" in report and "float64" in report, report


def test_the_callers_deterministic_mode_is_kept():
    field = jkofast.VelocityField(2, 8, 2).double()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert _backend.choose("auto", field, torch.zeros(3, 2, dtype=torch.float64)) == "compiled"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
