"""Input checks shared by the public entry points. Errors name the argument, what was expected
and what came (no ``assert``: ``python -O`` strips those)."""
from __future__ import annotations

import collections
import numbers
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._warn import warn_user


def check_points(x, name: str, dim: int | None = None, *, like: nn.Module | None = None,
                 allow_empty: bool = True, allow_wider: bool = False, allow_narrower: bool = False) -> Tensor:
    """Check that ``x`` is a floating (B, dim) tensor matching ``like``'s dtype (or, with
    ``allow_wider`` / ``allow_narrower``, a wider / narrower float dtype, which the caller
    converts) and device."""
    # the model's first weight (or buffer, for a model without weights): its dtype and device
    p = None if like is None else next((t for t in (*like.parameters(), *like.buffers())), None)
    if not isinstance(x, Tensor):
        as_is = p is None or _array_dtype_fits(x, p.dtype, allow_wider, allow_narrower)
        wanted = "" if as_is else f", dtype={p.dtype}"
        hint = f" (convert it with torch.as_tensor({name}{wanted}))" if hasattr(x, "__array__") else ""
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, dim), got {type(x).__name__}{hint}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, dim), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (the model's dimension), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); at least one row is needed")
    if p is not None:
        if x.dtype != p.dtype and not _dtype_fits(x.dtype, p.dtype, allow_wider, allow_narrower):
            raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {p.dtype}; "
                            f"convert one of them (e.g. {name}.to({p.dtype}) or model.to({x.dtype}))")
        if x.device != p.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {p.device}; move one of them")
    return x


def _dtype_fits(dtype: torch.dtype, model: torch.dtype, allow_wider: bool, allow_narrower: bool) -> bool:
    bits, model_bits = torch.finfo(dtype).bits, torch.finfo(model).bits
    return dtype == model or (allow_wider and bits > model_bits) or (allow_narrower and bits < model_bits)


def _array_dtype_fits(x, model: torch.dtype, allow_wider: bool, allow_narrower: bool) -> bool:
    """An array of floats that torch.as_tensor(x) gives a dtype the check takes: its own, kept
    (a float64 array cast to a float32 model's dtype would lose what float64 data is kept for:
    README, Precision)."""
    try:
        kind = np.dtype(x.dtype)
    except (AttributeError, TypeError):
        return False
    if kind.kind != "f":
        return False
    try:
        dtype = torch.from_numpy(np.empty(0, kind)).dtype
    except TypeError:  # (a float numpy has that torch has not: float128)
        return False
    return _dtype_fits(dtype, model, allow_wider, allow_narrower)


def check_finite(x: Tensor, name: str) -> None:
    """Reject NaN/inf data with the count and the first bad row (a silent NaN poisons training)."""
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} has {int(bad.sum())} row(s) with NaN or inf values (first: row {first})")


SEED_LIMIT = 2 ** 62  # torch.manual_seed takes < 2^64; jko-flow seeds round k with seed + k


def check_seed(value, name: str = "seed") -> int:
    """A seed: an integer in [0, 2^62), refused here rather than as torch's 'Overflow when
    unpacking long long' after some training (jko-flow seeds round k with seed + k)."""
    value = check_positive_int(value, name, low=0)
    if value >= SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**62), got {value}")
    return value


def check_flag(value, name: str) -> bool:
    """True or False, nothing that merely reads as one ('no' is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_positive_int(value, name: str, low: int = 1) -> int:
    """An integer >= low (numpy's integers too) as a Python int; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def plain(value):
    """``value`` with numpy scalars and arrays turned into Python numbers and lists, inside dicts,
    lists and tuples (tensors are left as they are): what JSON and a checkpoint read back with
    ``weights_only=True`` can hold. A setting such as ``lr=np.logspace(...)[i]`` would otherwise
    train, then be written into files that cannot be read back."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float, complex)):
        return float(value) if isinstance(value, numbers.Real) else complex(value)  # Fraction, Decimal
    if isinstance(value, dict):
        # a plain dict (or OrderedDict, a state dict's type): a subclass's constructor may not take
        # pairs (Counter counts them, defaultdict wants a factory)
        kind = collections.OrderedDict if type(value) is collections.OrderedDict else dict
        return kind((k, plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return (tuple if isinstance(value, tuple) else list)(plain(v) for v in value)
    return value


def plain_fields(settings) -> None:
    """:func:`plain` on every field of a settings dataclass, in place (its ``__post_init__``)."""
    import dataclasses

    for f in dataclasses.fields(settings):
        setattr(settings, f.name, plain(getattr(settings, f.name)))


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"invalid {name} {value!r}; must be one of {sorted(choices)}")
    return value


def check_number(value, name: str, *, low: float = 0.0, strict: bool = True) -> float:
    """A real number > low (>= low with ``strict=False``); bools and strings are refused by type."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (value > low if strict else value >= low) or value != value:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a torch.device this process can use: a misspelt name, CUDA on a torch built
    without it, or an index past the last GPU is an error that says so (torch's own messages for
    these come from deep inside the first allocation, or name the checkpoint instead)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}={device!r} is not a device name (use 'cpu', 'cuda' or 'cuda:N')") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if not torch.backends.cuda.is_built() else
                   "torch finds no usable GPU (driver, or CUDA_VISIBLE_DEVICES)")
            raise ValueError(f"{name}={device!r} asks for a GPU, but {why} (torch {torch.__version__}); "
                             "use 'cpu', or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r} asks for Apple's MPS, which this machine or torch lacks; use 'cpu'")
    return dev


