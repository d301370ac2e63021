"""The per-block JKO-iFlow loss (docs/METHOD.md 2.1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _backend
from ._checks import check_choice, check_points, check_positive_int
from .divergence import DIVERGENCE_METHODS, draw_probes
from .field import Field
from .integrate import rk4

__all__ = ["block_loss", "TRANSPORT_COSTS"]

TRANSPORT_COSTS = ("endpoint", "path")


def block_loss(field: Field, x0: Tensor, h: float, steps: int, *, divergence: str = "exact",
               probes: int = 1, tableau: str = "rk4", transport: str = "endpoint",
               generator: torch.Generator | None = None, backend: str = "auto",
               fused: bool = True) -> tuple[Tensor, dict]:
    """One JKO step's loss for a block run over unit time from x0 ~ p_{k-1}:

        E[ |x(1)|^2 / 2 - int_0^1 div f ds + W / (2 h) ],

    with W = |x(1) - x(0)|^2 (``transport="endpoint"``, the official code's form) or
    W = int_0^1 |f|^2 ds (``"path"``, the kinetic energy, an upper bound of the endpoint form).
    It equals KL(T#p_{k-1} || N(0, I)) + W2-proxy / (2h) up to a constant independent of the
    block. ``h = inf`` drops the transport term (a free block).

    With the compiled engine and a gradient wanted, the loss and its gradients come from one fused
    op (``jko_block_loss``: no tangent rows in the forward, no recomputation in the backward);
    ``fused=False`` takes rk4_block and its backward instead (the same values; for comparisons).

    Returns:
        ``(loss, parts)``: the scalar loss and its detached terms ``{"V", "div", "W2"}`` (tensors, so
        that logging decides when to synchronise).
    """
    if transport not in TRANSPORT_COSTS:
        raise ValueError(f"invalid transport {transport!r}; must be one of {list(TRANSPORT_COSTS)}")
    weight = 1 / (2 * h) if math.isfinite(h) else 0.0
    if fused and _fused_fits(field, x0, backend):
        return _fused_block_loss(field, x0, steps, weight, transport, divergence, probes, tableau, generator)
    x1, logdet, kinetic = rk4(field, x0, 0.0, 1.0, steps, divergence=divergence, probes=probes,
                              tableau=tableau, generator=generator, backend=backend)
    loss_v = 0.5 * x1.square().sum(1).mean()
    loss_div = -logdet.mean()
    w = (x1 - x0).square().sum(1).mean() if transport == "endpoint" else kinetic.mean()
    loss = loss_v + loss_div + w * weight
    return loss, {"V": loss_v.detach(), "div": loss_div.detach(), "W2": w.detach()}


def _fused_fits(field: Field, x0: Tensor, backend: str) -> bool:
    """Whether the fused loss-and-gradient op serves this call: the compiled engine runs the field,
    the op has a kernel for the device, and a gradient will be taken (without one, rk4's forward
    alone is cheaper)."""
    check_points(x0, "x0", field.dim, like=field)
    if _backend.choose(backend, field, x0) != "compiled" or not _backend.has_kernel("jko_block_loss", x0.device.type):
        return False
    if not torch.is_grad_enabled() or x0.shape[0] == 0:
        return False
    return x0.requires_grad or any(p.requires_grad for p in field.parameters())


def _fused_block_loss(field, x0, steps, weight, transport, divergence, probes, tableau, generator):
    check_positive_int(steps, "steps")
    check_choice(divergence, "divergence", DIVERGENCE_METHODS)
    v = None
    if divergence == "hutchinson":  # the same draws, in the same order, as rk4
        v = torch.stack([draw_probes(x0, probes, "rademacher", generator) for _ in range(steps)])
    loss, terms = _backend.compiled_ops.jko_block_loss(
        x0, field.weights, field.biases, steps, endpoint_weight=weight if transport == "endpoint" else 0.0,
        path_weight=weight if transport == "path" else 0.0, time=field.time, activation=field.activation,
        beta=field.beta, tableau=tableau, divergence=divergence, probes=v)
    parts = terms.mean(0)
    w = parts[2] if transport == "endpoint" else parts[3]
    return loss, {"V": parts[0], "div": -parts[1], "W2": w}
