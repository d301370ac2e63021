"""The MAF tabular benchmarks (POWER, GAS, HEPMASS, MINIBOONE, BSDS300) from the user's files,
preprocessed exactly as the public MAF loaders do (Papamakarios et al. 2017; FFJORD, OT-Flow
and JKO-iFlow use the same code): same column drops, noise, seeds, splits and normalization, so
the same files give the same arrays. docs/METHOD.md section 5.1 lists the steps; maf_files.py
the file layout.

The loaders standardize the data themselves, so the returned arrays are in the space where the
papers report NLL: a flow trained on them (``jkofast.train`` standardizes again, a near-identity
here) gives comparable nats from ``flow.log_prob`` directly.
"""
from __future__ import annotations

import numpy as np

from ._checks import float_dtype
from ._optional import require
from .maf_files import LAYOUT, find, read_hdf5_splits, read_matrix, read_named_csv

__all__ = ["load_tabular", "TABULAR_NAMES", "tabular_name"]

TABULAR_NAMES: tuple[str, ...] = tuple(LAYOUT)


def tabular_name(name) -> str | None:
    """The canonical MAF set name for ``name`` (case-insensitive), else None."""
    key = name.strip().lower() if isinstance(name, str) else None
    return key if key in LAYOUT else None


def _tail_split(data: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MAF split, no shuffle: test = last int(0.1 N) rows, val = last int(0.1 rest) of the rest."""
    n_test = int(0.1 * data.shape[0])
    rest = data[:data.shape[0] - n_test]
    n_val = int(0.1 * rest.shape[0])
    if n_test < 1 or n_val < 1:  # the public code's data[-0:] would silently make test = everything
        raise ValueError(f"{what} has {data.shape[0]} rows, too few for the 10% test and validation "
                         "splits (at least 11 are needed)")
    return rest[:rest.shape[0] - n_val], rest[rest.shape[0] - n_val:], data[data.shape[0] - n_test:]


def _standardize(parts, reference: np.ndarray, *, ddof: int, names, what: str) -> list[np.ndarray]:
    """(part - mean) / std of ``reference``, per column; ddof as the public loader (numpy 0, pandas 1)."""
    mu, s = reference.mean(axis=0), reference.std(axis=0, ddof=ddof)
    constant = np.flatnonzero(~(s > 0))
    if constant.size:  # the public loader would divide by zero and train on NaN
        raise ValueError(f"{what}: column(s) {[names[j] for j in constant]} are constant in the data the "
                         "statistics come from; the file does not look like the MAF data set")
    return [(p - mu) / s for p in parts]


def _power(root, allow_pickle: bool):
    data = read_matrix(find(root, "power", "data.npy"), columns=8, what="POWER")
    rng = np.random.RandomState(42)  # the public loader's legacy generator and seed
    rng.shuffle(data)
    # Columns: active power, reactive power, voltage, intensity, 3 sub-meterings, time.
    data = np.delete(data, [1, 3], axis=1)
    n = data.shape[0]
    # Uniform dequantization noise at each column's resolution, drawn in the public loader's
    # order (voltage first), so the same file gives the same arrays bit for bit.
    voltage = 0.01 * rng.rand(n, 1)
    active_power = 0.001 * rng.rand(n, 1)
    sub_metering = rng.rand(n, 3)
    data = data + np.hstack([active_power, voltage, sub_metering, np.zeros((n, 1))])
    train, val, test = _tail_split(data, "POWER")
    names = ["active power", "voltage", "sub-metering 1", "sub-metering 2", "sub-metering 3", "time"]
    return _standardize((train, val, test), np.vstack([train, val]), ddof=0, names=names, what="POWER")


def _read_gas(root, allow_pickle: bool) -> tuple[list[str], np.ndarray]:
    csv = find(root, "gas", "ethylene_CO.csv", required=False)
    if csv is not None:
        return read_named_csv(csv)
    pickle = find(root, "gas", "ethylene_CO.pickle")  # raises, naming the layout, if absent too
    if not allow_pickle:
        raise ValueError(
            f"GAS: {str(pickle)!r} is a pickle, and unpickling a file runs any code it holds, so jkofast "
            "reads it only with allow_pickle=True (command line: --allow-pickle) for a file you trust. "
            "Or convert it once, where you trust it, into the CSV that jkofast reads safely:\n"
            f"  python -c \"import pandas as pd; pd.read_pickle('{pickle}')"
            f".to_csv('{pickle.with_suffix('.csv')}', index=False)\"")
    pd = require("pandas", package="pandas", purpose="reading the GAS pickle ethylene_CO.pickle")
    try:
        frame = pd.read_pickle(pickle)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for an unreadable pickle
        raise ValueError(f"pandas {pd.__version__} could not read {str(pickle)!r}: {exc!r}. The MAF file was "
                         "written by pandas 0.x; an older pandas (< 2.0) may read it") from exc
    return [str(c) for c in frame.columns], frame.to_numpy(dtype=np.float64)


def _gas(root, allow_pickle: bool):
    names, data = _read_gas(root, allow_pickle)
    missing = [c for c in ("Meth", "Eth", "Time") if c not in names]
    if missing:
        raise ValueError(f"GAS: the ethylene_CO file has no column(s) {missing}; its columns are {names}")
    keep = [j for j, c in enumerate(names) if c not in ("Meth", "Eth", "Time")]
    names, data = [names[j] for j in keep], data[:, keep]
    # Repeatedly drop the first column correlated above 0.98 with another (the count includes
    # the column itself), recomputing the correlations after each drop.
    while data.shape[1] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant column has NaN correlations
            over = np.flatnonzero((np.corrcoef(data, rowvar=False) > 0.98).sum(axis=1) > 1)
        if over.size == 0:
            break
        data, names = np.delete(data, over[0], axis=1), names[:over[0]] + names[over[0] + 1:]
    # Standardized over the whole file (pandas' std, ddof 1) before the split, as published.
    (data,) = _standardize((data,), data, ddof=1, names=names, what="GAS")
    return _tail_split(data, "GAS")


def _hepmass(root, allow_pickle: bool):
    train_names, train = read_named_csv(find(root, "hepmass", "1000_train.csv"))
    test_names, test = read_named_csv(find(root, "hepmass", "1000_test.csv"))
    # Signal rows only (label 1 in the first column), label dropped; the public loader also drops
    # the test file's last column ("the data set is messed up": it has one column more).
    train, names = train[train[:, 0] == 1, 1:], train_names[1:]
    test, test_names = test[test[:, 0] == 1, 1:-1], test_names[1:-1]
    if test_names != names:
        # pandas aligns the normalization by column name: different names would silently scramble it.
        raise ValueError(f"HEPMASS: after dropping the label and the test file's last column, the test "
                         f"columns {test_names} differ from the training columns {names}")
    if train.shape[0] == 0 or test.shape[0] == 0:
        raise ValueError("HEPMASS: a file has no signal rows (label 1 in the first column)")
    # Standardize by the whole training file (validation rows included, pandas' std: ddof 1), then
    # drop every feature whose smallest value occurs more than 5 times (discrete-valued features).
    # A constant feature (std 0; the public code makes it NaN) is dropped by the same rule.
    mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
    constant = ~(s > 0)
    s = np.where(constant, 1.0, s)
    train, test = (train - mu) / s, (test - mu) / s
    smallest_count = (train == train.min(axis=0)).sum(axis=0)
    keep = np.flatnonzero(~constant & (smallest_count <= 5))
    train, test = train[:, keep], test[:, keep]
    n_val = int(0.1 * train.shape[0])
    if n_val < 1:
        raise ValueError(f"HEPMASS: {train.shape[0]} signal rows in 1000_train.csv, too few for a 10% "
                         "validation split (at least 10 are needed)")
    return train[:train.shape[0] - n_val], train[train.shape[0] - n_val:], test


def _miniboone(root, allow_pickle: bool):
    data = read_matrix(find(root, "miniboone", "data.npy"), what="MINIBOONE")
    train, val, test = _tail_split(data, "MINIBOONE")
    return _standardize((train, val, test), np.vstack([train, val]), ddof=0,
                        names=list(range(data.shape[1])), what="MINIBOONE")


def _bsds300(root, allow_pickle: bool):
    # Already split and preprocessed in the file (8x8 patches, dequantized, mean removed, last
    # pixel dropped); the public loader reads it as is.
    train, val, test = read_hdf5_splits(find(root, "bsds300", "BSDS300.hdf5"), ("train", "validation", "test"))
    if not train.shape[1] == val.shape[1] == test.shape[1]:
        raise ValueError(f"BSDS300: the splits have different widths {train.shape}, {val.shape}, {test.shape}")
    return train, val, test


_LOADERS = {"power": _power, "gas": _gas, "hepmass": _hepmass, "miniboone": _miniboone, "bsds300": _bsds300}


def load_tabular(name: str, root, *, dtype=np.float32, allow_pickle: bool = False):
    """Train / validation / test arrays of a MAF tabular benchmark, from the user's files.

    Reads the files in the layout of the MAF data archive (``root/power/data.npy``,
    ``root/gas/ethylene_CO.pickle``, ``root/hepmass/1000_{train,test}.csv``,
    ``root/miniboone/data.npy``, ``root/BSDS300/BSDS300.hdf5``; ``root`` may also be the set's own
    folder) and applies the public MAF loaders' preprocessing exactly, with their seeds:

    * POWER: shuffle (``RandomState(42)``), drop reactive power and intensity, uniform noise of
      width 0.001 / 0.01 / 1 / 1 / 1 / 0, split, standardize by train + validation. d = 6.
    * GAS: drop ``Meth``, ``Eth``, ``Time``, then repeatedly the first column correlated above
      0.98 with another; standardize the whole file; split. d = 8.
    * HEPMASS: signal rows, label dropped (and the test file's last column); standardize by the
      training file; drop features whose smallest value occurs more than 5 times; validation =
      last 10% of the training file, test = the test file. d = 21.
    * MINIBOONE: split the pre-cleaned array; standardize by train + validation. d = 43.
    * BSDS300: the file's own splits, unchanged. d = 63.

    The split (POWER, GAS, MINIBOONE) takes the last 10% of rows as test and the last 10% of the
    rest as validation, in file order. The arrays come back standardized, in the space where the
    papers report NLL. GAS is distributed as a pandas pickle: since unpickling runs any code the
    file holds, it is read only with ``allow_pickle=True`` (and pandas installed; the original
    file may need pandas < 2.0); a ``gas/ethylene_CO.csv`` next to it (the pickle converted once
    with ``DataFrame.to_csv(index=False)``) is read instead, safely and without pandas.
    BSDS300 needs h5py (``pip install 'jkofast[data]'``).

    Arguments:
        name: ``"power"``, ``"gas"``, ``"hepmass"``, ``"miniboone"`` or ``"bsds300"`` (any case).
        root: folder holding the data (``str`` or ``os.PathLike``).
        dtype: floating dtype of the result (the public loaders' float32 by default); the
            preprocessing runs in float64.
        allow_pickle: let GAS be read from ``ethylene_CO.pickle`` (runs code from the file).

    Returns:
        (train, val, test): arrays (N_train, d), (N_val, d), (N_test, d), finite.

    Raises:
        FileNotFoundError: ``root`` or a needed file is missing (the message shows the layout).
        ValueError: unknown name (the valid ones are listed), a malformed file, or a pickle
            without ``allow_pickle``.
        ImportError: h5py (BSDS300) or pandas (the GAS pickle) is not installed.
    """
    key = tabular_name(name)
    if key is None:
        raise ValueError(f"unknown MAF tabular data set {name!r}; must be one of {list(TABULAR_NAMES)}")
    dt = float_dtype(dtype)
    splits = _LOADERS[key](root, bool(allow_pickle))
    out = tuple(np.ascontiguousarray(s, dtype=dt) for s in splits)
    for part, arr in zip(("train", "val", "test"), out):
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(f"{key.upper()}: the {part} split has {int(bad.sum())} row(s) with NaN or inf "
                             f"after preprocessing (first: row {int(np.flatnonzero(bad)[0])}); check the files")
    return out
