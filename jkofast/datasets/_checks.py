"""Argument checks shared by the data loaders (errors name the argument and what came)."""
from __future__ import annotations

import numpy as np


def check_count(value, name: str) -> int:
    """A sample count: an integer (Python or numpy, not bool) >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def float_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy floating dtype, or a ValueError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be a numpy floating dtype, got {dtype!r}") from e
    if dt.kind != "f":
        raise ValueError(f"dtype must be a numpy floating dtype (e.g. np.float32), got {dt}")
    return dt
