"""The ``jkofast`` command line: train, sample, eval, plot, info.

``jkofast train --data moons --out runs/moons`` trains a flow and writes into ``runs/moons``:
model.pt (the final model, ``jkofast.Flow.load("runs/moons")``), checkpoint.pt (after every
block; rerunning the same command resumes), log.json, metrics.json (test NLL), samples.npy and
plot.png (2-D data).

``torchrun --nproc_per_node N -m jkofast train ...`` trains with N processes (distributed.py):
every rank evaluates its shard of the test set, rank 0 alone prints and writes the files.
``--mmap`` reads a ``.npy`` file through a memory map and splits it without copying
(datasets/streaming.py); by default files of MMAP_BYTES (1 GiB) or more are.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import select
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import datasets, distributed
from ._checks import check_device, check_folder
from ._locks import held_lock
from ._version import __version__
from ._warn import JkofastWarning
from ._atomic import replaced_atomically
from .checkpoint import CheckpointError, OtherRunError, write_json
from .datasets.streaming import Rows, as_rows, open_npy, split_rows
from .distributed import DistributedError
from .evaluate import evaluate, evaluate_sharded
from .gaussian_baseline import GaussianFit, fixes_a_covariance
from .flow import Flow
from .jko_iflow import TrainingDivergedError
from .jko_iflow_config import BUDGETS
from .jko_iflow_state import CHECKPOINT_FILE
from .memory import peak_memory_of_run
from .train import METHODS, OUT_LOCK, check_world, option_defaults, option_names, settings, train

# CLI flag -> JKOIFlowConfig field, for the options that go straight through.
_TRAIN_OPTIONS = {"blocks": int, "hidden": int, "layers": int, "activation": str, "beta": float,
                  "steps": int, "eval_steps": int, "iters": int, "batch": int, "lr": float, "h0": float,
                  "h_growth": float, "stop_tol": float, "val_patience": int, "divergence": str, "probes": int,
                  "reparam_rounds": int, "refine_rounds": int, "retrain_iters": int, "dtype": str,
                  "tableau": str, "transport": str, "time": bool, "free_block": bool, "warm_start": bool,
                  "pushed_storage": str, "scratch_dir": str, "select_blocks": str, "clip": float, "h_max": float,
                  "reparam_eta": float, "standardize": bool}
# CLI flag -> option of the other methods (jkofast.train checks which method has which).
_METHOD_OPTIONS = {"rounds": (int, "jko-flow"), "alpha": (float, "jko-flow"), "alpha_r": (float, "jko-flow"),
                   "init": (str, "jko-flow"), "interpolant": (str, "interpolant"),
                   "time_beta": (float, "interpolant"), "lr_final": (float, "all methods"),
                   "checkpoint_every": (int, "interpolant"), "val_every": (int, "interpolant"),
                   "kl_points": (int, "jko-flow")}
# What each option does, for --help (the settings classes' docstrings say more).
_HELP = {
    "blocks": "blocks (JKO steps) in the first pass, at most (a rerun with more adds to a finished run)",
    "hidden": "width of each block's MLP", "layers": "weight layers of each block's MLP",
    "activation": "the MLP's activation", "beta": "softplus sharpness",
    "steps": "RK4 steps per block (or per unit time) in training",
    "eval_steps": "a finer RK4 grid the test NLL is also reported on",
    "iters": "optimizer steps per block (jko-iflow), per round, or in all",
    "batch": "samples per optimizer step (the global batch under torchrun)", "lr": "Adam's learning rate",
    "h0": "first block's JKO step size h_1", "h_growth": "h_k = min(h0 * h_growth^(k-1), h_max)",
    "h_max": "largest JKO step size", "stop_tol": "end the pass once a block moves the data less than this (0: off)",
    "val_patience": "end the pass after this many blocks without a better validation NLL (0: never)",
    "divergence": "exact trace, or Hutchinson's estimate (large d)", "probes": "Hutchinson probes per sample",
    "reparam_rounds": "rounds of the adaptive time reparametrization", "reparam_eta": "damping of the time reparametrization, in [0, 1]",
    "refine_rounds": "rounds that split every block in two and retrain",
    "retrain_iters": "optimizer steps per block when retraining (None: --iters)",
    "dtype": "the model's floating-point type", "tableau": "Runge-Kutta tableau",
    "transport": "transport cost: |x(1) - x(0)|^2 (endpoint) or the path's kinetic energy",
    "time": "t as an input of each block's field", "free_block": "append one block without transport penalty",
    "warm_start": "start each block from the previous one's weights",
    "pushed_storage": "where each process keeps its pushed samples", "scratch_dir": "folder for --pushed-storage disk",
    "select_blocks": "keep every block, or the prefix with the best validation NLL (auto: val with validation data)",
    "clip": "gradient norm clipping", "standardize": "store the data's mean and std in the model and train on "
    "standardized data", "rounds": "JKO rounds (a rerun with more adds to a finished run)",
    "alpha": "weight of the transport cost",
    "alpha_r": "weight of the HJB regularizer", "init": "first round's initialization",
    "interpolant": "the interpolant x_t between data and noise", "time_beta": "Beta(A, B) law of the training times",
    "lr_final": "cosine decay of the learning rate to lr * lr_final", "checkpoint_every": "steps between checkpoints",
    "val_every": "steps between validation NLLs", "kl_points": "training points carried through the rounds",
}


def _choices() -> dict:
    """The options with a fixed set of values, for argparse's choices (a typo fails at once)."""
    from .divergence import DIVERGENCE_METHODS
    from .interpolants import INTERPOLANTS
    from .jko_flow_config import INITS
    from .jko_iflow_config import SELECT_BLOCKS
    from .jko_loss import TRANSPORT_COSTS
    from .reference import ACTIVATIONS, TABLEAUS
    from .shard import STORAGES
    return {"activation": sorted(ACTIVATIONS), "divergence": DIVERGENCE_METHODS, "dtype": ("float32", "float64"),
            "tableau": sorted(TABLEAUS), "transport": TRANSPORT_COSTS, "pushed_storage": STORAGES,
            "select_blocks": SELECT_BLOCKS, "init": INITS, "interpolant": sorted(INTERPOLANTS)}


