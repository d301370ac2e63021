"""Data for jkofast: 2-D toy densities, built-in real sets, the MAF tabular benchmarks from
the user's files, and loaders for any user file.

Everything here is plain numpy (float32 by default) and seeded through
``np.random.default_rng``; the global numpy RNG is never touched::

    x = jkofast.datasets.toy("moons", 10_000, seed=0)           # (10000, 2) float32
    train, val, test = jkofast.datasets.get("8gaussians")       # three independent draws
    train, val, test = jkofast.datasets.load("wine")            # built-in real set (scikit-learn)
    train, val, test = jkofast.datasets.load_tabular("power", "~/maf-data")   # MAF benchmark
    train, val, test = jkofast.datasets.get("data/power.npy")   # load_array + split
    x = jkofast.datasets.open_npy("big.npy")                     # memory map, read in chunks (streaming.py)

Real sets come back in the space where the papers report NLL (standardized; ``patches`` and
BSDS300 in MAF's pixel units), so ``flow.log_prob`` on them gives comparable nats.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._checks import check_count
from .builtin import REAL_NAMES, load, real_name
from .files import SUFFIXES, column_names, load_array, split
from .streaming import open_npy, split_rows
from .tabular import TABULAR_NAMES, load_tabular, tabular_name
from .toy import TOY_NAMES, canonical_name, toy

__all__ = ["toy", "TOY_NAMES", "load", "REAL_NAMES", "load_tabular", "TABULAR_NAMES", "load_array", "column_names",
           "split", "get", "builtin_name", "DATA_NAMES", "open_npy", "split_rows"]

DATA_NAMES: tuple[str, ...] = TOY_NAMES + REAL_NAMES + TABULAR_NAMES  # every name get() knows


def builtin_name(name) -> str | None:
    """The canonical name of a toy, built-in real or MAF tabular data set, else None."""
    return canonical_name(name) or real_name(name) or tabular_name(name)


def get(name_or_path, n_train: int = 50_000, n_val: int = 5_000, n_test: int = 20_000, seed=0, *,
        val_fraction: float = 0.1, test_fraction: float = 0.1, root=None, allow_pickle: bool = False):
    """Train / validation / test arrays for any data set jkofast knows, or a data file.

    Arguments:
        name_or_path: a toy name or alias (:data:`TOY_NAMES`), a built-in real set
            (:data:`REAL_NAMES`, via :func:`load`), a MAF benchmark (:data:`TABULAR_NAMES`, via
            :func:`load_tabular`; needs ``root``); names are checked first. Otherwise a path
            (``str`` / ``os.PathLike``) to an existing ``.npy`` or ``.csv`` file.
        n_train, n_val, n_test: sample counts (integers >= 1) for a toy density and for
            ``"patches"``; ignored for the fixed-size sets and for a file.
        seed: an int, ``None`` or a ``np.random.SeedSequence``. For a toy density the three splits
            come from independent child seeds (``np.random.SeedSequence(seed).spawn(3)``),
            so they are different draws; for a built-in real set see :func:`load`; for a file it
            seeds the shuffle of :func:`split`. The MAF benchmarks use their loaders' own seed.
        val_fraction, test_fraction: split fractions for a file (see :func:`split`); ignored
            otherwise.
        root, allow_pickle: for a MAF benchmark, see :func:`load_tabular`.

    Returns:
        (train, val, test): toy: float32 arrays (n_train, 2), (n_val, 2), (n_test, 2); real
        and MAF sets: float32 arrays (N_train, d), ...; file: arrays as returned by :func:`split`.

    Raises:
        ValueError: ``name_or_path`` is neither a known name nor an existing file (the message
            lists the names), a MAF name without ``root``, or any error of the loader.
    """
    key = canonical_name(name_or_path)
    if key is not None:
        sizes = [check_count(v, k) for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test))]
        seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        # spawn() rather than seed, seed+1, seed+2: child streams are independent by design.
        return tuple(toy(key, n, seed=s) for n, s in zip(sizes, seeds.spawn(3)))
    real = real_name(name_or_path)
    if real is not None:
        sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test} if real == "patches" else {}
        return load(real, seed, **sizes)
    tabular = tabular_name(name_or_path)
    if tabular is not None:
        if root is None:
            raise ValueError(f"the MAF data set {tabular!r} is read from your copy of its files: pass root= "
                             f"(command line: --data-root DIR), the folder holding {tabular}/...")
        return load_tabular(tabular, root, allow_pickle=allow_pickle)
    if isinstance(name_or_path, (str, os.PathLike)) and Path(os.fspath(name_or_path)).is_file():
        return split(load_array(name_or_path), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    raise ValueError(f"unknown data set {name_or_path!r}: not a data set name and not an existing file; "
                     f"must be one of {list(DATA_NAMES)} or a path to a {' / '.join(SUFFIXES)} file")
