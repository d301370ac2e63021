"""Scratch and output folders: pushed samples' scratch removed when a run is terminated, and,
when it was killed outright, by the next run; one run at a time per output folder; clear errors
for output and scratch paths that cannot be written."""
from __future__ import annotations

import errno
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
def test_this_processs_live_folder_is_kept_where_its_own_lock_looks_free(tmp_path, monkeypatch):
    # On NFS flock is emulated with POSIX locks, which a second descriptor of the holding process
    # takes: a second run in one process (rank 1 of a test, a notebook's second train()) would
    # find its own live folder free. Such a lock, here every lock, must not delete it.
    import jkofast._scratch as scratch

    monkeypatch.setattr(scratch, "try_lock", lambda path, *, create: (True, os.open(path, os.O_RDWR)))
    live = ScratchFolder(tmp_path, rank=0)
    (live.path / "shard0.bin").write_bytes(b"0" * 10)
    second = ScratchFolder(tmp_path, rank=1)
    assert second.removed == [] and (live.path / "shard0.bin").is_file()
    live.remove(), second.remove()


@posix_only
def test_a_lock_found_held_costs_no_file_descriptor(tmp_path):
    from jkofast._locks import try_lock, unlock

    taken, fd = try_lock(tmp_path / ".lock", create=True)
    assert taken
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):   # a scan past 20 live folders
        assert try_lock(tmp_path / ".lock", create=False) == (False, None)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    unlock(fd)


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


@posix_only
def test_a_deletion_stopped_halfway_keeps_the_lock_file_for_the_next_run(tmp_path, monkeypatch):
    from pathlib import Path

    from jkofast import _scratch

    folder = ScratchFolder(tmp_path, rank=0)
    for i in range(3):
        (folder.path / f"shard{i}.bin").write_bytes(b"0" * 100)
    real_unlink, calls = Path.unlink, []

    def stopped_at_the_second(self, *args, **kwargs):  # Ctrl-C (or SIGKILL) during the deletion
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        folder.remove()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    # the lock file is deleted last: the half-deleted folder still has it, so it is not mistaken
    # for a folder being created (which has none, and which no run touches)
    assert (folder.path / ".lock").exists() and ".lock" not in calls
    _scratch.unlock(folder._lock)                # as when its process has gone
    _scratch._LIVE.pop(folder.path.resolve())
    assert _scratch.remove_abandoned(tmp_path) == [folder.path] and not folder.path.exists()


