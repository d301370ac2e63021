"""Evaluation: pushing data through blocks in chunks, test NLL with its standard error, and
sample-quality distances (MMD, energy distance)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._moments import mean_and_se, mean_and_se_of, merge_moments, moments
from ._precision import data_dtype
# the Gaussian baseline's functions, also public here (where they were first)
from .gaussian_baseline import fitted_gaussian, gaussian_fit, gaussian_nll, gaussian_nll_values
from .reference import LOG_2PI

__all__ = ["push", "rows_per_chunk", "standard_normal_nll", "nll", "nll_values", "sharded_nll", "sharded_scores",
           "sharded_scores_by_grid", "mean_and_se", "fitted_gaussian", "gaussian_fit", "gaussian_nll",
           "gaussian_nll_values", "mmd", "median_distance", "energy_distance"]

# Rows per chunk when pushing whole data sets: bounds the memory of the d tangent rows
# (chunk x (d + 1) x width floats per layer) while keeping the matrix products large.
CHUNK = 8192


def rows_per_chunk(flow) -> int:
    """A chunk size for ``flow``: the exact divergence carries a (chunk, d, width) tangent (or
    Jacobian) array per layer, so keep that near 2^24 floats (64 MB in float32) at any d."""
    per_row = max(1, int(flow.field_config.get("hidden", 128)) * flow.dim)
    return int(min(CHUNK, max(256, 2**24 // per_row)))


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
    return mean_and_se(nll_values(flow, x, steps=steps, backend=backend, chunk=chunk))


@torch.no_grad()
def nll_values(flow, x: Tensor, *, steps: int | None = None, backend: str = "auto",
               chunk: int = CHUNK) -> Tensor:
    """-log p(x) per row under ``flow``, (N,) float64; a non-finite value is an error."""
    values = torch.cat([-flow.log_prob(xs, steps=steps, backend=backend).double() for xs in x.split(chunk)])
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise FloatingPointError(f"the flow gave a non-finite log-likelihood on {int(bad.sum())} of "
                                 f"{values.numel()} points (first: row {int(bad.nonzero()[0, 0])})")
    return values


@torch.no_grad()
def sharded_nll(flow, rows, dist=None, *, steps: int | None = None, backend: str = "auto", seed: int = 0,
                chunk: int = CHUNK) -> tuple[float, float]:
    """:func:`nll` of data too large to hold, or split over the ranks of a distributed run.

    ``rows`` (a :class:`~jkofast.datasets.streaming.Rows`, or anything
    :func:`~jkofast.datasets.streaming.as_rows` takes) is streamed in chunks; under a process
    group each rank evaluates its shard and the per-rank count, mean and sum of squared
    deviations are merged, so the mean and its standard error are those of all rows (to rounding).
    """
    return sharded_scores(flow, rows, dist, steps=steps, backend=backend, seed=seed, chunk=chunk)["flow"]


@torch.no_grad()
def sharded_scores(flow, rows, dist=None, *, steps: int | None = None, backend: str = "auto", seed: int = 0,
                   chunk: int = CHUNK, gaussian=None) -> dict[str, tuple[float, float]]:
    """:func:`sharded_nll`, and with ``gaussian`` (a :func:`fitted_gaussian`) that model's NLL
    and the paired difference on the same rows, in one pass.

    Returns ``{"flow": (mean, se)}``, with ``gaussian`` also ``"gaussian"`` and
    ``"gaussian_minus_flow"`` (per row, then averaged: its standard error is the one that says
    whether the two models differ, see :func:`~jkofast.evaluate.evaluate`).
    """
    return sharded_scores_by_grid(flow, rows, dist, grids=[steps], backend=backend, seed=seed, chunk=chunk,
                                  gaussian=gaussian)[steps]


@torch.no_grad()
def sharded_scores_by_grid(flow, rows, dist=None, *, grids, backend: str = "auto", seed: int = 0,
                           chunk: int = CHUNK, gaussian=None) -> dict:
    """:func:`sharded_scores` at several RK4 grids (steps per block; ``None``: the flow's own) in
    one pass over the rows: each chunk is read once, and the Gaussian scored once, for all grids.

    Returns ``{grid: sharded_scores' dictionary at that grid}``.
    """
    from .datasets.streaming import Rows, as_rows

    grids = list(dict.fromkeys(grids))
    if not grids:
        raise ValueError("grids is empty: give at least one RK4 grid")
    rows = as_rows(rows, rows.name if isinstance(rows, Rows) else "test", dim=flow.dim)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    # (count, mean, M2) per piece, keyed (statistic, grid); the Gaussian's NLL has no grid.
    keys = [("flow", s) for s in grids]
    if gaussian is not None:
        keys += [("gaussian", None)] + [("gaussian_minus_flow", s) for s in grids]
    pieces: dict = {k: [] for k in keys}  # nothing per row is kept
    bad = dict.fromkeys(grids, 0)  # non-finite NLLs of finite rows, per grid
    bad_rows, scored = 0, 0  # rows holding NaN or inf; finite rows scored
    for _, x in rows.chunks(rank=rank, world=world, seed=seed):
        # Only finite rows are scored, and an empty piece (a split or a rank may keep no row of a
        # chunk) is skipped: whatever a rank meets, it reaches the gather, so no rank waits alone.
        ok = torch.isfinite(x).all(1)
        bad_rows += int((~ok).sum())
        for xs in x[ok].split(chunk):
            if not len(xs):
                continue
            scored += len(xs)
            on_device = xs.to(flow.loc.device, data_dtype(xs, flow.loc.dtype))
            g = -gaussian.log_prob(xs.to("cpu", torch.float64)) if gaussian is not None else None
            if g is not None:
                pieces["gaussian", None].append(moments(g))
            for s in grids:
                v = -flow.log_prob(on_device, steps=s, backend=backend).double().cpu()
                finite = torch.isfinite(v)
                bad[s] += int((~finite).sum())
                pieces["flow", s].append(moments(v[finite]))
                if g is not None:
                    pieces["gaussian_minus_flow", s].append(moments((g - v)[finite]))
    mine = ({k: merge_moments(p) for k, p in pieces.items()}, bad, bad_rows, scored)
    parts = dist.gather(mine, "evaluating the NLL") if dist is not None else [mine]
    bad_rows, scored = sum(p[2] for p in parts), sum(p[3] for p in parts)
    if bad_rows:
        raise ValueError(f"{rows.label} has {bad_rows} row(s) with NaN or inf values")
    for s in grids:
        n_bad = sum(p[1][s] for p in parts)
        if n_bad:
            at = f" at {s} RK4 steps per block" if s is not None else ""
            raise FloatingPointError(f"the flow gave a non-finite log-likelihood on {n_bad} of {scored} points{at}")
    merged = {k: mean_and_se_of(*merge_moments(p[0][k] for p in parts)) for k in keys}
    return {s: {name: merged[name, None if name == "gaussian" else s] for name in
                (("flow",) if gaussian is None else ("flow", "gaussian", "gaussian_minus_flow"))}
            for s in grids}


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    return (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * a @ b.t()).clamp_min_(0)


def _kernel_mean(a: Tensor, b: Tensor, gamma: float, chunk: int = 2048) -> float:
    """Mean of exp(-|a_i - b_j|^2 / (2 gamma^2)) over all pairs, a row block at a time (so
    10,000 x 10,000 pairs never need the whole matrix in memory at once)."""
    total = sum(float(torch.exp(-_sq_dists(block, b) / (2 * gamma ** 2)).sum()) for block in a.split(chunk))
    return total / (a.shape[0] * b.shape[0])


@torch.no_grad()
def median_distance(x: Tensor) -> float:
    """Median of the n^2 pairwise distances among the rows of x, the n zeros on the diagonal
    included (as the JKO-iFlow code computes it)."""
    x = x.double()
    return float(_sq_dists(x, x).flatten().median().sqrt())


@torch.no_grad()
def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Squared MMD with a Gaussian kernel, biased V-statistic, as the JKO-iFlow code computes it:
    k(a, b) = exp(-|a - b|^2 / (2 gamma^2)), gamma = 0.1 x the median pairwise distance among
    the ``x`` points (diagonal zeros included) unless ``bandwidth`` is given.

    In high dimension gamma = 0.1 x median makes every off-diagonal kernel value vanish and the
    value tends to 1/n + 1/m whatever the samples; pass a larger ``bandwidth`` there
    (e.g. :func:`median_distance` itself)."""
    x, y = x.double(), y.double()
    gamma = bandwidth if bandwidth is not None else 0.1 * median_distance(x)
    return _kernel_mean(x, x, gamma) + _kernel_mean(y, y, gamma) - 2 * _kernel_mean(x, y, gamma)


@torch.no_grad()
def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2E|X - Y| - E|X - X'| - E|Y - Y'| (>= 0, zero iff equal in law):
    bandwidth-free, so it ranks samplers without a tuning choice."""
    x, y = x.double(), y.double()
    return float(2 * _sq_dists(x, y).sqrt().mean() - _sq_dists(x, x).sqrt().mean() - _sq_dists(y, y).sqrt().mean())
