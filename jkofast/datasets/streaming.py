"""Data read in chunks of rows, so that a data set larger than memory trains.

* :func:`open_npy` opens a ``.npy`` file through a memory map (``np.load(mmap_mode="r")``) and
  checks that it is a 2-D float array; nothing is read yet.
* :class:`Rows` is a read-only (N, d) table (a numpy array, a memory map, a tensor, or a seeded
  subset of one) read in chunks of about 1 MB. Chunks of a memory map are copied out and the
  pages released again, so the process's resident memory stays at a chunk, not the file.
* :func:`split_rows` cuts a table into train / validation / test without copying it: each row's
  part comes from a seeded uniform draw.
* ``Rows.chunks(rank=r, world=w, seed=s)`` yields only rank r's rows: the rows are taken in
  groups of w consecutive ones and each group is dealt out to the w ranks in a seeded random
  order, so the shards are disjoint, cover every row, differ in size by at most one row, and
  each spans the whole file (a sorted file still gives every rank a fair sample).
* :func:`scan` is the one pass over the data before training: finite check, mean and standard
  deviation, and a fingerprint, split over the ranks by blocks of chunks and merged in block
  order, so the result is the same for any number of processes.
"""
from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["open_npy", "Rows", "as_rows", "split_rows", "scan", "Summary", "CHUNK_BYTES"]

# Bytes per chunk read: sequential reads large enough for full disk speed, temporaries small
# enough that glibc's allocator (whose mmap threshold grows to the largest block freed) keeps
# only ~20 MB resident however large the file.
CHUNK_BYTES = 1 << 20
_SCAN_BLOCK = 64            # chunks per scan summary: what the ranks exchange stays ~1 KB per 64 MB
_SPLIT_BLOCK = 1 << 16      # rows per seeded block of split draws: fixed, so splits never depend on chunking
_DEAL_CELLS = 1 << 17       # (group, rank) cells per seeded block of shard permutations


