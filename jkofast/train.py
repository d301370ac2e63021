"""``train``: fit a flow to data with one of jkofast's methods."""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _backend, distributed, training_data
from ._checks import (check_finite, check_flag, check_folder, check_points, check_standardization, plain,
                      warn_fewer_rows_than_columns, warn_lattice_columns, whole_number_columns)
from ._locks import held_lock
from ._version import __version__
from .checkpoint import write_json
from .datasets.files import column_names, load_array, reads_as_number
from .datasets.streaming import Rows, table_or_path_as_array
from .flow import MODEL_FILE, Flow
from .gaussian_baseline import RECORDED_FIT_MAX_DIM, fixes_a_covariance, gaussian_fit
from .interpolant import InterpolantTrainer
from .interpolant_config import InterpolantConfig
from .jko_flow import JKOFlowTrainer
from .jko_flow_config import JKOFlowConfig
from .jko_iflow import JKOIFlowTrainer
from .jko_iflow_config import JKOIFlowConfig, check_global_batch
from .jko_iflow_state import CHECKPOINT_FILE, LOG_FILE, data_fingerprint
from .memory import peak_memory_of_run
from .progress import say
from .metrics import nll, sharded_nll
from .resources import ResourceMeter

__all__ = ["train", "settings", "METHODS"]

# method name -> (its settings dataclass, its trainer). Every trainer takes (flow, config, u_train,
# u_val, out=, data_id=, progress=, backend=, log=), has resume() (which leaves what it decided by
# itself in resume_notes) and run(), and logs entries with "iters" and "seconds" under "blocks" (one
# per trained block) or "segments" (interpolant), and "discarded" (trained, then dropped).
_METHODS = {
    "jko-iflow": (JKOIFlowConfig, JKOIFlowTrainer),
    "jko-flow": (JKOFlowConfig, JKOFlowTrainer),
    "interpolant": (InterpolantConfig, InterpolantTrainer),
}
METHODS = tuple(_METHODS)
DISTRIBUTED_METHODS = ("jko-iflow",)  # the methods that train data-parallel under torchrun (distributed.py)


def option_names(method: str) -> set[str]:
    """The keyword options ``train`` accepts for ``method``."""
    return {f.name for f in dataclasses.fields(_METHODS[method][0])}


def methods_taking(name: str) -> list[str]:
    """The methods whose ``train`` options include ``name`` (for messages that point elsewhere)."""
    return [m for m in METHODS if name in option_names(m)]


def option_defaults(name: str, budget: str = "default") -> dict[str, object]:
    """``{method: default}`` of option ``name`` under ``budget``, for the methods that have it."""
    return {m: getattr(cls.from_options(budget), name) for m, (cls, _) in _METHODS.items() if name in option_names(m)}


