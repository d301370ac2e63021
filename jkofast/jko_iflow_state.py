"""Saving and restoring a JKO-iFlow run between blocks, so a killed run resumes exactly.

The checkpoint holds the flow so far, the settings, the cursor (which phase and block come
next), the random generator's state, the run log and a fingerprint of the data. Pushed data is
not stored: it is recomputed from the flow on resume (cheap, no divergence needed).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoint import CheckpointError, load_payload, require, save_payload, write_json
from .flow import Flow

__all__ = ["CHECKPOINT_FILE", "LOG_FILE", "data_fingerprint", "save_state", "restore_state"]

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.json"
_KIND = "jkofast.jko-iflow-state"
# Settings that do not change what is trained: a resumed run may change them.
RESUMABLE_CHANGES = {"eval_steps"}
_CURSOR_KEYS = ("phase", "block", "started", "done")


def data_fingerprint(*arrays: Tensor | None) -> str:
    """sha256 of the raw training (and validation) data: resuming on other data is refused."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        arr = np.ascontiguousarray(a.detach().cpu().numpy())
        digest.update(f"{arr.shape}{arr.dtype}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def save_state(trainer) -> None:
    """Checkpoint the run (after a finished block) and refresh log.json beside it."""
    if trainer.out is None:
        return
    save_payload({"flow": trainer.flow.payload(), "config": trainer.cfg.to_dict(), "cursor": dict(trainer.cursor),
                  "generator": trainer.generator.get_state(), "data": trainer.data_id, "log": trainer.log},
                 trainer.out / CHECKPOINT_FILE, _KIND)
    write_json(trainer.out / LOG_FILE, trainer.log)


def restore_state(trainer) -> bool:
    """Continue from ``out/checkpoint.pt`` if there is one; refuse one from other settings or data."""
    path = None if trainer.out is None else Path(trainer.out) / CHECKPOINT_FILE
    if path is None or not path.exists():
        return False
    record = load_payload(path, _KIND)
    require(record, ("flow", "config", "cursor", "generator", "data", "log"), path)
    if not isinstance(record["cursor"], dict) or any(k not in record["cursor"] for k in _CURSOR_KEYS):
        raise CheckpointError(f"{path} has no valid cursor; the file is corrupt (restart to overwrite it)")
    mine, theirs = _comparable(trainer.cfg.to_dict()), _comparable(record["config"])
    if mine != theirs or record["data"] != trainer.data_id:
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        what = f"settings {changed}" if changed else "training data"
        raise ValueError(f"{path} is from a run with different {what}; pass another output folder, "
                         "or restart (resume=False / --restart) to overwrite it")
    restored = Flow.from_payload(record["flow"], path, map_location=trainer.u_train.device)
    trainer.flow.blocks, trainer.flow.h = restored.blocks, restored.h
    trainer.cursor, trainer.log = dict(record["cursor"]), record["log"]
    trainer.generator.set_state(record["generator"])
    return True
