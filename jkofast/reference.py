"""Pure-torch engine: the reference for every compiled kernel and the fallback where none fits.

Everything here is plain differentiable torch code on explicit weight lists, so it doubles as
the test oracle (run it in float64) and as the engine users get without the compiled ops.

Layouts (row-major, B = batch, d = data dimension, H = layer width, k = Hutchinson probes):

* ``x``: (B, d); ``t``: a 0-d tensor or (B,)
* ``weights[l]``: (H_out, H_in) as in ``nn.Linear``; ``biases[l]``: (H_out,)
* layer 0 sees ``[x, t]`` (H_in = d + 1) when the field is time dependent, ``x`` otherwise
* tangent rows: (B, r, H) where r = d (exact trace) or k (probes); row j of sample b holds the
  directional derivative of that sample's activations along direction j.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "activation_with_derivatives",
    "mlp_velocity",
    "mlp_velocity_and_divergence",
    "TABLEAUS",
]

# ----------------------------------------------------------------------------- activations
# Each entry gives sigma(z), sigma'(z) and sigma''(z). The forward-mode divergence needs
# sigma' (it scales the tangent rows); a hand-written backward of it needs sigma''. Keeping the
# three together here is what the compiled kernels copy into their shared math header.


def _softplus(z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    # softplus(beta z)/beta, written through logaddexp so it never overflows for large beta*z.
    bz = beta * z
    value = torch.logaddexp(bz, torch.zeros_like(bz)) / beta
    s = torch.sigmoid(bz)
    return value, s, beta * s * (1 - s)


def _tanh(z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    y = torch.tanh(z)
    d1 = 1 - y * y
    return y, d1, -2 * y * d1


def _silu(z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(z)
    d1 = s * (1 + z * (1 - s))
    d2 = s * (1 - s) * (2 + z * (1 - 2 * s))
    return z * s, d1, d2


ACTIVATIONS: dict[str, Callable[[Tensor, float], tuple[Tensor, Tensor, Tensor]]] = {
    "softplus": _softplus,
    "tanh": _tanh,
    "silu": _silu,
}


def activation_with_derivatives(name: str, z: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(sigma(z), sigma'(z), sigma''(z))`` for the activation ``name``.

    ``beta`` is the softplus sharpness (``softplus(beta z) / beta``); the other activations
    ignore it.
    """
    try:
        fn = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
    return fn(z, beta)


# ----------------------------------------------------------------------------- MLP field


def _input_rows(x: Tensor, t: Tensor | None) -> Tensor:
    """Layer-0 input: ``[x, t]`` (B, d + 1), or ``x`` alone for an autonomous field."""
    if t is None:
        return x
    t_col = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)  # t: also a float
    return torch.cat([x, t_col], dim=1)


def mlp_velocity(
    x: Tensor,
    t: Tensor | None,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "softplus",
    beta: float = 1.0,
) -> Tensor:
    """f(x, t) of the MLP ``weights``/``biases``; (B, d). ``t=None`` for an autonomous field."""
    h = _input_rows(x, t)
    for w, b in zip(weights[:-1], biases[:-1]):
        h = activation_with_derivatives(activation, torch.addmm(b, h, w.t()), beta)[0]
    return torch.addmm(biases[-1], h, weights[-1].t())


def mlp_velocity_and_divergence(
    x: Tensor,
    t: Tensor | None,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "softplus",
    beta: float = 1.0,
    probes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """f(x, t) and its divergence tr(df/dx) in one forward-mode pass; ((B, d), (B,)).

    With ``probes=None`` the divergence is exact: the d tangent columns e_1..e_d ride along the
    layers as d extra rows per sample, multiplied by the same weights in one batched product per
    layer, so the cost is (1 + d) forward passes' worth of arithmetic, not d backward passes. With ``probes`` of shape (B, k, d) it is the Hutchinson estimate
    mean_i v_i^T (df/dx) v_i, carrying k tangent rows instead of d.
    """
    d = x.shape[1]
    w0, wl = weights[0], weights[-1]
    w0x = w0[:, :d]                                   # (H, d): d(layer-0 input)/dx, t excluded
    z = torch.addmm(biases[0], _input_rows(x, t), w0.t())
    if probes is None:
        # Exact trace: the first tangent product is W0x^T itself, identical for every sample.
        dz = w0x.t().unsqueeze(0)                     # (1, d, H), broadcasts over the batch
    else:
        dz = probes @ w0x.t()                         # (B, k, H)
    a, s1, _ = activation_with_derivatives(activation, z, beta)
    da = s1.unsqueeze(1) * dz                         # (B, r, H)
    for w, b in zip(weights[1:-1], biases[1:-1]):
        # All B*r tangent rows go through one matrix product, (B, r, H_in) @ W^T, beside the
        # primal rows' product. (Concatenating both into a single product costs a copy of the
        # rows per layer, measured slower on CPU, for the same arithmetic.)
        z = torch.addmm(b, a, w.t())
        a, s1, _ = activation_with_derivatives(activation, z, beta)
        da = s1.unsqueeze(1) * (da @ w.t())
    f = torch.addmm(biases[-1], a, wl.t())
    if probes is None:
        # Only the diagonal of J = da @ Wl^T is needed: div = sum_j <da[:, j], Wl[j]>.
        div = torch.einsum("bjh,jh->b", da, wl)
    else:
        jv = da @ wl.t()                              # (B, k, d): J v_i
        div = (jv * probes).sum(-1).mean(-1)
    return f, div


# ----------------------------------------------------------------------------- RK4 tableaus
# Butcher tableaus (a, b, c). "rk4" is the classical method; "rk4-3/8" is torchdiffeq's "rk4"
# (Kutta's 3/8 rule), which the official JKO-iFlow code integrates with (docs/METHOD.md 2.3).
TABLEAUS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...], tuple[float, ...]]] = {
    "rk4": (
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
        (0.0, 0.5, 0.5, 1.0),
    ),
    "rk4-3/8": (
        ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        (1 / 8, 3 / 8, 3 / 8, 1 / 8),
        (0.0, 1 / 3, 2 / 3, 1.0),
    ),
}

LOG_2PI = math.log(2 * math.pi)
