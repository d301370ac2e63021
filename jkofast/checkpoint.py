"""Checkpoint files: atomic writes, safe loads, and errors that say what is wrong with a file.

Files are ``torch.save`` archives of plain dicts of tensors and primitives, always read back
with ``torch.load(weights_only=True)``: loading a checkpoint never executes code from it.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ._atomic import replaced_atomically
from ._checks import check_device, plain
from ._version import __version__

__all__ = ["CheckpointError", "OtherRunError", "FORMAT_VERSION", "save_payload", "load_payload", "refuse_other_run", "write_json"]

# Bump when the layout of a payload changes; readers refuse newer versions instead of guessing.
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing pieces, corrupt, truncated, or from an unknown format."""


class OtherRunError(ValueError):
    """A checkpoint is another run's: other settings, or other training data (``data_differs``,
    where the settings are the same), so it is not resumed."""

    def __init__(self, message: str, data_differs: bool):
        super().__init__(message)
        self.data_differs = data_differs

    def __reduce__(self):  # pickled whole: rank 0 sends it to the other ranks (jko_iflow_state.py)
        return type(self), (str(self), self.data_differs), self.__dict__  # (with distributed's mark)


def save_payload(payload: dict, path: str | os.PathLike, kind: str) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + rename in the same folder), so a
    crash mid-write leaves the previous file intact rather than a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # plain(): a numpy number anywhere (a flow's info, a setting) would be written, then refused
    # by the weights_only reader as an unsafe global: the file would be unreadable by jkofast.
    record = plain({"format": kind, "format_version": FORMAT_VERSION, "jkofast_version": __version__, **payload})
    with replaced_atomically(path, sync=True) as tmp:
        # By path, not a Python file object: torch.save then calls back into Python for every
        # write, and a SIGTERM raised inside such a callback came out as a RuntimeError ("unexpected
        # pos") with the interrupt only as its context (7 of 8 SIGTERMs during a 256 MB save; 0 of 8
        # by path): a traceback and exit status 1 instead of "terminated ... resumes from it" and 143.
        torch.save(record, tmp)
    return path


# The payload kinds, as the user knows them (the training state records the method by itself).
_WHAT = {"jkofast.flow": "a trained model (model.pt)", "jkofast.jko-iflow-state": "a jko-iflow run's state",
         "jkofast.run-state": "a jko-flow or interpolant run's state"}


def load_payload(path: str | os.PathLike, kind: str, map_location="cpu") -> dict:
    """Read a payload written by :func:`save_payload` and check its kind and format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, "map_location")  # else torch's refusal would read as a corrupt file
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, IndexError, AttributeError) as exc:  # what torch's loaders raise on bytes that are not theirs
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated, or not written by "
                              f"jkofast): {type(exc).__name__}: {exc}") from exc
    if not isinstance(record, dict) or "format" not in record:
        raise CheckpointError(f"{path} is not a jkofast checkpoint (no format header)")
    if record["format"] != kind:
        raise CheckpointError(f"{path} holds {_WHAT.get(record['format'], repr(record['format']))}, where "
                              f"{_WHAT.get(kind, repr(kind))} was expected; pass another output folder or model, "
                              "or restart (resume=False / --restart) to overwrite a run")
    version = record.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by jkofast {record.get('jkofast_version', '?')} in checkpoint format "
            f"v{version}; this jkofast ({__version__}) reads up to v{FORMAT_VERSION}: upgrade jkofast to load it")
    return record


def require(record: dict, keys, path) -> None:
    """Raise a CheckpointError naming the first of ``keys`` missing from ``record``."""
    for key in keys:
        if key not in record:
            raise CheckpointError(f"{path} is missing {key!r}; the file is incomplete or corrupt")


def refuse_other_run(path, mine: dict, theirs: dict, same_data: bool, growable: str | None = None) -> None:
    """Refuse to resume the checkpoint at ``path`` unless its settings (``theirs``) and data are
    this run's (``mine``); the message gives both values of each setting that differs, so that
    a run started under other defaults can be continued by passing its values. ``growable`` names
    a budget (of blocks, of rounds) that may grow, the only difference, as the run goes on; it
    may not shrink."""
    if growable is not None and same_data and isinstance(theirs.get(growable), int) \
            and _without(mine, growable) == _without(theirs, growable):
        then, now = theirs[growable], mine.get(growable)
        if now is not None and now < then:
            raise OtherRunError(f"{path} is from a run of {growable}={then}: {growable} can grow when a run "
                                f"resumes, not shrink ({now} here); pass another output folder, or restart "
                                "(resume=False / --restart) to overwrite it", data_differs=False)
        return
    if mine == theirs and same_data:
        return
    changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if changed:
        pairs = "; ".join(f"{k}: {theirs.get(k, '(unset)')!r} there, {mine.get(k, '(unset)')!r} here" for k in changed)
        what, fix = f"settings ({pairs})", "pass the checkpoint's values to continue it, or "
    else:
        what, fix = "training data", ""
    raise OtherRunError(f"{path} is from a run with different {what}; {fix}pass another output folder, "
                        "or restart (resume=False / --restart) to overwrite it", data_differs=not changed)


def _without(settings: dict, key: str) -> dict:
    return {k: v for k, v in settings.items() if k != key}


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON atomically, so a reader never sees half a file; strict RFC 8259 JSON,
    which other tools (jq, JavaScript) read: NaN and inf are written as null (a standard error of
    one point is NaN; a loss that diverged is logged)."""
    text = json.dumps(_nulls_for_non_finite(plain(obj)), indent=2, allow_nan=False)
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)


def _nulls_for_non_finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls_for_non_finite(v) for v in value]
    return value