def open_npy(path) -> np.memmap:
    """Open a ``.npy`` file of shape (N, d) as a read-only memory map, without reading the rows.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ``.npy`` array, not 2-D, empty, or not floating point (float16/32/64).

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((1000, 3), np.float32))
        >>> open_npy(path).shape
        (1000, 3)
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} does not exist (or is not a file)")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"could not read {str(p)!r} as a .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray):  # np.load returns an NpzFile for a zip archive
        raise ValueError(f"{str(p)!r} is not a single .npy array (an .npz archive?)")
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise ValueError(f"{str(p)!r} must hold a 2-D float array (rows, features), got shape {arr.shape} and "
                         f"dtype {arr.dtype}; convert it, e.g. np.save(path, a.reshape(len(a), -1).astype(np.float32))")
    if arr.size == 0:
        raise ValueError(f"data in {str(p)!r} is empty (shape {arr.shape}); need at least one row and one column")
    return arr


def _release(array) -> None:
    """Drop the pages of a memory map from this process's resident set (the page cache keeps
    them, so a re-read is cheap); a no-op for anything else."""
    mm, dontneed = getattr(array, "_mmap", None), getattr(mmap, "MADV_DONTNEED", None)
    if isinstance(mm, mmap.mmap) and dontneed is not None:  # Linux and macOS; elsewhere the OS decides
        mm.madvise(dontneed)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Rows:
    """A read-only table of rows (N, d), read chunk by chunk.

    Arguments:
        data: a numpy array (a memory map from :func:`open_npy` included) or a tensor, (N, d).
        name: what errors call it.
        keep: ``(seed, low, high)``: only the rows whose seeded uniform draw falls in
            [low, high), as :func:`split_rows` makes them; ``None`` keeps every row.
    """

    def __init__(self, data, name: str = "x", *, keep: tuple[int, float, float] | None = None) -> None:
        self.data, self.name, self.keep = data, name, keep
        self.dim = int(data.shape[1])
        self.dtype_name = _dtype_name(data.dtype)
        itemsize = data.dtype.itemsize
        self.chunk_rows = max(1, CHUNK_BYTES // (self.dim * itemsize))
        self._len: int | None = None
        self._draws: tuple[int, np.ndarray] | None = None

    @property
    def num_chunks(self) -> int:
        return -(-int(self.data.shape[0]) // self.chunk_rows)

    def __len__(self) -> int:
        if self._len is None:
            self._len = int(self.data.shape[0]) if self.keep is None else sum(
                int(self._kept(c).sum()) for c in range(self.num_chunks))
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes of the kept rows in their stored dtype."""
        return len(self) * self.dim * self.data.dtype.itemsize

    def _kept(self, c: int) -> np.ndarray:
        """Which rows of chunk c are in the table (boolean mask)."""
        a, b = c * self.chunk_rows, min((c + 1) * self.chunk_rows, int(self.data.shape[0]))
        if self.keep is None:
            return np.ones(b - a, bool)
        seed, low, high = self.keep
        u = np.concatenate([self._block_draws(seed, blk)[max(a, blk * _SPLIT_BLOCK) - blk * _SPLIT_BLOCK:
                                                          min(b, (blk + 1) * _SPLIT_BLOCK) - blk * _SPLIT_BLOCK]
                            for blk in range(a // _SPLIT_BLOCK, (b - 1) // _SPLIT_BLOCK + 1)])
        return (u >= low) & (u < high)

    def _block_draws(self, seed: int, blk: int) -> np.ndarray:
        if self._draws is None or self._draws[0] != blk:
            self._draws = (blk, np.random.default_rng([seed, blk]).random(_SPLIT_BLOCK))
        return self._draws[1]

    def base_index(self, c: int, i: int) -> int:
        """The row of ``data`` that is the i-th kept row of chunk c."""
        return c * self.chunk_rows + (i if self.keep is None else int(np.flatnonzero(self._kept(c))[i]))

    def read_chunk(self, c: int) -> Tensor:
        """Chunk c's kept rows as a tensor in the stored dtype (a copy for a memory map)."""
        a, b = c * self.chunk_rows, min((c + 1) * self.chunk_rows, int(self.data.shape[0]))
        keep = self._kept(c)
        if isinstance(self.data, Tensor):
            block = self.data[a:b].detach()
            return block if keep.all() else block[torch.from_numpy(keep).to(block.device)]
        block = np.asarray(self.data[a:b])
        if not keep.all():
            block = block[keep]              # fancy indexing copies
        elif isinstance(self.data, np.memmap):
            block = block.copy()             # own the rows before the pages are released
        _release(self.data)
        if not block.dtype.isnative:  # a big-endian file: torch reads native byte order only
            block = block.astype(block.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(block))

    def chunks(self, *, rank: int = 0, world: int = 1, seed: int = 0) -> Iterator[tuple[int, Tensor]]:
        """``(chunk index, rows)`` in order; ``rank``/``world``/``seed`` keep only that rank's
        shard (see the module docstring)."""
        position, deal = 0, _Deal(seed, world)
        for c in range(self.num_chunks):
            rows = self.read_chunk(c)
            if world > 1:
                mine = deal.owner(np.arange(position, position + rows.shape[0])) == rank
                position += rows.shape[0]
                rows = rows[torch.from_numpy(mine).to(rows.device)]
            yield c, rows

    def head(self, n: int) -> np.ndarray:
        """The first n kept rows as a numpy array (for plots)."""
        parts, have = [], 0
        for _, rows in self.chunks():
            parts.append(rows[:n - have].cpu().numpy())
            have += parts[-1].shape[0]
            if have >= n:
                break
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


class _Deal:
    """The rank owning the row at each position: rows in groups of ``world``, each group dealt
    to the ranks in a random order, drawn per block of groups from the seed."""

    def __init__(self, seed: int, world: int) -> None:
        self.seed, self.world = seed, world
        self.groups = max(1, _DEAL_CELLS // world)
        self._cache: tuple[int, np.ndarray] | None = None

    def _orders(self, blk: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != blk:
            rng = np.random.default_rng([self.seed, self.world, blk])
            self._cache = (blk, rng.random((self.groups, self.world)).argsort(axis=1))
        return self._cache[1]

    def owner(self, positions: np.ndarray) -> np.ndarray:
        group, slot = positions // self.world, positions % self.world
        out = np.empty(positions.shape, np.int64)
        blocks = group // self.groups
        for blk in np.unique(blocks):
            sel = blocks == blk
            out[sel] = self._orders(int(blk))[group[sel] - blk * self.groups, slot[sel]]
        return out


def as_rows(x, name: str, dim: int | None = None) -> Rows:
    """Check user data and wrap it: a numpy array or memory map, a tensor, a path of a ``.npy``
    file (opened with :func:`open_npy`), or :class:`Rows`; 2-D, numeric, non-empty."""
    if isinstance(x, (str, os.PathLike)):
        x = open_npy(x)
    if isinstance(x, Rows):
        rows = x
    elif isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        rows = None
    elif isinstance(x, Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got unsupported dtype {x.dtype}")
        rows = None
    else:
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor of shape (N, d), or the path of a .npy "
                        f"file, got {type(x).__name__}")
    if rows is None:
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (N, d), got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); at least one row and one column are needed")
        rows = Rows(x, name)
    if dim is not None and rows.dim != dim:
        raise ValueError(f"{name} must have {dim} columns (the model's dimension), got {rows.dim}")
    if len(rows) == 0:
        raise ValueError(f"{name} is empty (0 of the {int(rows.data.shape[0])} rows are in its split); at least "
                         "one row is needed")
    rows.name = name
    return rows


def split_rows(data, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0):
    """Train / validation / test views of ``data`` (an array or memory map), nothing copied.

    Each row goes to test with probability ``test_fraction``, to validation with
    ``val_fraction`` and to training otherwise, by a uniform draw seeded by ``seed`` and the
    row's block: the same seed gives the same split, and the parts are disjoint and cover the
    data. (Unlike :func:`~jkofast.datasets.split`, the part sizes are random around their
    fractions; that is what lets the split be made without a permutation of all N rows.)

    Examples:
        >>> train, val, test = split_rows(np.zeros((10_000, 2)), seed=0)
        >>> len(train) + len(val) + len(test), 700 < len(test) < 1300
        (10000, True)
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1, got "
                         f"{val_fraction} and {test_fraction}")
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    cuts = (0.0, test_fraction, test_fraction + val_fraction, 1.0)
    test, val, train = (Rows(data, name, keep=(seed, lo, hi))
                        for name, lo, hi in zip(("test", "val", "x"), cuts[:-1], cuts[1:]))
    return train, val, test


@dataclass
class Summary:
    """What :func:`scan` found: row count, per-column mean and standard deviation (float64,
    ddof 1) and the fingerprint (sha256 hex)."""
    n: int
    mean: np.ndarray
    std: np.ndarray
    fingerprint: str


def _chunk_summary(rows: Tensor) -> tuple:
    # In place where possible: this runs on every chunk of a file that may not fit in memory,
    # and each full-size temporary adds to the resident set the allocator keeps.
    x = rows.to(torch.float64, copy=True)  # a copy even for float64: rows may be the caller's array
    finite = torch.isfinite(x).all(dim=1)
    bad = int(x.shape[0] - finite.sum())
    first_bad = int((~finite).nonzero()[0, 0]) if bad else -1
    if bad:
        x = x[finite]
    mean = x.mean(0) if x.shape[0] else x.new_zeros(x.shape[1])
    m2 = x.sub_(mean).square_().sum(0)
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(rows.cpu().numpy())).cast("B")).digest()
    return x.shape[0], mean.cpu().numpy(), m2.cpu().numpy(), digest, bad, first_bad


def _merge(into: list, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Add a part (n, mean, M2) to the running [n, mean, M2]: Chan et al.'s pairwise update."""
    if n:
        delta, total = mean - into[1], into[0] + n
        into[:] = [total, into[1] + delta * (n / total), into[2] + m2 + delta ** 2 * (into[0] * n / total)]


def _block_summary(rows: Rows, b: int) -> tuple:
    """Chunks b * _SCAN_BLOCK ... merged in order: (b, n, mean, M2, digest, bad rows, first bad row)."""
    moments, digest, bad, first = [0, np.zeros(rows.dim), np.zeros(rows.dim)], hashlib.sha256(), 0, -1
    for c in range(b * _SCAN_BLOCK, min((b + 1) * _SCAN_BLOCK, rows.num_chunks)):
        n, mean, m2, chunk_digest, chunk_bad, chunk_first = _chunk_summary(rows.read_chunk(c))
        _merge(moments, n, mean, m2)
        digest.update(chunk_digest)
        if chunk_bad and first < 0:
            first = rows.base_index(c, chunk_first)
        bad += chunk_bad
    return b, *moments, digest.digest(), bad, first


def scan(rows: Rows, dist=None) -> Summary:
    """One pass over ``rows``: refuse NaN/inf (count and first row), and return their
    :class:`Summary`. Under a process group each rank reads every world-th block of chunks and
    the block results are merged in block order on every rank, so every rank, and any number
    of ranks, gets the same numbers."""
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    blocks = -(-rows.num_chunks // _SCAN_BLOCK)
    mine = [_block_summary(rows, b) for b in range(rank, blocks, world)]
    parts = sorted((p for part in (dist.gather(mine, f"scanning {rows.name}") if dist else [mine]) for p in part),
                   key=lambda p: p[0])
    digest = hashlib.sha256(f"{(len(rows), rows.dim)}{rows.dtype_name}".encode())
    moments, bad, first = [0, np.zeros(rows.dim), np.zeros(rows.dim)], 0, -1
    for _, n, mean, m2, block_digest, block_bad, block_first in parts:
        _merge(moments, n, mean, m2)
        digest.update(block_digest)
        bad += block_bad
        first = block_first if first < 0 else first
    if bad:
        raise ValueError(f"{rows.name} has {bad} row(s) with NaN or inf values (first: row {first})")
    n, mean, m2 = moments
    std = np.sqrt(m2 / (n - 1)) if n > 1 else np.full(rows.dim, np.nan)
    return Summary(n, mean, std, digest.hexdigest())