def _load_data(spec: dict):
    """(train, val, test) for a data spec {"name", "seed", "n_train", "n_val", "n_test", "mmap"}
    (MAF sets also "root", and "allow_pickle" if given): arrays, or with "mmap" lazy views of
    the memory-mapped file (nothing read yet)."""
    if spec.get("mmap"):
        return split_rows(open_npy(spec["name"]), seed=spec["seed"])
    try:
        return datasets.get(spec["name"], spec["n_train"], spec["n_val"], spec["n_test"], seed=spec["seed"],
                            root=spec.get("root"), allow_pickle=spec.get("allow_pickle", False))
    except ValueError as exc:
        if not str(exc).startswith("too few rows to split"):
            raise
        # split()'s advice (test_fraction=0) has no flag here: say what the command needs
        n = len(datasets.load_array(spec["name"]))  # a file of fewer than 10 rows: cheap to read again
        raise ValueError(f"{spec['name']} has {n} row(s): the command line splits a file 80/10/10 by --seed and "
                         "needs at least 10 rows; for fewer, call jkofast.train(x) in Python (no split)") from exc


def _as_array(data, seed: int, n: int) -> np.ndarray:
    """An in-memory array of data, for plots: of a memory-mapped set, a seeded random subset of
    n rows, the plot's points (plot_flow draws its own subset of an array with more)."""
    return data.sample(n, seed) if isinstance(data, Rows) else data


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


def _print_baseline(g: dict, steps: int) -> None:
    """The Gaussian's line, the paired gap on the finest grid, and a note where the flow does not
    clearly beat it (a gap under two standard errors of the paired differences)."""
    gap = g[f"minus_flow_steps{steps}"]
    print(f"baseline: a Gaussian fitted to the training data (full covariance) scores {g['mean']:.4f} +/- "
          f"{g['se']:.4f} nats on the same test points; the flow is {gap['mean']:.4f} +/- {gap['se']:.4f} nats "
          f"better (paired, {steps} steps)")
    if not gap["mean"] >= 2 * gap["se"]:  # (also where se is NaN: one test point says nothing)
        per_dim = g["n_train"] / g["dim"]
        why = ("more training may help (--iters, --blocks; --budget quick is a smoke test)"
               if per_dim >= SMALL_DATA_ROWS_PER_DIM else
               f"with {per_dim:.0f} training rows per dimension the blocks may over-fit, or the data may be close "
               "to Gaussian, and then the Gaussian is the better model")
        print(f"  the flow does not clearly beat it: {why} (README, 'Small data')")


def _print_evaluation(metrics: dict, steps: list[int]) -> None:
    for s in steps:
        m, u = metrics[f"nll_steps{s}"], metrics.get(f"nll_standardized_steps{s}")
        standardized = f"; {u['mean']:.4f} +/- {u['se']:.4f} (standardized)" if u else ""
        print(f"test NLL ({s} RK4 steps per block, {metrics['n_test']} points): {m['mean']:.4f} +/- {m['se']:.4f} "
              f"nats (data space){standardized}")
    if "gaussian_nll" in metrics:
        _print_baseline(metrics["gaussian_nll"], max(steps))
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


# A fixed size, not a share of the free memory: the choice decides the split (split_rows draws
# per row, datasets.split permutes), and the same command must split a file the same way on every
# machine and at every resume.
MMAP_BYTES = 2**30


def _memory_map(path: Path, choice: bool | None) -> bool:
    """--mmap / --no-mmap, or by default: memory-map a .npy of MMAP_BYTES or more."""
    if path.suffix.lower() != ".npy":
        if choice:
            raise SystemExit(f"error: --mmap reads .npy files; convert {str(path)!r} with np.save")
        return False
    return choice if choice is not None else path.stat().st_size >= MMAP_BYTES


