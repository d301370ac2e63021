"""Checkpoint files: corrupt, truncated, foreign, newer or malicious files give clear errors and
never execute code."""
import collections
import fractions
import pickle

import numpy as np
import pytest
import torch

import jkofast
from jkofast import Flow
from jkofast.checkpoint import FORMAT_VERSION, CheckpointError
from conftest import CodeRunningPickle, random_flow


@pytest.fixture
def saved(tmp_path):
    return random_flow(dim=2, blocks=2).save(tmp_path / "m.pt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Flow.load(tmp_path / "nope.pt")


def test_corrupt_and_truncated(saved, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01not a checkpoint" * 50)
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        Flow.load(tmp_path / "junk.pt")
    data = saved.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        Flow.load(tmp_path / "half.pt")


def test_newer_format_and_foreign_kind(saved, tmp_path):
    record = torch.load(saved, weights_only=True)
    torch.save(record | {"format_version": FORMAT_VERSION + 1, "jkofast_version": "9.0"}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade jkofast"):
        Flow.load(tmp_path / "new.pt")
    torch.save(record | {"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"holds 'something-else', where a trained model \(model.pt\) was"):
        Flow.load(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no format header"):
        Flow.load(tmp_path / "plain.pt")


def test_missing_or_mismatched_pieces(saved, tmp_path):
    record = torch.load(saved, weights_only=True)
    torch.save({k: v for k, v in record.items() if k != "h"}, tmp_path / "no_h.pt")
    with pytest.raises(CheckpointError, match="missing 'h'"):
        Flow.load(tmp_path / "no_h.pt")
    bad = dict(record, state_dict={k: v[..., :1] for k, v in record["state_dict"].items()})
    torch.save(bad, tmp_path / "shapes.pt")
    with pytest.raises(CheckpointError, match="valid flow"):
        Flow.load(tmp_path / "shapes.pt")


def test_loading_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"format": "jkofast.flow", "x": CodeRunningPickle(marker)}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        Flow.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_save_is_atomic(saved, monkeypatch):
    # A crash while writing must leave the previous file intact and no temp file behind.
    before = saved.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        random_flow(dim=2, blocks=1).save(saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


@pytest.mark.parametrize("method", ["jko-iflow", "interpolant", "jko-flow"])
def test_numpy_numbers_as_settings_are_saved_readable(tmp_path, method):
    # np.logspace(...)[i] as lr, np.int64 counts: the run used to train, then write a model.pt and
    # checkpoint.pt that the weights_only reader refused as "corrupt" (numpy scalar globals), or
    # crash writing log.json (np.float32). Settings are Python numbers from the start now.
    x = np.random.default_rng(0).normal(size=(300, 2))
    opts = dict(iters=np.int64(4), lr=np.logspace(-3, -2, 2)[0], batch=np.int64(64), budget="quick", progress=False)
    if method == "jko-iflow":
        opts.update(blocks=np.int64(2), h0=np.float32(0.5))
    flow = jkofast.train(x, method, out=tmp_path / "run", **opts)
    loaded = Flow.load(tmp_path / "run")
    assert loaded.num_blocks == flow.num_blocks
    u = torch.as_tensor(x[:20])
    assert torch.equal(loaded.log_prob(u), flow.log_prob(u))
    again = jkofast.train(x, method, out=tmp_path / "run", **opts)   # resumes from the finished run's state
    assert torch.equal(again.log_prob(u), flow.log_prob(u))
    # a user's own notes: numpy values, a Counter, a defaultdict, a Fraction
    flow.info["extra"] = {"n": np.int64(3), "values": np.arange(2.0), "counts": collections.Counter(a=2),
                          "lists": collections.defaultdict(list, b=[1]), "third": fractions.Fraction(1, 3)}
    extra = Flow.load(flow.save(tmp_path / "noted.pt")).info["extra"]
    assert extra == {"n": 3, "values": [0.0, 1.0], "counts": {"a": 2}, "lists": {"b": [1]}, "third": 1 / 3}
    assert flow.sample(np.int64(3)).shape == (3, 2)


def test_settings_of_the_wrong_type_are_named():
    with pytest.raises(TypeError, match="lr must be a number, got str '1e-3'"):
        jkofast.train(np.zeros((10, 2)) + np.arange(10.0)[:, None] * [1, 2], lr="1e-3", budget="quick")
