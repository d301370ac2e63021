"""Wall time and peak memory of a piece of work (training), for ``flow.info`` and the benchmarks.

On CUDA the peak is torch's allocator high-water mark, reset at the start. On the CPU torch keeps
no such statistic, so the peak is the process's resident-set high-water mark (Linux VmHWM),
reset at the start by writing 5 to /proc/self/clear_refs; it counts everything the process holds
(the interpreter, torch's libraries, the data), and ``start_mb`` says how much was there before.
Where the reset is not allowed the peak is the process's lifetime peak, and ``kind`` says so.
Before the reset, glibc's malloc_trim returns the heap's free pages to the system: otherwise the
work could reuse memory that earlier work freed but the process still holds, and its peak would
not show it (a 64 MB tensor measured 1.5 MB after 480 MB of freed tensors).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
import time
from pathlib import Path

import torch

__all__ = ["ResourceMeter"]

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # the kernel writes kB
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """glibc's malloc_trim(0), where there is one (Linux with glibc); nothing elsewhere."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


class ResourceMeter:
    """Context manager measuring wall time and peak memory on ``device``.

    Examples:
        >>> with ResourceMeter("cpu") as meter:
        ...     _ = torch.ones(1000, 1000).sum()
        >>> sorted(meter.result())
        ['kind', 'peak_mb', 'start_mb', 'wall_seconds']
    """

    def __init__(self, device="cpu") -> None:
        self.device = torch.device(device)

    def __enter__(self) -> "ResourceMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "cuda max_memory_allocated"
        else:
            _release_free_heap()
            self.start_mb = _status_mb("VmRSS")
            if _reset_peak_rss() and _status_mb("VmHWM") is not None:
                self.kind = "process peak RSS (VmHWM, reset at the start)"
            else:
                self.kind = "process peak RSS since the process started (reset not available)"
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _status_mb("VmHWM")
            if peak is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
            self.peak_mb = peak
        self.wall_seconds = time.perf_counter() - self.start

    def result(self) -> dict:
        """``{"wall_seconds", "peak_mb", "start_mb", "kind"}`` (MB = 2^20 bytes)."""
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"wall_seconds": r(self.wall_seconds), "peak_mb": r(self.peak_mb), "start_mb": r(self.start_mb),
                "kind": self.kind}
