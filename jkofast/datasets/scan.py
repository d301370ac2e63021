"""The one pass over the data before training: refuse NaN/inf (with the count and the first bad
row), and compute the per-column mean and standard deviation and a fingerprint.

Under a process group each rank reads every world-th block of chunks and the block summaries are
merged in block order on every rank, so every rank, and any number of ranks, gets the same
numbers: the standardization and the fingerprint (what a resumed run is checked against) do not
depend on the world size, nor on whether the data came as an array, a tensor or a memory map.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import whole_number_columns
from .._moments import fold_extremes, merge_moments
from ..distributed import raised_on_every_rank
from ..progress import progress_bar
from .streaming import Rows

__all__ = ["scan", "Summary"]

_SCAN_BLOCK = 64  # chunks per block summary: what the ranks exchange stays ~1 KB per 64 MB of data


@dataclass
class Summary:
    """What :func:`scan` found: row count, per-column mean and standard deviation (float64,
    ddof 1), the fingerprint (sha256 hex), which columns hold whole numbers only and which hold
    one value only (min == max: exact, where a std compared with a threshold is not)."""
    n: int
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str
    whole: np.ndarray | None = None
    constant: np.ndarray | None = None


def _chunk_summary(rows: Tensor) -> tuple:
    # In place where possible: this runs on every chunk of a file that may not fit in memory,
    # and each full-size temporary adds to the resident set the allocator keeps.
    x = rows.to(torch.float64, copy=True)  # a copy even for float64: rows may be the caller's array
    finite = torch.isfinite(x).all(dim=1)
    bad = int(x.shape[0] - finite.sum())
    first_bad = int((~finite).nonzero()[0, 0]) if bad else -1
    if bad:
        x = x[finite]
    whole = whole_number_columns(x).cpu().numpy()
    extremes = (x.amin(0).cpu().numpy(), x.amax(0).cpu().numpy()) if x.shape[0] else None
    mean = x.mean(0) if x.shape[0] else x.new_zeros(x.shape[1])
    m2 = x.sub_(mean).square_().sum(0)
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(rows.cpu().numpy())).cast("B")).digest()
    return x.shape[0], mean.cpu().numpy(), m2.cpu().numpy(), digest, bad, first_bad, whole, extremes


def _block_summary(rows: Rows, b: int) -> tuple:
    """Chunks b * _SCAN_BLOCK ... merged in order: (b, n, mean, M2, digest, bad rows, first bad row,
    whole-number columns, (min, max) per column)."""
    moments, digest, bad, first, extremes = [], hashlib.sha256(), 0, -1, None
    whole = np.ones(rows.dim, dtype=bool)
    for c in range(b * _SCAN_BLOCK, min((b + 1) * _SCAN_BLOCK, rows.num_chunks)):
        n, mean, m2, chunk_digest, chunk_bad, chunk_first, chunk_whole, chunk_extremes = \
            _chunk_summary(rows.read_chunk(c))
        moments.append((n, mean, m2))
        whole &= chunk_whole
        extremes = fold_extremes(extremes, chunk_extremes)
        digest.update(chunk_digest)
        if chunk_bad and first < 0:
            first = rows.base_index(c, chunk_first)
        bad += chunk_bad
    return b, *merge_moments(moments), digest.digest(), bad, first, whole, extremes


def scan(rows: Rows, dist=None, *, progress: bool = False) -> Summary:
    """One pass over ``rows`` (split over the ranks of ``dist``, a distributed.Dist): raise on
    NaN/inf, else return their :class:`Summary`. ``progress``: a bar over this rank's blocks
    when the data spans more than one.

    Examples:
        >>> s = scan(Rows(np.array([[1.0, 2.0], [3.0, 6.0]])))
        >>> s.n, s.mean.tolist(), s.std.tolist()
        (2, [2.0, 4.0], [1.4142135623730951, 2.8284271247461903])
    """
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    blocks = -(-rows.num_chunks // _SCAN_BLOCK)
    mine_blocks = range(rank, blocks, world)
    bar = progress_bar(len(mine_blocks), f"rank {rank}: checking {rows.name}", enabled=progress and blocks > 1)
    mine = []
    for b in mine_blocks:
        mine.append(_block_summary(rows, b))
        bar.update(1)
    bar.close()
    parts = sorted((p for part in (dist.gather(mine, f"scanning {rows.name}") if dist else [mine]) for p in part),
                   key=lambda p: p[0])
    digest = hashlib.sha256(f"{(len(rows), rows.dim)}{rows.dtype_name}".encode())
    bad, first, extremes = 0, -1, None
    whole = np.ones(rows.dim, dtype=bool)
    for _, _, _, _, block_digest, block_bad, block_first, block_whole, block_extremes in parts:
        whole &= block_whole
        extremes = fold_extremes(extremes, block_extremes)
        digest.update(block_digest)
        bad += block_bad
        first = block_first if first < 0 else first
    if bad:  # counted over every rank's parts: every rank raises this same error
        raise raised_on_every_rank(ValueError(f"{rows.label} has {bad} row(s) with NaN or inf values (first: row "
                                              f"{first}{' of the file' if rows.label != rows.name else ''})"))
    n, mean, m2 = merge_moments(p[1:4] for p in parts)  # in block order: the same bits on any world size
    std = np.sqrt(m2 / (n - 1)) if n > 1 else np.full(rows.dim, np.nan)
    constant = extremes[0] == extremes[1] if extremes is not None else np.ones(rows.dim, dtype=bool)
    return Summary(n, mean, std, digest.hexdigest(), whole, constant)
