"""The data of a saved model that eval and plot read: its recorded test split, a built-in set's
fresh test draw or a held-out file (--data), and its training rows for the Gaussian baseline."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import datasets
from ..datasets.streaming import as_rows
from ..flow import Flow
from .data_spec import _check_unchanged, _load_data, _memory_map, _shape, _with_root
from .options import _device
from .process import _note
from .report import _baseline_train


def _flow_and_data(args, device: torch.device | None = None):
    """The model (on ``device``, default --device), its recorded data spec (None where it records
    none), and the test data to score or plot: the recorded set's test split, a built-in set's
    fresh test draw (--data NAME), or a held-out file scored whole (--data FILE, any file but the
    one it was trained on)."""
    flow = Flow.load(args.model, map_location=device or _device(args))
    recorded = dict(flow.info.get("data", {})) or None
    if recorded is not None and "name" not in recorded:
        recorded = None
    given = getattr(args, "data", None)
    n_test = getattr(args, "n_test", None)
    if given is not None and not _same_data(given, recorded):
        if datasets.builtin_name(given) is None:
            path = Path(given)
            if not path.is_file():
                raise SystemExit(f"error: --data {given!r} is neither a built-in data set "
                                 f"({', '.join(datasets.DATA_NAMES)}) nor an existing .npy/.csv file")
            if n_test and args.command == "eval":  # (plot: it caps the points plotted)
                raise SystemExit("error: --n-test sizes a built-in set's test draw; a held-out file is scored whole")
            held = as_rows(str(path), "test") if _memory_map(path, None) else datasets.load_array(path)
            columns = _shape(held)[1]
            if columns != flow.dim:
                raise SystemExit(f"error: --data {given!r} has {columns} column(s); the model was trained on {flow.dim}")
            return flow, recorded, held
        name = datasets.builtin_name(given)
        spec = _with_root({"name": name, "seed": (recorded or {}).get("seed", 0), "n_train": 1, "n_val": 1,
                           "n_test": n_test or 20_000}, name, args)
        return flow, recorded, _load_data(spec)[2]
    if recorded is None:
        raise SystemExit("error: this model does not record its data set; pass --data")
    recorded = _with_root(recorded, recorded["name"], args)
    _check_unchanged(recorded)
    recorded["checked"] = True
    if n_test and datasets.builtin_name(recorded["name"]) is not None:
        recorded["n_test"] = n_test
    elif n_test and args.command == "eval":  # (plot: it caps the points plotted)
        raise SystemExit(f"error: --n-test sizes a built-in set's test draw; {recorded['name']} is a file, whose "
                         "test split is fixed by the recorded seed (10% of its rows)")
    return flow, recorded, _load_data(recorded)[2]


def _same_data(given: str, recorded: dict | None) -> bool:
    """--data names the set the model was trained on (a built-in name, or the same file)."""
    if recorded is None:
        return False
    name = datasets.builtin_name(given)
    if name is not None:
        return name == recorded["name"]
    return Path(given).resolve() == Path(recorded["name"])


def _training_rows(recorded: dict | None, args):
    """The model's training split, for the report's Gaussian baseline; None (with a note) where
    it cannot be had: no record, a file gone or changed, a MAF set without --data-root, an
    optional package missing. (For a memory-mapped set, one streamed pass over its rows.)"""
    if recorded is None:
        _note("no Gaussian baseline: the model does not record its training data")
        return None
    try:
        if "root" not in recorded:
            recorded = _with_root(dict(recorded), recorded["name"], args)
        if not recorded.get("checked"):
            _check_unchanged(recorded, split=False)
        train = _load_data(recorded)[0]
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - the baseline is a courtesy: never the reason eval fails
        _note(f"no Gaussian baseline: the model's training data could not be read again ({exc})")
        return None
    return _baseline_train(train)
