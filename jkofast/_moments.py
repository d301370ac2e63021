"""Count, mean and sum of squared deviations, per piece and merged: how every streamed or
distributed statistic in jkofast (the scan's standardization, the streamed NLLs, the Gaussian
baseline) combines its parts without holding the rows."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["moments", "merge_moments"]


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
