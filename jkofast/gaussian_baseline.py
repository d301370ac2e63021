"""The Gaussian baseline: the maximum-likelihood Gaussian of the training data (full covariance),
the bar every flow has to clear, since it matches every mean and covariance and only what a flow
learns beyond them scores lower. ``jkofast train`` and ``jkofast eval`` report its test NLL beside
the flow's (evaluate.py).

Its fit (:class:`GaussianFit`) is small beside the data: ``train()`` keeps it with the model
(``flow.info["gaussian_baseline"]``, for up to :data:`RECORDED_FIT_MAX_DIM` columns), so a later
evaluation needs neither the training data nor another pass over it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

from ._moments import fold_extremes, mean_and_se, merge_moments, moments

__all__ = ["GaussianFit", "gaussian_fit", "fitted_gaussian", "gaussian_nll_values", "gaussian_nll",
           "fixes_a_covariance", "RECORDED_FIT_MAX_DIM"]

# Above this many columns train() does not keep the fit with the model: its covariance, d^2
# float64 values (2 MB at 512), would outweigh most flows' weights; an evaluation fits it again.
RECORDED_FIT_MAX_DIM = 512


def fixes_a_covariance(n: int, dim: int) -> bool:
    """Whether n rows of dim columns fix a full covariance: with n <= dim the fit is degenerate
    (only the ridge keeps it invertible) and its test NLL (1e13 nats, say) means nothing, so no
    report shows one."""
    return n > dim


@dataclass(frozen=True, eq=False)  # (a generated == would compare tensors elementwise and fail)
class GaussianFit:
    """A Gaussian fitted by :func:`gaussian_fit`: mean (d,) and covariance (d, d), float64 on the
    CPU, and the number of training rows they came from."""
    mean: Tensor
    covariance: Tensor
    n_train: int

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distribution(self) -> torch.distributions.MultivariateNormal:
        """The fitted Gaussian as a torch distribution (its ``log_prob`` scores points)."""
        return torch.distributions.MultivariateNormal(self.mean, self.covariance, validate_args=False)

    def state(self) -> dict:
        """Lists of floats (exact: Python floats are float64) and a count, as
        ``flow.info["gaussian_baseline"]`` keeps them: no tensors, so ``flow.info`` stays plain
        data that compares with ``==`` and writes as JSON."""
        return {"mean": self.mean.tolist(), "covariance": self.covariance.tolist(), "n_train": self.n_train}

    @classmethod
    def from_state(cls, state: dict) -> "GaussianFit":
        mean = torch.as_tensor(state["mean"], dtype=torch.float64, device="cpu")
        covariance = torch.as_tensor(state["covariance"], dtype=torch.float64, device="cpu")
        if mean.ndim != 1 or covariance.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"a Gaussian fit needs a mean (d,) and a covariance (d, d), got {tuple(mean.shape)} "
                             f"and {tuple(covariance.shape)}")
        return cls(mean, covariance, int(state["n_train"]))

    @classmethod
    def recorded(cls, flow) -> "GaussianFit | None":
        """The fit ``train()`` kept with ``flow``, or None (a flow from before jkofast kept it,
        one of more than :data:`RECORDED_FIT_MAX_DIM` columns, or too few training rows).
        ValueError (KeyError, TypeError) where the kept entry does not read as a fit of the
        flow's columns."""
        state = flow.info.get("gaussian_baseline")
        if not state:
            return None
        fit = cls.from_state(state)
        if fit.dim != flow.dim:
            raise ValueError(f"the kept fit has {fit.dim} columns, the flow {flow.dim}")
        return fit


