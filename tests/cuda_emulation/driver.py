"""Python side of the CUDA emulation (see cuda_shim.h): builds emulate.cpp with the host compiler
and calls the kernels on CPU tensors through ctypes, filling the parameters as the torch glue does.

Each call takes the stack height ``rows`` (8, 16, ... 128; what ops/tile_plan.h would pick on a GPU
is ``choose_rows``) and the ``grid`` (blocks; each loops over its tiles), so tests can force the
chunked tangent rows and the per-block gradient parts that small problems would not reach.

``JKOFAST_EMULATION_FLAGS`` adds compiler flags to the build: .ci/emulation_sanitized passes
AddressSanitizer's and UBSan's (the kernels' out-of-bounds accesses and undefined behaviour, on
tensors torch allocated and on each block's shared memory, reported where they happen), then
ThreadSanitizer's (two threads' accesses to one address, one a write, with no barrier between
them: cuda_shim.h).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ACTIVATIONS = {"softplus": 0, "tanh": 1, "silu": 2}
DIVERGENCES = {None: 0, "exact": 1, "hutchinson": 2}
TABLEAUS = {"rk4": 0, "rk4-3/8": 1}
MAX_WEIGHTS = 16


def sources() -> list[Path]:
    return sorted([HERE / "emulate.cpp", HERE / "cuda_shim.h", *(REPO / "csrc" / "cuda").glob("*.cuh"),
                   REPO / "csrc" / "cuda" / "mlp_params.h", *(REPO / "csrc" / "ops").glob("*.h")])


def build(cache_dir: Path | None = None, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile the emulation library (cached by a hash of its sources and flags)."""
    flags = ("-std=c++20", "-O1", "-g", "-pthread", "-fPIC", "-shared", *extra_flags,
             *os.environ.get("JKOFAST_EMULATION_FLAGS", "").split())
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in sources():
        digest.update(path.read_bytes())
    cache_dir = Path(cache_dir or os.environ.get("JKOFAST_EMULATION_CACHE", Path(tempfile.gettempdir()) / "jkofast-emu"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib = cache_dir / f"emulate-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX) to build the CUDA emulation")
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, *flags, f"-I{REPO / 'csrc'}", f"-I{HERE}", str(HERE / "emulate.cpp"), "-o", str(tmp)]
        # Not under the sanitizer runtime a sanitized test run preloads (nor with its log path):
        # the compiler is not what is being checked.
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.endswith("SAN_OPTIONS")}
        subprocess.run(cmd, check=True, env=env)
        tmp.replace(lib)
    return lib


