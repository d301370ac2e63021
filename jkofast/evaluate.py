"""``evaluate``: what ``jkofast eval`` and bench/bench_methods.py report for a trained flow.

* test NLL in nats with its standard error, in the user's data space and in the standardized
  space u = (x - loc) / scale the blocks work in (the papers' tables are in that space: their
  loaders standardize the data first). NLL_u = NLL_x - sum(log scale) for every point, so the
  standard error is the same.
* MMD between samples and test points as the JKO-iFlow code computes it (docs/METHOD.md 6): Gaussian
  kernel, biased V-statistic (MMD^2), up to 10,000 against 10,000. ``mmd_c`` uses the bandwidth
  0.1 x the median pairwise test distance (the code's); ``mmd_m`` the median itself, which stays
  informative in high dimension, where ``mmd_c`` tends to 2/n for any sampler. Both are in data
  space, where the columns of largest scale decide them (a table in mixed units: a model that
  ignores a strong correlation can score better); ``mmd_u`` is ``mmd_m`` in the standardized
  space u, every column on its own scale (the space the papers' tabular MMDs are in).
* how it was trained, from ``flow.info``: batches, seconds, wall time, peak memory.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from ._checks import check_finite, check_points, check_positive_int, check_seed
from ._precision import data_dtype
from .datasets.streaming import as_rows
from .flow import Flow
from .gaussian_baseline import GaussianFit, fixes_a_covariance, gaussian_fit, gaussian_nll_values
from .metrics import mean_and_se, median_distance, mmd, nll_values, rows_per_chunk, sharded_scores_by_grid

__all__ = ["evaluate", "evaluate_sharded", "evaluation_grids", "nll_entries", "training_summary", "TRAINING_KEYS"]

TRAINING_KEYS = ("method", "train_batches", "batch_size", "train_seconds", "resources", "resumed")


@torch.no_grad()
def evaluate(flow: Flow, test, *, steps: int | list[int] | None = None, mmd_points: int = 10_000, seed: int = 0,
             backend: str = "auto", baseline_train=None) -> dict:
    """Score ``flow`` on test data.

    Arguments:
        flow: a trained :class:`~jkofast.Flow`.
        test: test points, (N, d) array or tensor, in data space.
        steps: RK4 steps per block to report NLLs at, one number or several (default:
            ``flow.info["eval_grids"]``, else the flow's own grid).
        mmd_points: n for the MMD (min(n, N) test points against as many samples); 0 skips it.
        seed: seeds the samples and the choice of test points for the MMD.
        baseline_train: training data (N, d), in memory or streamed (anything
            :func:`~jkofast.datasets.streaming.as_rows` takes), or the Gaussian already fitted to
            it (a :class:`~jkofast.gaussian_baseline.GaussianFit`: ``train()`` keeps one with the
            flow, ``GaussianFit.recorded(flow)``); with it, the test NLL of the
            Gaussian fitted to it (:func:`~jkofast.gaussian_baseline.gaussian_fit`) and, per grid, the paired difference
            Gaussian minus flow over the same test points, with the standard error of the
            per-point differences (the one that says whether the gap is real: both NLLs' own
            errors share the test points' spread, which the difference cancels where the two
            models find the same points hard). Rows need to be more than columns (ValueError).
            The flow's kept fit is not used unless passed: ``GaussianFit.recorded(flow)``.

    Returns:
        ``{"n_test", "nll_steps<S>": {"mean", "se"}, "nll_standardized_steps<S>": {...},
        "mmd": {"n", "mmd_c", "mmd_m", "median_distance", "mmd_u", "median_distance_u"},
        "training": {...}}``, and with
        ``baseline_train`` ``"gaussian_nll": {"mean", "se", "n_train", "dim",
        "minus_flow_steps<S>": {"mean", "se"}}`` (the Gaussian's NLL minus the flow's: positive
        where the flow is better).

    Examples:
        >>> import torch
        >>> from jkofast import Flow, evaluate
        >>> flow = Flow(2, dict(hidden=8, layers=1))
        >>> r = evaluate(flow, torch.randn(50, 2), mmd_points=20)
        >>> sorted(r)
        ['mmd', 'n_test', 'nll_standardized_steps3', 'nll_steps3', 'training']
    """
    _check_draws(mmd_points, seed)
    x = torch.as_tensor(np.asarray(test) if not isinstance(test, torch.Tensor) else test, device=flow.loc.device)
    x = x.to(data_dtype(x, flow.loc.dtype))
    check_points(x, "test", flow.dim, allow_empty=False)
    check_finite(x, "test")
    grids = evaluation_grids(flow, steps)
    out: dict = {"n_test": int(x.shape[0])}
    if baseline_train is not None:
        fit = _baseline_fit(baseline_train, flow.dim)
        gaussian = gaussian_nll_values(fit, x)  # float64, on the CPU
        out["gaussian_nll"] = _baseline_entry(mean_and_se(gaussian), fit)
    for s in grids:
        values = nll_values(flow, x, steps=s, backend=backend, chunk=rows_per_chunk(flow))
        out.update(nll_entries(flow, s, *mean_and_se(values)))
        if baseline_train is not None:
            out["gaussian_nll"][f"minus_flow_steps{s}"] = _mean_se_entry(mean_and_se(gaussian - values.cpu()))
    n = min(int(mmd_points), x.shape[0])
    if n >= 2:
        g = torch.Generator(device=x.device).manual_seed(seed)
        out["mmd"] = _mmd_entry(flow, x[torch.randperm(x.shape[0], generator=g, device=x.device)[:n]], g, backend)
    out["training"] = training_summary(flow)
    return out


@torch.no_grad()
def evaluate_sharded(flow: Flow, test, *, steps: int | list[int] | None = None, dist=None, backend: str = "auto",
                     seed: int = 0, baseline_train=None, mmd_points: int = 0) -> dict:
    """:func:`evaluate`'s NLLs (and with ``baseline_train`` its Gaussian baseline) for test data
    too large to hold, or split over the ranks of a process group, streamed in chunks: nothing
    per point is kept. With ``mmd_points``, also :func:`evaluate`'s MMD on that many test rows
    drawn uniformly at random from all of ``test`` (one more streamed pass; every rank draws
    the same rows and gets the same numbers).

    Arguments:
        flow, steps, baseline_train: as for :func:`evaluate`; ``test`` and ``baseline_train``
            may be :class:`~jkofast.datasets.streaming.Rows` (a memory-mapped file's split) or
            anything :func:`~jkofast.datasets.streaming.as_rows` takes.
        dist: a :class:`~jkofast.distributed.Dist`: each rank scores its shard of the test rows
            and fits on its shard of the training rows; the sums are merged, so every rank gets
            the same report, that of all rows (:func:`~jkofast.metrics.sharded_scores_by_grid`);
            a :class:`~jkofast.gaussian_baseline.GaussianFit` is used as it is.
            The rows are read once for all grids.
        seed: deals the rows to the ranks; seeds the MMD's test rows and samples.
        mmd_points: test rows (and samples) for the MMD; 0 (the default) skips it.

    Returns:
        :func:`evaluate`'s dictionary, with ``"mmd"`` only where ``mmd_points`` >= 2.
    """
    _check_draws(mmd_points, seed)
    grids = evaluation_grids(flow, steps)
    test = as_rows(test, "test", dim=flow.dim)
    fit = _baseline_fit(baseline_train, flow.dim, dist) if baseline_train is not None else None
    gaussian = fit.distribution() if fit is not None else None
    by_grid = sharded_scores_by_grid(flow, test, dist, grids=grids, backend=backend, seed=seed,
                                     chunk=rows_per_chunk(flow), gaussian=gaussian)
    out: dict = {"n_test": len(test)}  # the keys in evaluate's order
    if gaussian is not None:
        out["gaussian_nll"] = _baseline_entry(by_grid[grids[0]]["gaussian"], fit)
    for s, scores in by_grid.items():
        out.update(nll_entries(flow, s, *scores["flow"]))
        if gaussian is not None:
            out["gaussian_nll"][f"minus_flow_steps{s}"] = _mean_se_entry(scores["gaussian_minus_flow"])
    if min(int(mmd_points), len(test)) >= 2:
        reference = torch.from_numpy(test.sample(mmd_points, seed)).to(flow.loc.device)
        reference = reference.to(data_dtype(reference, flow.loc.dtype))
        out["mmd"] = _mmd_entry(flow, reference, torch.Generator(device=flow.loc.device).manual_seed(seed), backend)
    out["training"] = training_summary(flow)
    return out


def _baseline_fit(train, dim: int, dist=None) -> GaussianFit:
    """The Gaussian of ``baseline_train``: given, or fitted to its rows, which are refused where
    they cannot fix a full covariance (:func:`~jkofast.gaussian_baseline.fixes_a_covariance`)."""
    if isinstance(train, GaussianFit):
        if train.dim != dim:
            raise ValueError(f"baseline_train is a Gaussian over {train.dim} columns; the flow has {dim}")
        return train
    rows = as_rows(train, "baseline_train", dim=dim)
    if not fixes_a_covariance(len(rows), dim):
        raise ValueError(f"baseline_train has {len(rows)} rows for {dim} columns: a Gaussian's full covariance "
                         "needs more rows than columns; pass more training rows, or no baseline_train")
    return gaussian_fit(rows, dist)


def _mmd_entry(flow: Flow, reference: Tensor, g: torch.Generator, backend: str) -> dict:
    """The report's ``"mmd"``: as many flow samples as ``reference`` test points, compared in data
    space at 0.1 x and 1 x the median distance (MMD-c, MMD-m) and in the standardized space at
    its median (MMD-u, where no column's units outweigh another's)."""
    n = reference.shape[0]
    samples = torch.cat([flow.sample(len(c), generator=g, backend=backend, dtype=reference.dtype)
                         for c in torch.arange(n).split(8192)])
    median = median_distance(reference)
    u_reference, u_samples = flow.standardize(reference).double(), flow.standardize(samples).double()
    median_u = median_distance(u_reference)
    return {"n": n, "mmd_c": mmd(reference, samples, bandwidth=0.1 * median),
            "mmd_m": mmd(reference, samples, bandwidth=median), "median_distance": median,
            "mmd_u": mmd(u_reference, u_samples, bandwidth=median_u), "median_distance_u": median_u}


def evaluation_grids(flow: Flow, steps=None) -> list[int]:
    """The RK4 grids to report: ``steps`` (one or several, each once), else the flow's
    evaluation grids."""
    if steps is None:
        return list(flow.info.get("eval_grids") or [flow.steps])
    given = [steps] if isinstance(steps, numbers.Integral) else steps
    if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)) or not given:
        raise TypeError(f"steps must be an integer >= 1 or a non-empty list of them, got {steps!r}")
    return list(dict.fromkeys(check_positive_int(s, "steps") for s in given))


def _check_draws(mmd_points, seed) -> None:
    """The MMD's size and the seed, before any NLL pass (they are used after it)."""
    check_positive_int(mmd_points, "mmd_points", low=0)
    check_seed(seed)


def _mean_se_entry(mean_se: tuple[float, float]) -> dict:
    return dict(zip(("mean", "se"), mean_se))


def _baseline_entry(mean_se: tuple[float, float], fit: GaussianFit) -> dict:
    """The report's ``"gaussian_nll"`` entry before its per-grid gaps."""
    return {**_mean_se_entry(mean_se), "n_train": fit.n_train, "dim": fit.dim}


def nll_entries(flow: Flow, steps: int, mean: float, se: float) -> dict:
    """The report's two NLLs at one grid: in data space, and in the standardized space the
    blocks work in (the papers' numbers), which differs by the log-scale of the standardization."""
    log_scale = float(torch.log(flow.scale).sum())
    return {f"nll_steps{steps}": {"mean": mean, "se": se},
            f"nll_standardized_steps{steps}": {"mean": mean - log_scale, "se": se}}


def training_summary(flow: Flow) -> dict:
    """How ``flow`` was trained, from ``flow.info``: the report's ``"training"`` entry."""
    return {k: flow.info.get(k) for k in TRAINING_KEYS}
