"""Shared benchmark harness: timing, memory, FLOPs, matmul ceiling, environment, results.

``bench_*.py`` builds rows (``case``, ``impl``, ``median_s`` ...) and calls :func:`finish`: a
table, ``results/<name>-<device kind>-<date>.json``, ``--compare`` ratios per (case, impl).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def import_jkofast_submodules() -> None:
    """Import ``jkofast.<submodule>``: the installed package when it has the compiled ops (the
    checkout's jkofast/ has no built ``_C``), else the checkout's, even while its
    ``jkofast/__init__.py`` fails (a bare package with its ``__path__`` skips __init__).
    Idempotent: a bench that imports another bench script calls it twice."""
    if "jkofast" in sys.modules:
        return
    try:
        import jkofast._C  # noqa: F401
        import jkofast
        print(f"benchmarking the installed jkofast at {Path(jkofast.__file__).parent}", file=sys.stderr)
        return
    except Exception:
        for key in [k for k in sys.modules if k.split(".")[0] == "jkofast"]:
            del sys.modules[key]
    sys.path.insert(0, str(REPO))
    try:
        import jkofast  # noqa: F401
    except Exception:  # any failure inside __init__, not only ImportError
        import types
        for key in [k for k in sys.modules if k.split(".")[0] == "jkofast"]:
            del sys.modules[key]  # the half-initialised package and its submodules
        sys.modules["jkofast"] = stub = types.ModuleType("jkofast")
        stub.__path__ = [str(REPO / "jkofast")]


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="smoke run: small case, few repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    parser.add_argument("--compare", metavar="PATH", help="stored results JSON to compare with")
    parser.add_argument("--fail-if-regression", "--fail_if_regression", action="store_true",
                        help="with --compare: exit 1 if a row is 5%% + 0.5 ms slower")
    parser.add_argument("--no-save", action="store_true", help="write no results JSON")
    return parser


def _timer(fn) -> benchmark.Timer:
    # Explicit num_threads: Timer otherwise pins 1. It synchronises CUDA itself.
    return benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def time_call(fn, min_run_time: float = 1.0) -> dict:
    """Median and IQR (s) of ``fn()`` by ``blocked_autorange``."""
    m = _timer(fn).blocked_autorange(min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times) * m.number_per_run}


def time_interleaved(fns: dict, rounds: int = 15, budget_s: float = 120.0, min_rounds: int = 5,
                     min_sample_s: float = 0.05) -> dict:
    """Median and IQR (s) per function, one Timer sample of each per round, order rotated. Why:
    interference on a shared machine comes in bursts (OpenMP threads spin while a core is
    preempted), making a row timed alone inside one read 5-20x slow; interleaved, bursts hit
    every row and the median over rounds drops them."""
    names = list(fns)
    # _timeit: timeit() adds 2+ warm-up calls to every sample; the caller warms up once.
    timers = {n: _timer(fns[n])._timeit for n in names}
    numbers = {n: max(1, math.ceil(min_sample_s / timers[n](1))) for n in names}
    times = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(timers[n](numbers[n]) / numbers[n])
    out = {}
    for n, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else ts * 3
        out[n] = {"median_s": statistics.median(ts), "iqr_s": q3 - q1, "runs": len(ts) * numbers[n]}
    return out


def memory_of_call(fn, device="cpu", exclude=()) -> dict:
    """``{"bytes", "measure"}`` of one ``fn()``. CUDA: the allocator's peak above what was held.
    CPU (no peak counter; tracemalloc can't see torch): "training memory", bytes of distinct
    storages autograd saves for backward (activations), less ``exclude``'s (parameters)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"bytes": torch.cuda.max_memory_allocated(device) - base, "measure": "cuda_peak"}
    skip, seen = {p.untyped_storage().data_ptr() for p in exclude}, {}

    def pack(t):
        try:
            key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        except Exception:  # functorch wrappers have no storage: count the logical size
            key, size = id(t), t.numel() * t.element_size()
        if key not in skip:
            seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"bytes": sum(seen.values()), "measure": "saved_for_backward"}


class _NoModuleTracking:  # FlopCounterMode's module tracker minus its hooks
    parents = {"Global"}
    __enter__ = __exit__ = lambda self, *args: None


def count_flops(fn) -> int:
    """FLOPs of one ``fn()`` by FlopCounterMode: 2 per multiply-add of matrix products (mm,
    addmm, bmm, einsum), forward and backward; elementwise ops count 0."""
    counter = FlopCounterMode(display=False)
    # Its module hooks break autograd.grad w.r.t. a leaf ("_will_engine_execute_node").
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_cases(device="cpu", dtype=torch.float32) -> dict:
    """name -> (fn, FLOPs): (12000x128)@(128x128), the rate a width-128 MLP can reach, and
    2048^3, the machine's peak. Time them among the rows."""
    out = {}
    for m, k, n in ((12000, 128, 128), (2048, 2048, 2048)):
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        out[f"mm_{m}x{k}x{n}"] = (lambda a=a, b=b: torch.mm(a, b)), 2 * m * k * n
    return out


def _busy_ticks(pids=()) -> tuple[int, int]:
    """(busy clock ticks of the machine, of this process and of the processes ``pids``)."""
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = 0
    for pid in ("self", *pids):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own += int(fields[11]) + int(fields[12])  # utime + stime
    return sum(cpu) - cpu[3] - cpu[4], own  # minus idle, iowait


class foreign_cpu_load:
    """``with foreign_cpu_load() as load:``, then ``load.cores``: mean cores other processes
    kept busy meanwhile (None off Linux). Above ~0.2, flag the timings as contaminated.
    ``pids``: the benchmark's own worker processes, alive until after the block (not foreign)."""

    def __init__(self, pids=()):
        self.pids = tuple(pids)

    def __enter__(self):
        try:
            self.cores, self._start = None, (time.perf_counter(), *_busy_ticks(self.pids))
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *args):
        if self._start:
            (t0, all0, own0), (all1, own1) = self._start, _busy_ticks(self.pids)
            ticks = (all1 - all0) - (own1 - own0)
            self.cores = max(0.0, ticks / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - t0))


