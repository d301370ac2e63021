"""Count, mean and sum of squared deviations, per piece and merged: how every streamed or
distributed statistic in jkofast (the scan's standardization, the streamed NLLs, the Gaussian
baseline) combines its parts without holding the rows."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["moments", "merge_moments", "fold_extremes", "mean_and_se", "mean_and_se_of"]


def moments(values: Tensor) -> tuple:
    """(count, mean, M2) of ``values``: per-row scalars (N,) give floats; rows (N, d) give the
    mean (d,) and the centred cross-product matrix (d, d), whose diagonal is each column's M2."""
    n = values.shape[0]
    if values.ndim == 1:
        mean = float(values.mean()) if n else 0.0
        return n, mean, float((values - mean).square().sum())
    mean = values.mean(0)
    centred = values - mean
    return n, mean, centred.t() @ centred


def merge_moments(parts) -> tuple:
    """(count, mean, M2) of the union of ``parts``, each (count, mean, M2), by Chan et al.'s
    pairwise update, in the given order (so a fixed order gives the same bits on any number of
    ranks). Means and M2s may be floats, per-column arrays (numpy or torch: M2 per column) or
    mean vectors with cross-product matrices (torch: the outer product of the means' difference)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nr, mr, m2r in parts:
        if nr and not n:  # the first part as it is: its cross term, inf * 0 for |mean| > 1e154, is 0
            n, mean, m2 = nr, 0.0 + mr, 0.0 + m2r  # 0.0 +: a copy, and the bits of 0 + delta * 1
        elif nr:
            delta, total = mr - mean, n + nr
            square = torch.outer(delta, delta) if isinstance(m2r, Tensor) and m2r.ndim == 2 else delta * delta
            mean, m2, n = mean + delta * (nr / total), m2 + m2r + square * (n * nr / total), total
    return n, mean, m2


def fold_extremes(a, b):
    """Per-column (min, max) of two parts' (min, max), numpy arrays or tensors alike; None
    stands for a part without rows."""
    if a is None or b is None:
        return a if b is None else b
    lib = torch if isinstance(a[0], Tensor) else np
    return lib.minimum(a[0], b[0]), lib.maximum(a[1], b[1])


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean of per-point values and its standard error std / sqrt(N) (NaN for one point)."""
    se = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")
    return float(values.mean()), se


def mean_and_se_of(n: int, mean: float, m2: float) -> tuple[float, float]:
    """:func:`mean_and_se` from merged moments."""
    return float(mean), (math.sqrt(m2 / (n - 1) / n) if n > 1 else float("nan"))
