"""Outputs are written whole or not at all (jkofast/_atomic.py): a writer stopped halfway leaves
the earlier file as it was and no temporary file; the command line's outputs go through it."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from jkofast._atomic import replaced_atomically
from jkofast.checkpoint import load_payload, save_payload, write_json
from jkofast.cli import main


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_stopped_writer_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("the good old file")
    with pytest.raises(KeyboardInterrupt):
        with replaced_atomically(target) as tmp:
            tmp.write_text("half of a new")
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM under the command line, mid-write
    assert target.read_text() == "the good old file" and os.listdir(tmp_path) == ["out.txt"]
    with replaced_atomically(target, sync=True) as tmp:
        tmp.write_text("the new file")
    assert target.read_text() == "the new file" and os.listdir(tmp_path) == ["out.txt"]
    # a new file's permissions follow the umask, as open() gives them (mkstemp's were 0600: a
    # group sharing the run folder could not read the model)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_the_temporary_file_is_beside_the_target_hidden_and_named_by_the_writer(tmp_path):
    # beside it: the rename stays on one file system; the process id: two processes writing the
    # same output (a sweep's runs sharing a folder) do not write into one temporary file
    with replaced_atomically(tmp_path / "metrics.json") as tmp:
        assert tmp == tmp_path / f".metrics.json.{os.getpid()}.tmp"
        tmp.write_text("{}")


def test_checkpoints_and_logs_are_replaced_whole(tmp_path):
    save_payload({"x": 1}, tmp_path / "m.pt", "jkofast.flow")
    write_json(tmp_path / "log.json", {"a": [1, 2]})
    assert load_payload(tmp_path / "m.pt", "jkofast.flow")["x"] == 1
    assert (tmp_path / "log.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert sorted(os.listdir(tmp_path)) == ["log.json", "m.pt"]
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o666 & ~_umask()


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    # A power cut after the rename must not leave checkpoint.pt naming a file whose data never
    # reached the disk: save_payload flushes (fsync) the new file first, then renames it.
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b))[1])
    save_payload({"x": 1}, tmp_path / "checkpoint.pt", "jkofast.run-state")
    assert events == ["fsync", ("replace", "checkpoint.pt")]


def test_json_holds_null_for_every_non_finite_number(tmp_path):
    # NaN and inf inside dicts, lists and tuples (a setting's pair) are written as null: strict JSON.
    write_json(tmp_path / "log.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": (float("-inf"), 2.0),
                                       "d": {"e": (np.float64("nan"),)}})

    def refuse(token):
        raise AssertionError(f"log.json holds {token}")
    assert json.loads((tmp_path / "log.json").read_text(), parse_constant=refuse) == \
        {"a": None, "b": [1.0, None], "c": [None, 2.0], "d": {"e": [None]}}


def test_sample_stopped_mid_write_keeps_the_earlier_file(tmp_path, monkeypatch, capsys):
    from jkofast.cli import commands

    model = tmp_path / "m.pt"
    import jkofast
    jkofast.Flow(2, dict(hidden=8, layers=1)).save(model)
    out = tmp_path / "s.csv"
    assert main(["sample", "--model", str(model), "--n", "50", "--out", str(out)]) == 0
    before = out.read_bytes()
    real_savetxt = np.savetxt

    def stopped(path, x, **kwargs):  # writes part of the rows, then SIGTERM arrives
        real_savetxt(path, x[:3], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(commands.np, "savetxt", stopped)
    assert main(["sample", "--model", str(model), "--n", "5000", "--seed", "1", "--out", str(out)]) == 130
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.pt", "s.csv"]
    capsys.readouterr()