def _git_commit() -> str:
    """The checkout's commit; where there is no git history (the lent GPU machine gets a copy of
    the tree without .git), the sources' stamp that .ci/gpu_session.sh exports
    (JKOFAST_SOURCE_STAMP, from .ci/gpu_source_stamp), which ties the results to the sources."""
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:  # (no git program)
        git = None
    if git is not None and git.returncode == 0:
        return git.stdout.strip()
    stamp = os.environ.get("JKOFAST_SOURCE_STAMP")
    return f"sources {stamp}" if stamp else "uncommitted"  # or no commit yet


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown cpu"


def environment(device="cpu") -> dict:
    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_kind": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
        "commit": _git_commit(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (header, key, format); missing values print '-'."""
    cells = [[h for h, _, _ in columns]]
    cells += [["-" if r.get(k) is None else format(r[k], f) for _, k, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for j, line in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def save_results(name: str, env: dict, rows: list[dict]) -> Path:
    """Write the results as strict JSON (NaN, a failed check, as null: jq refuses NaN), whole or
    not at all (a benchmark killed by its time limit mid-write keeps the previous row's file)."""
    from jkofast.checkpoint import write_json  # (imported by then: import_jkofast_submodules)

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{env['device_kind']}-{env['date'][:10]}.json"
    write_json(path, {"env": env, "rows": rows})
    return path


def compare(rows: list[dict], path: str, rel: float = 0.05, floor_s: float = 0.5e-3) -> bool:
    """Print new/old median ratio per matching (case, impl, and rows where a row has them: the
    stack heights of sweep_gpu_rows.py); True if a row is slower than old * (1 + rel) + floor_s
    (the floor keeps sub-ms jitter from failing)."""
    old = json.loads(Path(path).read_text())
    olds = {_key(r): r["median_s"] for r in old["rows"] if r.get("median_s")}
    print(f"\ncompare with {path} ({old['env'].get('device')}, {old['env'].get('date')})")
    regressed = False
    for r in rows:
        if (o := olds.get(_key(r))) and r.get("median_s"):
            slow = r["median_s"] > o * (1 + rel) + floor_s
            regressed |= slow
            print(f"  {r['case']:<34} {r['impl']:<20} {r['median_s'] / o:6.3f}x" + " REGRESSION" * slow)
    return regressed


def _key(row: dict) -> tuple:
    return row["case"], row["impl"], row.get("rows")


def finish(name: str, env: dict, rows: list[dict], columns, args) -> None:
    """Print the table, save the JSON (unless --no-save), compare, exit 1 on a regression."""
    print_table(rows, columns)
    if not args.no_save:
        print(f"\nsaved {save_results(name, env, rows)}")
    if args.compare and compare(rows, args.compare) and args.fail_if_regression:
        sys.exit(1)
