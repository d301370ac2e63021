"""What train and eval print of a model's evaluation: the test NLLs, the Gaussian baseline
(and which training rows it is fitted to), the MMD and the training's cost."""
from __future__ import annotations

from ..gaussian_baseline import GaussianFit, fixes_a_covariance
from .data_spec import _shape
from .process import _note


# Which likely cause the note names when the flow does not clearly beat the fitted Gaussian: a
# rough line, from few cases (README, 'Small data'): below it, over-fitting or near-Gaussian data
# (a 20-d set of 1,600 rows, 80 per dimension); above it, too little training (moons, 25,000
# rows per dimension, level with the Gaussian under --budget quick only).
SMALL_DATA_ROWS_PER_DIM = 500


def _baseline_train(x_train):
    """The training data to fit the report's Gaussian baseline to (see evaluate), or None where
    the training rows cannot fix a covariance (no more rows than columns: eval --data loads 1).
    A memory-mapped split is streamed: one more pass over its rows, cheap beside scoring the flow."""
    return x_train if fixes_a_covariance(*_shape(x_train)) else None


def _recorded_or(flow, training_rows):
    """The Gaussian baseline's fit that train() kept with the model, else ``training_rows()`` to
    fit it to (a model from before jkofast kept it, of more than 512 columns, or whose kept fit
    does not read: the baseline is a courtesy, never the reason a report fails)."""
    try:
        fit = GaussianFit.recorded(flow)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        _note(f"the model's kept Gaussian baseline is unreadable ({type(exc).__name__}: {exc}); fitting it again")
        fit = None
    return fit if fit is not None else training_rows()


def _print_baseline(g: dict, steps: int, held_out: bool = False) -> None:
    """The Gaussian's line, the paired gap on the finest grid, and a note where the flow does not
    clearly beat it (a gap under two standard errors of the paired differences). ``held_out``:
    the test points are a file of the user's (eval --data), perhaps not like the training data."""
    gap = g[f"minus_flow_steps{steps}"]
    print(f"baseline: a Gaussian fitted to the training data (full covariance) scores {g['mean']:.4f} +/- "
          f"{g['se']:.4f} nats on the same test points; the flow is {abs(gap['mean']):.4f} +/- {gap['se']:.4f} nats "
          f"{'worse' if gap['mean'] < 0 else 'better'} (paired, {steps} steps)")
    if not gap["mean"] >= 2 * gap["se"]:  # (also where se is NaN: one test point says nothing)
        per_dim = g["n_train"] / g["dim"]
        why = ("more training may help (--iters, --blocks; --budget quick is a smoke test)"
               if per_dim >= SMALL_DATA_ROWS_PER_DIM else
               f"with {per_dim:.0f} training rows per dimension the blocks may over-fit, or the data may be close "
               "to Gaussian, and then the Gaussian is the better model")
        if held_out and gap["mean"] <= -2 * gap["se"]:  # clearly worse on points that may not be like the training data
            why += ("; or the test points do not come from the training data's distribution (the broad Gaussian "
                    "covers other data better than a flow fitted closely to the training data)")
        print(f"  the flow does not clearly beat it: {why} (README, 'Small data')")


def _print_evaluation(metrics: dict, steps: list[int], held_out: bool = False) -> None:
    for s in steps:
        m, u = metrics[f"nll_steps{s}"], metrics.get(f"nll_standardized_steps{s}")
        standardized = f"; {u['mean']:.4f} +/- {u['se']:.4f} (standardized)" if u else ""
        print(f"test NLL ({s} RK4 steps per block, {metrics['n_test']} points): {m['mean']:.4f} +/- {m['se']:.4f} "
              f"nats (data space){standardized}")
    if "gaussian_nll" in metrics:
        _print_baseline(metrics["gaussian_nll"], max(steps), held_out)
    if "mmd" in metrics:
        m = metrics["mmd"]
        print(f"MMD^2 ({m['n']} samples vs {m['n']} test points, Gaussian kernel, V-statistic): "
              f"{m['mmd_c']:.3e} at bandwidth 0.1 x median = {0.1 * m['median_distance']:.4g} (MMD-c); "
              f"{m['mmd_m']:.3e} at the median (MMD-m); {m['mmd_u']:.3e} at the median of the standardized points "
              "(MMD-u: every column on its own scale)")
    t = metrics.get("training") or {}
    if t.get("train_batches") is not None:
        res = t.get("resources") or {}
        resumed = " (over every process that trained it; wall and memory: the last one)" if t.get("resumed") else ""
        print(f"training ({t['method']}): {t['train_batches']} batches of {t['batch_size']}, "
              f"{t['train_seconds']:.1f} s training{resumed}, {res.get('wall_seconds', float('nan')):.1f} s wall, "
              f"peak memory "
              f"{res.get('peak_mb', float('nan')):.0f} MB ({res.get('kind', '?')})")
