"""``evaluate``: what ``jkofast eval`` and bench/bench_methods.py report for a trained flow.

* test NLL in nats with its standard error, in the user's data space and in the standardized
  space u = (x - loc) / scale the blocks work in (the papers' tables are in that space: their
  loaders standardize the data first). NLL_u = NLL_x - sum(log scale) for every point, so the
  standard error is the same.
* MMD between samples and test points as the JKO-iFlow code computes it (docs/METHOD.md 6): Gaussian
  kernel, biased V-statistic (MMD^2), up to 10,000 against 10,000. ``mmd_c`` uses the bandwidth
  0.1 x the median pairwise test distance (the code's); ``mmd_m`` the median itself, which stays
  informative in high dimension, where ``mmd_c`` tends to 2/n for any sampler.
* how it was trained, from ``flow.info``: batches, seconds, wall time, peak memory.
"""
from __future__ import annotations

import numpy as np
import torch

from ._checks import check_finite, check_points
from ._precision import data_dtype
from .flow import Flow
from .metrics import gaussian_nll_values, mean_and_se, median_distance, mmd, nll_values, rows_per_chunk

__all__ = ["evaluate", "nll_entries", "training_summary", "TRAINING_KEYS"]

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
        baseline_train: training data (N, d); with it, the test NLL of the Gaussian fitted to
            it (:func:`~jkofast.metrics.fitted_gaussian`) and, per grid, the paired difference
            Gaussian minus flow over the same test points, with the standard error of the
            per-point differences (the one that says whether the gap is real: both NLLs' own
            errors share the test points' spread, which the difference cancels where the two
            models find the same points hard).

    Returns:
        ``{"n_test", "nll_steps<S>": {"mean", "se"}, "nll_standardized_steps<S>": {...},
        "mmd": {"n", "mmd_c", "mmd_m", "median_distance"}, "training": {...}}``, and with
        ``baseline_train`` ``"gaussian_nll": {"mean", "se", "n_train", "dim",
        "minus_flow_steps<S>": {"mean", "se"}}`` (the Gaussian's NLL minus the flow's: positive
        where the flow is better).

    Examples:
        >>> flow = Flow(2, dict(hidden=8, layers=1))
        >>> r = evaluate(flow, torch.randn(50, 2), mmd_points=20)
        >>> sorted(r)
        ['mmd', 'n_test', 'nll_standardized_steps3', 'nll_steps3', 'training']
    """
    x = torch.as_tensor(np.asarray(test) if not isinstance(test, torch.Tensor) else test, device=flow.loc.device)
    x = x.to(data_dtype(x, flow.loc.dtype))
    check_points(x, "test", flow.dim, allow_empty=False)
    check_finite(x, "test")
    grids = [int(steps)] if isinstance(steps, (int, np.integer)) else list(steps or flow.info.get("eval_grids") or [flow.steps])
    out: dict = {"n_test": int(x.shape[0])}
    if baseline_train is not None:
        gaussian = gaussian_nll_values(baseline_train, x)  # float64, on the CPU
        out["gaussian_nll"] = dict(zip(("mean", "se"), mean_and_se(gaussian)), n_train=len(baseline_train),
                                   dim=flow.dim)
    for s in grids:
        values = nll_values(flow, x, steps=s, backend=backend, chunk=rows_per_chunk(flow))
        out.update(nll_entries(flow, s, *mean_and_se(values)))
        if baseline_train is not None:
            out["gaussian_nll"][f"minus_flow_steps{s}"] = dict(zip(("mean", "se"), mean_and_se(gaussian - values.cpu())))
    n = min(int(mmd_points), x.shape[0])
    if n >= 2:
        g = torch.Generator(device=x.device).manual_seed(seed)
        reference = x[torch.randperm(x.shape[0], generator=g, device=x.device)[:n]]
        samples = torch.cat([flow.sample(len(c), generator=g, backend=backend, dtype=x.dtype)
                             for c in torch.arange(n).split(8192)])
        median = median_distance(reference)
        out["mmd"] = {"n": n, "mmd_c": mmd(reference, samples, bandwidth=0.1 * median),
                      "mmd_m": mmd(reference, samples, bandwidth=median), "median_distance": median}
    out["training"] = training_summary(flow)
    return out


def nll_entries(flow: Flow, steps: int, mean: float, se: float) -> dict:
    """The report's two NLLs at one grid: in data space, and in the standardized space the
    blocks work in (the papers' numbers), which differs by the log-scale of the standardization."""
    log_scale = float(torch.log(flow.scale).sum())
    return {f"nll_steps{steps}": {"mean": mean, "se": se},
            f"nll_standardized_steps{steps}": {"mean": mean - log_scale, "se": se}}


def training_summary(flow: Flow) -> dict:
    """How ``flow`` was trained, from ``flow.info``: the report's ``"training"`` entry."""
    return {k: flow.info.get(k) for k in TRAINING_KEYS}