def _data_spec(args) -> dict:
    name = datasets.builtin_name(args.data)
    if name is None:
        path = Path(args.data)
        if not path.is_file():
            raise SystemExit(f"error: --data {args.data!r} is neither a built-in data set "
                             f"({', '.join(datasets.DATA_NAMES)}) nor an existing .npy/.csv file")
        name = str(path.resolve())
        if _memory_map(path, args.mmap):
            return {"name": name, "seed": args.seed, "mmap": True, "n_train": None, "n_val": None, "n_test": None,
                    **_file_identity(path)}
        return {"name": name, "seed": args.seed, **_sizes(args), **_file_identity(path)}
    spec = {"name": name, "seed": args.seed, **_sizes(args)}
    return _with_root(spec, name, args)


def _what_sets_the_rows(spec: dict) -> str:
    """For a run refused as trained on other data (its settings, --seed among them, are this
    command's): what else chooses the command line's training rows."""
    name = spec["name"]
    if "file_bytes" not in spec:  # a built-in set: drawn (or, for the MAF sets, read) by --seed and the sizes
        return f"the training rows of {name} are also chosen by --n-train/--n-val/--n-test: was the run started with others?"
    if spec.get("mmap"):
        return (f"{name} is memory-mapped here (--mmap, the default for a .npy of 1 GiB or more), which splits it "
                "otherwise than reading it whole: was the run started with --no-mmap, or has the file changed since?")
    if Path(name).suffix.lower() == ".npy":
        return (f"{name} is read whole here, which splits it otherwise than --mmap does: was the run started with "
                "--mmap, or has the file changed since?")
    return f"has {name} changed since the run started?"


_SIZES = {"n_train": 50_000, "n_val": 5_000, "n_test": 20_000}


def _sizes(args) -> dict:
    """--n-train/--n-val/--n-test, or their defaults."""
    return {k: default if getattr(args, k) is None else getattr(args, k) for k, default in _SIZES.items()}


def _ignored_sizes(args, spec: dict) -> str | None:
    """A note where --n-train/--n-val/--n-test were given for a set whose splits are fixed (a
    file, a real set): they size only the toy sets' and patches' draws."""
    given = [_flag(k) for k in _SIZES if getattr(args, k, None) is not None]
    drawn = datasets.canonical_name(spec["name"]) is not None or datasets.real_name(spec["name"]) == "patches"
    if not given or drawn:
        return None
    how = "is split 80/10/10 by --seed" if datasets.builtin_name(spec["name"]) is None else "has fixed splits"
    return f"{'/'.join(given)} ignored: they size the draws of the 2-D sets and patches; {spec['name']} {how}"


def _file_identity(path: Path) -> dict:
    """Size and modification time of a data file, recorded with the model: `eval` re-splits the
    file by the recorded seed, and a file grown or rewritten since would put training rows into
    that test split without a word. (Free to take, where a hash would cost a pass over the file.)"""
    st = path.stat()
    return {"file_bytes": st.st_size, "file_mtime_ns": st.st_mtime_ns}


def _check_unchanged(spec: dict, *, split: bool = True) -> None:
    """Refuse a recorded data file that has changed size since training; note where only its time
    stamp has changed. ``split``: its test split is drawn again (else only its training split
    serves, for the baseline)."""
    if "file_bytes" not in spec:
        return
    path = Path(spec["name"])
    risk = ("its test split, drawn again by the recorded seed, would hold training rows" if split else
            "the Gaussian baseline would be fitted to other rows than the model's")
    if not path.is_file():
        raise SystemExit(f"error: the model was trained on {str(path)!r}, which is no longer there: put it back "
                         "to score its test split, or pass held-out data with --data")
    st = path.stat()
    if st.st_size != spec["file_bytes"]:
        raise SystemExit(f"error: {str(path)!r} has changed since the model was trained ({spec['file_bytes']} bytes "
                         f"then, {st.st_size} now): {risk}. Pass held-out data with --data to score it whole")
    if st.st_mtime_ns != spec["file_mtime_ns"]:
        _note(f"{str(path)!r} was modified after the model was trained (same size); if its rows changed, {risk}")


def _with_root(spec: dict, name: str, args) -> dict:
    """Add --data-root (and --allow-pickle) to a MAF set's spec; refuse a MAF set without a root."""
    root = getattr(args, "data_root", None) or spec.get("root")
    if datasets.tabular_name(name) is None:
        return spec
    if root is None:
        raise SystemExit(f"error: --data {name} reads your copy of the MAF files: add --data-root DIR, the folder "
                         f"holding {name}/... (see the README, section 'Data sets')")
    spec["root"] = str(Path(root).expanduser().resolve())
    if getattr(args, "allow_pickle", False):
        spec["allow_pickle"] = True
    return spec


