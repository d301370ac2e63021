"""``jkofast::mlp_field`` and ``jkofast::mlp_field_div``: the MLP field, and the field with its
divergence, as torch ops with fused backward (csrc/cpu/mlp_field_cpu.cpp)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._registration import like_list, refuse_double_backward, save_weights, saved_weights

__all__ = ["mlp_field", "mlp_field_div"]


def _time_rows(x: Tensor, t: Tensor | None) -> Tensor | None:
    # The kernels read t as (B,); a scalar t becomes a stride-0 view, no copy.
    return None if t is None else t.reshape(-1).expand(x.shape[0])


def mlp_field(x: Tensor, t: Tensor | None, weights: Sequence[Tensor], biases: Sequence[Tensor],
              activation: str = "softplus", beta: float = 1.0) -> Tensor:
    """Compiled :func:`jkofast.reference.mlp_velocity`: f(x, t), (B, d)."""
    return torch.ops.jkofast.mlp_field(x, _time_rows(x, t), list(weights), list(biases), activation, float(beta))


def mlp_field_div(x: Tensor, t: Tensor | None, weights: Sequence[Tensor], biases: Sequence[Tensor],
                  activation: str = "softplus", beta: float = 1.0,
                  probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Compiled :func:`jkofast.reference.mlp_velocity_and_divergence`: (f (B, d), div (B,))."""
    return torch.ops.jkofast.mlp_field_div(x, _time_rows(x, t), probes, list(weights), list(biases),
                                           activation, float(beta))


# ----------------------------------------------------------------------------- fakes
def _grads_like(x, t, weights, biases):
    return (x.new_empty(x.shape), x.new_empty(x.shape[0] if t is not None else 0),
            like_list(weights), like_list(biases))


@torch.library.register_fake("jkofast::mlp_field")
def _(x, t, weights, biases, activation, beta):
    return x.new_empty(x.shape)


@torch.library.register_fake("jkofast::mlp_field_backward")
def _(grad_f, x, t, weights, biases, activation, beta):
    return _grads_like(x, t, weights, biases)


@torch.library.register_fake("jkofast::mlp_field_div")
def _(x, t, probes, weights, biases, activation, beta):
    return x.new_empty(x.shape), x.new_empty(x.shape[0])


@torch.library.register_fake("jkofast::mlp_field_div_backward")
def _(grad_f, grad_div, x, t, probes, weights, biases, activation, beta):
    return _grads_like(x, t, weights, biases)


# ----------------------------------------------------------------------------- autograd
# The backward ops recompute the forward tile by tile from x: nothing but the inputs is saved.
# They are not differentiable themselves (no double backward through the compiled field).
def _setup(ctx, inputs, output, with_probes: bool):
    if with_probes:
        x, t, probes, weights, biases, activation, beta = inputs
    else:
        (x, t, weights, biases, activation, beta), probes = inputs, None
    save_weights(ctx, x, t, probes, weights=weights, biases=biases)
    ctx.activation, ctx.beta = activation, beta


def _field_backward(ctx, grad_f):
    (x, t, _), weights, biases = saved_weights(ctx, 3)
    gx, gt, gw, gb = torch.ops.jkofast.mlp_field_backward(grad_f, x, t, weights, biases, ctx.activation, ctx.beta)
    return gx, gt if t is not None else None, list(gw), list(gb), None, None


def _field_div_backward(ctx, grad_f, grad_div):
    (x, t, probes), weights, biases = saved_weights(ctx, 3)
    gx, gt, gw, gb = torch.ops.jkofast.mlp_field_div_backward(grad_f, grad_div, x, t, probes, weights, biases,
                                                              ctx.activation, ctx.beta)
    return gx, gt if t is not None else None, None, list(gw), list(gb), None, None


torch.library.register_autograd("jkofast::mlp_field", _field_backward,
                                setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, False))
torch.library.register_autograd("jkofast::mlp_field_div", _field_div_backward,
                                setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, True))
refuse_double_backward("jkofast::mlp_field_backward")
refuse_double_backward("jkofast::mlp_field_div_backward")
