"""Scratch and output folders: pushed samples' scratch removed when a run is terminated, and,
when it was killed outright, by the next run; one run at a time per output folder; clear errors
for output and scratch paths that cannot be written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import jkofast
from jkofast._scratch import PREFIX, ScratchFolder, _host
from jkofast.cli import main
from jkofast.shard import ShardStore

posix_only = pytest.mark.skipif(os.name != "posix", reason="flock and SIGTERM are POSIX")


def _killed_run_folder(parent) -> str:
    """The scratch folder of a process killed with SIGKILL (no cleanup ran)."""
    code = textwrap.dedent(f"""
        import os, signal
        from jkofast._scratch import ScratchFolder
        folder = ScratchFolder({str(parent)!r}, rank=0)
        (folder.path / "shard0.bin").write_bytes(b"0" * 1000)
        print(folder.path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.strip()


@posix_only
def test_a_killed_runs_folder_is_removed_by_the_next_and_a_live_one_is_not(tmp_path):
    dead = _killed_run_folder(tmp_path)
    unlocked = tmp_path / f"{PREFIX}2-{_host()}-starting"    # no lock file yet: not ours to judge
    unlocked.mkdir()
    other = tmp_path / "someone-elses"
    other.mkdir()
    elsewhere = tmp_path / f"{PREFIX}0-another.host-abcd1234"  # another host's, its lock free here
    elsewhere.mkdir()
    (elsewhere / ".lock").write_text("")
    assert os.path.isdir(dead)
    live = ScratchFolder(tmp_path, rank=1)
    assert [str(p) for p in live.removed] == [dead] and not os.path.exists(dead)
    new = ScratchFolder(tmp_path, rank=0)
    assert new.removed == []                                 # live holds its lock, though in this process
    assert live.path.is_dir() and unlocked.is_dir() and other.is_dir() and elsewhere.is_dir()
    live.remove(), new.remove()
    assert not live.path.exists() and not new.path.exists()


@posix_only
def test_training_removes_a_killed_runs_scratch_and_says_so(tmp_path, moons, caplog):
    dead = _killed_run_folder(tmp_path / "scratch")
    x, val = moons[0][:600].numpy(), moons[1][:200].numpy()
    with caplog.at_level("INFO", logger="jkofast"):
        jkofast.train(x, val=val, budget="quick", blocks=1, iters=5, batch=100, hidden=8, layers=1, progress=False,
                      pushed_storage="disk", scratch_dir=str(tmp_path / "scratch"))
    assert not os.path.exists(dead) and list((tmp_path / "scratch").iterdir()) == []
    assert "left by runs that were killed" in caplog.text and dead in caplog.text


@posix_only
def test_sigterm_stops_training_and_removes_the_scratch_folder(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    cmd = [sys.executable, "-m", "jkofast", "train", "--data", "moons", "--out", str(out), "--budget", "quick",
           "--iters", "1000000", "--n-train", "2000", "--n-val", "400", "--n-test", "400", "--no-progress",
           "--pushed-storage", "disk", "--scratch-dir", str(scratch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(scratch.glob(f"{PREFIX}*/shard*.bin")):  # training has begun on the disk shards
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert list(scratch.iterdir()) == []


def test_unwritable_paths_are_errors_before_training(tmp_path, moons, capsys):
    x = moons[0][:300].numpy()
    (tmp_path / "afile").write_text("")
    for out, says in ((tmp_path / "afile", "is a file, not a folder"),
                      (tmp_path / "afile" / "run", f"is under {tmp_path / 'afile'}, which is a file")):
        with pytest.raises(ValueError, match=says):
            jkofast.train(x, out=out, budget="quick", iters=1, progress=False)
        assert main(["train", "--data", "moons", "--out", str(out), "--budget", "quick", "--no-progress"]) == 2
        assert says in capsys.readouterr().err
    with pytest.raises(ValueError, match="scratch_dir .* is a file"):
        jkofast.train(x, budget="quick", iters=1, progress=False, pushed_storage="disk",
                      scratch_dir=tmp_path / "afile")


def test_a_full_scratch_disk_is_named_in_the_error(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError("5 requested and 0 written")      # all numpy's tofile says on a full disk
    monkeypatch.setattr(jkofast.shard, "write_shuffled", full_disk)
    store = ShardStore("disk", 1 << 30, dtype=torch.float32, device=torch.device("cpu"), scratch=tmp_path)
    with pytest.raises(OSError, match=r"could not write the pushed samples to .*is that disk full.*1 GiB per process"):
        store.build(iter([(torch.zeros(4, 2), None)]), 2, False, shuffle_seed=[0])
    store.close()


def test_an_unused_scratch_dir_is_said(tmp_path, moons, caplog):
    x = moons[0][:300].numpy()
    with caplog.at_level("INFO", logger="jkofast"):
        jkofast.train(x, budget="quick", blocks=1, iters=2, hidden=8, layers=1, progress=False,
                      scratch_dir=tmp_path / "scratch")
    assert "is not used: the pushed samples are kept in memory (they fit" in caplog.text
    assert not (tmp_path / "scratch").exists()


@posix_only
def test_two_runs_cannot_train_into_one_output_folder(tmp_path, moons):
    from jkofast._locks import held_lock
    from jkofast.train import OUT_LOCK

    x, out = moons[0][:300].numpy(), tmp_path / "run"
    opts = dict(budget="quick", blocks=1, iters=2, hidden=8, layers=1, progress=False)
    with held_lock(out / OUT_LOCK, "held"):             # as another live process would hold it
        with pytest.raises(ValueError, match="another jkofast run is training into .*wait for it to end"):
            jkofast.train(x, out=out, **opts)
    assert not (out / "checkpoint.pt").exists()
    jkofast.train(x, out=out, **opts)                    # free again once its holder is done
    assert (out / "model.pt").exists()
    # a killed holder leaves no lock behind: the kernel drops it with the process
    code = (f"import os, signal, fcntl; fd = os.open({str(out / OUT_LOCK)!r}, os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    jkofast.train(x, out=out, resume=False, **opts)