def _flag(option: str) -> str:
    """The command-line flag of a train() option or a data size: n_train -> --n-train."""
    return "--" + option.replace("_", "-")


def _check_method_flags(args) -> None:
    """Refuse the flags of another method, named as flags (train()'s message names options, and
    lists every option of the method: the command line's --help does that)."""
    taken = option_names(args.method)
    foreign = [k for k in (*_TRAIN_OPTIONS, *_METHOD_OPTIONS) if getattr(args, k) is not None and k not in taken]
    if foreign:
        flags = [_flag(k) for k in foreign]
        owners = "; ".join(f"{flag}: {', '.join(m for m in METHODS if k in option_names(m))}"
                           for flag, k in zip(flags, foreign))
        raise ValueError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to --method "
                         f"{args.method} (the methods that take {'it' if len(flags) == 1 else 'them'}: {owners})")


def _named_as_a_flag(exc: Exception) -> Exception:
    """A settings check's error that starts with the option's name ("lr must be > 0.0"), with the
    flag's instead ("--lr must be > 0.0"); any other as it is."""
    text = str(exc)
    name = text.split(" ", 1)[0]
    if name not in _TRAIN_OPTIONS and name not in _METHOD_OPTIONS:
        return exc
    return type(exc)(f"{_flag(name)}{text[len(name):]}")


def _device(args, default: str = "cpu") -> torch.device:
    """--device checked up front: a GPU asked of a CPU-only torch is a one-line error."""
    return check_device(args.device or default, "--device")


def cmd_train(args) -> int:
    # The options first: a mistyped one is refused before a data file is read or a process group
    # joined (the checks train() makes). Marked as every rank's only where every rank runs this
    # same command line: one torchrun starts them all (on several hosts, each host's its own).
    with distributed.alike_on_every_rank() if _one_command_line() else contextlib.nullcontext():
        _check_method_flags(args)
        try:
            settings(args.method, args.budget, **_train_options(args))
        except (TypeError, ValueError) as exc:
            raise _named_as_a_flag(exc) from exc
        check_world(args.method, distributed.launched_world())
    device = _device(args, "cuda" if torch.cuda.is_available() else "cpu")
    dist = distributed.connect(device)  # a process group under torchrun, else one process
    try:
        # the output folder stays held through the report (samples, plot, metrics), not just train()
        out = check_folder(args.out, "--out")
        with held_lock(out / OUT_LOCK if dist.main else None):
            return _train_and_report(args, dist, out)
    finally:
        dist.close()


def _train_info(spec: dict) -> dict:
    """What the model records of its data: the spec, and a .csv header's column names."""
    names = datasets.column_names(spec["name"]) if spec.get("file_bytes") is not None else None
    return {"data": spec, **({"columns": names} if names else {})}


def _shape(data) -> tuple:
    return (len(data), data.dim) if isinstance(data, Rows) else data.shape


def _train_options(args) -> dict:
    """train()'s keyword options from the command line: the flags given, and the seed."""
    options = {k: getattr(args, k) for k in [*_TRAIN_OPTIONS, *_METHOD_OPTIONS] if getattr(args, k) is not None}
    return {**options, "seed": args.seed}


# What the report writes after training; metrics.json last, so its presence says the report is whole.
_REPORT_FILES = ("samples.npy", "plot.png", "metrics.json")