def settings(method: str = "jko-iflow", budget: str = "default", **options):
    """The settings ``train(x, method, budget=budget, **options)`` trains with (a
    :class:`~jkofast.jko_iflow_config.JKOIFlowConfig`, ``JKOFlowConfig`` or ``InterpolantConfig``),
    or the error it would raise for them (ValueError, TypeError; the messages list what is
    valid), without data: ``jkofast train`` checks its options this way before it reads a file.

    Examples:
        >>> settings("jko-iflow", "quick", blocks=3).blocks
        3
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; must be one of {list(METHODS)}")
    unknown = sorted(set(options) - option_names(method))
    if unknown:
        owners = {name: methods_taking(name) for name in unknown}
        hint = "; ".join(f"{name!r} is an option of {', '.join(ms)}" for name, ms in owners.items() if ms)
        raise TypeError(f"unknown {method} option(s) {unknown}; valid options are {sorted(option_names(method))}"
                        + (f" ({hint})" if hint else ""))
    return _METHODS[method][0].from_options(budget, **options)


def check_world(method: str, world: int, batch: int | None = None) -> None:
    """Refuse a method that trains in one process when ``world`` processes would run it, and a
    global ``batch`` that the processes cannot split evenly (before any data is read)."""
    if world > 1 and method not in DISTRIBUTED_METHODS:
        raise ValueError(f"method {method!r} trains in one process; distributed training supports "
                         f"{list(DISTRIBUTED_METHODS)}")
    if batch is not None:
        check_global_batch(batch, world)


def _as_data(x, name: str, *, dtype: torch.dtype, device, dim: int | None = None) -> Tensor:
    """Validate user data (array-like (N, d), finite, non-empty) and convert it."""
    x = table_or_path_as_array(x)
    if isinstance(x, (str, os.PathLike)):
        x = load_array(x)  # a .npy file, read whole (these methods hold their data in memory)
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor of shape (N, d), or the path of a .npy "
                        f"or .csv file, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got unsupported dtype {x.dtype}")
    x = x.detach().to(dtype)  # (a graph on the data would be kept in the model, or backpropagated twice)
    check_points(x, name, dim, allow_empty=False)
    check_finite(x, name)
    return x.to(device)


_STD_ROWS = 65536  # rows per block of the standardization's second pass


def _standardization(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # (x has a row at least, _as_data's check; one row, a NaN scale, is refused below for its count)
    # Two passes: torch's one-pass std along dim 0 loses digits to a large offset (1e-4 relative
    # for 1e6 +/- 1e-7 in float64); the deviations from the mean keep them, as the scan does. In
    # row blocks, so the deviations never need a second copy of the data.
    loc = x.mean(0)
    m2 = sum((block - loc).square().sum(0) for block in x.split(_STD_ROWS))
    scale = (m2 / (x.shape[0] - 1)).sqrt()
    # min == max, exact: a threshold on the std refused varying columns of small units (1e-13 F)
    check_standardization(x.shape[0], x.amin(0) == x.amax(0), loc, scale, dtype)
    return loc, scale


def _block_kind(cfg) -> str:
    """The kind of Flow block a method's settings train (JKOIFlowConfig has no ``block``)."""
    return getattr(cfg, "block", "velocity")


def _trained_units(log: dict) -> int:
    """Blocks and training segments in a run's log: what a process adds to by training."""
    return len(log.get("blocks", [])) + len(log.get("segments", []))


OUT_LOCK = ".jkofast.lock"   # in the output folder, held while a run trains into it
RUN_FILES = (CHECKPOINT_FILE, MODEL_FILE, LOG_FILE)   # what train() writes into its output folder


def check_no_files_of_others(out: Path, written: tuple[str, ...] = RUN_FILES) -> None:
    """Refuse an output folder that holds files of the names a run writes (``written``) but no
    checkpoint: not a run to resume, so they are someone else's (a model.pt, a plot.png of one's
    own), which the run would overwrite. Starting over there (resume=False, --restart) replaces them."""
    if (out / CHECKPOINT_FILE).exists():
        return
    present = [name for name in written if (out / name).exists()]
    if present:
        raise ValueError(f"{out} holds {', '.join(present)} but no {CHECKPOINT_FILE}: it is not a run to resume, and "
                         "this run would overwrite them; choose another output folder, or start over there "
                         "(resume=False, --restart) to replace them")


_UNITS = {"jko-iflow": "block", "jko-flow": "round", "interpolant": "training segment"}