def dtype_name(dtype) -> str:
    """A settings' dtype as its name: ``torch.float64`` -> ``"float64"`` (strings pass through),
    so a config holds JSON- and checkpoint-safe values whichever form the caller used."""
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


def whole_number_columns(x: Tensor) -> Tensor:
    """Which columns of the (N, d) float table ``x`` hold whole numbers only, (d,) bool: the
    lattice test :func:`warn_lattice_columns` is given, on a chunk or on the whole table."""
    return (x == x.round()).all(0)


def warn_lattice_columns(whole, std, name: str = "x") -> None:
    """Warn about columns of whole numbers whose spacing (1) is not small next to their spread:
    a continuous density can pile its mass onto the lattice points, and its NLL then falls
    without bound (a Gaussian fit stays near the discrete entropy). Spacing under 5% of the
    standard deviation is left alone: such a column (counts, cents) is as good as continuous."""
    cols = [i for i, (w, s) in enumerate(zip(whole, std)) if w and 0 < s < 20.0]  # std 0: refused as constant
    if cols:
        warn_user(f"{name} column(s) {cols} hold whole numbers only, spaced 1 apart against a spread of "
                  f"{', '.join(f'{float(std[i]):.3g}' for i in cols)}: a flow's density can pile up on the "
                  "integers, and its NLL then means little; dequantize first (add uniform noise: "
                  "x + np.random.rand(*x.shape)), as the built-in digits set is")


def warn_fewer_rows_than_columns(n: int, d: int, name: str = "x") -> None:
    """Warn where the data has fewer rows than columns: most often an array passed transposed
    (samples as columns), which would train a d-dimensional flow on n points without a word."""
    if n < d:
        warn_user(f"{name} has {n} rows and {d} columns: a flow of dimension {d} fitted to {n} points. If your "
                  f"samples are the columns, pass {name.split(' (')[0]}.T")  # (x, not "x (my.npy)")


def check_folder(path, name: str) -> Path:
    """``path`` as a folder this process can create or write into: a file in its place or among
    its parents, or a folder without write permission, is an error that names it (rather than
    an OSError at the first checkpoint, perhaps hours into training). Creates nothing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder's path (str or os.PathLike), got {type(path).__name__} {path!r}")
    if not os.fspath(path).strip():  # (Path("") is the current folder)
        raise ValueError(f"{name} is empty; pass a folder")
    path = Path(path).expanduser()  # (~ made a folder named "~")
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is under {p}, which is a file"
                raise ValueError(f"{name} {path} {where}, not a folder; pass a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ValueError(f"{name} {path}: cannot write in {p} (no permission, or a read-only filesystem)")
            break
    return path


def check_standardization(n: int, constant, mean, std, dtype: torch.dtype) -> None:
    """Refuse a training set that cannot be standardized in the model's ``dtype``: fewer than 2
    rows, constant columns (min == max), and columns whose mean or std falls outside what the
    arithmetic or the dtype holds (values near 1e200 square to inf; near 1e-200 to 0; a float32
    model's scale must be a normal float32), naming the columns either way."""
    if n < 2:
        raise ValueError(f"need at least 2 training rows to standardize the data, got {n}")
    const = torch.as_tensor(constant).nonzero().flatten().tolist()
    if const:
        raise ValueError(f"training data column(s) {const} are constant: a density over them is degenerate; "
                         "drop them (or pass standardize=False and add noise)")
    mean, std = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (mean, std))
    held = std.to(dtype)
    tiny = torch.finfo(dtype).tiny
    bad = ~(torch.isfinite(mean) & torch.isfinite(std) & torch.isfinite(mean.to(dtype)) & torch.isfinite(held)
            & (held >= tiny))
    if bool(bad.any()):
        cols, kind = bad.nonzero().flatten().tolist(), str(dtype).removeprefix("torch.")
        seen = "; ".join(f"column {c}: mean {mean[c]:.3g}, std {std[c]:.3g}" for c in cols[:4])
        wider = " or train in float64 (dtype='float64', --dtype float64)" if dtype != torch.float64 and bool(
            (torch.isfinite(mean) & torch.isfinite(std) & (std > 0))[cols].all()) else ""
        raise ValueError(f"training data column(s) {cols} have a scale that {kind} cannot standardize ({seen}): "
                         f"rescale them (multiply by a power of ten){wider}")