def _drop_report(out: Path) -> None:
    """Delete an earlier run's report files from ``out``."""
    for name in _REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def _train_and_report(args, dist, out: Path) -> int:
    """Train into ``out`` (--out as check_folder read it: ~ expanded) and write the report."""
    spec = _data_spec(args)
    x_train, x_val, x_test = _load_data(spec)
    options = _train_options(args)
    say = print if dist.main else (lambda *a, **k: None)
    processes = f", {dist.world} processes" if dist.world > 1 else ""
    ignored = _ignored_sizes(args, spec)
    if ignored:
        _note(ignored)
    say(f"jkofast {__version__}: {args.method} on {spec['name']} (train {_shape(x_train)}, "
        f"test {_shape(x_test)}{processes}) -> {out}", flush=True)
    start = time.perf_counter()
    if args.restart and dist.main:  # (train() drops the model and the log)
        _drop_report(out)
    try:
        flow = train(x_train, args.method, val=x_val, out=out, resume=not args.restart, device=dist.device,
                     budget=args.budget, progress=not args.no_progress, info=_train_info(spec), **options)
    except TrainingDivergedError as exc:
        _print_error(exc)
        return 2
    except CheckpointError as exc:  # (the hint, unless the message gives it already)
        _print_error(exc, "" if "--restart" in str(exc) else "\n(pass --restart to start over, or choose another --out)")
        return 2
    except OtherRunError as exc:
        if not exc.data_differs:
            raise
        better = ValueError(f"{exc}\n({_what_sets_the_rows(spec)})")
        raise (distributed.raised_on_every_rank(better) if distributed.is_raised_on_every_rank(exc) else better) from exc
    if dist.main:  # model.pt is this run's now: an earlier report must not sit beside it while this one is made
        _drop_report(out)
    grids = flow.info["eval_grids"]
    baseline = _recorded_or(flow, lambda: _baseline_train(x_train))
    if dist.world > 1 or isinstance(x_test, Rows):
        metrics = evaluate_sharded(flow, x_test, steps=grids, dist=dist, baseline_train=baseline)
    else:
        metrics = evaluate(flow, x_test, steps=grids, mmd_points=0, baseline_train=baseline)
    metrics.update(blocks=flow.num_blocks, train_seconds=flow.info["train_seconds"], world_size=dist.world,
                   total_seconds=round(time.perf_counter() - start, 3), peak_memory=peak_memory_of_run(dist))
    if not dist.main:
        return 0
    g = torch.Generator(device=flow.loc.device).manual_seed(args.seed)
    # float64: the de-standardization keeps a large offset exact (Flow.inverse)
    samples = flow.sample(args.samples, generator=g, dtype=torch.float64).detach().cpu().numpy()
    _save_npy(out / "samples.npy", samples)
    if flow.dim == 2 and not args.no_plot:
        from .plotting import PLOT_POINTS, plot_flow
        plot_flow(flow, _as_array(x_test, args.seed, PLOT_POINTS), out / "plot.png", samples=samples,
                  title=f"{spec['name']}: {flow.num_blocks} blocks")
    write_json(out / "metrics.json", metrics)  # last: its presence says the report is complete
    _print_evaluation(metrics, grids)
    peak = metrics["peak_memory"]["rss_bytes_max"] / 2**20
    # a resumed run's training seconds add up over its processes; the total is this process's
    total = "this process" if flow.info.get("resumed") else "total"
    print(f"{flow.num_blocks} block{'s' * (flow.num_blocks != 1)}, training {metrics['train_seconds']:.1f} s, {total} "
          f"{metrics['total_seconds']:.1f} s, peak memory {peak:.0f} MB per process; wrote "
          f"{', '.join(sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith('.')))}")
    return 0


def _flow_and_data(args, device: torch.device | None = None):
    """The model (on ``device``, default --device), its recorded data spec (None where it records
    none), and the test data to score or plot: the recorded set's test split, a built-in set's
    fresh test draw (--data NAME), or a held-out file scored whole (--data FILE, any file but the
    one it was trained on)."""
    flow = Flow.load(args.model, map_location=device or _device(args))
    recorded = dict(flow.info.get("data", {})) or None
    if recorded is not None and "name" not in recorded:
        recorded = None
    given = getattr(args, "data", None)
    n_test = getattr(args, "n_test", None)
    if given is not None and not _same_data(given, recorded):
        if datasets.builtin_name(given) is None:
            path = Path(given)
            if not path.is_file():
                raise SystemExit(f"error: --data {given!r} is neither a built-in data set "
                                 f"({', '.join(datasets.DATA_NAMES)}) nor an existing .npy/.csv file")
            if n_test and args.command == "eval":  # (plot: it caps the points plotted)
                raise SystemExit("error: --n-test sizes a built-in set's test draw; a held-out file is scored whole")
            held = as_rows(str(path), "test") if _memory_map(path, None) else datasets.load_array(path)
            columns = _shape(held)[1]
            if columns != flow.dim:
                raise SystemExit(f"error: --data {given!r} has {columns} column(s); the model was trained on {flow.dim}")
            return flow, recorded, held
        name = datasets.builtin_name(given)
        spec = _with_root({"name": name, "seed": (recorded or {}).get("seed", 0), "n_train": 1, "n_val": 1,
                           "n_test": n_test or 20_000}, name, args)
        return flow, recorded, _load_data(spec)[2]
    if recorded is None:
        raise SystemExit("error: this model does not record its data set; pass --data")
    recorded = _with_root(recorded, recorded["name"], args)
    _check_unchanged(recorded)
    recorded["checked"] = True
    if n_test and datasets.builtin_name(recorded["name"]) is not None:
        recorded["n_test"] = n_test
    elif n_test and args.command == "eval":  # (plot: it caps the points plotted)
        raise SystemExit(f"error: --n-test sizes a built-in set's test draw; {recorded['name']} is a file, whose "
                         "test split is fixed by the recorded seed (10% of its rows)")
    return flow, recorded, _load_data(recorded)[2]


def _same_data(given: str, recorded: dict | None) -> bool:
    """--data names the set the model was trained on (a built-in name, or the same file)."""
    if recorded is None:
        return False
    name = datasets.builtin_name(given)
    if name is not None:
        return name == recorded["name"]
    return Path(given).resolve() == Path(recorded["name"])


