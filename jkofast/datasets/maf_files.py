"""Finding and reading the files of the MAF tabular benchmarks (the layout their loaders expect).

Layout under ``root``, as in the MAF data archive (zenodo.org/record/1161203) unpacked::

    power/data.npy                         (N, 8) array
    gas/ethylene_CO.csv   or   gas/ethylene_CO.pickle
    hepmass/1000_train.csv, hepmass/1000_test.csv
    miniboone/data.npy                     (N, 43) array
    BSDS300/BSDS300.hdf5                   datasets "train", "validation", "test"

``root`` may also be one set's own folder (e.g. ``.../power``). The GAS ``.csv`` is not in the
archive: it is the pickle converted once (see :func:`~jkofast.datasets.load_tabular`), because
unpickling a file runs whatever code it holds.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ._optional import require
from .files import _read_npy

__all__ = ["LAYOUT", "find", "read_matrix", "read_named_csv", "read_hdf5_splits"]

# set -> (folder in the archive, the files it may hold); shown in every "file not found" error.
LAYOUT = {
    "power": ("power", ("data.npy",)),
    "gas": ("gas", ("ethylene_CO.csv", "ethylene_CO.pickle")),
    "hepmass": ("hepmass", ("1000_train.csv", "1000_test.csv")),
    "miniboone": ("miniboone", ("data.npy",)),
    "bsds300": ("BSDS300", ("BSDS300.hdf5",)),
}


def _layout_text() -> str:
    return "; ".join(f"{folder}/{' or '.join(files) if name == 'gas' else ' + '.join(files)}"
                     for name, (folder, files) in LAYOUT.items())


def find(root, name: str, filename: str, *, required: bool = True) -> Path | None:
    """``root/<folder>/filename`` or ``root/filename``, whichever exists; None or an error if neither."""
    base = Path(os.fspath(root)).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data root {str(base)!r} is not a directory; it should hold the MAF data "
                                f"sets in the layout {_layout_text()}")
    folder = LAYOUT[name][0]
    candidates = (base / folder / filename, base / filename)
    for path in candidates:
        if path.is_file():
            return path
    if not required:
        return None
    raise FileNotFoundError(f"{name.upper()}: no file {folder}/{filename} under {str(base)!r} (looked for "
                            f"{' and '.join(repr(str(p)) for p in candidates)}); load_tabular expects the "
                            f"layout of the MAF data archive (zenodo.org/record/1161203): {_layout_text()}")


def read_matrix(path: Path, *, columns: int | None = None, what: str) -> np.ndarray:
    """A 2-D numeric ``.npy`` as float64 (read without unpickling), with ``columns`` checked."""
    arr = _read_npy(path)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what} in {str(path)!r} must be a non-empty 2-D array, got shape {arr.shape}")
    if columns is not None and arr.shape[1] != columns:
        raise ValueError(f"{what} in {str(path)!r} must have {columns} columns, got shape {arr.shape}")
    return arr.astype(np.float64)  # a copy: callers shuffle it in place


def read_named_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """A comma-separated file with a header line: (column names, float64 (N, k) values).

    Like the public loaders' ``pandas.read_csv(index_col=False)``, fields beyond the header's
    names are ignored (a trailing comma, an unnamed extra column). A first header name that is
    empty is the row index that ``DataFrame.to_csv`` writes by default: that column is dropped.
    """
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline()
    names = [n.strip() for n in header.rstrip("\r\n").split(",")]
    if not header.strip() or len(names) < 2:
        raise ValueError(f"{str(path)!r} must start with a header line of comma-separated column names, "
                         f"got {header[:80]!r}")
    try:
        with warnings.catch_warnings():  # ("input contained no data": said below, as an error)
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data", category=UserWarning)
            data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(len(names)), ndmin=2,
                              dtype=np.float64, encoding="utf-8-sig")
    except ValueError as exc:
        raise ValueError(f"could not parse the rows of {str(path)!r} as {len(names)} comma-separated "
                         f"numbers (its header names {len(names)} columns): {exc}") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{str(path)!r} has a header but no data rows")
    if names[0] == "":
        names, data = names[1:], data[:, 1:]
    return names, data


def read_hdf5_splits(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    """The 2-D datasets ``keys`` of an HDF5 file (needs h5py), as arrays."""
    h5py = require("h5py", package="h5py", purpose=f"reading {path.name} (BSDS300)", extra="data")
    with h5py.File(path, "r") as f:
        missing = [k for k in keys if k not in f]
        if missing:
            raise ValueError(f"{str(path)!r} has no dataset(s) {missing}; expected {list(keys)}, found {sorted(f.keys())}")
        arrays = [np.asarray(f[k][()]) for k in keys]
    for k, a in zip(keys, arrays):
        if a.ndim != 2 or a.dtype.kind not in "biuf":
            raise ValueError(f"dataset {k!r} in {str(path)!r} must be a 2-D numeric array, got shape "
                             f"{a.shape} and dtype {a.dtype}")
    return arrays
