"""``rk4``: fixed-step Runge-Kutta integration of x, the log-determinant and the kinetic energy."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _backend
from ._backend import compiled_ops as _ops
from ._checks import check_choice, check_points, check_positive_int
from .divergence import DIVERGENCE_METHODS, as_time, check_field, draw_probes
from .field import Field, inference_tensors_named
from .reference import TABLEAUS

__all__ = ["rk4"]


def rk4(field: Field, x: Tensor, t0: float, t1: float, steps: int, *,
        divergence: str | None = "exact", probes: int = 1, noise: str = "rademacher",
        tableau: str = "rk4", generator: torch.Generator | None = None,
        backend: str = "auto") -> tuple[Tensor, Tensor | None, Tensor]:
    """Integrate dx/dt = f(x, t) from t0 to t1 with ``steps`` equal RK4 steps.

    The state (x, log-determinant, kinetic energy) is integrated jointly with the same stages,
    so the log-determinant is the one of the discrete scheme's own stage evaluations.

    Arguments:
        field: the velocity field.
        x: initial points, (B, d).
        t0, t1: start and end times; ``t1 < t0`` integrates backwards (sampling, inversion).
        steps: number of RK4 steps (>= 1).
        divergence: ``"exact"``, ``"hutchinson"`` or ``None`` (skip it: sampling).
        probes: Hutchinson probes per sample; drawn once per step and held for its 4 stages,
            as the official JKO-iFlow code does.
        noise: ``"rademacher"`` or ``"gaussian"`` probes.
        tableau: ``"rk4"`` (classical) or ``"rk4-3/8"`` (torchdiffeq's rk4, Kutta's 3/8 rule,
            for parity with the official code).
        generator: random generator for the probes.
        backend: ``"auto"``, ``"torch"`` or ``"compiled"``.

    Returns:
        ``(x1, logdet, kinetic)``: x1 (B, d); logdet (B,) = int_t0^t1 div f dt, so that
        log|det dx1/dx0| = logdet in either direction (``None`` when ``divergence`` is None);
        kinetic (B,) = int |f|^2 |dt| >= 0.

    Examples:
        >>> from jkofast import VelocityField
        >>> x1, logdet, kinetic = rk4(VelocityField(2, hidden=8), torch.randn(3, 2), 0.0, 1.0, 4)
        >>> x1.shape, logdet.shape, kinetic.shape
        (torch.Size([3, 2]), torch.Size([3]), torch.Size([3]))
    """
    check_field(field)
    check_points(x, "x", field.dim, like=field)
    engine = _backend.choose(backend, field, x)
    check_positive_int(steps, "steps")
    if divergence is not None:
        check_choice(divergence, "divergence", DIVERGENCE_METHODS)
    check_choice(tableau, "tableau", TABLEAUS)
    t0, t1 = _time_bound(t0, "t0"), _time_bound(t1, "t1")
    with inference_tensors_named(field):
        return _integrate(field, x, t0, t1, steps, engine, divergence, probes, noise, tableau, generator)


def _integrate(field: Field, x: Tensor, t0: float, t1: float, steps: int, engine: str, divergence: str | None,
               probes: int, noise: str, tableau: str, generator) -> tuple[Tensor, Tensor | None, Tensor]:
    """rk4's integration, its arguments checked."""
    if engine == "compiled":
        v = None
        if divergence == "hutchinson":  # the same draws, in the same order, as the loop below
            v = torch.stack([draw_probes(x, probes, noise, generator) for _ in range(steps)])
        x1, logdet, kinetic = _ops.rk4_block(
            x, field.weights, field.biases, t0, t1, steps, time=field.time, activation=field.activation,
            beta=field.beta, tableau=tableau, divergence=divergence, probes=v)
        return x1, (logdet if divergence is not None else None), kinetic
    a, b, c = TABLEAUS[tableau]
    h = (t1 - t0) / steps
    logdet = x.new_zeros(x.shape[0]) if divergence is not None else None
    kinetic = x.new_zeros(x.shape[0])
    for step in range(steps):
        t = t0 + step * h
        v = draw_probes(x, probes, noise, generator) if divergence == "hutchinson" else None
        ks, divs = [], []
        for a_row, c_i in zip(a, c):
            xi = x
            for a_ij, k_j in zip(a_row, ks):
                if a_ij != 0.0:
                    xi = xi + (h * a_ij) * k_j
            ti = as_time(t + c_i * h, x)
            if divergence is None:
                ks.append(field(xi, ti))
            else:
                k_i, div_i = field.velocity_and_divergence(xi, ti, v)
                ks.append(k_i)
                divs.append(div_i)
        x = x + h * sum(b_i * k_i for b_i, k_i in zip(b, ks))
        kinetic = kinetic + abs(h) * sum(b_i * k_i.square().sum(1) for b_i, k_i in zip(b, ks))
        if divergence is not None:
            logdet = logdet + h * sum(b_i * d_i for b_i, d_i in zip(b, divs))
    return x, logdet, kinetic


def _time_bound(value, name: str) -> float:
    """t0 or t1 as a finite Python float: the step size is a number in every kernel, so a time
    that wants a gradient (or one per sample) is refused rather than silently detached."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number (one time for every sample), got a tensor of shape "
                             f"{tuple(value.shape)}")
        if value.requires_grad:
            raise ValueError(f"{name} requires a gradient, which rk4 does not compute (its times are numbers); "
                             f"pass {name}.item()")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
