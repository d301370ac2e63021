"""Scratch folders for pushed samples on disk, and the removal of those a killed run left behind.

A run deletes its folder when it ends, on an error or Ctrl-C included. A process killed outright
(SIGKILL, the OOM killer, a scheduler's time limit, torchrun tearing down its workers) runs no
cleanup, and its folder, as large as its share of the data, would stay on the disk. So each
folder holds a lock file that its process keeps locked (``flock``) while it lives: the kernel
drops the lock when the process dies, however it dies. A new run removes the folders of its
kind in the same parent whose lock it can take, of its own host only (a network filesystem may
keep locks per host: another host's live folder could look free from here). The lock is taken before the lock file gets its
name, so a folder whose owner is starting up is never mistaken for an abandoned one; a folder
without a lock file (being created, or not ours) is left alone.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ._locks import new_locked_file, try_lock, unlock

__all__ = ["ScratchFolder", "PREFIX", "scratch_parent"]

PREFIX = "jkofast-rank"
_LOCK = ".lock"
# This process's own live folders, never judged by their lock: where flock is emulated with POSIX
# locks (NFS), a second descriptor of the same process takes a lock the first one holds.
# Each maps to the process id that made it: a forked child inherits the dict (and the exit
# handler below), and must not delete its parent's folders when it exits.
_LIVE: dict[Path, int] = {}


def _host() -> str:
    """This machine's name as it goes into folder names (a shared scratch folder on a network
    filesystem may hold other hosts' folders, whose locks this host cannot see there: those are
    never judged, only this host's)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _owned_here(name: str) -> bool:
    match = re.fullmatch(rf"{PREFIX}\d+-(.+)-[^-]+", name)
    return match is not None and match.group(1) == _host()


def scratch_parent(parent: str | os.PathLike | None) -> Path:
    """Where the scratch folders go: ``parent``, default the system's temporary folder."""
    return Path(parent) if parent is not None else Path(tempfile.gettempdir())


@atexit.register
def _remove_live_folders() -> None:
    """At the interpreter's exit, this process's folders that no :meth:`ScratchFolder.remove`
    reached (a Ctrl-C or SIGTERM between writing the shards and the code that closes them): the
    process is ending, so no shard is in use any more."""
    for path, pid in list(_LIVE.items()):
        if pid == os.getpid():
            _delete(path)


class ScratchFolder:
    """A new folder ``jkofast-rank{rank}-{host}-*`` in ``parent`` (default the system's temporary
    folder), locked while this object lives; :meth:`remove` deletes it. Creating one first
    removes this host's abandoned folders in ``parent`` (``removed`` lists them)."""

    def __init__(self, parent: str | os.PathLike | None, rank: int) -> None:
        parent = scratch_parent(parent)
        parent.mkdir(parents=True, exist_ok=True)
        self.removed = remove_abandoned(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{rank}-{_host()}-", dir=parent))
        _LIVE[self.path.resolve()] = os.getpid()
        self._lock = new_locked_file(self.path / _LOCK)

    def remove(self) -> None:
        _delete(self.path)
        unlock(self._lock)
        self._lock = None
        _LIVE.pop(self.path.resolve(), None)


def remove_abandoned(parent: Path) -> list[Path]:
    """Delete this host's scratch folders in ``parent`` whose process is gone (their lock is free)."""
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if _owned_here(p.name) and p.is_dir() and p.resolve() not in _LIVE]
    except OSError:
        return []
    for folder in candidates:
        try:
            taken, fd = try_lock(folder / _LOCK, create=False)
        except OSError:  # no lock file (starting up, or not a folder of ours), or no locks here
            continue
        if taken and fd is not None:
            try:
                _delete(folder)
            finally:
                unlock(fd)
            removed.append(folder)
    return removed


def _delete(folder: Path) -> None:
    """Delete a scratch folder, its lock file last: a deletion stopped halfway (Ctrl-C, SIGKILL)
    leaves a folder that still has its lock file, which the next run removes; a folder without
    one is never touched (it may be starting up), so deleting the lock first (rmtree's listing
    order put it anywhere) could leave its shards on the disk for good."""
    try:
        entries = [e for e in folder.iterdir() if e.name != _LOCK]
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    with contextlib.suppress(OSError):
        (folder / _LOCK).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