def _training_rows(recorded: dict | None, args):
    """The model's training split, for the report's Gaussian baseline; None (with a note) where
    it cannot be had: no record, a file gone or changed, a MAF set without --data-root, an
    optional package missing. (For a memory-mapped set, one streamed pass over its rows.)"""
    if recorded is None:
        _note("no Gaussian baseline: the model does not record its training data")
        return None
    try:
        if "root" not in recorded:
            recorded = _with_root(dict(recorded), recorded["name"], args)
        if not recorded.get("checked"):
            _check_unchanged(recorded, split=False)
        train = _load_data(recorded)[0]
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - the baseline is a courtesy: never the reason eval fails
        _note(f"no Gaussian baseline: the model's training data could not be read again ({exc})")
        return None
    return _baseline_train(train)


def cmd_eval(args) -> int:
    dist = distributed.connect(_device(args))  # under torchrun the ranks share the passes; rank 0 reports
    try:
        return _evaluate_and_report(args, dist)
    finally:
        dist.close()


def _evaluate_and_report(args, dist) -> int:
    if args.json is not None:
        _output_file(args.json, "--json")
    flow, recorded, test = _flow_and_data(args, dist.device)
    baseline_train = _recorded_or(flow, lambda: _training_rows(recorded, args))
    steps = args.steps or [flow.steps]
    if isinstance(test, Rows) or dist.world > 1:
        # a memory-mapped set, or several processes: NLLs streamed in chunks (each rank its
        # shard), the MMD on a random subset of the test rows
        metrics = evaluate_sharded(flow, test, steps=steps, dist=dist if dist.world > 1 else None,
                                   baseline_train=baseline_train, mmd_points=args.mmd_points, seed=args.seed)
    else:
        metrics = evaluate(flow, test, steps=steps, mmd_points=args.mmd_points, seed=args.seed,
                           baseline_train=baseline_train)
    if not dist.main:
        return 0
    _print_evaluation(metrics, steps)
    if args.json:
        write_json(args.json, metrics)
    return 0


def _output_file(text: str, flag: str, suffixes: tuple[str, ...] | None = None, what: str = "") -> Path:
    """A file named on the command line for a command's output, checked before the work: not
    empty, not a folder, a known ending (``suffixes``: np.save would quietly append .npy, and
    savefig writes the format it is told whatever the name), in a folder that exists or is made
    here."""
    if not text.strip():
        raise ValueError(f"{flag} is empty; pass a file name")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{flag} {text!r} is a folder; pass a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        endings = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise ValueError(f"{flag} {text!r}: {what} written as {endings}; end the name in one of those")
    check_folder(path.parent, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_sample(args) -> int:
    out = _output_file(args.out, "--out", (".npy", ".csv"), "the samples are")
    flow = Flow.load(args.model, map_location=_device(args))
    g = torch.Generator(device=flow.loc.device).manual_seed(args.seed)
    x = flow.sample(args.n, generator=g, steps=args.steps, dtype=torch.float64).detach().cpu().numpy()
    if out.suffix.lower() == ".csv":
        names = flow.info.get("columns")  # the training table's header, where it had one
        header = _csv_header(names) if names and len(names) == flow.dim else ""
        with replaced_atomically(out) as tmp:
            np.savetxt(tmp, x, delimiter=",", header=header, comments="")
    else:
        _save_npy(out, x)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, whole or not at all, to the name as given (np.save on a path adds .npy to "s.NPY")."""
    with replaced_atomically(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _csv_header(names: list[str]) -> str:
    """One .csv line of names, quoted where a name holds a comma or a quote (csv module rules)."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(names)
    return line.getvalue()


def cmd_plot(args) -> int:
    from .plotting import PLOT_FORMATS, PLOT_POINTS, plot_flow
    _output_file(args.out, "--out", tuple("." + f for f in PLOT_FORMATS), "plots are")
    flow, recorded, test = _flow_and_data(args)
    title = args.data or (recorded or {}).get("name", "")
    n_points = args.n_test or PLOT_POINTS
    path = plot_flow(flow, _as_array(test, args.seed, n_points), args.out, n_points=n_points, seed=args.seed,
                     title=str(title))
    print(f"wrote {path}")
    return 0


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help=f"MAF sets ({', '.join(datasets.TABULAR_NAMES)}): the "
                   "folder holding power/data.npy, gas/..., hepmass/..., miniboone/..., BSDS300/...")
    p.add_argument("--allow-pickle", action="store_true", help="GAS: read gas/ethylene_CO.pickle (unpickling "
                   "runs code from the file: only for a file you trust; a .csv next to it needs no pickle)")


def cmd_info(args) -> int:
    from .info import main as info_main
    return info_main()


def _defaults_help(flag: str) -> str:
    """An option's help: what it does, and its default under every method that has it."""
    defaults = "(default: " + ", ".join(f"{m} {v}" for m, v in option_defaults(flag).items()) + ")"
    return f"{_HELP[flag]} {defaults}" if flag in _HELP else defaults


