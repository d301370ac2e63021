"""This process's share of the training data, standardized and pushed through the finished blocks,
kept in memory or on disk.

JKO-iFlow trains block k on the data pushed through blocks 1..k-1. Each rank pushes only its own
shard, so the pushed points never move between processes. A :class:`MemoryShard` holds them as
tensors on the training device; a :class:`DiskShard` as a raw float file in a scratch folder,
memory-mapped for reading, for data that does not fit. :class:`ShardStore` decides which
(``pushed_storage="auto" | "memory" | "disk"``) and owns the scratch folder.

Rows are (points (n, d), logdet (n,) or None): the validation shard carries the log-determinant
accumulated through the blocks so far, stored on disk as a last column.
"""
from __future__ import annotations

import errno
import itertools
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .datasets.streaming import CHUNK_BYTES, Rows, _release
from ._precision import standardized
from .memory import available_bytes
from ._shuffled_write import bucket_count, write_shuffled
from .progress import progress_bar, say
from ._scratch import ScratchFolder, scratch_parent

__all__ = ["MemoryShard", "DiskShard", "ShardStore", "STORAGES"]

STORAGES = ("auto", "memory", "disk")
_PUSH_ROWS = 8192           # rows per push piece (metrics.CHUNK): bounds the tangent rows' memory
_WINDOW_BYTES = 1 << 20     # disk batches: contiguous windows of this size ...
_WINDOWS_MIXED = 8          # ... this many at a time, shuffled together (8 MB resident, twice while shuffled)
_SHUFFLE_STREAM = 0x5EED   # keeps the shard's shuffle apart from other draws from the run's seed
_BAR_CHUNKS = 64            # passes over at least this many chunks (64 MB from disk) show a progress bar

PushFn = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]  # (points, logdet) -> pushed


