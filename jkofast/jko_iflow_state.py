"""Saving and restoring a JKO-iFlow run between blocks, so a killed run resumes exactly.

The checkpoint holds the flow so far, the settings, the cursor (which phase and block come
next), the run log and a fingerprint of the data. Pushed data is not stored: it is recomputed
from the flow on resume (cheap, no divergence needed). Nothing in it depends on the number of
processes: the shards are recomputed for the new world size, and each block's random numbers
come from the seed (jko_iflow.py), so a run resumes with any number of processes.

Only rank 0 reads and writes the files; it sends what it read (or the error) to the others.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch import Tensor

from . import distributed
from .checkpoint import CheckpointError, load_payload, refuse_other_run, require, save_payload, write_json
from .flow import Flow
from .jko_iflow_config import JKOIFlowConfig

__all__ = ["CHECKPOINT_FILE", "LOG_FILE", "data_fingerprint", "save_state", "restore_state"]

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.json"
_KIND = "jkofast.jko-iflow-state"
# Settings that do not change what is trained: a resumed run may change them (select_blocks
# only once the first pass is over, where it would turn the val_patience rule on or off:
# JKOIFlowTrainer._check_pass_rules_kept).
RESUMABLE_CHANGES = {"eval_steps", "pushed_storage", "scratch_dir", "select_blocks"}
# The one setting a resumed run may raise: the first pass goes on (JKOIFlowTrainer.resume).
GROWABLE = "blocks"
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


def _with_defaults(config: dict) -> dict:
    # A setting that an older checkpoint lacks did not exist then: the run had its default.
    return {**JKOIFlowConfig().to_dict(), **config}


def _comparable(config: dict) -> dict:
    return {k: v for k, v in _with_defaults(config).items() if k not in RESUMABLE_CHANGES}


def save_state(trainer) -> None:
    """Checkpoint the run (after a finished block) and refresh log.json beside it (rank 0)."""
    if trainer.out is None or not trainer.dist.main:
        return
    save_payload({"flow": trainer.flow.payload(), "config": trainer.cfg.to_dict(), "cursor": dict(trainer.cursor),
                  "data": trainer.data_id, "log": trainer.log},
                 trainer.out / CHECKPOINT_FILE, _KIND)
    write_json(trainer.out / LOG_FILE, trainer.log)


def restore_state(trainer) -> dict | None:
    """Continue from ``out/checkpoint.pt`` if there is one; refuse one from other settings or
    data, except a larger ``blocks`` and the RESUMABLE_CHANGES (the trainer checks those against
    the checkpoint's settings, which are returned, with the defaults of settings it predates).
    Rank 0 reads it and sends the record, or the error, to every rank. Returns None without a
    checkpoint."""
    if trainer.dist.main:
        try:
            found = ("record", _read_checked(trainer))
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            found = ("error", exc)
    else:
        found = None
    kind, value = trainer.dist.broadcast(found, "reading the checkpoint")
    if kind == "error":  # rank 0's, on every rank: the command line prints it once
        raise distributed.raised_on_every_rank(value)
    if value is None:
        return None
    restored = Flow.from_payload(value["flow"], trainer.out / CHECKPOINT_FILE, map_location=trainer.device)
    trainer.flow.blocks, trainer.flow.h = restored.blocks, restored.h
    trainer.cursor, trainer.log = dict(value["cursor"]), value["log"]
    return value["config"]


def _read_checked(trainer) -> dict | None:
    """The checkpoint's record after checking it fits this run, or None if there is none."""
    path = None if trainer.out is None else Path(trainer.out) / CHECKPOINT_FILE
    if path is None or not path.exists():
        return None
    record = load_payload(path, _KIND)
    # "generator" (the random state that older checkpoints hold) is no longer needed: each block's
    # random numbers come from the seed; an old checkpoint's is ignored.
    require(record, ("flow", "config", "cursor", "data", "log"), path)
    if not isinstance(record["cursor"], dict) or any(k not in record["cursor"] for k in _CURSOR_KEYS):
        raise CheckpointError(f"{path} has no valid cursor; the file is corrupt (restart to overwrite it)")
    refuse_other_run(path, _comparable(trainer.cfg.to_dict()), _comparable(record["config"]),
                     record["data"] == trainer.data_id, growable=GROWABLE)
    return {"flow": record["flow"], "cursor": record["cursor"], "log": record["log"],
            "config": _with_defaults(record["config"])}
