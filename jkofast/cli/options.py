"""The command line's options: the tables of train's flags that go to train() (what each does,
for --help; their defaults and fixed choices), the checks that name an option as its flag,
--device checked, and the argparse type of the counts."""
from __future__ import annotations

import argparse

import torch

from .._checks import check_device
from ..train import methods_taking, option_defaults, option_names


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
    "hidden": "width of each block's MLP", "layers": "hidden layers of each block's MLP",
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
    from ..divergence import DIVERGENCE_METHODS
    from ..interpolants import INTERPOLANTS
    from ..jko_flow_config import INITS
    from ..jko_iflow_config import SELECT_BLOCKS
    from ..jko_loss import TRANSPORT_COSTS
    from ..reference import ACTIVATIONS, TABLEAUS
    from ..shard import STORAGES
    return {"activation": sorted(ACTIVATIONS), "divergence": DIVERGENCE_METHODS, "dtype": ("float32", "float64"),
            "tableau": sorted(TABLEAUS), "transport": TRANSPORT_COSTS, "pushed_storage": STORAGES,
            "select_blocks": SELECT_BLOCKS, "init": INITS, "interpolant": sorted(INTERPOLANTS)}


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
        owners = "; ".join(f"{flag}: {', '.join(methods_taking(k))}"
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


def _train_options(args) -> dict:
    """train()'s keyword options from the command line: the flags given, and the seed."""
    options = {k: getattr(args, k) for k in [*_TRAIN_OPTIONS, *_METHOD_OPTIONS] if getattr(args, k) is not None}
    return {**options, "seed": args.seed}


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
