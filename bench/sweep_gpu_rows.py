"""The fused CUDA training step at every stack height, to check the plan rule on a GPU.

The kernels' one run-time tuning knob is the stack height (rows per thread block, JKOFAST_CUDA_ROWS,
read at each call): more rows stream each weight chunk through shared memory for more samples,
fewer rows give more tiles to fill the GPU. The rule in csrc/cuda/cuda_glue.cpp (plan_launch)
takes the most rows that still give every resident block two tiles. This times the same work as
bench_gpu.py's ``fused`` rows (one block's training step, forward + backward: block_loss with
backend="compiled") at each height, float32 and TF32, and marks the rule's choice, so one run says
whether the rule leaves time on the table.

    python bench/sweep_gpu_rows.py [--quick] [--budget SECONDS]

JSON: bench/results/gpu-rows-cuda-<date>.json (one record per case, batch, precision and height;
rows = "auto" is the rule's own choice). Runs in about a minute on an H100.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

import _harness as H
from bench_gpu import LAYERS, STEPS, eager_step, set_tf32, sync_time

from jkofast.field import VelocityField  # noqa: E402  (bench_gpu imported jkofast's submodules)

CASES = [((6, 128), (2048, 16384, 131072)), ((2, 64), (2048, 131072)), ((63, 256), (2048, 16384))]
HEIGHTS = ("auto", 16, 32, 64, 128)


def main() -> None:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--budget", type=float, default=150.0, help="seconds; later cases are skipped past it")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("sweep_gpu_rows.py needs a CUDA GPU")
    start = time.perf_counter()
    env = H.environment("cuda")
    print(f"{env['device']}, torch {env['torch']} (CUDA {env['cuda']}), {env['date']}", flush=True)
    cases = [((6, 128), (2048, 16384))] if args.quick else CASES
    forced = os.environ.pop("JKOFAST_CUDA_ROWS", None)  # the sweep sets it itself
    records: list[dict] = []
    try:
        for (dim, width), batches in cases:
            torch.manual_seed(0)
            field0 = VelocityField(dim, width, LAYERS).cuda()
            for batch in batches:
                x0 = torch.randn(batch, dim, device="cuda")
                for precision in ("fp32", "tf32"):
                    set_tf32(precision == "tf32")
                    for height in HEIGHTS:
                        row = {"case": f"d{dim}-w{width}-l{LAYERS}-b{batch}-s{STEPS}", "impl": f"fused-{precision}",
                               "d": dim, "width": width, "batch": batch, "precision": precision, "rows": height}
                        records.append(row)
                        if time.perf_counter() - start > args.budget:
                            row["skipped"] = "over the time budget"
                            continue
                        if height == "auto":
                            os.environ.pop("JKOFAST_CUDA_ROWS", None)
                        else:
                            os.environ["JKOFAST_CUDA_ROWS"] = str(height)
                        try:
                            row.update(sync_time(eager_step(copy.deepcopy(field0), x0, "compiled")))
                        except Exception as exc:  # a height whose plan does not fit: recorded, not fatal
                            row["error"] = f"{type(exc).__name__}: {exc}"[:200]
                            torch.cuda.empty_cache()
                            continue
                        row["median_ms"] = 1e3 * row["median_s"]
                    auto = next(r for r in records if r["case"] == row["case"] and r["impl"] == row["impl"]
                                and r["rows"] == "auto")
                    timed = [r for r in records if r["case"] == row["case"] and r["impl"] == row["impl"]
                             and r["rows"] != "auto" and r.get("median_s")]
                    if timed and auto.get("median_s"):
                        best = min(timed, key=lambda r: r["median_s"])
                        auto["best_rows"] = best["rows"]
                        auto["auto_over_best"] = auto["median_s"] / best["median_s"]
                    print(f"  {row['case']:<24} {precision}: " + ", ".join(
                        f"{r['rows']} {r['median_ms']:.3f} ms" if r.get("median_ms") else f"{r['rows']} -"
                        for r in records if r["case"] == row["case"] and r["impl"] == row["impl"])
                        + f" [{time.perf_counter() - start:.0f} s]", flush=True)
                    if not args.no_save:
                        H.save_results("gpu-rows", env, records)
                del x0
                torch.cuda.empty_cache()
    finally:
        if forced is None:
            os.environ.pop("JKOFAST_CUDA_ROWS", None)
        else:
            os.environ["JKOFAST_CUDA_ROWS"] = forced
    for row in records:
        row["note"] = row.get("skipped") or row.get("error")
    columns = [("case", "case", ""), ("impl", "impl", ""), ("rows", "rows", ""), ("median ms", "median_ms", ".3f"),
               ("auto/best", "auto_over_best", ".2f"), ("best rows", "best_rows", ""), ("note", "note", "")]
    print()
    H.finish("gpu-rows", env, records, columns, args)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
