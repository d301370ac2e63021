"""Checkpoints of jko-flow and interpolant runs, so a killed run resumes exactly.

One file, ``out/checkpoint.pt``, holds the flow so far, the settings, the method's cursor (where
to continue), the optimizer's and the random generator's state, the log and a fingerprint of
the data. Pushed data is not stored: the trainers recompute it from the flow on resume.
(JKO-iFlow keeps its own format, jko_iflow_state.py: it has no optimizer state to carry.)
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_payload, refuse_other_run, require, save_payload, write_json
from .flow import Flow
from .jko_iflow_state import CHECKPOINT_FILE, LOG_FILE, RESUMABLE_CHANGES

__all__ = ["save_run", "load_run"]

_KIND = "jkofast.run-state"
_KEYS = ("method", "flow", "config", "cursor", "optimizer", "generator", "data", "log")


def save_run(out: Path | None, *, method: str, flow: Flow, config: dict, cursor: dict,
             optimizer: dict | None, generator: torch.Generator, data_id: str, log: dict) -> None:
    """Checkpoint the run into ``out`` (nothing without an output folder) and refresh log.json."""
    if out is None:
        return
    save_payload({"method": method, "flow": flow.payload(), "config": config, "cursor": dict(cursor),
                  "optimizer": optimizer, "generator": generator.get_state(), "data": data_id, "log": log},
                 Path(out) / CHECKPOINT_FILE, _KIND)
    write_json(Path(out) / LOG_FILE, log)


def load_run(out: Path | None, *, method: str, config: dict, data_id: str, device,
             growable: str | None = None) -> dict | None:
    """The checkpoint in ``out`` with its flow rebuilt on ``device`` (key ``"flow"``), or None if
    there is none; a checkpoint of another method, other settings or other data is refused, but
    for a larger ``growable`` budget (the method's trainer goes on from the checkpoint's)."""
    path = None if out is None else Path(out) / CHECKPOINT_FILE
    if path is None or not path.exists():
        return None
    record = load_payload(path, _KIND)  # a jko-iflow checkpoint here is refused, with its kind named
    require(record, _KEYS, path)
    if record["method"] != method:
        raise ValueError(f"{path} is from a run of {record['method']}, not {method}; pass another output folder, "
                         "or restart (resume=False / --restart) to overwrite it")
    mine = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    theirs = {k: v for k, v in record["config"].items() if k not in RESUMABLE_CHANGES}
    refuse_other_run(path, mine, theirs, record["data"] == data_id, growable=growable)
    record["flow"] = Flow.from_payload(record["flow"], path, map_location=device)
    return record
