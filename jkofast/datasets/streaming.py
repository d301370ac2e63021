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

The one pass over the data before training (checks, statistics, fingerprint) is scan.py.
"""
from __future__ import annotations

import copy
import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .files import check_npy_header

__all__ = ["open_npy", "Rows", "as_rows", "split_rows", "CHUNK_BYTES"]

# Bytes per chunk read: sequential reads large enough for full disk speed, temporaries small
# enough that glibc's allocator (whose mmap threshold grows to the largest block freed) keeps
# only ~20 MB resident however large the file.
CHUNK_BYTES = 1 << 20
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
    check_npy_header(p)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"could not read {str(p)!r} as a .npy array: {exc}") from exc
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise ValueError(f"{str(p)!r} must hold a 2-D float array (rows, features), got shape {arr.shape} and "
                         f"dtype {arr.dtype}; convert it, e.g. np.save(path, a.reshape(len(a), -1).astype(np.float64)) "
                         f"(float32 halves the file but holds integers exactly only up to 2^24)")
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
    def label(self) -> str:
        """The name, with the file a memory map reads, for messages: ``x (its split of 'big.npy')``."""
        filename = getattr(self.data, "filename", None)
        if filename is None:
            return self.name
        return f"{self.name} ({'its split of' if self.keep is not None else 'rows of'} {str(filename)!r})"

    @property
    def num_chunks(self) -> int:
        return -(-int(self.data.shape[0]) // self.chunk_rows)

    def __len__(self) -> int:
        if self._len is None:
            self._len = int(self.data.shape[0]) if self.keep is None else sum(
                int(self._kept(c).sum()) for c in range(self.num_chunks))
        return self._len

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

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """A seeded uniform random subset of min(n, len) kept rows, in their order here, as a
        numpy array: one streamed pass, stopping after the last pick (for plots and the MMD,
        where the first rows of a file, perhaps sorted or grouped, would not represent it)."""
        total = len(self)
        n = min(int(n), total)
        picks = seeded_picks(total, n, seed)
        parts, start = [], 0
        for _, rows in self.chunks():
            a, b = np.searchsorted(picks, [start, start + rows.shape[0]])
            if b > a:
                parts.append(rows[torch.from_numpy(picks[a:b] - start)].cpu().numpy())
            start += rows.shape[0]
            if b == n:
                break
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

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


def seeded_picks(total: int, n: int, seed: int) -> np.ndarray:
    """n distinct row indices of ``total``, drawn uniformly by ``seed``, in increasing order."""
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def as_rows(x, name: str, dim: int | None = None) -> Rows:
    """Check user data and wrap it: a numpy array or memory map, a tensor, a path of a ``.npy``
    file (opened with :func:`open_npy`) or of a ``.csv`` file (read whole:
    :func:`~jkofast.datasets.load_array`), a table with ``to_numpy()`` (a pandas DataFrame), or
    :class:`Rows` (a shallow copy, named ``name``: the same rows); 2-D, numeric, non-empty."""
    x = table_or_path_as_array(x)
    if isinstance(x, (str, os.PathLike)):
        x = open_npy(x)
    if isinstance(x, Rows):
        rows = copy.copy(x)  # named below for this caller's messages; the caller's table keeps its name
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
                        f"or .csv file, got {type(x).__name__}")
    if rows is None:
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (N, d), got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); at least one row and one column are needed")
        rows = Rows(x, name)
    if dim is not None and rows.dim != dim:
        raise ValueError(f"{name} must have {dim} columns (the model's dimension), got {rows.dim}")
    rows.name = name
    if len(rows) == 0:
        total = int(rows.data.shape[0])
        transposed = (f"; the file holds {total} rows of {rows.dim} columns: is it transposed (one column per "
                      "point)? Save it as a.T" if total < rows.dim else "")
        raise ValueError(f"{rows.label} is empty (0 of the {total} rows are in its split); at least one row is "
                         f"needed{transposed}")
    return rows


def table_or_path_as_array(x):
    """A ``.csv`` path read into an array, a table with ``to_numpy()`` (pandas) as its array;
    anything else as it is (a ``.npy`` path stays a path, to be memory-mapped)."""
    if isinstance(x, (str, os.PathLike)):
        from .files import load_array

        path = Path(os.fspath(x))
        if path.suffix.lower() == ".csv" or (path.suffix.lower() == ".npy" and _small_integer_npy(path)):
            return load_array(path)  # read whole, as float64
        return x
    if not isinstance(x, (np.ndarray, Tensor, Rows)) and callable(getattr(x, "to_numpy", None)):
        return _table_as_array(x)
    return x


# An integer .npy this size or larger is refused (open_npy says how to convert it) rather than
# read whole into float64; smaller, it is read whole as the CLI reads it (a memory map serves
# float rows only).
_INTEGER_NPY_BYTES = 2**30


def _small_integer_npy(path: Path) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False  # open_npy gives the reason
    return isinstance(arr, np.ndarray) and arr.dtype.kind in "iub" and path.stat().st_size < _INTEGER_NPY_BYTES


def _table_as_array(table) -> np.ndarray:
    """A pandas DataFrame (anything with ``to_numpy``) as a float64 array; a column that is not
    numeric is an error that names it."""
    try:
        return np.asarray(table.to_numpy(dtype=np.float64, na_value=np.nan))
    except (TypeError, ValueError):
        try:
            arr = np.asarray(table.to_numpy(dtype=np.float64))
        except (TypeError, ValueError):
            columns = getattr(table, "columns", None)
            kinds = getattr(table, "dtypes", None)
            # (pandas' own dtypes have a numpy-style kind too: "O" for strings, "M" for dates)
            bad = [str(c) for c, k in zip(columns, kinds) if getattr(k, "kind", "O") not in "iufb"] \
                if columns is not None and kinds is not None else []
            named = f": column(s) {bad} are not numeric" if bad else ""
            raise TypeError(f"the table could not be read as numbers{named}; drop or encode them first") from None
        return arr


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
