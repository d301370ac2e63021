"""Shared inputs, outputs and tolerance rules for the compiled-op tests (test_mlp_field,
test_rk4_block, test_cuda_ops, ...).

Tolerances (each states why it is what it is):

* float64: the kernels compute the same sums as the reference in another order (tiles, BLAS
  blocking), so they agree to a few ulps times the depth of the computation: 1e-10 relative
  leaves a wide margin yet catches any wrong term (a missing sigma'' term is O(1)).
* float32: the kernel's error against the float64 reference may be at most twice the error of
  the pure-torch reference run in float32, plus a floor of 1e-6 times the output's scale
  (for outputs that happen to be computed exactly by both).
"""
from __future__ import annotations

import torch

from jkofast import reference as R
from jkofast._backend import compiled_ops as O
from jkofast.jko_loss import block_loss
from conftest import random_field

F64 = dict(rtol=1e-10, atol=1e-12)


def field_case(dim=3, hidden=16, layers=2, activation="softplus", time=True, batch=37, probes=None,
               beta=1.0, dtype=torch.float64):
    """(field, x, t, v): a random field with O(1) outputs, points, per-sample times, probes."""
    field = random_field(dim, hidden, layers, activation, time=time, beta=beta, dtype=dtype)
    x = torch.randn(batch, dim, dtype=dtype)
    t = torch.rand(batch, dtype=dtype)
    v = None if probes is None else torch.randn(batch, probes, dim, dtype=dtype)
    return field, x, t, v


def leaf_copies(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def assert_within_float32_rule(kernel32, torch32, ref64, name=""):
    """The kernel in float32 is at most twice as far from the float64 truth as torch in float32."""
    kernel_err = (kernel32.double() - ref64).abs().max().item()
    torch_err = (torch32.double() - ref64).abs().max().item()
    floor = 1e-6 * max(ref64.abs().max().item(), 1.0)
    assert kernel_err <= 2 * torch_err + floor, f"{name}: kernel error {kernel_err:.3g}, torch float32 {torch_err:.3g}"


def field_outputs(field, x, t, probes, with_div, engine, seed=1):
    """[f, (div), grad x, (grad t), grads of weights and biases] of a random linear functional."""
    xs, ts = leaf_copies([x, t])
    ws, bs = leaf_copies(field.weights), leaf_copies(field.biases)
    tt = ts if field.time else None
    if with_div:
        fn = O.mlp_field_div if engine == "compiled" else R.mlp_velocity_and_divergence
        f, div = fn(xs, tt, ws, bs, field.activation, field.beta, probes)
    else:
        fn = O.mlp_field if engine == "compiled" else R.mlp_velocity
        f, div = fn(xs, tt, ws, bs, field.activation, field.beta), None
    gen = torch.Generator(device=x.device).manual_seed(seed)
    loss = (f * torch.randn(f.shape, generator=gen, device=x.device, dtype=f.dtype)).sum()
    if div is not None:
        loss = loss + (div * torch.randn(div.shape, generator=gen, device=x.device, dtype=div.dtype)).sum()
    wrt = [xs, *ws, *bs] + ([ts] if field.time else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
    if x.is_cuda:
        torch.cuda.synchronize()  # a kernel's asynchronous error surfaces here, not in a later test
    return [f.detach()] + ([div.detach()] if div is not None else []) + list(grads)


def block_loss_outputs(field, x, h, steps, backend, fused=True, **kw):
    """[loss, V, div, W2, grad x, grads of the parameters] of block_loss (on the fused op where
    backend="compiled" and fused; Hutchinson probes from a fixed seed)."""
    xs = leaf_copies([x])[0]
    gen = torch.Generator(device=x.device).manual_seed(5)
    loss, parts = block_loss(field, xs, h, steps, generator=gen, backend=backend, fused=fused, **kw)
    grads = torch.autograd.grad(loss, [xs, *field.parameters()])
    if x.is_cuda:
        torch.cuda.synchronize()
    return [loss.detach(), parts["V"], parts["div"], parts["W2"], *grads]
