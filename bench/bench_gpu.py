"""The fused CUDA kernels against the pure-torch reference on one GPU, all rows in one run.

Cases (softplus, time input, 3 hidden layers, 3 classical RK4 steps over [0, 1], h = 1):
(d=2, width 64), (d=6, width 128), (d=63, width 256), each at batch 2k, 16k and 128k. Work: one
block's training step, block_loss forward + backward (the gradients of every weight and bias; no
optimizer, the same for every row).

Implementations, on identical weights and inputs:

* ``fused``: jkofast's CUDA ops (backend="compiled": the jko_block_loss kernel, loss and gradients
  in one launch, plus the gradient reduction), float32 with TF32 off and on;
* ``ops``: jkofast's CUDA ops without the fused loss (block_loss(fused=False): one rk4_block launch
  forward, one backward plus the reduction), on the (d=6, width 128) case: what the fusion gains;
* ``eager``: the pure-torch reference (backend="torch"), TF32 matmuls off and on;
* ``compile``: the reference under torch.compile(mode="max-autotune"), TF32 on (the stronger
  baseline), on the (d=6, width 128) case only unless --compile-all (minutes of autotuning each);
* ``graph``: the reference's step captured in one CUDA graph and replayed, TF32 off and on.

The graph rows and then the compile rows run after every case's other rows (the table is sorted
back): a failed capture cannot spoil a later measurement, and a time limit costs compile rows first.

TFLOP/s divide the reference's FLOPs (FlopCounterMode: matrix products, 2 per multiply-add, forward
and backward, counted at a small batch and scaled by the batch) by each row's median time;
``% mm`` is that over a large torch.mm (8192^3) measured in the same run at the row's precision.
``peak MB``: the allocator's peak above what was allocated before the step. Rows the reference
cannot hold in memory are skipped (its peak is measured at a small batch and scaled).
``check``: the fused loss's and gradients' relative error against the float64 reference (batch 512;
the goal case also at batch 16k, in the JSON's environment: check_b16384_fp32 / _tf32).

The JSON (bench/results/gpu-cuda-<date>.json; gpu-goal-cuda-... with --goal, gpu-quick-cuda-...
with --quick) is rewritten after every row, so a run cut short keeps what it measured. Runs in
about 3-6 minutes on an H100 (compile rows dominate).

    python bench/bench_gpu.py [--goal | --quick] [--compile-all] [--budget SECONDS] [--compare PATH]

``--goal`` runs the goal case alone (about 1-3 minutes, most of it the two compile rows): the
first thing a short GPU session runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import time

import torch

import _harness as H

H.import_jkofast_submodules()
from jkofast import integrate  # noqa: E402
from jkofast.field import VelocityField  # noqa: E402
from jkofast.jko_loss import block_loss  # noqa: E402

LAYERS, STEPS, STEP_H = 3, 3, 1.0
CASES = [(2, 64), (6, 128), (63, 256)]
BATCHES = [2048, 16384, 131072]
GOAL_BATCHES = [2048, 16384]  # the goals' two sizes: (a) at the first, (b) at the second, (c)-(e) at both
GOAL = (6, 128)
FLOP_BATCH = 256  # the reference's FLOPs are counted here and scaled (they are linear in the batch)
CHECK_BATCH = 512  # the float64 reference of the accuracy check (d=63: ~10 GB)
GOAL_CHECK_BATCH = 16384  # the goal case checked again here (float32 sums over many tiles; ~9 GB)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync_time(fn, target_s: float = 0.6, max_reps: int = 50) -> dict:
    """Median and IQR of fn() by CUDA events, after one warm-up; as many repeats as fit target_s
    (at least 3)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    first = start.elapsed_time(end) / 1e3
    reps = int(min(max_reps, max(3, target_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
    return {"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "runs": reps}


def peak_memory(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def loss_fn(field, backend, fused=True):
    return lambda x0: block_loss(field, x0, STEP_H, STEPS, backend=backend, fused=fused)[0]


def eager_step(field, x0, backend, fused=True):
    loss = loss_fn(field, backend, fused)

    def step():
        field.zero_grad(set_to_none=True)
        loss(x0).backward()
    return step


def compiled_step(field, x0, mode):
    loss = torch.compile(loss_fn(field, "torch"), mode=mode)

    def step():
        field.zero_grad(set_to_none=True)
        loss(x0).backward()
    return step


@contextlib.contextmanager
def device_stage_times():
    """The reference makes each stage's time with torch.as_tensor(float, device=cuda), a copy from
    the host that a CUDA graph cannot capture; here the warm-up makes each once and the capture
    reuses them (the same values, so the same computation)."""
    cache = {}
    plain = integrate.as_time

    def cached(t, x):
        key = (float(t), x.dtype, x.device)
        if key not in cache:
            cache[key] = plain(t, x)
        return cache[key]

    integrate.as_time = cached
    try:
        yield cache
    finally:
        integrate.as_time = plain


def graph_step(field, x0):
    """The reference's forward + backward captured in one CUDA graph (static input x0)."""
    loss = loss_fn(field, "torch")
    with device_stage_times() as times:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture, as torch.cuda.graph requires
                field.zero_grad(set_to_none=True)
                loss(x0).backward()
        torch.cuda.current_stream().wait_stream(side)
        field.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss(x0).backward()

    def replay(times=times):  # (holds the stage times: the captured kernels read their memory)
        graph.replay()
    return replay


def loss_and_grads(field, x0, backend):
    field.zero_grad(set_to_none=True)
    loss = loss_fn(field, backend)(x0)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in field.parameters()])


def check(field, x0, precision) -> float:
    """Relative error of the fused loss and gradients against the reference run in float64."""
    f64 = copy.deepcopy(field).double()
    ref_loss, ref_grad = loss_and_grads(f64, x0.double(), "torch")
    set_tf32(precision == "tf32")
    loss, grad = loss_and_grads(field, x0, "compiled")
    return max(abs(loss - ref_loss) / abs(ref_loss), ((grad.double() - ref_grad).norm() / ref_grad.norm()).item())


def matmul_ceilings() -> dict:
    """TFLOP/s of an 8192^3 torch.mm in float32 and TF32, and of a skinny (131072*7 x 128) @ (128 x 128)."""
    out = {}
    for precision in ("fp32", "tf32"):
        set_tf32(precision == "tf32")
        for name, (m, k, n) in {"mm_8192": (8192, 8192, 8192), "mm_skinny": (131072 * 7, 128, 128)}.items():
            a = torch.randn(m, k, device="cuda")
            b = torch.randn(k, n, device="cuda")
            t = sync_time(lambda: torch.mm(a, b), target_s=0.5)["median_s"]
            out[f"{name}_{precision}_tflops"] = 2 * m * k * n / t / 1e12
            a = b = None  # (freed before the next pair)
    torch.cuda.empty_cache()
    return out


def row_impls(dim: int, width: int, args) -> list[tuple[str, str]]:
    """The (implementation, precision) rows of one case."""
    impls = [("fused", "fp32"), ("fused", "tf32"), ("eager", "fp32"), ("eager", "tf32"),
             ("graph", "fp32"), ("graph", "tf32")]
    if (dim, width) == GOAL:
        impls += [("ops", "fp32"), ("ops", "tf32")]
    if args.compile_all or (dim, width) == GOAL:
        impls.append(("compile", "tf32"))
    return impls


def main() -> None:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--compile-all", action="store_true", help="torch.compile rows for every case")
    parser.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode of the compile rows")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; later compile rows are skipped past it")
    parser.add_argument("--goal", action="store_true",
                        help="only the goal case (d=6, width 128) at batches 2k and 16k: what the goals need")
    args = parser.parse_args()
    if args.goal and args.quick:
        parser.error("--goal and --quick choose different cases: give one")
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    start = time.perf_counter()
    kind = "gpu-goal" if args.goal else "gpu-quick" if args.quick else "gpu"
    cases = [GOAL] if args.goal else [(2, 64), (6, 128)] if args.quick else CASES
    batches = GOAL_BATCHES if args.quick or args.goal else BATCHES
    env = H.environment("cuda")
    env["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    print(f"{env['device']}, torch {env['torch']} (CUDA {env['cuda']}), {env['date']}", flush=True)
    env["ceiling"] = matmul_ceilings()
    print("matmul ceilings (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in env["ceiling"].items()), flush=True)
    free_bytes = torch.cuda.mem_get_info()[0]
    rows: list[dict] = []
    env["flops_per_sample"] = {}

    def save():
        if not args.no_save:
            H.save_results(kind, env, rows)

    def run_row(case: dict, x0, batch: int, impl: str, precision: str) -> None:
        """Measure one row of ``case`` (appended to rows; a failure is recorded in it), then
        rewrite the JSON."""
        measure(case, x0, batch, impl, precision)
        save()

    def measure(case: dict, x0, batch: int, impl: str, precision: str) -> None:
        dim, width, field0, checks = case["dim"], case["width"], case["field0"], case["checks"]
        flops_per_sample, ref_bytes_per_sample = case["flops_per_sample"], case["ref_bytes_per_sample"]
        row = {"case": f"d{dim}-w{width}-l{LAYERS}-b{batch}-s{STEPS}", "impl": f"{impl}-{precision}",
               "implementation": impl, "precision": precision, "d": dim, "width": width, "layers": LAYERS,
               "batch": batch, "steps": STEPS}
        rows.append(row)
        if impl not in ("fused", "ops") and ref_bytes_per_sample * batch > 0.8 * free_bytes:
            row["skipped"] = f"the reference needs ~{ref_bytes_per_sample * batch / 2 ** 30:.0f} GiB"
            return
        if impl == "compile" and time.perf_counter() - start > args.budget:
            row["skipped"] = "over the time budget"
            return
        field = copy.deepcopy(field0)
        set_tf32(precision == "tf32")
        fn = None
        try:
            if impl in ("fused", "ops", "eager"):
                fn = eager_step(field, x0, "torch" if impl == "eager" else "compiled", fused=impl == "fused")
                row["peak_mb"] = peak_memory(fn) / 2 ** 20
            elif impl == "graph":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn = graph_step(field, x0)
                row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            else:
                fn = compiled_step(field, x0, args.compile_mode)
                t0 = time.perf_counter()
                fn()
                row["compile_s"] = time.perf_counter() - t0
                row["peak_mb"] = peak_memory(fn) / 2 ** 20
            row.update(sync_time(fn))
        except torch.cuda.OutOfMemoryError:
            row["skipped"] = "out of memory"
            torch.cuda.empty_cache()
            return
        except Exception as exc:  # a failing row must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  {row['case']} {impl} {precision}: {row['error']}", flush=True)
            return
        finally:
            # Free the row's graph pool, compiled graphs and gradients before the next row.
            fn = field = None
            if impl == "compile":
                torch._dynamo.reset()
            torch.cuda.empty_cache()
        row["tflops"] = flops_per_sample * batch / row["median_s"] / 1e12
        row["pct_mm"] = 100 * row["tflops"] / env["ceiling"][f"mm_8192_{precision}_tflops"]
        if impl == "fused":
            row["check"] = checks[precision]
        print(f"  {row['case']:<24} {impl:<8} {precision}: {1e3 * row['median_s']:9.3f} ms "
              f"{row['tflops']:7.2f} TFLOP/s {row['peak_mb']:9.1f} MB [{time.perf_counter() - start:.0f} s]",
              flush=True)

    # (case, batch, impl, precision): the graph rows, then the compile rows, after every case's
    # other rows. A capture that fails can leave the device in a state that breaks what runs after
    # it, and the compile rows take minutes of autotuning each: run last, they cost neither the
    # measurements of a later case nor those the goals rest on when a budget or a stage limit runs out.
    later_rows = []
    for dim, width in cases:
        torch.manual_seed(0)
        field0 = VelocityField(dim, width, LAYERS).cuda()
        set_tf32(False)
        small = torch.randn(FLOP_BATCH, dim, device="cuda")
        flops_per_sample = H.count_flops(eager_step(copy.deepcopy(field0), small, "torch")) / FLOP_BATCH
        ref_bytes_per_sample = peak_memory(eager_step(copy.deepcopy(field0), small, "torch")) / FLOP_BATCH
        env["flops_per_sample"][f"d{dim}-w{width}"] = flops_per_sample
        x_check = torch.randn(CHECK_BATCH, dim, device="cuda")
        checks = {}
        for precision in ("fp32", "tf32"):
            try:
                checks[precision] = check(copy.deepcopy(field0), x_check, precision)
            except Exception as exc:  # recorded; the rows still run (and fail the same way, visibly)
                checks[precision] = float("nan")
                env.setdefault("check_errors", []).append(f"d{dim}-w{width} {precision}: {exc}"[:300])
        if (dim, width) == GOAL:  # float32 sums over a large batch: the same check at the goal batch
            for precision in ("fp32", "tf32"):
                key = f"check_b{GOAL_CHECK_BATCH}_{precision}"
                try:
                    env[key] = check(copy.deepcopy(field0), torch.randn(GOAL_CHECK_BATCH, dim, device="cuda"),
                                     precision)
                except Exception as exc:
                    env[key] = float("nan")
                    env.setdefault("check_errors", []).append(f"{key}: {exc}"[:300])
                torch.cuda.empty_cache()
            print(f"d={dim} width {width}: fused vs float64 reference at batch {GOAL_CHECK_BATCH}: rel. error fp32 "
                  f"{env[f'check_b{GOAL_CHECK_BATCH}_fp32']:.1e}, tf32 {env[f'check_b{GOAL_CHECK_BATCH}_tf32']:.1e}",
                  flush=True)
        print(f"d={dim} width {width}: {flops_per_sample * 16384 / 1e9:.0f} GFLOP per step at batch 16k; fused vs "
              f"float64 reference: rel. error fp32 {checks['fp32']:.1e}, tf32 {checks['tf32']:.1e} "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
        inputs = {batch: torch.randn(batch, dim, device="cuda") for batch in batches}
        case = dict(dim=dim, width=width, field0=field0, flops_per_sample=flops_per_sample,
                    ref_bytes_per_sample=ref_bytes_per_sample, checks=checks)
        for batch in batches:
            for impl, precision in row_impls(dim, width, args):
                if impl in ("graph", "compile"):
                    later_rows.append((case, batch, impl, precision))
                else:
                    run_row(case, inputs[batch], batch, impl, precision)
        inputs = None
        torch.cuda.empty_cache()
    if GOAL in cases and any(impl == "compile" for _, _, impl, _ in later_rows):
        # The goals as far as measured, before the compile rows: a call cut short during their
        # autotuning still prints them (the JSON holds every finished row anyway).
        goals(rows, env)
    later_rows.sort(key=lambda r: r[2] == "compile")  # (stable) graph rows first
    for case, batch, impl, precision in later_rows:
        torch.manual_seed(batch)
        run_row(case, torch.randn(batch, case["dim"], device="cuda"), batch, impl, precision)
        torch.cuda.empty_cache()

    # the table by case and batch (the graph and compile rows ran last; sort is stable: each case's order kept)
    rows.sort(key=lambda r: (cases.index((r["d"], r["width"])), batches.index(r["batch"])))
    for row in rows:
        if row.get("median_s"):
            row["median_ms"] = 1e3 * row["median_s"]
            ref = next((r for r in rows if r["case"] == row["case"] and r["impl"] == "eager-fp32"
                        and r.get("median_s")), None)
            row["eager_fp32_over_this"] = ref["median_s"] / row["median_s"] if ref else None
        row["note"] = row.get("skipped") or row.get("error")
    columns = [("case", "case", ""), ("impl", "impl", ""),
               ("median ms", "median_ms", ".3f"), ("eager32/this", "eager_fp32_over_this", ".1f"),
               ("TFLOP/s", "tflops", ".2f"), ("% mm", "pct_mm", ".1f"), ("peak MB", "peak_mb", ".1f"),
               ("check", "check", ".1e"), ("note", "note", "")]
    print()
    H.finish(kind, env, rows, columns, args)
    goals(rows, env)
    print(f"total {time.perf_counter() - start:.0f} s")


def goals(rows, env) -> None:
    """The issue's goals on the (d=6, width 128) training step, as measured in this run."""
    def get(batch, impl, precision, key="median_s"):
        for r in rows:
            if (r["d"], r["width"], r["batch"], r["implementation"], r["precision"]) == (*GOAL, batch, impl, precision):
                return r.get(key)
        return None

    def ratio(a, b):
        return f"{a / b:.1f}x" if a and b else "n/a"

    print("\ngoals, d=6 width 128 training step:")
    small, large = GOAL_BATCHES
    for batch in GOAL_BATCHES:
        fused = min((t for t in (get(batch, "fused", "fp32"), get(batch, "fused", "tf32")) if t), default=None)
        best = "tf32" if fused and fused == get(batch, "fused", "tf32") else "fp32"
        print(f"  batch {batch}: fused ({best}) vs eager fp32 {ratio(get(batch, 'eager', 'fp32'), fused)} "
              f"(goal {'20x' if batch == small else '10x'}), vs eager tf32 {ratio(get(batch, 'eager', 'tf32'), fused)}"
              f"{' (goal 5x)' if batch == large else ''}, vs compile {ratio(get(batch, 'compile', 'tf32'), fused)} "
              f"(goal 3x); {get(batch, 'fused', best, 'pct_mm') or float('nan'):.0f}% of torch.mm {best} (goal 50%); "
              f"memory {ratio(get(batch, 'eager', 'fp32', 'peak_mb'), get(batch, 'fused', best, 'peak_mb'))} below "
              f"eager (goal 10x)")
    if math.isnan(env.get("ceiling", {}).get("mm_8192_tf32_tflops", float("nan"))):
        print("  (no matmul ceiling measured)")


if __name__ == "__main__":
    main()