def _count(low: int):
    """An argparse type: an integer >= low, refused as the command line is read (not after
    training, where --samples -1 met its check)."""
    def integer(text: str) -> int:
        value = int(text)  # (a ValueError reads "invalid integer value: ...")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return integer


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix is not taken for an option (--restar would start over, --sample is not --samples)
    p = argparse.ArgumentParser(prog="jkofast", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"jkofast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a flow; writes model, checkpoint, log, metrics, samples, plot",
                       allow_abbrev=False)
    t.add_argument("--data", required=True, help=f"built-in set ({', '.join(datasets.DATA_NAMES)}) or a .npy/.csv file")
    _add_data_root(t)
    t.add_argument("--out", required=True, help="output folder (a rerun with the same folder resumes)")
    t.add_argument("--method", default="jko-iflow", choices=METHODS)
    t.add_argument("--budget", default="default", choices=sorted(BUDGETS))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    choices = _choices()
    for flag, kind in _TRAIN_OPTIONS.items():
        name, preset = _flag(flag), _defaults_help(flag)
        if kind is bool:
            t.add_argument(name, dest=flag, action=argparse.BooleanOptionalAction, default=None, help=preset)
        else:
            t.add_argument(name, dest=flag, type=kind, default=None, help=preset, choices=choices.get(flag))
    for flag, (kind, _) in _METHOD_OPTIONS.items():
        t.add_argument(_flag(flag), dest=flag, type=kind, default=None, help=_defaults_help(flag),
                       choices=choices.get(flag), **({"nargs": 2, "metavar": ("A", "B")} if flag == "time_beta" else {}))
    for k, what in (("n_train", "training"), ("n_val", "validation"), ("n_test", "test")):
        t.add_argument(_flag(k), type=_count(1), default=None,
                       help=f"2-D sets and patches: {what} points drawn (default: {_SIZES[k]:,})")
    t.add_argument("--mmap", action=argparse.BooleanOptionalAction, default=None,
                   help=".npy files: read through a memory map in chunks and split without copying "
                        "(default: for a file of 1 GiB or more)")
    t.add_argument("--samples", type=_count(1), default=10_000, help="samples to write to samples.npy")
    t.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    t.add_argument("--no-plot", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    for name, fn, helptext in (("eval", cmd_eval, "test NLL in nats with its standard error"),
                               ("plot", cmd_plot, "PNG of data, samples, density and trajectory (2-D)"),
                               ("sample", cmd_sample, "draw samples to a .npy or .csv file")):
        c = sub.add_parser(name, help=helptext, allow_abbrev=False)
        c.add_argument("--model", required=True, help="model file, or the output folder of `jkofast train`")
        c.add_argument("--device", default=None)
        c.add_argument("--seed", type=int, default=0)
        c.set_defaults(func=fn)
        if name in ("eval", "plot"):
            c.add_argument("--data", default=None, help="data set (default: the one the model was trained on, "
                           "its test split); a built-in name draws that set's test points, any other .npy/.csv "
                           "file is held-out data, scored (or plotted) whole")
            _add_data_root(c)
            c.add_argument("--n-test", type=_count(1), default=None,
                           help="built-in sets: test points drawn" + ("" if name == "eval" else
                                                                       "; and at most this many plotted (default 5,000)"))
    sub.add_parser("info", help="version, the torch it was built for, compiled backends, GPU",
                   allow_abbrev=False).set_defaults(func=cmd_info)
    sub.choices["eval"].add_argument("--steps", type=_count(1), nargs="+", default=None, help="RK4 steps per block")
    sub.choices["eval"].add_argument("--json", default=None, help="also write the numbers to this file")
    sub.choices["eval"].add_argument("--mmd-points", type=_count(0), default=10_000,
                                     help="samples and test points for the MMD (0: skip it)")
    sub.choices["plot"].add_argument("--out", required=True, help="image file: .png, .pdf or .svg")
    sub.choices["sample"].add_argument("--n", type=_count(1), default=10_000)
    sub.choices["sample"].add_argument("--steps", type=_count(1), default=None)
    sub.choices["sample"].add_argument("--out", required=True, help=".npy or .csv file")
    return p


class _StderrNotes(logging.Handler):
    """The ``jkofast`` logger's notes (progress.say) on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"jkofast: {record.getMessage()}", file=sys.stderr)


@contextlib.contextmanager
def _notes_on_stderr():
    """While a command runs, the ``jkofast`` logger's notes go to stderr, once (not also to a
    root handler the host process may have); afterwards the logger is as it was."""
    log = logging.getLogger("jkofast")
    before = (log.level, log.propagate)
    handler = _StderrNotes()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    formatted = warnings.formatwarning
    package = str(Path(__file__).resolve().parent) + os.sep

    def format_warning(message, category, filename, lineno, line=None):
        # jkofast's own warnings (lattice columns, the pure-torch fallback) as notes, not as a
        # Python source location and line (warn_user points past jkofast: here at runpy or the
        # console script): the command line's user did not write that code. (The
        # format, not the display: warnings recorded by catch_warnings are left alone.)
        if issubclass(category, JkofastWarning) or str(Path(filename).resolve()).startswith(package):
            return f"jkofast: warning: {message}\n"
        return formatted(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = formatted
        log.removeHandler(handler)
        log.level, log.propagate = before


def _rank0() -> bool:
    """Whether this process speaks for the command: always, except torchrun's ranks above 0
    (the same notes from every rank would only repeat)."""
    return os.environ.get("RANK", "0") == "0"


def _one_command_line() -> bool:
    """Whether every rank runs this same command line: one torchrun (one host) started them all."""
    return distributed.launched_local_world() == distributed.launched_world()


# How long a rank above 0 waits, with an error that rank 0 prints, before it prints the error
# itself and exits. torchrun stops every rank once one has exited with an error: a rank 0 stopped
# before it printed left no message at all (seen in 1 of 2 two-rank runs without a wait). When
# rank 0 exits first, torchrun ends the wait, so a long one costs nothing; it is long because the
# ranks can meet an error some seconds apart (the option check runs as each rank starts).
RANK0_PRINTS_WITHIN_S = 20.0


def _rank0_had_time_to_print() -> bool:
    """Wait RANK0_PRINTS_WITHIN_S; False if stopped meanwhile (torchrun's SIGTERM once rank 0
    has exited, Ctrl-C): the rank then leaves quietly."""
    try:
        time.sleep(RANK0_PRINTS_WITHIN_S)
    except KeyboardInterrupt:  # (_Terminated too: SIGTERM where _sigterm_raises is active)
        return False
    return True


def _print_error(exc, more: str = "") -> None:
    """``error: ...`` on stderr. Under torchrun an error that every rank raises alike (an option
    checked, rank 0's checkpoint error sent to all: distributed.raised_on_every_rank) is printed
    by rank 0 alone (ranks above 0 print it too only if rank 0 has not ended the run after
    RANK0_PRINTS_WITHIN_S), and any other by the rank that raised it, named: one rank's own
    failure (a file missing on its host, its GPU out of memory) is never hidden behind rank 0's."""
    world, rank = distributed.launched_world(), os.environ.get("RANK", "?")
    text, label = f"{exc}{more}", f"rank {rank} of {world}"
    if world == 1 or (distributed.is_raised_on_every_rank(exc) and _rank0()):
        print(f"error: {text}", file=sys.stderr)
    elif distributed.is_raised_on_every_rank(exc) and not _rank0_had_time_to_print():
        return
    elif text.startswith(label):  # a DistributedError names its rank already
        print(f"error: {text}", file=sys.stderr)
    else:
        print(f"error ({label}): {text}", file=sys.stderr)


def _note(message: str) -> None:
    if _rank0():
        print(f"jkofast: note: {message}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler, torchrun's teardown) as an exception where the
    program is, so that the same cleanup runs as for Ctrl-C: the scratch folder of pushed samples
    is deleted and a checkpoint being written is not left half-written."""


@contextlib.contextmanager
def _sigterm_raises():
    """While a command runs in the main thread, SIGTERM raises :class:`_Terminated`."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    def terminated(signum, frame):
        raise _Terminated()

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _how_to_resume(args) -> str:
    """What the message of an interrupted command says about resuming it."""
    if args.command != "train":
        return ""
    if not (Path(args.out).expanduser() / CHECKPOINT_FILE).exists():
        return f"; {args.out} holds no checkpoint yet: the command starts from the beginning"
    again = "the same command without --restart" if args.restart else "the same command"
    return f"; the last checkpoint in {args.out} is kept: {again} resumes from it"


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR on it; where
    poll is missing, as on Windows, the answer is no and the error is raised)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _notes_on_stderr(), _sigterm_raises():  # notes with --no-progress too: a run that stopped early says so
            code = args.func(args)
        sys.stdout.flush()  # a pipe's reader that went away shows here, in the handler below, not at exit
        return code
    except (CheckpointError, DistributedError, FileNotFoundError, FloatingPointError, ImportError, ValueError,
            TypeError) as exc:
        _print_error(exc)
        return 2
    except KeyboardInterrupt as exc:
        stopped = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if _rank0():  # under torchrun every rank is stopped: one says so
            print(f"\n{stopped}{_how_to_resume(args)}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe (a worker's, a socket's) broke: a real failure
            raise
        # ``jkofast eval ... | head``: not an error of ours. Point stdout at devnull so the
        # interpreter's final flush does not raise again (Python docs, signal: SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a full disk, a permission, a path that is a file: the message names it
        _print_error(exc)
        return 1
    except (torch.OutOfMemoryError, MemoryError) as exc:
        hint = "\n(a smaller --batch or --hidden needs less memory)" if args.command == "train" else ""
        _print_error(str(exc) or "out of memory", hint)
        return 1
    except SystemExit as exc:
        if isinstance(exc.code, str):  # one of our refusals ("error: ..."): as the others, status 2 (named by rank)
            _print_error(exc.code.removeprefix("error: "))
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