@torch.no_grad()
def gaussian_fit(train, dist=None) -> GaussianFit:
    """The maximum-likelihood Gaussian of ``train`` (N, d), full covariance (unbiased, as
    ``torch.cov``), in float64.

    ``train`` is anything :func:`~jkofast.datasets.streaming.as_rows` takes (an array, a tensor,
    a memory-mapped ``.npy`` file or its path, a :class:`~jkofast.datasets.streaming.Rows` split)
    and is read chunk by chunk, so a large set is never copied whole; with ``dist`` (a process
    group's :class:`~jkofast.distributed.Dist`) each rank reads its share of the chunks and the
    ranks' moments are merged, so every rank gets the same Gaussian, that of all rows (to rounding). A constant
    column (its min equals its max) gets its value as its mean and no covariances; data whose
    every column is constant is refused. A ridge of 1e-9
    of each column's own variance (of the mean variance for a constant column) keeps a rank-deficient
    covariance (N <= d, collinear columns) positive definite without favouring columns of large
    scale over small ones."""
    from .datasets.streaming import Rows, as_rows

    rows = as_rows(train, train.name if isinstance(train, Rows) else "train")
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    # Folded chunk by chunk (the same sums as merging a list of the chunks' moments in order): a
    # list of small per-chunk tensors interleaved with the chunks' copies kept the allocator from
    # reusing their memory (measured: +77 MB resident over a 95 MB file on a second pass).
    total, extremes = (0, 0.0, 0.0), None  # (count, mean, M2); each column's (min, max)
    for c in range(rank, rows.num_chunks, world):  # whole chunks per rank, as the scan deals them:
        x = rows.read_chunk(c)                     # no rank reads another's rows
        if len(x):
            x = x.to("cpu", torch.float64)
            total = merge_moments([total, moments(x)])
            extremes = fold_extremes(extremes, (x.amin(0), x.amax(0)))
    n, mean, m2 = total
    if dist is not None:
        n, mean, m2, extremes = _merged_over_ranks(dist, n, mean, m2, extremes, rows.dim)
    if n < 2:
        raise ValueError(f"fitting a Gaussian needs (N, d) data with N >= 2 rows, got {n} row(s) of {rows.dim}")
    low, high = extremes
    if not bool(torch.isfinite(m2).all() and torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"{rows.name} holds NaN or inf values: no Gaussian fits it")
    # A constant column (min == max, exact in any chunking) gets its value as its mean and no
    # variance or covariance: the merged moments' rounding noise, which follows the chunking and
    # the world size, would otherwise enter the NLL divided by the ridge.
    varies = high > low
    if not bool(varies.any()):  # (its ridge would be 0 and every NLL infinite)
        raise ValueError(f"every column of {rows.name} is constant ({n} copies of one point): no Gaussian fits it")
    mean = torch.where(varies, mean, low)
    cov = m2 / (n - 1) * torch.outer(varies, varies)
    var = cov.diagonal()
    floor = var.mean().clamp_min(1e-300)
    cov = cov + torch.diag(1e-9 * torch.where(varies, var, floor))
    return GaussianFit(mean, cov, n)


def fitted_gaussian(train, dist=None) -> torch.distributions.MultivariateNormal:
    """:func:`gaussian_fit` of ``train`` as a distribution (``log_prob``, ``sample``)."""
    return gaussian_fit(train, dist).distribution()


def _merged_over_ranks(dist, n: int, mean, m2, extremes, dim: int) -> tuple:
    """(count, mean, M2, (min, max)) of all ranks' rows from each rank's own. The small parts
    (count, mean, extremes) are gathered and the d x d M2 summed in one all-reduce, so no rank
    receives world x d^2 values (75 MB per rank at d = 3072): M2 = sum_r M2_r + n_r (mean_r -
    mean)(mean_r - mean)^T, Chan's merge written as one sum over the ranks."""
    everyone = dist.gather((n, mean, extremes), "fitting the Gaussian baseline")
    total, mean_all, _ = merge_moments((nr, mr, 0.0) for nr, mr, _ in everyone)
    own = torch.zeros(dim, dim, dtype=torch.float64)
    if n:
        delta = mean - mean_all
        own = m2 + n * torch.outer(delta, delta)
    m2_all = dist.sum(own, "fitting the Gaussian baseline").cpu()
    return total, mean_all, m2_all, reduce(fold_extremes, (e for _, _, e in everyone), None)


@torch.no_grad()
def gaussian_nll_values(train, test) -> Tensor:
    """-log p of every row of ``test`` under the Gaussian fitted to ``train``, (N_test,) float64;
    ``train`` a :class:`GaussianFit` or an (N, d) table to fit (:func:`gaussian_fit`), ``test``
    an (N, d) table, both in data space (anything :func:`~jkofast.datasets.streaming.as_rows`
    takes), with the same d."""
    from .datasets.streaming import as_rows

    rows = as_rows(test, "test")
    fit = train if isinstance(train, GaussianFit) else gaussian_fit(train)
    if rows.dim != fit.dim:
        raise ValueError(f"test has {rows.dim} columns, the training data {fit.dim}")
    gaussian = fit.distribution()
    pieces = [-gaussian.log_prob(x.to("cpu", torch.float64)) for _, x in rows.chunks() if len(x)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)


def gaussian_nll(train, test) -> tuple[float, float]:
    """Mean NLL in nats (and its standard error) of ``test`` under the Gaussian fitted to
    ``train`` (:func:`gaussian_nll_values`)."""
    return mean_and_se(gaussian_nll_values(train, test))
