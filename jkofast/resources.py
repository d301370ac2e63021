"""Wall time and peak memory of a piece of work (training), for ``flow.info`` and the benchmarks.

On CUDA the peak is torch's allocator high-water mark, reset at the start. On the CPU torch keeps
no such statistic, so the peak is the process's resident-set high-water mark (Linux VmHWM),
reset at the start by writing 5 to /proc/self/clear_refs; it counts everything the process holds
(the interpreter, torch's libraries, the data), and ``start_mb`` says how much was there before.
Where the reset is not allowed the peak is the process's lifetime peak, and ``kind`` says so.
"""
from __future__ import annotations

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
