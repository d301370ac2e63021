"""Evaluation: pushing data through blocks in chunks, test NLL with its standard error, and
sample-quality distances (MMD, energy distance)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .field import Field
from .integrate import rk4

__all__ = ["push", "push_with_logdet", "nll", "mmd", "energy_distance"]

# Rows per chunk when pushing whole data sets: bounds the memory of the d tangent rows
# (chunk x (d + 1) x width floats per layer) while keeping the matrix products large.
CHUNK = 8192


@torch.no_grad()
def push(blocks: Sequence[Field], x: Tensor, steps: int, tableau: str = "rk4", chunk: int = CHUNK) -> Tensor:
    """x pushed forward through ``blocks`` (unit time each), without the divergence."""
    out = []
    for xs in x.split(chunk):
        for block in blocks:
            xs = rk4(block, xs, 0.0, 1.0, steps, divergence=None, tableau=tableau)[0]
        out.append(xs)
    return torch.cat(out) if out else x.clone()


@torch.no_grad()
def push_with_logdet(blocks: Sequence[Field], x: Tensor, steps: int, tableau: str = "rk4",
                     chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """x pushed through ``blocks`` and the summed exact log-determinants; ((N, d), (N,))."""
    xs_out, ld_out = [], []
    for xs in x.split(chunk):
        ld = xs.new_zeros(xs.shape[0])
        for block in blocks:
            xs, block_ld, _ = rk4(block, xs, 0.0, 1.0, steps, divergence="exact", tableau=tableau)
            ld = ld + block_ld
        xs_out.append(xs)
        ld_out.append(ld)
    return torch.cat(xs_out), torch.cat(ld_out)


@torch.no_grad()
def nll(flow, x: Tensor, *, steps: int | None = None, chunk: int = CHUNK) -> tuple[float, float]:
    """Mean negative log-likelihood of x under ``flow`` in nats, and its standard error
    std / sqrt(N); computed in chunks without building a graph."""
    values = torch.cat([-flow.log_prob(xs, steps=steps).double() for xs in x.split(chunk)])
    if not bool(torch.isfinite(values).all()):
        raise FloatingPointError("the flow gave a non-finite log-likelihood on some test points")
    se = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")
    return float(values.mean()), se


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * a @ b.t()).clamp_min_(0)


@torch.no_grad()
def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Squared MMD with a Gaussian kernel, biased V-statistic, as the JKO-iFlow code computes it:
    k(a, b) = exp(-|a - b|^2 / (2 gamma^2)), gamma = 0.1 x the median pairwise distance among
    the ``x`` points (diagonal zeros included) unless ``bandwidth`` is given."""
    x, y = x.double(), y.double()
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    gamma = bandwidth if bandwidth is not None else 0.1 * float(dxx.sqrt().median())
    k = lambda d: torch.exp(-d / (2 * gamma ** 2)).mean()  # noqa: E731
    return float(k(dxx) + k(dyy) - 2 * k(dxy))


@torch.no_grad()
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2E|X - Y| - E|X - X'| - E|Y - Y'| (>= 0, zero iff equal in law):
    bandwidth-free, so it ranks samplers without a tuning choice."""
    x, y = x.double(), y.double()
    return float(2 * _sq_dists(x, y).sqrt().mean() - _sq_dists(x, x).sqrt().mean() - _sq_dists(y, y).sqrt().mean())
