"""The per-block JKO-iFlow loss (METHOD.md 2.1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .field import Field
from .integrate import rk4

__all__ = ["block_loss", "TRANSPORT_COSTS"]

TRANSPORT_COSTS = ("endpoint", "path")


def block_loss(field: Field, x0: Tensor, h: float, steps: int, *, divergence: str = "exact",
               probes: int = 1, tableau: str = "rk4", transport: str = "endpoint",
               generator: torch.Generator | None = None, backend: str = "auto") -> tuple[Tensor, dict]:
    """One JKO step's loss for a block run over unit time from x0 ~ p_{k-1}:

        E[ |x(1)|^2 / 2 - int_0^1 div f ds + W / (2 h) ],

    with W = |x(1) - x(0)|^2 (``transport="endpoint"``, the official code's form) or
    W = int_0^1 |f|^2 ds (``"path"``, the kinetic energy, an upper bound of the endpoint form).
    It equals KL(T#p_{k-1} || N(0, I)) + W2-proxy / (2h) up to a constant independent of the
    block. ``h = inf`` drops the transport term (a free block).

    Returns:
        ``(loss, parts)``: the scalar loss and its detached terms ``{"V", "div", "W2"}`` (tensors, so
        that logging decides when to synchronise).
    """
    x1, logdet, kinetic = rk4(field, x0, 0.0, 1.0, steps, divergence=divergence, probes=probes,
                              tableau=tableau, generator=generator, backend=backend)
    loss_v = 0.5 * x1.square().sum(1).mean()
    loss_div = -logdet.mean()
    if transport == "endpoint":
        w = (x1 - x0).square().sum(1).mean()
    elif transport == "path":
        w = kinetic.mean()
    else:
        raise ValueError(f"invalid transport {transport!r}; must be one of {list(TRANSPORT_COSTS)}")
    loss_w = w / (2 * h) if math.isfinite(h) else w * 0.0
    loss = loss_v + loss_div + loss_w
    return loss, {"V": loss_v.detach(), "div": loss_div.detach(), "W2": w.detach()}