class MemoryShard:
    """Points (n, d) and optional logdet (n,) as tensors on the training device."""

    where = "memory"

    def __init__(self, points: Tensor, logdet: Tensor | None = None) -> None:
        self.points, self.logdet = points, logdet
        self.n, self.dim = points.shape

    @property
    def num_chunks(self) -> int:
        return -(-self.n // _PUSH_ROWS)

    def chunks(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(points, logdet or None) in consecutive row chunks, for pushing the shard through a
        block: ``num_chunks`` of them, in order."""
        for a in range(0, self.n, _PUSH_ROWS):
            yield self.points[a:a + _PUSH_ROWS], None if self.logdet is None else self.logdet[a:a + _PUSH_ROWS]

    def batches(self, batch: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Minibatches of points: epochs of a random permutation, the incomplete last batch of
        each epoch dropped."""
        batch = min(batch, self.n)
        while True:
            perm = torch.randperm(self.n, generator=generator, device=self.points.device)
            for i in range(0, self.n - batch + 1, batch):
                yield self.points[perm[i:i + batch]]

    def discard(self) -> None:
        """Let go of the points (the shard is not used again)."""
        self.points = self.logdet = None


class DiskShard:
    """Points (and logdet as a last column) in a raw float file of shape (n, d [+ 1]), read
    through a memory map in chunks whose pages are released after each read."""

    where = "disk"

    def __init__(self, path: Path, n: int, dim: int, has_logdet: bool, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.path, self.n, self.dim, self.has_logdet = path, n, dim, has_logdet
        self.dtype, self.device = dtype, device
        self.columns = dim + int(has_logdet)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        # np.memmap cannot map an empty file; an empty shard (more ranks than rows) reads nothing.
        self.table = np.memmap(path, np_dtype, "r", shape=(n, self.columns)) if n else None
        self.row_bytes = self.columns * np_dtype.itemsize

    def _rows(self, a: int, b: int) -> Tensor:
        block = np.array(self.table[a:b])
        _release(self.table)
        return torch.from_numpy(block)

    def _split(self, block: Tensor) -> tuple[Tensor, Tensor | None]:
        block = block.to(self.device)
        if not self.has_logdet:
            return block, None
        return block[:, :self.dim].contiguous(), block[:, self.dim].contiguous()

    @property
    def num_chunks(self) -> int:
        return -(-self.n // max(1, CHUNK_BYTES // self.row_bytes))

    def chunks(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(points, logdet or None) in consecutive row chunks of about ``CHUNK_BYTES`` read from
        the file, on the training device: ``num_chunks`` of them, in order."""
        step = max(1, CHUNK_BYTES // self.row_bytes)
        for a in range(0, self.n, step):
            yield self._split(self._rows(a, min(a + step, self.n)))

    def batches(self, batch: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Minibatches read as contiguous windows: each epoch visits the windows in a random
        order, ``_WINDOWS_MIXED`` at a time, and shuffles their rows together. Reads stay large
        and sequential; the batches are well mixed because a training shard's rows were written
        in a random order (:meth:`ShardStore.from_rows`), whatever the order of the data file."""
        batch = min(batch, self.n)
        # (a draw, not the generator's seed: a generator used again goes on to other batches,
        # as a memory shard's does)
        rng = np.random.default_rng(int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device)))
        window = max(1, _WINDOW_BYTES // self.row_bytes)
        starts = np.arange(0, self.n, window)
        pending = torch.empty(0, self.columns, dtype=self.dtype)
        while True:
            order = rng.permutation(len(starts))
            for i in range(0, len(order), _WINDOWS_MIXED):
                parts = [self._rows(s, min(s + window, self.n)) for s in starts[order[i:i + _WINDOWS_MIXED]]]
                mixed = torch.cat([pending, *parts])
                mixed = mixed[torch.from_numpy(rng.permutation(mixed.shape[0]))]
                full = mixed.shape[0] // batch * batch
                for j in range(0, full, batch):
                    yield self._split(mixed[j:j + batch])[0]
                pending = mixed[full:]

    def discard(self) -> None:
        """Close the memory map and delete the shard's file."""
        self.table = None
        self.path.unlink(missing_ok=True)


class ShardStore:
    """Where shards live: ``"memory"`` (the training device), ``"disk"`` (raw files in
    ``scratch``, default a new temporary folder, deleted by :meth:`close`), or ``"auto"``:
    memory when three copies of this rank's train and validation shards (the data, the pushed
    data, and the next push being written) take at most half of the free memory on the device
    divided among the processes of the host, disk otherwise."""

    def __init__(self, storage: str, shard_bytes: int, *, dtype: torch.dtype, device: torch.device,
                 rank: int = 0, local_world: int = 1, scratch: str | os.PathLike | None = None,
                 progress: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f"invalid pushed_storage {storage!r}; must be one of {list(STORAGES)}")
        if storage == "auto":
            fits = 3 * shard_bytes <= available_bytes(device) // (2 * max(1, local_world))
            storage = "memory" if fits else "disk"
        self.where, self.dtype, self.device, self.progress = storage, dtype, device, progress
        self.shard_bytes = shard_bytes
        self._scratch_parent, self._rank, self._folder = scratch, rank, None
        self._names = itertools.count()

    @property
    def disk_bytes_needed(self) -> int:
        """Scratch space this process needs at its peak on disk: three shards at once (the data,
        the pushed data, the next push being written)."""
        return 3 * self.shard_bytes

    def check_free_space(self, processes: int = 1) -> None:
        """Refuse, before any pass over the data, a scratch disk without room for ``processes``
        processes' peak (ValueError naming the folder, the free and the needed space)."""
        parent = scratch_parent(self._scratch_parent)
        existing = next((p for p in (parent, *parent.parents) if p.exists()), parent)
        free, need = shutil.disk_usage(existing).free, self.disk_bytes_needed * max(1, processes)
        if free < need:
            per = f" ({processes} processes on this host)" if processes > 1 else ""
            raise ValueError(f"the pushed samples go to disk under {parent}, which has {_gib(free)} free; they need "
                             f"about {_gib(need)}{per} (three copies of each process's shard). Free space, or pass "
                             "scratch_dir (--scratch-dir) on a larger disk")

    def _new_path(self) -> Path:
        if self._folder is None:
            self._folder = ScratchFolder(self._scratch_parent, self._rank)
            if self._folder.removed and self._rank == 0:
                say(f"removed {len(self._folder.removed)} scratch folder(s) left by runs that were killed: "
                    + ", ".join(str(p) for p in self._folder.removed), bars=False)
        return self._folder.path / f"shard{next(self._names)}.bin"

    def build(self, pieces: Iterator[tuple[Tensor, Tensor | None]], dim: int, has_logdet: bool, *,
              total: int = 0, desc: str = "", shuffle_seed: list[int] | None = None):
        """A shard of the (points, logdet) pieces, written as they come; a progress bar over
        ``total`` pieces when there are many (a pass over data that does not fit in memory).
        ``shuffle_seed``: a disk shard's rows are written in a random order drawn from it."""
        bar = progress_bar(total, desc, enabled=self.progress and total >= _BAR_CHUNKS)
        try:
            return self._build(_counted(pieces, bar), dim, has_logdet, shuffle_seed)
        finally:
            bar.close()

    def _build(self, pieces: Iterator[tuple[Tensor, Tensor | None]], dim: int, has_logdet: bool,
               shuffle_seed: list[int] | None = None):
        if self.where == "memory":
            points, logdets = [], []
            for p, ld in pieces:
                points.append(p.to(self.device, self.dtype))
                logdets.append(ld)
            pts = torch.cat(points) if points else torch.empty(0, dim, dtype=self.dtype, device=self.device)
            ld = (torch.cat(logdets) if logdets else pts.new_zeros(0)) if has_logdet else None
            return MemoryShard(pts, ld)
        path = self._new_path()
        blocks = (_host_block(p, ld, self.dtype) for p, ld in pieces)
        try:
            if shuffle_seed is not None:
                n = write_shuffled(blocks, path, np.random.default_rng(shuffle_seed), bucket_count(self.shard_bytes))
            else:
                n = 0
                with open(path, "wb") as fh:
                    for block in blocks:
                        block.tofile(fh)
                        n += block.shape[0]
        except OSError as exc:
            if not _disk_full(exc):
                raise
            raise OSError(f"could not write the pushed samples to {path.parent} ({exc}): the disk is full. "
                          "Free space, or pass scratch_dir (--scratch-dir) on a disk with room for "
                          f"about {_gib(self.disk_bytes_needed)} per process") from exc
        return DiskShard(path, n, dim, has_logdet, self.dtype, self.device)

    def from_rows(self, rows: Rows, loc: Tensor, scale: Tensor, *, rank: int, world: int, seed: int,
                  with_logdet: bool = False):
        """This rank's shard of ``rows``, standardized, u = (x - loc) / scale (a zero logdet
        column with ``with_logdet``). On disk, the training shard (no logdet) is written in a
        random row order (seeded by ``seed`` and ``rank``): its minibatches are read as contiguous
        windows, which must not follow the file's order (a sorted file). Every later push keeps
        that order."""
        def pieces():
            for _, x in rows.chunks(rank=rank, world=world, seed=seed):
                u = standardized(x.to(self.device), loc, scale)  # loc: the model's dtype and device
                yield u, (u.new_zeros(u.shape[0]) if with_logdet else None)
        shuffle = None if with_logdet else [seed, rank, _SHUFFLE_STREAM]
        return self.build(pieces(), rows.dim, with_logdet, total=rows.num_chunks,
                          desc=f"rank {rank}: sharding {rows.name}", shuffle_seed=shuffle)

    def map(self, shard, fn: PushFn, desc: str = "pushing"):
        """A new shard of ``fn(points, logdet)`` over ``shard``'s chunks (the push through a block)."""
        return self.build((fn(p, ld) for p, ld in shard.chunks()), shard.dim, shard_has_logdet(shard),
                          total=shard.num_chunks, desc=desc)

    def close(self) -> None:
        """Delete the scratch folder and every shard file in it."""
        if self._folder is not None:
            self._folder.remove()
            self._folder = None


def _disk_full(exc: OSError) -> bool:
    """No space or quota left; numpy's short write (no errno) says only "N requested and M written"."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and "requested and" in str(exc))


def _gib(n: int) -> str:
    return f"{max(n, 1) / 2**30:.2g} GiB"


def _host_block(points: Tensor, logdet: Tensor | None, dtype: torch.dtype) -> np.ndarray:
    block = points if logdet is None else torch.cat([points, logdet[:, None]], 1)
    return block.detach().to("cpu", dtype).numpy()


def _counted(pieces, bar):
    for piece in pieces:
        yield piece
        bar.update(1)


def shard_has_logdet(shard) -> bool:
    return shard.logdet is not None if isinstance(shard, MemoryShard) else shard.has_logdet
