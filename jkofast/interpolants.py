"""Interpolants between N(0, I) and the data, and the time distribution of the interpolant loss
(Albergo & Vanden-Eijnden, arXiv 2209.15571; docs/METHOD.md 4).

In the paper's convention x0 ~ N(0, I) is the base, x1 the data, I_t = a_t x0 + b_t x1 with
a_0 = b_1 = 1 and a_1 = b_0 = 0. Each entry below gives (a_t, b_t, da/dt, db/dt).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["INTERPOLANTS", "interpolate", "sample_times"]

_HALF_PI = 0.5 * math.pi


def _trig(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # The paper's default: I_t = cos(pi t / 2) x0 + sin(pi t / 2) x1 (a_t^2 + b_t^2 = 1, so a
    # standardized data set keeps roughly unit variance along the whole path).
    c, s = torch.cos(_HALF_PI * t), torch.sin(_HALF_PI * t)
    return c, s, -_HALF_PI * s, _HALF_PI * c


def _linear(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # I_t = (1 - t) x0 + t x1: constant dI/dt = x1 - x0 along each pair.
    return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


INTERPOLANTS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]] = {
    "trig": _trig,
    "linear": _linear,
}


def interpolate(name: str, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(I_t, dI_t/dt)`` for base points x0 (B, d), data x1 (B, d) and times t (B,)."""
    a, b, da, db = (c.unsqueeze(1) for c in INTERPOLANTS[name](t))
    return a * x0 + b * x1, da * x0 + db * x1


def sample_times(n: int, beta: tuple[float, float] | None, *, generator: torch.Generator,
                 dtype: torch.dtype, device) -> Tensor:
    """n times in [0, 1]: uniform (``beta=None``), else Beta(a, b).

    Any positive time density keeps the loss's minimiser (it only reweights the time integral);
    Beta(1, 0.5) spends more samples near the data end t = 1. Drawn by Johnk's method (X = U^(1/a),
    Y = V^(1/b), accept X + Y <= 1, return X / (X + Y)) so the run's generator drives everything.
    """
    if beta is None:
        return torch.rand(n, generator=generator, dtype=dtype, device=device)
    a, b = beta
    out = torch.empty(0, dtype=dtype, device=device)
    while out.numel() < n:
        x = torch.rand(2 * n, generator=generator, dtype=dtype, device=device) ** (1 / a)
        y = torch.rand(2 * n, generator=generator, dtype=dtype, device=device) ** (1 / b)
        keep = (x + y <= 1) & (x + y > 0)
        out = torch.cat([out, x[keep] / (x + y)[keep]])
    return out[:n]
