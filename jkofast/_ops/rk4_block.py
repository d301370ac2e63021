"""``jkofast::rk4_block``: S RK4 steps of one block carrying x, log-determinant and kinetic energy,
as one torch op with a fused backward (csrc/cpu/rk4_block_cpu.cpp)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._registration import like_list, refuse_double_backward, save_weights, saved_weights

__all__ = ["rk4_block"]


def rk4_block(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], t0: float, t1: float, steps: int, *,
              time: bool = True, activation: str = "softplus", beta: float = 1.0, tableau: str = "rk4",
              divergence: str | None = "exact", probes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Compiled :func:`jkofast.rk4` for an MLP field given by its weights.

    ``divergence``: ``"exact"``, ``"hutchinson"`` (``probes`` (steps, B, k, d), one set per step)
    or ``None``. Returns ``(x1, logdet, kinetic)`` as :func:`jkofast.rk4` does (logdet zeros
    without divergence).
    """
    x1, logdet, kinetic, _ = torch.ops.jkofast.rk4_block(
        x, probes, list(weights), list(biases), float(t0), float(t1), int(steps), tableau,
        divergence or "none", bool(time), activation, float(beta))
    return x1, logdet, kinetic


@torch.library.register_fake("jkofast::rk4_block")
def _(x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation, beta):
    batch = x.shape[0]
    return x.new_empty(x.shape), x.new_empty(batch), x.new_empty(batch), x.new_empty((steps, *x.shape))


@torch.library.register_fake("jkofast::rk4_block_backward")
def _(grad_x1, grad_logdet, grad_kinetic, states, x, probes, weights, biases, t0, t1, steps, tableau, divergence,
      time, activation, beta):
    return x.new_empty(x.shape), like_list(weights), like_list(biases)


def _setup(ctx, inputs, output):
    x, probes, weights, biases, *options = inputs
    states = output[3]
    ctx.mark_non_differentiable(states)
    save_weights(ctx, x, probes, states, weights=weights, biases=biases)
    ctx.options = options  # t0, t1, steps, tableau, divergence, time, activation, beta


def _backward(ctx, grad_x1, grad_logdet, grad_kinetic, _grad_states):
    (x, probes, states), weights, biases = saved_weights(ctx, 3)
    gx, gw, gb = torch.ops.jkofast.rk4_block_backward(grad_x1, grad_logdet, grad_kinetic, states, x, probes,
                                                      weights, biases, *ctx.options)
    return (gx, None, list(gw), list(gb)) + (None,) * len(ctx.options)


torch.library.register_autograd("jkofast::rk4_block", _backward, setup_context=_setup)
refuse_double_backward("jkofast::rk4_block_backward")
