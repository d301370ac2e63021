"""This rank's data as the blocks of a JKO-iFlow run see it: block k trains on the data pushed
through blocks 1..k-1.

:class:`PushedData` keeps the standardized shards (the data itself, kept all run), the shards
pushed through the finished blocks (replaced, and their files deleted, as training moves on),
and makes new ones with the run's :class:`~jkofast.shard.ShardStore` (memory or disk). Every
number it returns (Ter(k), validation NLL, block movements) is a sum over all ranks' rows, so
every rank takes the same decisions.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .distributed import Dist
from .metrics import push, standard_normal_nll
from .shard import ShardStore

__all__ = ["Pushed", "PushedData"]

# (points before, points after, logdet after) -> per-chunk sums, 0-d tensors
Measure = Callable[[Tensor, Tensor, Tensor | None], tuple]


class Pushed(NamedTuple):
    """This rank's data pushed through blocks 1..k: what block k + 1 trains on, and the
    validation points with their log-det so far."""
    k: int
    train: object          # a shard (shard.py)
    val: object | None


class PushedData:
    """The pushed shards of one rank (see the module docstring)."""

    def __init__(self, flow, train, val, *, store: ShardStore, dist: Dist, backend: str = "auto") -> None:
        self.flow, self.train, self.val = flow, train, val
        self.store, self.dist, self.backend = store, dist, backend
        self.current: Pushed | None = None

    def _push(self, shard, blocks: slice, *, logdet: bool = False, measure: Measure | None = None,
              what: str = "a reduction"):
        """A new shard: ``shard`` pushed through ``flow.blocks[blocks]`` (adding to its logdet
        with ``logdet``), and the sums of ``measure`` over all chunks of all ranks."""
        # Python floats, not tensors: a small tensor kept from each chunk would be carved out of
        # the chunk's freed temporaries, and the heap would grow by a chunk per chunk.
        totals: list[float] = []

        def step(u: Tensor, ld: Tensor | None):
            y, d = push(self.flow, u, blocks=blocks, divergence="exact" if logdet else None, backend=self.backend)
            ld = ld + d if logdet else ld
            if measure is not None:
                sums = [float(v) for v in measure(u, y, ld)]
                totals[:] = sums if not totals else [a + b for a, b in zip(totals, sums)]
            return y, ld

        with torch.no_grad():
            out = self.store.map(shard, step, desc=f"pushing through blocks {blocks.start + 1}-{blocks.stop}")
            if measure is not None and not totals:  # an empty shard (more ranks than rows) adds zeros
                empty = torch.empty(0, shard.dim, dtype=self.flow.loc.dtype, device=self.flow.loc.device)
                totals = [float(v) for v in measure(empty, empty, empty[:, 0])]
        if measure is None:
            return out, []
        return out, self.dist.sum(torch.tensor(totals, dtype=torch.float64), what).tolist()

    def _drop(self, shard) -> None:
        """Delete a pushed shard that is no longer needed (never the data itself)."""
        if shard is not None and shard is not self.train and shard is not self.val:
            shard.discard()

    def _replace(self, pushed: Pushed | None) -> None:
        if self.current is not None:
            for old, new in ((self.current.train, pushed and pushed.train), (self.current.val, pushed and pushed.val)):
                if old is not new:
                    self._drop(old)
        self.current = pushed

    def through(self, k: int) -> Pushed:
        """The data pushed through the first k blocks: carried forward from the last block, or
        recomputed (after a resume, or after the blocks changed)."""
        if self.current is None or self.current.k != k:
            first = slice(0, k)
            x = self._push(self.train, first)[0] if k else self.train
            v = None if self.val is None else self._push(self.val, first, logdet=True)[0] if k else self.val
            self._replace(Pushed(k, x, v))
        return self.current

    def past(self, k: int) -> dict:
        """Push the data on through the just-trained block k (k + 1 blocks done); returns its log
        entries: ``ter``, E|x - T_k x|^2 / E|T_k x|^2 over all rows, and with validation data the
        mean NLL of the standardized validation points, ``val_nll_standardized``."""
        x, v = self.through(k).train, self.current.val
        block = slice(k, k + 1)
        ter = lambda u, y, ld: ((y - u).square().sum(), y.square().sum())  # noqa: E731
        y, (moved, size) = self._push(x, block, measure=ter, what="computing Ter(k)")
        entry = {"ter": moved / size}
        if v is not None:
            nll = lambda u, y, ld: (standard_normal_nll(y, ld).double().sum(), torch.tensor(float(y.shape[0])))  # noqa: E731
            v, (total, count) = self._push(v, block, logdet=True, measure=nll, what="the validation NLL")
            entry["val_nll_standardized"] = total / count
        self._replace(Pushed(k + 1, y, v))
        return entry

    def movements(self) -> list[float]:
        """Root mean square distance each block moves the data, over all rows (the input of the
        adaptive time reparametrization)."""
        x, out = self.train, []
        moved = lambda u, y, ld: ((y - u).square().sum(), torch.tensor(float(u.shape[0])))  # noqa: E731
        for k in range(self.flow.num_blocks):
            y, (total, count) = self._push(x, slice(k, k + 1), measure=moved, what="measuring the block movements")
            out.append(math.sqrt(total / count))
            self._drop(x)
            x = y
        self._drop(x)
        return out

    def invalidate(self) -> None:
        """The blocks changed: forget (and delete) what was pushed through them."""
        self._replace(None)
