"""Real data sets that ship offline with scikit-learn: ``patches``, ``digits``, ``breast-cancer``,
``wine``. scikit-learn is an optional dependency (``pip install 'jkofast[data]'``), imported
only when one of these is asked for.

Convention (the one the papers' tables use): the arrays are returned in the space where the
NLL is reported, so ``flow.log_prob`` on them gives comparable nats with no correction:

* ``digits``, ``breast-cancer``, ``wine``: standardized per column by the training split's mean
  and std (ddof 1, the same statistics ``jkofast.train`` computes, so the flow's own
  standardization is then the identity up to rounding);
* ``patches``: MAF's BSDS300 units (pixel values in [0, 1] with the patch mean removed, not
  standardized), as the BSDS300 numbers are reported.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_count, float_dtype
from ._optional import require
from .files import split
from .patches import patches

__all__ = ["load", "REAL_NAMES", "real_name", "PATCH_SIZES"]

REAL_NAMES: tuple[str, ...] = ("patches", "digits", "breast-cancer", "wine")
PATCH_SIZES = {"n_train": 50_000, "n_val": 5_000, "n_test": 20_000}  # defaults of load("patches")
_SPLIT_SEED = 0  # the row split of the fixed-size sets does not depend on ``seed``


def real_name(name) -> str | None:
    """The canonical built-in real set name for ``name`` (case-insensitive, ``_`` read as ``-``)."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("_", "-")
    return {"breastcancer": "breast-cancer"}.get(key, key) if key in (*REAL_NAMES, "breastcancer") else None


def _sklearn_table(key: str) -> np.ndarray:
    sk = require("sklearn.datasets", package="scikit-learn", purpose=f"the built-in data set {key!r}", extra="data")
    loader = {"digits": sk.load_digits, "breast-cancer": sk.load_breast_cancer, "wine": sk.load_wine}[key]
    return np.asarray(loader().data, dtype=np.float64)


def load(name: str, seed=0, *, n_train: int | None = None, n_val: int | None = None,
         n_test: int | None = None, dtype=np.float32):
    """Train / validation / test arrays of a built-in real data set (needs scikit-learn).

    ======================  ===  ======================  =========================================
    name                    d    train / val / test      source
    ======================  ===  ======================  =========================================
    ``"patches"``           63   50,000 / 5,000 / 20,000 8x8 grey patches of scikit-learn's two
                                 (by default)            sample photographs, made the MAF way
    ``"digits"``            64   1,439 / 179 / 179       scikit-learn's 8x8 digits, dequantized
    ``"breast-cancer"``     30   457 / 56 / 56           Wisconsin diagnostic breast cancer
    ``"wine"``              13   144 / 17 / 17           UCI wine recognition
    ======================  ===  ======================  =========================================

    ``digits`` pixels (integers 0..16) get uniform noise U[0, 1) (dequantization). The three
    fixed-size sets are split 80 / 10 / 10 by a fixed permutation and standardized by the
    training split (ddof 1); ``patches`` stays in MAF's BSDS300 units (see patches.py for the
    tile split that keeps test patches from overlapping training patches).

    Arguments:
        name: one of :data:`REAL_NAMES` (case-insensitive; ``breast_cancer`` works too).
        seed: an int, ``None`` or a ``np.random.SeedSequence``: drives the dequantization noise
            and the patch positions. The splits themselves (rows, image tiles) are fixed.
        n_train, n_val, n_test: patch counts for ``"patches"`` (defaults above); the other sets
            have a fixed size and reject them.
        dtype: floating dtype of the result (float32 by default); computed in float64.

    Returns:
        (train, val, test): arrays (N_train, d), (N_val, d), (N_test, d), finite.

    Raises:
        ValueError: unknown name (the valid ones are listed), or counts for a fixed-size set.
        ImportError: scikit-learn is not installed (the message says how to install it).

    Examples:
        >>> train, val, test = load("wine")
        >>> train.shape, val.shape, test.shape
        ((144, 13), (17, 13), (17, 13))
        >>> load("patches", n_train=100, n_val=10, n_test=10)[0].shape
        (100, 63)
    """
    key = real_name(name)
    if key is None:
        raise ValueError(f"unknown built-in real data set {name!r}; must be one of {list(REAL_NAMES)}")
    dt = float_dtype(dtype)
    counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    if key == "patches":
        sizes = [check_count(PATCH_SIZES[k] if v is None else v, k) for k, v in counts.items()]
        out = patches(*sizes, seed=seed)
    else:
        given = [k for k, v in counts.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to 'patches'; {key!r} has a fixed size")
        x = _sklearn_table(key)
        if key == "digits":  # integer pixels: a continuous density needs them spread over [k, k + 1)
            x = x + np.random.default_rng(seed).random(x.shape)
        train, val, test = split(x, val_fraction=0.1, test_fraction=0.1, seed=_SPLIT_SEED)
        mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
        out = tuple((part - mu) / s for part in (train, val, test))
    return tuple(np.ascontiguousarray(a, dtype=dt) for a in out)
