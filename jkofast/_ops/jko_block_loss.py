"""``jkofast::jko_block_loss``: one JKO-iFlow block's training loss and its gradients in one pass
(csrc/cpu/jko_block_loss_cpu.cpp).

The op returns the gradients with the loss, because the loss is a fixed linear function of the
per-sample x1, logdet and kinetic energy: the backward pass can start as soon as x1 is known,
so the forward integrates without the divergence's tangent rows. The autograd formula here hands
those gradients back, scaled by the incoming gradient; the op is called only when a gradient is
wanted (otherwise :func:`jkofast.rk4` is cheaper).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._registration import like_list

__all__ = ["jko_block_loss", "TERMS"]

TERMS = ("potential", "logdet", "endpoint", "kinetic")  # the columns of the per-sample terms


def jko_block_loss(x0: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], steps: int, *,
                   endpoint_weight: float, path_weight: float, time: bool = True, activation: str = "softplus",
                   beta: float = 1.0, tableau: str = "rk4", divergence: str = "exact",
                   probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The block's loss over [0, 1], differentiable in the weights and biases (and x0):

        mean_i(|x1_i|^2 / 2 - logdet_i + endpoint_weight |x1_i - x0_i|^2 + path_weight kinetic_i)

    Returns ``(loss, terms)``: the scalar loss and the detached per-sample terms (B, 4), columns
    :data:`TERMS`. ``probes``: (steps, B, k, d) with ``divergence="hutchinson"``.
    """
    weights, biases = list(weights), list(biases)
    options = (x0, probes, weights, biases, 0.0, 1.0, int(steps), tableau, divergence, bool(time), activation,
               float(beta), float(endpoint_weight), float(path_weight))
    loss, terms = _JKOBlockLoss.apply(options, *weights, *biases, x0)
    return loss, terms


class _JKOBlockLoss(torch.autograd.Function):
    # The differentiable inputs are listed after `options` so autograd sees them; the op reads
    # them from `options` (the same tensors).
    @staticmethod
    def forward(ctx, options, *tensors):
        terms, grad_x0, grad_w, grad_b = torch.ops.jkofast.jko_block_loss(*options)
        endpoint_weight, path_weight = options[-2], options[-1]
        per_sample = terms[:, 0] - terms[:, 1] + endpoint_weight * terms[:, 2] + path_weight * terms[:, 3]
        ctx.save_for_backward(*grad_w, *grad_b, grad_x0)
        ctx.mark_non_differentiable(terms)
        return per_sample.mean(), terms

    @staticmethod
    def backward(ctx, grad_loss, _grad_terms):
        if torch.is_grad_enabled():  # create_graph=True: the saved gradients are constants, so a
            # second derivative through them would be silently wrong
            raise NotImplementedError(
                "jkofast::jko_block_loss has no double backward (second derivatives through the field); "
                "use backend='torch' for that computation")
        return (None, *(grad_loss * g for g in ctx.saved_tensors))


@torch.library.register_fake("jkofast::jko_block_loss")
def _(x0, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation, beta, endpoint_weight,
      path_weight):
    return x0.new_empty((x0.shape[0], len(TERMS))), x0.new_empty(x0.shape), like_list(weights), like_list(biases)
