"""Shared benchmark harness: timing, memory, FLOPs, a matmul ceiling, environment, results.

Every ``bench_*.py`` builds rows (dicts with at least ``case``, ``impl`` and ``median_s``) and
hands them to :func:`finish`, which prints one table, writes
``bench/results/<name>-<device kind>-<date>.json`` as ``{"env": ..., "rows": [...]}`` and, with
``--compare PATH``, prints new/old ratios per matching ``(case, impl)`` row. Numbers from
different runs or machines are not comparisons (STYLE.md 6): compare only like with like.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def import_jkofast_submodules() -> None:
    """Make ``jkofast.<submodule>`` importable even while ``jkofast/__init__.py`` cannot run.

    The package __init__ imports every public module; while one of them is still being written
    the whole package fails to import, although the engine modules a benchmark needs are fine.
    A bare package object with the right ``__path__`` lets Python import those submodules
    without running __init__. When the real package imports, it is used as is.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import jkofast  # noqa: F401
    except Exception:  # any failure inside __init__, not only ImportError
        import types
        for key in [k for k in sys.modules if k == "jkofast" or k.startswith("jkofast.")]:
            del sys.modules[key]  # drop the half-initialised package and its submodules
        stub = types.ModuleType("jkofast")
        stub.__path__ = [str(REPO / "jkofast")]
        sys.modules["jkofast"] = stub


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke run: small case, few repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads (default: torch's current setting)")
    parser.add_argument("--compare", metavar="PATH", help="stored results JSON to compare with")
    parser.add_argument("--fail-if-regression", "--fail_if_regression", action="store_true",
                        help="with --compare: exit 1 if a row is >5%% + 0.5 ms slower")
    parser.add_argument("--no-save", action="store_true", help="do not write the results JSON")
    return parser


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, min_run_time: float = 1.0, device="cpu") -> dict:
    """Median and interquartile range (seconds) of ``fn()`` by ``blocked_autorange``.

    ``num_threads`` is passed explicitly: ``benchmark.Timer`` otherwise pins 1 thread, which
    would silently measure a single core. The Timer synchronises CUDA itself.
    """
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times) * m.number_per_run}


def memory_of_call(fn, device="cpu", exclude=()) -> dict:
    """Memory of one ``fn()``: ``{"bytes": int, "measure": what was measured}``.

    CUDA: the allocator's peak above the memory already held (``max_memory_allocated``).
    CPU: torch's CPU allocations are invisible to tracemalloc and there is no peak counter, so
    we sum the bytes of the distinct storages autograd saves for backward during the call
    (``saved_tensors_hooks``): the activations a training step holds until backward, its
    "training memory". Storages of ``exclude`` (the parameters) are not activations and are
    skipped; a storage saved twice is counted once.
    """
    if torch.device(device).type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return {"bytes": torch.cuda.max_memory_allocated(device) - base, "measure": "cuda_peak"}
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen: dict = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except Exception:  # functorch wrappers have no storage; count the logical size
            key, size = ("id", id(t)), t.numel() * t.element_size()
        if key not in skip:
            seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"bytes": sum(seen.values()), "measure": "saved_for_backward"}


class _NoModuleTracking:
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn) -> int:
    """FLOPs of one ``fn()`` as FlopCounterMode counts them: 2 per multiply-add of the matrix
    products (mm, addmm, bmm, einsum's bmm), forward and backward; elementwise ops count 0."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        # The per-module breakdown installs module hooks that make autograd.grad with respect
        # to a leaf fail ("_will_engine_execute_node"), which the backward-loop peers need; we
        # only want the total, which FlopCounterMode files under "Global".
        counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_ceiling(device="cpu", dtype=torch.float32, min_run_time: float = 1.0) -> dict:
    """Measured GFLOP/s of float32 matmuls on this device: the layer-shaped
    (12000x128)@(128x128) one (the reachable ceiling for our MLP) and a large square one."""
    out = {}
    for name, (m, k, n) in {"mm_12000x128x128": (12000, 128, 128), "mm_2048": (2048, 2048, 2048)}.items():
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        t = time_call(lambda: torch.mm(a, b), min_run_time, device)
        out[name + "_gflops"] = 2 * m * k * n / t["median_s"] / 1e9
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # no git, or no commit yet
        return "uncommitted"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown cpu"


def environment(device="cpu") -> dict:
    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_kind": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": _git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Fixed-width table; ``columns`` are ``(header, key, format)``; missing values print '-'."""
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) for _, k, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for j, line in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def save_results(name: str, env: dict, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{env['device_kind']}-{env['date'][:10]}.json"
    path.write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    return path


def compare(rows: list[dict], path: str, rel: float = 0.05, floor_s: float = 0.5e-3) -> bool:
    """Print new/old median ratios per matching (case, impl); return True if any row regressed,
    i.e. is slower than old * (1 + rel) + floor_s (the floor keeps sub-ms jitter from failing)."""
    old = json.loads(Path(path).read_text())
    old_rows = {(r["case"], r["impl"]): r for r in old["rows"] if r.get("median_s")}
    print(f"\ncompare with {path} ({old['env'].get('device')}, {old['env'].get('date')})")
    regressed = False
    for r in rows:
        o = old_rows.get((r["case"], r["impl"]))
        if o is None or not r.get("median_s"):
            continue
        slow = r["median_s"] > o["median_s"] * (1 + rel) + floor_s
        regressed |= slow
        print(f"  {r['case']:<34} {r['impl']:<20} {r['median_s'] / o['median_s']:6.3f}x"
              f"{'  REGRESSION' if slow else ''}")
    return regressed


def finish(name: str, env: dict, rows: list[dict], columns, args) -> None:
    """Print the table, save the JSON (unless --no-save), compare, and exit 1 on regression."""
    print_table(rows, columns)
    if not args.no_save:
        print(f"\nsaved {save_results(name, env, rows)}")
    if args.compare and compare(rows, args.compare) and args.fail_if_regression:
        sys.exit(1)
