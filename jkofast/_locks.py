"""Advisory file locks (``flock``) that live exactly as long as the process holding them: the
kernel drops a lock when its process dies, however it dies (SIGKILL and the OOM killer too), so
a lock can never be left behind by a crash. Used to mark scratch folders as in use and to keep
two runs from writing into the same output folder.

Where ``fcntl`` is missing (Windows) nothing is locked: the functions return ``None`` and report
every lock as free of other holders."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["try_lock", "new_locked_file", "unlock", "held_lock"]


def try_lock(path: Path, *, create: bool) -> tuple[bool, int | None]:
    """Take the lock of the file ``path`` (created if ``create``) without waiting:
    ``(True, fd)`` when taken (keep ``fd`` open to hold it; :func:`unlock` releases it),
    ``(False, None)`` when another holds it. A missing file (``create=False``) raises OSError;
    so does a filesystem without locks."""
    if fcntl is None:  # pragma: no cover
        return True, None
    fd = os.open(path, (os.O_CREAT if create else 0) | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False, None
    except OSError:
        os.close(fd)
        raise
    return True, fd


def new_locked_file(path: Path) -> int | None:
    """Create ``path`` already locked by this process: locked under a temporary name, then
    renamed (the lock is on the file, which the rename keeps), so no other process ever sees
    the file unlocked while this one lives. None where locks are missing or unsupported."""
    staging = path.with_name(f"{path.name}.new")
    try:
        _, fd = try_lock(staging, create=True)
    except OSError:
        return None
    if fd is not None:
        os.replace(staging, path)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


_HELD: dict[Path, int] = {}  # the locks held_lock holds in this process, and how deeply nested


@contextlib.contextmanager
def held_lock(path: Path | None) -> Iterator[None]:
    """Hold the lock of ``path`` (created, with its folder: an output folder's lock file) for the
    block; a ValueError naming the folder when another live process holds it. Nested calls in one process for the same path share the
    outer lock (the command line holds its output folder's across train() and the report that
    follows). A folder created here that holds nothing but the lock file at the end (the run
    failed before writing) is removed again. ``path`` None: nothing to lock."""
    if path is None:
        yield
        return
    path = Path(os.path.abspath(path))
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        taken, fd = try_lock(path, create=True)
    except OSError:  # a filesystem without locks (some network mounts): go on unguarded
        taken, fd = True, None
    if not taken:
        raise ValueError(f"another jkofast run is training into {path.parent} (it holds {path}); wait for it to "
                         "end, or pass another output folder")
    _HELD[path] = 1
    try:
        yield
    finally:
        del _HELD[path]
        if created and [p.name for p in path.parent.iterdir()] == [path.name]:
            path.unlink(missing_ok=True)
            path.parent.rmdir()
        unlock(fd)