class Emulator:
    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        for name in ("emu_field", "emu_rk4", "emu_jko_loss"):
            fn = getattr(self.lib, name)
            fn.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double),
                           ctypes.POINTER(ctypes.c_void_p)]
            fn.restype = ctypes.c_int
        self.lib.emu_fault.restype = ctypes.c_char_p
        self.lib.emu_tf32_round.argtypes = [ctypes.c_float]
        self.lib.emu_tf32_round.restype = ctypes.c_float
        for probe in ("emu_race_probe", "emu_local_overrun_probe"):
            getattr(self.lib, probe).argtypes = [ctypes.c_int]
            getattr(self.lib, probe).restype = ctypes.c_float
        #: the sanitizer the library was built with: None, "address" (with UBSan) or "thread"
        self.sanitizer = {0: None, 1: "address", 2: "thread"}[self.lib.emu_sanitizer()]
        self.lib.emu_plan.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int,
                                                             ctypes.POINTER(ctypes.c_int64)]
        self.lib.emu_choose_rows.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int64]
        self.lib.emu_choose_rows.restype = ctypes.c_int
        self.lib.emu_choose_launch.argtypes = ([ctypes.c_int64] * 4 + [ctypes.c_int] + [ctypes.c_int64] * 2
                                               + [ctypes.c_int, ctypes.c_int64] + [ctypes.c_int] * 4
                                               + [ctypes.POINTER(ctypes.c_int64)])
        self.lib.emu_choose_launch.restype = None
        self.lib.emu_stage_store_ways.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] * 3
        self.lib.emu_stage_store_ways.restype = ctypes.c_int
        self.lib.emu_fragment_load_ways.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
        self.lib.emu_fragment_load_ways.restype = ctypes.c_int
        self.lib.emu_weight_grad_load_ways.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
        self.lib.emu_weight_grad_load_ways.restype = ctypes.c_int
        self.lib.emu_moves_part_after.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
        self.lib.emu_needs_totals.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_int]
        self.lib.emu_field_tiles_per_total.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
        self.lib.emu_set_schedule.argtypes = [ctypes.c_int]
        self.lib.emu_within_limits.argtypes = [ctypes.c_int64] * 3
        self.lib.emu_within_limits.restype = ctypes.c_int

    def set_schedule(self, schedule: int) -> None:
        """Order of the threads a barrier releases: 0 ascending, 1 descending, >= 2 shuffled (seed)."""
        self.lib.emu_set_schedule(schedule)

    def set_smem_offset(self, nbytes: int) -> None:
        """Shift each block's shared memory nbytes past its alignment (0: aligned, the default)."""
        self.lib.emu_set_smem_offset(nbytes)

    # ------------------------------------------------------------------ plan
    def plan(self, dim, time, hidden, tangent_rows, dtype, rows) -> dict:
        out = (ctypes.c_int64 * 5)()
        self.lib.emu_plan(dim, dim + int(time), hidden, tangent_rows, _itemsize(dtype), rows, out)
        return dict(zip(("rows", "samples", "tangents", "chunks", "smem_bytes"), list(out)))

    def choose_rows(self, dim, time, hidden, tangent_rows, dtype, budget) -> int:
        return self.lib.emu_choose_rows(dim, dim + int(time), hidden, tangent_rows, _itemsize(dtype), budget)

    def choose_launch(self, dim, time, hidden, tangent_rows, dtype, batch, *, smem_per_block=232448,
                      multiprocessors=132, smem_per_sm=233472, max_blocks_per_sm=8, forced_rows=0,
                      exact_rows=False, grid_cap=0) -> dict:
        """The glue's plan and grid for ``batch`` samples (default GPU: an H100's shared memory and
        132 SMs); forced_rows / exact_rows / grid_cap as the kernel check's override and
        JKOFAST_CUDA_ROWS set them."""
        out = (ctypes.c_int64 * 4)()
        self.lib.emu_choose_launch(dim, dim + int(time), hidden, tangent_rows, _itemsize(dtype), batch, smem_per_block,
                                   multiprocessors, smem_per_sm, max_blocks_per_sm, forced_rows, int(exact_rows),
                                   grid_cap, out)
        return dict(zip(("rows", "grid", "found", "samples"), list(out)))

    def stage_store_ways(self, dim, time, hidden, tangent_rows, dtype, rows, transposed) -> int:
        """Worst bank conflict (ways) of staging a weight chunk; -1: positions not a bijection."""
        return self.lib.emu_stage_store_ways(dim, dim + int(time), hidden, tangent_rows, _itemsize(dtype), rows,
                                             int(transposed))

    def fragment_load_ways(self, dim, time, hidden, tangent_rows, rows, operand) -> int:
        """Worst bank conflict (ways) of a TF32 fragment load: operand "a" (stack) or "b" (stage)."""
        return self.lib.emu_fragment_load_ways(dim, dim + int(time), hidden, tangent_rows, rows,
                                               {"a": 0, "b": 1}[operand])

    def weight_grad_load_ways(self, dim, time, hidden, tangent_rows, rows) -> int:
        """Worst bank conflict (ways) of the TF32 weight-gradient product's 8-byte operand loads."""
        return self.lib.emu_weight_grad_load_ways(dim, dim + int(time), hidden, tangent_rows, rows)

    # ------------------------------------------------------------------ field
    def field(self, x, t, weights, biases, activation="softplus", beta=1.0, divergence=None, probes=None, *,
              rows, grid, tf32=False, grad_f=None, grad_div=None):
        """Forward: (f, div or None). With grad_f: (grad_x, grad_t or None, grad_weights, grad_biases)."""
        keep = []
        x = _c(x, keep)
        dim, batch = x.shape[1], x.shape[0]
        tangent_rows = 0 if divergence is None else (dim if divergence == "exact" else probes.shape[1])
        t_stride = 0
        if t is not None:
            t_stride = t.stride(0) if t.dim() == 1 else 0
            keep.append(t)
        backward = grad_f is not None
        ints = [_itemsize(x.dtype), int(tf32), int(backward), rows, grid, batch, dim, weights[0].shape[0],
                len(weights), int(t is not None), ACTIVATIONS[activation], DIVERGENCES[divergence], tangent_rows,
                t_stride]
        nan = lambda *shape: torch.full(shape, float("nan"), dtype=x.dtype)  # noqa: E731
        f, div = nan(batch, dim), nan(batch)
        gx, gt = nan(batch, dim), nan(batch)
        gw = [nan(*w.shape) for w in weights]
        gb = [nan(*b.shape) for b in biases]
        ptrs = [x, t, _c(probes, keep) if probes is not None else None, f, div if divergence else None,
                _c(grad_f, keep) if backward else None,
                _c(grad_div, keep) if backward and divergence else None, gx, gt if t is not None else None]
        ptrs += _padded([_c(w, keep) for w in weights]) + _padded([_c(b, keep) for b in biases])
        ptrs += _padded(gw) + _padded(gb)
        self._call(self.lib.emu_field, ints, [beta], ptrs)
        if backward:
            return gx, (gt if t is not None else None), gw, gb
        return f, (div if divergence else None)

    # ------------------------------------------------------------------ rk4
    def rk4(self, x, weights, biases, t0, t1, steps, *, time=True, activation="softplus", beta=1.0,
            tableau="rk4", divergence="exact", probes=None, rows, grid, tf32=False, grad=None, states=None):
        """Forward: (x1, logdet, kinetic, states). With grad=(g_x1, g_logdet, g_kinetic) and the
        forward's states: (grad_x, grad_weights, grad_biases)."""
        keep = []
        x = _c(x, keep)
        dim, batch = x.shape[1], x.shape[0]
        tangent_rows = 0 if divergence is None else (dim if divergence == "exact" else probes.shape[2])
        backward = grad is not None
        ints = [_itemsize(x.dtype), int(tf32), int(backward), rows, grid, batch, dim, weights[0].shape[0],
                len(weights), int(time), ACTIVATIONS[activation], DIVERGENCES[divergence], tangent_rows, steps,
                TABLEAUS[tableau]]
        nan = lambda *shape: torch.full(shape, float("nan"), dtype=x.dtype)  # noqa: E731
        x1, logdet, kinetic, st = nan(batch, dim), nan(batch), nan(batch), nan(steps, batch, dim)
        gx = nan(batch, dim)
        gw = [nan(*w.shape) for w in weights]
        gb = [nan(*b.shape) for b in biases]
        g = [_c(v, keep) for v in grad] if backward else [None] * 3
        ptrs = [x, _c(probes, keep) if probes is not None else None, x1, logdet, kinetic, st, *g,
                _c(states, keep) if backward else None, gx]
        ptrs += _padded([_c(w, keep) for w in weights]) + _padded([_c(b, keep) for b in biases])
        ptrs += _padded(gw) + _padded(gb)
        self._call(self.lib.emu_rk4, ints, [beta, float(t0), (float(t1) - float(t0)) / steps], ptrs)
        if backward:
            return gx, gw, gb
        return x1, logdet, kinetic, st

    # ------------------------------------------------------------------ jko_block_loss
    def jko_loss(self, x0, weights, biases, steps, *, endpoint_weight, path_weight, time=True,
                 activation="softplus", beta=1.0, tableau="rk4", divergence="exact", probes=None, rows, grid,
                 tf32=False):
        """The fused training kernel over [0, 1]: (terms (B, 4), grad_x0, grad_weights, grad_biases)."""
        keep = []
        x0 = _c(x0, keep)
        dim, batch = x0.shape[1], x0.shape[0]
        tangent_rows = 0 if divergence is None else (dim if divergence == "exact" else probes.shape[2])
        ints = [_itemsize(x0.dtype), int(tf32), 1, rows, grid, batch, dim, weights[0].shape[0], len(weights),
                int(time), ACTIVATIONS[activation], DIVERGENCES[divergence], tangent_rows, steps, TABLEAUS[tableau]]
        nan = lambda *shape: torch.full(shape, float("nan"), dtype=x0.dtype)  # noqa: E731
        terms, gx = nan(batch, 4), nan(batch, dim)
        gw = [nan(*w.shape) for w in weights]
        gb = [nan(*b.shape) for b in biases]
        ptrs = [x0, _c(probes, keep) if probes is not None else None, terms, gx]
        ptrs += _padded([_c(w, keep) for w in weights]) + _padded([_c(b, keep) for b in biases])
        ptrs += _padded(gw) + _padded(gb)
        reals = [beta, 0.0, 1.0 / steps, float(endpoint_weight), float(path_weight)]
        self._call(self.lib.emu_jko_loss, ints, reals, ptrs)
        return terms, gx, gw, gb

    def _call(self, fn, ints, reals, ptrs):
        c_ints = (ctypes.c_int64 * len(ints))(*ints)
        c_reals = (ctypes.c_double * len(reals))(*reals)
        c_ptrs = (ctypes.c_void_p * len(ptrs))(*[None if p is None else p.data_ptr() for p in ptrs])
        rc = fn(c_ints, c_reals, c_ptrs)
        if rc == 2:
            raise RuntimeError(f"emulated kernel broke a rule of the hardware: {self.lib.emu_fault().decode()}")
        if rc != 0:
            raise RuntimeError("emulated kernel refused its arguments")


def _itemsize(dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _c(t, keep):
    t = t.detach().contiguous()
    keep.append(t)
    return t


def _padded(tensors):
    return list(tensors) + [None] * (MAX_WEIGHTS - len(tensors))
