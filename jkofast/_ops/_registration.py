"""Helpers shared by the op registrations: weight lists through ``save_for_backward``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def save_weights(ctx, *tensors, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
    """Save ``tensors`` then the weights and biases (None allowed), remembering the layer count."""
    ctx.layers = len(weights)
    ctx.save_for_backward(*tensors, *weights, *biases)


def saved_weights(ctx, leading: int) -> tuple[list, list, list]:
    """(the first ``leading`` saved tensors, weights, biases)."""
    saved = ctx.saved_tensors
    head, rest = list(saved[:leading]), saved[leading:]
    return head, list(rest[:ctx.layers]), list(rest[ctx.layers:])


def like_list(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Fresh contiguous tensors shaped like ``tensors`` (the ops return contiguous gradients)."""
    return [t.new_empty(t.shape) for t in tensors]


def refuse_double_backward(op: str) -> None:
    """Give the backward op ``op`` an autograd formula that raises: without one, torch would
    differentiate through it as if it were constant (a silently wrong second derivative)."""
    def _backward(ctx, *grads):
        raise NotImplementedError(
            f"{op}: the compiled ops have no double backward (second derivatives through the field); "
            "use backend='torch' for that computation")

    torch.library.register_autograd(op, _backward, setup_context=lambda ctx, inputs, output: None)