def test_a_folder_no_remove_reached_is_deleted_at_exit_by_its_own_process(tmp_path):
    # A SIGTERM between the shards' writing and the code that closes them left the folder behind
    # (seen once in CI, in the test above); the exit handler deletes it, but only in the process
    # that made it: a forked child (a data loader's worker) that exits must leave it alone.
    code = textwrap.dedent(f"""
        import os, sys
        from jkofast._scratch import ScratchFolder
        folder = ScratchFolder({str(tmp_path)!r}, 0)
        (folder.path / "shard0.bin").write_bytes(b"x")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)   # runs the exit handlers, inherited
        os.waitpid(pid, 0)
        print(folder.path.exists())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert list(tmp_path.iterdir()) == []


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
    failure = OSError("5 requested and 0 written")           # all numpy's tofile says on a full disk

    def failing(*args):
        raise failure
    monkeypatch.setattr(jkofast.shard, "write_shuffled", failing)
    store = ShardStore("disk", 1 << 30, dtype=torch.float32, device=torch.device("cpu"), scratch=tmp_path)
    # three shards at a time
    with pytest.raises(OSError, match=r"could not write the pushed samples to .*the disk is full.*3 GiB per process"):
        store.build(iter([(torch.zeros(4, 2), None)]), 2, False, shuffle_seed=[0])
    failure = OSError(errno.EDQUOT, "Disk quota exceeded")   # a user's quota, on a shared scratch disk
    with pytest.raises(OSError, match=r"could not write the pushed samples to .*the disk is full"):
        store.build(iter([(torch.zeros(4, 2), None)]), 2, False, shuffle_seed=[0])
    failure = OSError(5, "Input/output error", "/data/big.npy")  # not the scratch disk's fault: as raised
    with pytest.raises(OSError) as err:
        store.build(iter([(torch.zeros(4, 2), None)]), 2, False, shuffle_seed=[0])
    assert err.value is failure
    store.close()


def test_the_scratch_space_needed_counts_every_process_on_the_host(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    store = ShardStore("disk", 1 << 20, dtype=torch.float32, device=torch.device("cpu"), scratch=tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 0, 5 * store.shard_bytes))
    store.check_free_space()     # room for one process's three shards
    with pytest.raises(ValueError, match=r"they need about .* \(2 processes on this host\)"):
        store.check_free_space(processes=2)


def test_a_failed_shuffle_leaves_no_bucket_files(tmp_path):
    from jkofast._shuffled_write import write_shuffled

    def blocks():
        yield np.zeros((10, 2), np.float32)
        raise OSError("the source went away")
    with pytest.raises(OSError, match="went away"):
        write_shuffled(blocks(), tmp_path / "s.bin", np.random.default_rng(0), buckets=8)
    assert not list(tmp_path.glob("*.bucket*"))


def test_an_unused_scratch_dir_is_said(tmp_path, moons, caplog):
    x = moons[0][:300].numpy()
    (tmp_path / "afile").write_text("")
    with caplog.at_level("INFO", logger="jkofast"):     # unused, so not checked: no error for a bad one
        jkofast.train(x, budget="quick", blocks=1, iters=2, hidden=8, layers=1, progress=False,
                      scratch_dir=tmp_path / "afile" / "scratch")
    assert "is not used: the pushed samples are kept in memory (they fit" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="jkofast"):
        jkofast.train(x, budget="quick", blocks=1, iters=2, hidden=8, layers=1, progress=False,
                      scratch_dir=tmp_path / "scratch")
    assert "is not used: the pushed samples are kept in memory (they fit" in caplog.text
    assert not (tmp_path / "scratch").exists()


def _holder(lock_path):
    """Another process holding ``lock_path``'s flock until its stdin closes."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@posix_only
def test_two_runs_cannot_train_into_one_output_folder(tmp_path, moons, capsys, monkeypatch):
    from jkofast.train import OUT_LOCK

    x, out = moons[0][:300].numpy(), tmp_path / "run"
    opts = dict(budget="quick", blocks=1, iters=2, hidden=8, layers=1, progress=False)
    out.mkdir()
    holder = _holder(out / OUT_LOCK)                     # a live run's
    try:
        with pytest.raises(ValueError, match="another jkofast run is training into .*wait for it to end"):
            jkofast.train(x, out=out, **opts)
        flags = ["--budget", "quick", "--iters", "2", "--blocks", "1", "--no-progress", "--no-plot", "--samples", "10"]
        assert main(["train", "--data", "moons", "--out", str(out), *flags]) == 2
        assert "another jkofast run is training into" in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (out / "checkpoint.pt").exists()
    jkofast.train(x, out=out, **opts)                    # free again once its holder is done
    assert (out / "model.pt").exists()
    # a killed holder leaves no lock behind: the kernel drops it with the process
    code = (f"import os, signal, fcntl; fd = os.open({str(out / OUT_LOCK)!r}, os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    jkofast.train(x, out=out, resume=False, **opts)
    # The command line holds the folder through its report (samples, plot, metrics.json), after
    # train() has returned: another process cannot take the lock while metrics.json is written.
    seen = []
    real = jkofast.cli.train_command._print_evaluation

    def report(*a, **k):
        probe = subprocess.run([sys.executable, "-c", (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
            "except BlockingIOError: print('held')"), str(out / OUT_LOCK)], capture_output=True, text=True)
        seen.append(probe.stdout.strip())
        return real(*a, **k)
    monkeypatch.setattr(jkofast.cli.train_command, "_print_evaluation", report)
    assert main(["train", "--data", "moons", "--out", str(out), *flags, "--restart"]) == 0
    assert seen == ["held"]


def test_a_run_that_fails_before_writing_leaves_no_output_folder(tmp_path):
    bad = np.ones((50, 2))
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jkofast.train(bad, out=tmp_path / "run", budget="quick", progress=False)
    assert not (tmp_path / "run").exists()              # not even its lock file
    (tmp_path / "kept").mkdir()                          # a folder that was there stays, lock file and all
    with pytest.raises(ValueError, match="NaN"):
        jkofast.train(bad, out=tmp_path / "kept", budget="quick", progress=False)
    assert (tmp_path / "kept").is_dir()


def test_a_scratch_disk_without_room_is_refused_before_training(tmp_path, moons, monkeypatch):
    import shutil
    from collections import namedtuple

    x = moons[0][:2000].numpy()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 10_000))
    with pytest.raises(ValueError, match=r"pushed samples go to disk under .*scratch, which has .* free; they need"):
        jkofast.train(x, budget="quick", iters=2, blocks=1, progress=False, pushed_storage="disk",
                      scratch_dir=tmp_path / "scratch")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 0, 1 << 30))
    jkofast.train(x, budget="quick", iters=2, blocks=1, progress=False, pushed_storage="disk",
                  scratch_dir=tmp_path / "scratch")
