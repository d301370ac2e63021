"""Memory: the peak a run used (reported in the log and ``flow.info``) and what is free (the rule
that keeps pushed samples in memory or on disk)."""
from __future__ import annotations

import resource
import sys

import torch

__all__ = ["peak_memory", "available_bytes"]


def _peak_rss_bytes() -> int:
    # ru_maxrss is the high-water mark of the resident set: kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory(device: torch.device | str = "cpu") -> dict:
    """This process's peak memory so far: ``{"rss_bytes": ...}`` (host, resident set, file pages
    mapped into the process included) and ``"cuda_bytes"`` (torch's peak allocation) on a GPU.

    Examples:
        >>> peak_memory()["rss_bytes"] > 0
        True
    """
    out = {"rss_bytes": _peak_rss_bytes()}
    device = torch.device(device)
    if device.type == "cuda":
        out["cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def _host_available_bytes() -> int:
    """MemAvailable (Linux): what can be allocated without swapping; total RAM elsewhere."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory where tensors on ``device`` live: the GPU's free memory, or the host's."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _host_available_bytes()


def peak_memory_of_run(dist) -> dict:
    """Peak memory of every process of a run (``dist``: distributed.Dist), gathered on each:
    ``{"rss_bytes": rank 0's, "rss_bytes_max": the largest rank's, "per_rank": [...]}`` plus
    ``"cuda_bytes"``/``"cuda_bytes_max"`` on GPUs."""
    per_rank = dist.gather(peak_memory(dist.device), "gathering the peak memory")
    out = {**per_rank[0], "per_rank": per_rank}
    for key in per_rank[0]:
        out[f"{key}_max"] = max(r[key] for r in per_rank)
    return out
