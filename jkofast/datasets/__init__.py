"""Data for jkofast: the 2-D toy densities of FFJORD and loaders for user files.

Everything here is plain numpy (float32 by default) and seeded through
``np.random.default_rng``; the global numpy RNG is never touched::

    x = jkofast.datasets.toy("moons", 10_000, seed=0)           # (10000, 2) float32
    train, val, test = jkofast.datasets.get("8gaussians")       # three independent draws
    train, val, test = jkofast.datasets.get("data/power.npy")   # load_array + split
    x = jkofast.datasets.open_npy("big.npy")                     # memory map, read in chunks (streaming.py)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import SUFFIXES, load_array, split
from .streaming import open_npy, split_rows
from .toy import TOY_NAMES, canonical_name, toy

__all__ = ["toy", "TOY_NAMES", "load_array", "split", "get", "open_npy", "split_rows"]


def _check_size(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def get(name_or_path, n_train: int = 50_000, n_val: int = 5_000, n_test: int = 20_000, seed=0, *,
        val_fraction: float = 0.1, test_fraction: float = 0.1):
    """Train / validation / test arrays for a toy density or a data file.

    Arguments:
        name_or_path: a toy name or alias (see :data:`TOY_NAMES`; checked first), or a path
            (``str`` / ``os.PathLike``) to an existing ``.npy`` or ``.csv`` file.
        n_train, n_val, n_test: sample counts (integers >= 1) for a toy density; ignored for
            a file.
        seed: an int, ``None`` or a ``np.random.SeedSequence``. For a toy density the three splits
            come from independent child seeds (``np.random.SeedSequence(seed).spawn(3)``),
            so they are different draws; for a file it seeds the shuffle of :func:`split`.
        val_fraction, test_fraction: split fractions for a file (see :func:`split`); ignored
            for a toy density.

    Returns:
        (train, val, test): toy: float32 arrays (n_train, 2), (n_val, 2), (n_test, 2);
        file: arrays (N_train, d), (N_val, d), (N_test, d) as returned by :func:`split`.

    Raises:
        ValueError: ``name_or_path`` is neither a toy name nor an existing file (the message
            lists the toy names), or any error of :func:`load_array` / :func:`split`.
    """
    key = canonical_name(name_or_path)
    if key is not None:
        sizes = [_check_size(v, k) for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test))]
        seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        # spawn() rather than seed, seed+1, seed+2: child streams are independent by design.
        return tuple(toy(key, n, seed=s) for n, s in zip(sizes, seeds.spawn(3)))
    if isinstance(name_or_path, (str, os.PathLike)) and Path(os.fspath(name_or_path)).is_file():
        return split(load_array(name_or_path), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    raise ValueError(f"unknown data set {name_or_path!r}: not a toy data set name and not an existing file; "
                     f"must be one of {list(TOY_NAMES)} or a path to a {' / '.join(SUFFIXES)} file")
