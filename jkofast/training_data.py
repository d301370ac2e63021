"""The training data of one process of a JKO-iFlow run: checked, summarized and fingerprinted in
one pass over all of it (split over the ranks), then this rank's shard, standardized, in memory
or on disk (shard.py).

The same data gives the same standardization and fingerprint whether it comes as an array, a
tensor or a memory-mapped file, and for any number of processes: that is what lets a run resume
with another world size, and lets runs with different world sizes be compared.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._checks import check_folder, check_standardization, warn_fewer_rows_than_columns, warn_lattice_columns
from .datasets.scan import Summary, scan
from .datasets.streaming import Rows, as_rows
from .distributed import Dist, alike_on_every_rank
from .jko_iflow_config import JKOIFlowConfig
from .progress import say
from .shard import ShardStore

__all__ = ["TrainingData", "prepare"]


@dataclass
class TrainingData:
    """What :func:`prepare` returns. ``loc``/``scale`` are None without standardization;
    ``train``/``val`` are this rank's shards; ``rows``/``val_rows`` the full data, for the
    final evaluation."""
    dim: int
    n_train: int
    n_val: int
    loc: Tensor | None
    scale: Tensor | None
    data_id: str
    train: object
    val: object | None
    rows: Rows
    val_rows: Rows | None
    store: ShardStore

    def close(self) -> None:
        """Delete this rank's shard files (disk storage)."""
        self.store.close()


def _standardization(summary: Summary, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    # (summary.constant: min == max, so a column of tiny values still varies)
    check_standardization(summary.n, summary.constant, summary.mean, summary.std, dtype)
    return summary.mean, summary.std


def prepare(x, val, cfg: JKOIFlowConfig, dist: Dist, *, progress: bool = False,
            names: tuple[str, str] = ("x", "val")) -> TrainingData:
    """Check ``x`` (and ``val``): arrays, tensors, memory maps or ``.npy`` paths, (N, d),
    finite, non-empty; standardize by the training data's mean and std (``cfg.standardize``);
    and build this rank's shards with the storage ``cfg.pushed_storage`` picks. ``progress``:
    bars for the passes over large data (rank 0 only). ``names``: what messages call x and val.

    Raises:
        TypeError, ValueError: bad data (the message names it and says what is wrong).
        DistributedError: the ranks were given different settings or data shapes.
    """
    rows = as_rows(x, names[0])
    val_rows = None if val is None else as_rows(val, names[1], dim=rows.dim)
    shapes = [(len(r), r.dim, r.dtype_name) for r in (rows, val_rows) if r is not None]
    dist.check_same({"data shapes (rows, columns, dtype)": shapes, **cfg.to_dict()}, "data shapes and settings")
    progress = progress and dist.main
    summary = scan(rows, dist, progress=progress)
    if dist.main:
        warn_fewer_rows_than_columns(summary.n, rows.dim, rows.name)
        warn_lattice_columns(summary.whole, summary.std, rows.name)
    val_summary = None if val_rows is None else scan(val_rows, dist, progress=progress)
    with alike_on_every_rank():  # checks of the summaries, which every rank holds whole (scan gathers them)
        if summary.n < dist.world:
            raise ValueError(f"{rows.name} has {summary.n} rows, fewer than the {dist.world} processes: "
                             "every process needs a shard")
        standardization = _standardization(summary, getattr(torch, cfg.dtype)) if cfg.standardize else None
    dtype, device = getattr(torch, cfg.dtype), dist.device
    if standardization is not None:
        loc, scale = (torch.as_tensor(a, dtype=dtype, device=device) for a in standardization)
    else:
        loc, scale = None, None
    fingerprint = hashlib.sha256(summary.fingerprint.encode())
    fingerprint.update(b"none" if val_summary is None else val_summary.fingerprint.encode())
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n_val = 0 if val_summary is None else val_summary.n
    shard_bytes = itemsize * (math.ceil(summary.n / dist.world) * rows.dim
                              + math.ceil(n_val / dist.world) * (rows.dim + 1))
    store = ShardStore(cfg.pushed_storage, shard_bytes, dtype=dtype, device=device, rank=dist.rank,
                       local_world=dist.local_world, scratch=cfg.scratch_dir, progress=progress)
    if store.where == "disk":  # before the first pass over the data, not hours later
        if cfg.scratch_dir is not None:
            check_folder(cfg.scratch_dir, "scratch_dir")
        store.check_free_space(dist.local_world)
    if cfg.scratch_dir is not None and store.where == "memory":
        say(f"scratch_dir {cfg.scratch_dir} is not used: the pushed samples are kept in memory"
            + (" (they fit; pushed_storage='disk' puts them there)" if cfg.pushed_storage == "auto" else ""),
            bars=progress, main=dist.main)
    zero, one = torch.zeros((), dtype=dtype, device=device), torch.ones((), dtype=dtype, device=device)
    shift, div = (loc, scale) if cfg.standardize else (zero, one)
    shard = dict(rank=dist.rank, world=dist.world, seed=cfg.seed)
    try:
        train = store.from_rows(rows, shift, div, **shard)
        val_shard = None if val_rows is None else store.from_rows(val_rows, shift, div, with_logdet=True, **shard)
        return TrainingData(rows.dim, summary.n, n_val, loc, scale, fingerprint.hexdigest(), train, val_shard,
                            rows, val_rows, store)
    except BaseException:
        store.close()
        raise