def _count_of(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _resume_and_run(trainer, out: Path | None, method: str, device, progress: bool, main: bool):
    """Resume the trainer from its checkpoint if there is one (saying so), then train, measured.
    Returns ``(resumed, units trained before this process, the ResourceMeter)``."""
    resumed = trainer.resume()
    done = _trained_units(trainer.log)
    if resumed:
        say(f"resuming from {out / CHECKPOINT_FILE}: {_count_of(done, _UNITS[method])} done (resume=False, or --restart, "
            "starts over)", bars=progress, main=main)
        for note in trainer.resume_notes:  # what the resume decided (a larger budget)
            say(note, bars=progress, main=main)
        # the checkpoint's log holds the settings it began with; a resumed run may have raised its
        # budget or changed a setting that does not change what is trained
        trainer.log["config"] = trainer.cfg.to_dict()
    with ResourceMeter(device) as meter:
        trainer.run()
    return resumed, done, meter


def _keep_training_process_numbers(log: dict, out: Path | None) -> None:
    """Copy the wall time and peak memory of the last process that trained from its log.json."""
    try:
        before = json.loads((out / LOG_FILE).read_text()) if out is not None else {}
    except (OSError, ValueError):
        return
    for key in ("resources", "wall_seconds_this_process", "peak_memory"):
        if key in before:
            log[key] = before[key]


def train(x, method: str = "jko-iflow", *, val=None, out: str | os.PathLike | None = None,
          resume: bool = True, device: str | torch.device | None = None, budget: str = "default",
          progress: bool = True, backend: str = "auto", info: dict | None = None, **options) -> Flow:
    """Train a normalizing flow on ``x`` and return it.

    Arguments:
        x: training data, (N, d), finite, N >= 2: a numpy array or tensor, a pandas DataFrame
            (numeric columns), the path of a ``.csv`` file (as ``jkofast train --data`` reads
            it), or, for data larger than memory, a memory map (``np.load(path, mmap_mode="r")``),
            the path of a ``.npy`` file or a :class:`~jkofast.datasets.streaming.Rows` (read in
            chunks, never whole, by jko-iflow; the other methods read them whole).
        method: ``"jko-iflow"`` (block-wise JKO steps, Xu et al. 2023), ``"jko-flow"`` (the
            OT-Flow objective with a fixed alpha, solved in rounds, Vidal et al. 2023) or
            ``"interpolant"`` (stochastic interpolants, Albergo & Vanden-Eijnden 2023).
        val: optional validation data (M, d): its NLL after each block goes into the log, and
            at the end on the training grid and on the ``eval_steps`` grid (``flow.info``). With
            it, jko-iflow's default ``select_blocks="auto"`` keeps the prefix of blocks with the
            lowest validation NLL (a note says when blocks were dropped).
        out: folder for ``checkpoint.pt`` and ``log.json`` (after every block, round, or
            ``checkpoint_every`` interpolant steps) and ``model.pt``. A killed run started again
            with the same ``out`` resumes from its last checkpoint.
        resume: continue from ``out/checkpoint.pt`` if present (``False`` starts over, deleting
            the earlier run's checkpoint, model.pt and log.json from ``out``). The settings must
            be the checkpoint's, but for a larger ``blocks`` (jko-iflow) or ``rounds``
            (jko-flow): a finished run goes on, as a run with that budget would have.
        device: where to train; default: the device of ``x`` if it is a tensor, else the CPU.
            Under a process group, ``"cuda"`` means this process's GPU, ``cuda:LOCAL_RANK``.
        budget: preset, ``"quick"`` (seconds), ``"default"`` or ``"paper"``; options override it.
        progress: show progress bars (per block or round).
        backend: engine, ``"auto"``, ``"torch"`` or ``"compiled"``.
        info: extra entries for ``flow.info`` (saved with the model), e.g. where the data came from:
            a dict of strings, numbers, bools, None, lists and dicts (a path is kept as its string).
            The entries train() records (method, config, ...) are this run's, whatever ``info`` says.
            ``flow.info["columns"]`` holds the column names of a DataFrame or a ``.csv`` header.
        **options: the method's settings: fields of
            :class:`~jkofast.jko_iflow_config.JKOIFlowConfig` (``blocks``, ``hidden``, ``iters``,
            ``lr``, ``steps``, ``divergence``, ...), :class:`~jkofast.jko_flow_config.JKOFlowConfig`
            (``alpha``, ``alpha_r``, ``rounds``, ...) or
            :class:`~jkofast.interpolant_config.InterpolantConfig` (``interpolant``,
            ``time_beta``, ...). An option the method does not have is an error listing its options.

    Returns:
        The trained :class:`~jkofast.Flow`, on ``device``; ``flow.info`` holds the settings,
        validation NLLs, the number of training batches (``train_batches`` of ``batch_size``),
        training seconds, this process's wall time and peak memory (``resources``), and the
        Gaussian fitted to ``x`` (``gaussian_baseline``, for up to 512 columns and more rows than
        columns; ``GaussianFit.recorded(flow)`` reads it, for :func:`~jkofast.evaluate`'s
        ``baseline_train``).

    Distributed: launched by torchrun (``WORLD_SIZE`` > 1 in the environment), or with a
    process group the caller initialized, every process calls ``train`` with the same
    arguments; each trains on its own shard of ``x`` with DistributedDataParallel (``batch`` is
    the global batch, split evenly), rank 0 alone writes to ``out``, and every process returns
    the same flow. See jkofast/distributed.py and the README's "Scaling out".

    Examples:
        >>> import jkofast, torch
        >>> x = jkofast.datasets.toy("moons", 512, seed=0)
        >>> flow = jkofast.train(x, budget="quick", progress=False)
        >>> flow.log_prob(torch.as_tensor(x[:4])).shape
        torch.Size([4])

    References:
        C. Xu, X. Cheng, Y. Xie. Normalizing flow neural networks by JKO scheme. NeurIPS 2023,
        arXiv:2212.14424.
        A. Vidal, S. Wu Fung, L. Tenorio, S. Osher, L. Nurbekyan. Taming hyperparameter tuning in
        continuous normalizing flows using the JKO scheme. Sci. Rep. 13, 4501 (2023), arXiv:2211.16757.
        M. S. Albergo, E. Vanden-Eijnden. Building normalizing flows with stochastic interpolants.
        ICLR 2023, arXiv:2209.15571.
    """
    # Checks of the arguments alone, which every process of a run shares: marked, so that the
    # command line prints their errors once under torchrun, not once per rank (distributed.py).
    with distributed.alike_on_every_rank():
        cfg = settings(method, budget, **options)
        check_flag(resume, "resume")
        info = _checked_info(info)
        if backend == "compiled" and _block_kind(cfg) != "velocity":
            raise ValueError(f"backend='compiled' runs MLP velocity fields only; {method}'s OT-Flow potential "
                             "runs on the torch engine: use backend='auto' or 'torch'")
    _backend.check_backend(backend)  # (not marked: whether the compiled ops load is this host's matter)
    if device is None:
        device = x.device if isinstance(x, Tensor) else "cpu"
    if isinstance(device, (str, torch.device)) and str(device).startswith("meta"):
        raise ValueError(f"device={str(device)!r} holds no values to train on; use 'cpu' or 'cuda'")
    for name, data in (("x", x), ("val", val)):
        if isinstance(data, Tensor) and data.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values")
    dist = distributed.connect(device)  # a process group from torchrun or the caller, or one process
    with distributed.alike_on_every_rank():
        check_world(method, dist.world, getattr(cfg, "batch", None))
    out = check_folder(out, "out") if out is not None else None
    if out is not None and resume:
        check_no_files_of_others(out)
    # Two runs writing checkpoints into one folder would overwrite each other's: the second is
    # refused while the first lives (a lock the kernel drops when its process ends).
    lock = out / OUT_LOCK if out is not None and dist.main else None
    with held_lock(lock):
        if out is not None and not resume and dist.main:
            # Starting over: the earlier run's model and log go with its checkpoint, so that no
            # reader (Flow.load, jkofast eval) takes them for this run's while it trains.
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        columns = _column_names(x)  # kept with the model: `jkofast sample --out s.csv` writes them as a header
        info = {**({"columns": columns} if columns else {}), **(info or {})}
        return _train(x, val, method, cfg, out=out, dist=dist, progress=progress, backend=backend, info=info)


def _checked_info(info) -> dict | None:
    """``info`` as what a checkpoint read back with ``weights_only=True`` and JSON can hold,
    refused before training where it cannot be (a datetime made model.pt unreadable after a
    finished run); paths become their strings, numpy values Python ones."""
    if info is None:
        return None
    if not isinstance(info, collections.abc.Mapping):
        raise TypeError(f"info must be a dict of entries for flow.info, got {type(info).__name__}")

    def kept(value, where: str):
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        value = plain(value)
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, (list, tuple)):
            return [kept(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, collections.abc.Mapping) and all(isinstance(k, str) for k in value):
            return {k: kept(v, f"{where}[{k!r}]") for k, v in value.items()}
        raise TypeError(f"{where} is a {type(value).__name__}, which the saved model cannot hold: use strings, "
                        "numbers, bools, None, lists and dicts with string keys")

    return kept(dict(info), "info")


def _column_names(x) -> list[str] | None:
    """The names of x's columns: a .csv file's header, or a DataFrame's column labels where they
    are names (a label that reads as a number, as the default 0, 1, ... do, would make a header
    line that a reader takes for data); None otherwise."""
    if isinstance(x, (str, os.PathLike)):
        return column_names(x)
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        names = [str(c) for c in x.columns]
        return None if any(reads_as_number(n) for n in names) else names
    return None


def _recorded_baseline(rows, n: int, dim: int, dist) -> dict:
    """``flow.info``'s ``"gaussian_baseline"``: the Gaussian fitted to the training data, kept
    with the model so that an evaluation needs neither the data nor another pass over it (one
    pass here, small beside training). Left out where it would be large (over
    RECORDED_FIT_MAX_DIM columns) or degenerate (no more rows than columns: evaluate refuses
    those)."""
    if dim > RECORDED_FIT_MAX_DIM or not fixes_a_covariance(n, dim):
        return {}
    return {"gaussian_baseline": gaussian_fit(rows, dist if dist.world > 1 else None).state()}


def _data_names(x, info: dict | None) -> tuple[str, str]:
    """What messages call x and val: the arguments' names, with the data's source where ``info``
    records one (the command line's file or set: "x (my.npy) column(s) [0, 1] hold whole
    numbers only"), but for data that names its file itself (a path, a memory map, Rows)."""
    source = (info or {}).get("data")
    source = source.get("name") if isinstance(source, dict) else None
    if not isinstance(source, str) or isinstance(x, (str, os.PathLike, Rows)) or getattr(x, "filename", None):
        return "x", "val"
    return f"x ({source})", f"val ({source})"


def _train(x, val, method: str, cfg, *, out: Path | None, dist, progress: bool, backend: str,
           info: dict | None) -> Flow:
    """train()'s work once the settings are checked and the output folder is held."""
    device, dtype = dist.device, getattr(torch, cfg.dtype)
    log = {"jkofast_version": __version__, "method": method, "config": cfg.to_dict(), "device": str(device),
           "world_size": dist.world}
    if info and "data" in info:  # where the data came from (the command line's spec): a refusal can name it
        log["data"] = info["data"]
    if isinstance(cfg, JKOIFlowConfig):
        cfg.check_validation(val is not None)
    if method in DISTRIBUTED_METHODS:
        # Sharded, possibly memory-mapped data (training_data.py); one process is a world of 1.
        data = training_data.prepare(x, val, cfg, dist, progress=progress, names=_data_names(x, info))
        try:  # from here on (a SIGTERM while the flow was built left the scratch folder behind)
            flow = Flow(data.dim, cfg.field_config(), steps=cfg.steps, tableau=cfg.tableau, loc=data.loc,
                        scale=data.scale, block=_block_kind(cfg))
            flow.to(device=device, dtype=dtype)
            n_train = data.n_train
            log.update(n_train=n_train, n_val=data.n_val, dim=data.dim, pushed_storage=data.store.where)
            trainer = JKOIFlowTrainer(flow, cfg, data.train, data.val, out=out, data_id=data.data_id,
                                      progress=progress, backend=backend, log=log, dist=dist, store=data.store)
            resumed, done_before, meter = _resume_and_run(trainer, out, method, device, progress, dist.main)
        finally:
            data.close()

        def val_nll(steps):
            return sharded_nll(flow, data.val_rows, dist, steps=steps, backend=backend, seed=cfg.seed)
        train_rows = data.rows
    else:
        # float64 until standardized (Flow.standardize); the model's dtype from there on
        x_name, val_name = _data_names(x, info)
        x = _as_data(x, x_name, dtype=torch.float64, device=device)
        val = None if val is None else _as_data(val, val_name, dtype=torch.float64, device=device, dim=x.shape[1])
        warn_fewer_rows_than_columns(*x.shape, x_name)  # before a transposed array meets the constant-column error
        loc, scale = _standardization(x, dtype) if cfg.standardize else (None, None)
        if x.shape[0] > 1:
            warn_lattice_columns(whole_number_columns(x).tolist(), x.std(0).tolist(), x_name)
        flow = Flow(x.shape[1], cfg.field_config(), steps=cfg.steps, tableau=cfg.tableau, loc=loc, scale=scale,
                    block=_block_kind(cfg))
        flow.to(device=device, dtype=dtype)
        n_train = x.shape[0]
        log.update(n_train=n_train, n_val=0 if val is None else val.shape[0], dim=x.shape[1])
        # (the fingerprint of the data as the model's dtype holds it: what checkpoints have recorded)
        data_id = data_fingerprint(x.to(dtype), None if val is None else val.to(dtype))
        trainer = _METHODS[method][1](flow, cfg, flow.standardize(x), None if val is None else flow.standardize(val),
                                      out=out, data_id=data_id, progress=progress, backend=backend, log=log)
        resumed, done_before, meter = _resume_and_run(trainer, out, method, device, progress, dist.main)

        def val_nll(steps):
            return nll(flow, val, steps=steps, backend=backend)
        train_rows = x
    log = trainer.log
    log.update(resumed=resumed, world_size=dist.world)
    # Training seconds and batches add up across resumed processes; wall time and peak memory
    # are this process's alone.
    entries = log.get("blocks", []) + log.get("segments", []) + log.get("discarded", [])  # (a dropped free block)
    log["train_seconds"] = round(sum(entry["seconds"] for entry in entries), 3)
    log["train_batches"] = sum(entry.get("iters", 0) for entry in entries)
    log["resources"] = meter.result()
    log["wall_seconds_this_process"] = log["resources"]["wall_seconds"]
    if val is not None:
        log["val_nll"] = {f"steps{s}": dict(zip(("mean", "se"), val_nll(s))) for s in cfg.eval_grids()}
    log["peak_memory"] = peak_memory_of_run(dist)
    if resumed and _trained_units(log) == done_before:
        # A finished run, loaded again: nothing was trained here, so the numbers of the process
        # that trained it stand (this one's would read 0 s and the bare interpreter's memory).
        _keep_training_process_numbers(log, out)
        say("the run was already finished: nothing left to train (resume=False, or --restart, trains it again)",
            bars=progress, main=dist.main)
    # info first: the entries recorded here are this run's (an info copied from another model's
    # would otherwise give it that model's method, grids and training cost)
    flow.info = {**(info or {}), "method": method, "config": cfg.to_dict(), "n_train": n_train,
                 "train_seconds": log["train_seconds"], "train_batches": log["train_batches"],
                 "batch_size": min(cfg.batch, n_train), "resources": log["resources"],
                 "eval_grids": cfg.eval_grids(), "val_nll": log.get("val_nll"), "world_size": dist.world,
                 "pushed_storage": log.get("pushed_storage"), "peak_memory": log["peak_memory"],
                 "resumed": bool(resumed), "jkofast_version": __version__,
                 **_recorded_baseline(train_rows, n_train, flow.dim, dist)}
    selected = [e["select_blocks"] for e in log.get("events", []) if "select_blocks" in e]
    if selected:  # config["blocks"] was the budget; this says how many were kept and why
        flow.info["select_blocks"] = selected[-1]
    if out is not None and dist.main:
        flow.save(out)
        write_json(out / LOG_FILE, log)
    return flow
