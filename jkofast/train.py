"""``train``: fit a flow to data with one of jkofast's methods."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _backend, distributed, training_data
from ._checks import check_finite, check_points
from ._version import __version__
from .checkpoint import write_json
from .flow import Flow
from .jko_iflow import JKOIFlowTrainer
from .jko_iflow_config import JKOIFlowConfig
from .jko_iflow_state import CHECKPOINT_FILE, LOG_FILE
from .memory import peak_memory_of_run
from .metrics import sharded_nll

__all__ = ["train", "METHODS"]

METHODS = ("jko-iflow",)
DISTRIBUTED_METHODS = ("jko-iflow",)  # the methods that train data-parallel under torchrun (distributed.py)


def _as_data(x, name: str, *, dtype: torch.dtype, device, dim: int | None = None) -> Tensor:
    """Validate user data (array-like (N, d), finite, non-empty) and convert it."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got unsupported dtype {x.dtype}")
    x = x.to(dtype)
    check_points(x, name, dim, allow_empty=False)
    check_finite(x, name)
    return x.to(device)


def _standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training rows to standardize the data, got {x.shape[0]}")
    loc, scale = x.mean(0), x.std(0)
    const = (scale <= 1e-12 * loc.abs().clamp_min(1)).nonzero().flatten().tolist()
    if const:
        raise ValueError(f"training data column(s) {const} are constant: a density over them is degenerate; "
                         "drop them (or pass standardize=False and add noise)")
    return loc, scale


def train(x, method: str = "jko-iflow", *, val=None, out: str | os.PathLike | None = None,
          resume: bool = True, device: str | torch.device | None = None, budget: str = "default",
          progress: bool = True, backend: str = "auto", info: dict | None = None, **options) -> Flow:
    """Train a normalizing flow on ``x`` and return it.

    Arguments:
        x: training data, (N, d), finite, N >= 2: a numpy array or tensor, or, for data larger
            than memory, a memory map (``np.load(path, mmap_mode="r")``), the path of a ``.npy``
            file or a :class:`~jkofast.datasets.streaming.Rows` (read in chunks, never whole).
        method: ``"jko-iflow"`` (block-wise JKO steps, Xu et al. 2023).
        val: optional validation data (M, d): its NLL after each block goes into the log, and
            at the end on the training grid and on the ``eval_steps`` grid (``flow.info``).
        out: folder for ``checkpoint.pt`` and ``log.json`` (after every block) and ``model.pt``.
            A killed run started again with the same ``out`` resumes from its last finished block.
        resume: continue from ``out/checkpoint.pt`` if present (``False`` starts over).
        device: where to train; default: the device of ``x`` if it is a tensor, else the CPU.
            Under a process group, ``"cuda"`` means this process's GPU, ``cuda:LOCAL_RANK``.
        budget: preset, ``"quick"`` (seconds), ``"default"`` or ``"paper"``; options override it.
        progress: show a progress bar per block.
        backend: engine, ``"auto"``, ``"torch"`` or ``"compiled"``.
        info: extra entries for ``flow.info`` (saved with the model), e.g. where the data came from.
        **options: fields of :class:`~jkofast.jko_iflow_config.JKOIFlowConfig` (``blocks``,
            ``hidden``, ``layers``, ``iters``, ``batch``, ``lr``, ``steps``, ``divergence``, ...).

    Returns:
        The trained :class:`~jkofast.Flow`, on ``device``; ``flow.info`` holds the settings,
        timings, validation NLLs and the peak memory.

    Distributed: launched by torchrun (``WORLD_SIZE`` > 1 in the environment), or with a
    process group the caller initialized, every process calls ``train`` with the same
    arguments; each trains on its own shard of ``x`` with DistributedDataParallel (``batch`` is
    the global batch, split evenly), rank 0 alone writes to ``out``, and every process returns
    the same flow. See jkofast/distributed.py and the README's "Scaling out".

    Examples:
        >>> import jkofast
        >>> x = jkofast.datasets.toy("moons", 512, seed=0)
        >>> flow = jkofast.train(x, budget="quick", progress=False)
        >>> flow.log_prob(torch.as_tensor(x[:4])).shape
        torch.Size([4])

    References:
        C. Xu, X. Cheng, Y. Xie. Normalizing flow neural networks by JKO scheme. NeurIPS 2023,
        arXiv:2212.14424.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; must be one of {list(METHODS)}")
    _backend.check_backend(backend)
    cfg = JKOIFlowConfig.from_options(budget, **options)
    if device is None:
        device = x.device if isinstance(x, Tensor) else "cpu"
    dist = distributed.connect(device)  # a process group from torchrun or the caller, or one process
    if dist.world > 1 and method not in DISTRIBUTED_METHODS:
        raise ValueError(f"method {method!r} trains in one process; distributed training supports "
                         f"{list(DISTRIBUTED_METHODS)}")
    device, dtype = dist.device, getattr(torch, cfg.dtype)
    data = training_data.prepare(x, val, cfg, dist, progress=progress)
    flow = Flow(data.dim, cfg.field_config(), steps=cfg.steps, tableau=cfg.tableau, loc=data.loc, scale=data.scale)
    flow.to(device=device, dtype=dtype)
    out = Path(out) if out is not None else None
    if out is not None and not resume and dist.main and (out / CHECKPOINT_FILE).exists():
        (out / CHECKPOINT_FILE).unlink()
    log = {"jkofast_version": __version__, "method": method, "config": cfg.to_dict(), "device": str(device),
           "n_train": data.n_train, "n_val": data.n_val, "dim": data.dim, "world_size": dist.world,
           "pushed_storage": data.store.where}
    try:
        trainer = JKOIFlowTrainer(flow, cfg, data.train, data.val, out=out, data_id=data.data_id,
                                  progress=progress, backend=backend, log=log, dist=dist, store=data.store)
        resumed = trainer.resume()
        start = time.perf_counter()
        trainer.run()
    finally:
        data.close()
    log = trainer.log
    log.update(resumed=resumed, world_size=dist.world, pushed_storage=data.store.where)
    # Block times add up across resumed processes; wall time is this process's alone.
    log["train_seconds"] = round(sum(entry["seconds"] for entry in log["blocks"]), 3)
    log["wall_seconds_this_process"] = round(time.perf_counter() - start, 3)
    if val is not None:
        log["val_nll"] = {f"steps{s}": dict(zip(("mean", "se"), sharded_nll(flow, data.val_rows, dist, steps=s,
                                                                            backend=backend, seed=cfg.seed)))
                          for s in cfg.eval_grids()}
    log["peak_memory"] = peak_memory_of_run(dist)
    flow.info = {"method": method, "config": cfg.to_dict(), "n_train": data.n_train,
                 "train_seconds": log["train_seconds"], "val_nll": log.get("val_nll"), "world_size": dist.world,
                 "pushed_storage": data.store.where, "peak_memory": log["peak_memory"],
                 "jkofast_version": __version__, **(info or {})}
    if out is not None and dist.main:
        flow.save(out)
        write_json(out / LOG_FILE, log)
    return flow
