"""The precision data is standardized in: its own where that is wider than the model's.

u = (x - loc) / scale is computed in the wider of the two dtypes and then rounded to the model's:
rounding x first would lose a column with a large offset and a small spread (float32 steps by 8
at 1e8, so 1e8 +/- 1 would become three values). The paths from data to the blocks
use it: :meth:`jkofast.Flow.standardize`, the sharded data (shard.py), evaluation; ``train``'s
in-memory path reads the data as float64 (for its statistics), which is never narrower.
"""
from __future__ import annotations

import torch
from torch import Tensor


def data_dtype(x: Tensor, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype to keep ``x`` in until it is standardized: the wider of its own and the
    model's; float64 for integer data (which float32 would round above 2**24)."""
    return torch.promote_types(x.dtype, model_dtype) if x.is_floating_point() else torch.float64


def standardized(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """(x - loc) / scale in :func:`data_dtype`, rounded to ``loc``'s dtype (x on loc's device)."""
    wide = data_dtype(x, loc.dtype)
    return ((x.to(wide) - loc.to(wide)) / scale.to(wide)).to(loc.dtype)
