"""A stand-in for torch.cuda on a CPU-only torch, for dry runs of the GPU benchmarks' Python
(tests/test_bench_gpu_dry.py): "cuda" tensors are CPU tensors, events read the wall clock, graphs
run nothing, memory counters read 0. Imported only in a subprocess: it changes torch for good."""
import contextlib
import time

import torch
from torch import nn

cuda = torch.cuda
cuda.is_available = lambda: True
cuda.synchronize = lambda *a, **k: None
cuda.reset_peak_memory_stats = lambda *a, **k: None
cuda.memory_allocated = lambda *a, **k: 0
cuda.max_memory_allocated = lambda *a, **k: 0
cuda.mem_get_info = lambda *a, **k: (64 * 2 ** 30, 80 * 2 ** 30)
cuda.empty_cache = lambda: None
cuda.get_device_name = lambda *a, **k: "CPU (tests/_cuda_shim.py)"


class _Properties:
    total_memory = 80 * 2 ** 30


class _Event:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


class _Stream:
    def wait_stream(self, stream):
        pass


class _Graph:
    def replay(self):
        pass


cuda.get_device_properties = lambda *a: _Properties()
cuda.Event = _Event
cuda.Stream = _Stream
cuda.current_stream = lambda *a: _Stream()
cuda.stream = lambda s: contextlib.nullcontext()
cuda.CUDAGraph = _Graph
cuda.graph = lambda g, **k: contextlib.nullcontext()

_randn = torch.randn


def _randn_on_cpu(*args, device=None, **kwargs):
    return _randn(*args, device="cpu" if device == "cuda" else device, **kwargs)


torch.randn = _randn_on_cpu
nn.Module.cuda = lambda self, *a, **k: self
_compile = torch.compile
torch.compile = lambda fn, mode=None, **k: _compile(fn, backend="eager")  # (no autotuning on a CPU)
