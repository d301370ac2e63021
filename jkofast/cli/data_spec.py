"""The data a command line names: its spec (a built-in set, or a file with its size and time
stamp, memory-mapped or not), the split it loads, and the checks that a recorded file is
still the one the model was trained on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import datasets
from ..datasets.streaming import Rows, open_npy, split_rows
from ..jko_iflow_state import LOG_FILE
from .options import _flag
from .process import _note


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


def _what_sets_the_rows(spec: dict, out: Path) -> str:
    """For a run refused as trained on other data (its settings, --seed among them, are this
    command's): the data its log names, where that is not this command's, else what else chooses
    the command line's training rows."""
    name = spec["name"]
    try:
        theirs = json.loads((out / LOG_FILE).read_text())["data"]["name"]
    except (OSError, ValueError, KeyError, TypeError):  # (a run from before logs named their data)
        theirs = None
    if theirs is not None and theirs != name:
        return f"the run in {out} was trained on {theirs}, this command names {name}"
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


def _train_info(spec: dict) -> dict:
    """What the model records of its data: the spec, and a .csv header's column names."""
    names = datasets.column_names(spec["name"]) if spec.get("file_bytes") is not None else None
    return {"data": spec, **({"columns": names} if names else {})}


def _shape(data) -> tuple:
    return (len(data), data.dim) if isinstance(data, Rows) else data.shape
