"""Evaluation: pushing data through blocks in chunks, test NLL with its standard error, and
sample-quality distances (MMD, energy distance)."""
from __future__ import annotations

import math
import torch
from torch import Tensor

from .reference import LOG_2PI

__all__ = ["push", "standard_normal_nll", "nll", "mmd", "energy_distance"]

# Rows per chunk when pushing whole data sets: bounds the memory of the d tangent rows
# (chunk x (d + 1) x width floats per layer) while keeping the matrix products large.
CHUNK = 8192


@torch.no_grad()
def push(flow, u: Tensor, *, blocks: slice = slice(None), divergence: str | None = None,
         backend: str = "auto", chunk: int = CHUNK) -> tuple[Tensor, Tensor | None]:
    """:meth:`Flow.push` over a whole data set in chunks, without building a graph."""
    pieces = [flow.push(us, blocks=blocks, divergence=divergence, backend=backend) for us in u.split(chunk)]
    if not pieces:
        return u.clone(), (None if divergence is None else u.new_zeros(0))
    logdet = None if divergence is None else torch.cat([ld for _, ld in pieces])
    return torch.cat([us for us, _ in pieces]), logdet


def standard_normal_nll(z: Tensor, logdet: Tensor) -> Tensor:
    """-log p per row for latent points z (B, d) with log|det dz/dx| = logdet (B,)."""
    return 0.5 * z.square().sum(1) + 0.5 * z.shape[1] * LOG_2PI - logdet


@torch.no_grad()
def nll(flow, x: Tensor, *, steps: int | None = None, backend: str = "auto",
        chunk: int = CHUNK) -> tuple[float, float]:
    """Mean negative log-likelihood of x under ``flow`` in nats, and its standard error
    std / sqrt(N); computed in chunks without building a graph."""
    values = torch.cat([-flow.log_prob(xs, steps=steps, backend=backend).double() for xs in x.split(chunk)])
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise FloatingPointError(f"the flow gave a non-finite log-likelihood on {int(bad.sum())} of "
                                 f"{values.numel()} points (first: row {int(bad.nonzero()[0, 0])})")
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
