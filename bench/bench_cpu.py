"""The compiled CPU ops against the pure-torch reference and its peers, in one run.

Cases (softplus, time input, 3 hidden layers, 3 classical RK4 steps over [0, 1], h = 1, float32):
(d=2, H=64, B=2000), (d=6, H=128, B=2000) and (d=63, H=256, B=500). Work per case:

* ``train_step``: one block's training step, block_loss forward + backward + Adam step;
* ``likelihood``: mean negative log-likelihood through the block, no graph kept.

Implementations, all with the same weights and inputs:

* ``compiled``: jkofast's C++ ops (backend="compiled"): the training step is one
  jko_block_loss op (loss and gradients in one pass), the likelihood one rk4_block op;
* ``reference``: the pure-torch engine (backend="torch");
* ``reference+compile``: the same under torch.compile (compile time excluded);
* ``backward-loop``: the torchdiffeq/FFJORD-style peer of bench_reference.py (the same rk4, the
  divergence by d backward passes).

GFLOP/s count the reference's FLOPs (FlopCounterMode, matmuls only, 2 per multiply-add) over
each row's time; ``% mm`` is that over the (12000x128)@(128x128) matmul rate measured in the same
run. ``train MB``: tensors saved between the forward and the backward pass (the compiled op:
the parameter gradients, which it computes with the loss; the reference: every activation and
tangent row).

    python bench/bench_cpu.py [--quick] [--threads N] [--compare PATH [--fail-if-regression]]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import _harness as H

H.import_jkofast_submodules()
from jkofast.field import VelocityField  # noqa: E402
from jkofast.integrate import rk4  # noqa: E402
from jkofast.jko_loss import block_loss  # noqa: E402
from jkofast.metrics import standard_normal_nll  # noqa: E402
from bench_reference import BackwardLoopField, work  # noqa: E402

LAYERS, STEPS, STEP_H = 3, 3, 1.0
CASES = [(2, 64, 2000), (6, 128, 2000), (63, 256, 500)]  # (d, H, B)


def implementations(field0):
    """name -> (field, loss(x0), likelihood(x0)); each has its own copy of the same weights."""
    impls = {}
    for name in ("compiled", "reference", "reference+compile", "backward-loop"):
        f = copy.deepcopy(field0)
        g = BackwardLoopField(f) if name == "backward-loop" else f
        backend = "compiled" if name == "compiled" else "torch"
        loss_fn = lambda x0, g=g, b=backend: block_loss(g, x0, STEP_H, STEPS, backend=b)[0]  # noqa: E731
        nll_fn = lambda x0, g=g, b=backend: standard_normal_nll(  # noqa: E731
            *rk4(g, x0, 0.0, 1.0, STEPS, backend=b)[:2]).mean()
        if name == "reference+compile":
            loss_fn, nll_fn = torch.compile(loss_fn), torch.compile(nll_fn)
        impls[name] = (f, loss_fn, nll_fn)
    return impls


def check_same_result(impls, x0, case):
    """Every implementation's loss, likelihood and gradient against the reference's."""
    ref = None
    for name in ["reference"] + [n for n in impls if n != "reference"]:
        f, loss_fn, nll_fn = impls[name]
        f.zero_grad(set_to_none=True)
        loss = loss_fn(x0)
        loss.backward()
        with torch.no_grad():
            value = nll_fn(x0)
        grad = torch.cat([p.grad.flatten() for p in f.parameters()])
        vals = (loss.item(), value.item(), grad)
        ref = ref or vals
        rel = max(abs(v - r) / abs(r) for v, r in zip(vals[:2], ref[:2]))
        grad_rel = ((grad - ref[2]).norm() / ref[2].norm()).item()
        print(f"  {case} {name:<18} loss {vals[0]:.6f} nll {vals[1]:.6f} rel {rel:.1e} grad rel {grad_rel:.1e}")
        if rel > 1e-4 or grad_rel > 1e-3:
            raise SystemExit(f"{name} does not compute the reference's result on {case}; refusing to time it")


def main() -> None:
    args = H.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cases = [(d, h, min(b, 200)) for d, h, b in CASES[:2]] if args.quick else CASES
    rounds, budget = (3, 20.0) if args.quick else (9, 240.0)
    env = H.environment("cpu")
    print(f"{env['device']}, torch {env['torch']}, {env['threads']} threads")

    fns, rows, flops = {}, {}, {}
    for dim, hidden, batch in cases:
        torch.manual_seed(0)
        field0 = VelocityField(dim, hidden, LAYERS)
        x0 = torch.randn(batch, dim)
        case = f"d{dim}-h{hidden}-l{LAYERS}-b{batch}-s{STEPS}"
        impls = implementations(field0)
        check_same_result(impls, x0, case)
        for name, impl in impls.items():
            for item, fn in work(*impl, x0).items():
                fns[case, name, item] = fn
        for item in ("train_step", "likelihood"):
            flops[case, item] = H.count_flops(fns[case, "reference", item])
        for name in impls:
            for item in ("train_step", "likelihood"):
                fn = fns[case, name, item]
                fn()  # warm-up
                row = rows[case, name, item] = {"case": f"{case}/{item}", "impl": name}
                if item == "train_step":
                    mem = H.memory_of_call(fn, "cpu", exclude=list(impls[name][0].parameters()))
                    row["train_mem_mb"] = mem["bytes"] / 2 ** 20
        print(f"{case}: reference train_step {flops[case, 'train_step'] / 1e9:.2f} GFLOP, likelihood "
              f"{flops[case, 'likelihood'] / 1e9:.2f} GFLOP [{time.perf_counter() - start:.0f} s]", flush=True)

    mm = H.matmul_cases("cpu")
    with H.foreign_cpu_load() as load:
        timed = H.time_interleaved({**fns, **{k: fn for k, (fn, _) in mm.items()}}, rounds, budget)
    env["ceiling"] = {k + "_gflops": f / timed[k]["median_s"] / 1e9 for k, (_, f) in mm.items()}
    env["foreign_cpu_load_cores"] = load.cores
    env["flops"] = {f"{c}/{i}": v for (c, i), v in flops.items()}
    mm_gflops = env["ceiling"]["mm_12000x128x128_gflops"]
    print(f"timed [{time.perf_counter() - start:.0f} s]; matmul ceiling {mm_gflops:.1f} GFLOP/s")
    if load.cores is not None and load.cores > 0.2:
        print(f"WARNING: other processes kept {load.cores:.2f} cores busy while timing; rerun on a quiet machine")

    for (case, name, item), row in rows.items():
        row.update(timed[case, name, item])
        ref = timed[case, "reference", item]
        row["median_ms"], row["iqr_ms"] = 1e3 * row["median_s"], 1e3 * row["iqr_s"]
        row["speedup_vs_ref"] = ref["median_s"] / row["median_s"]
        row["gflops"] = flops[case, item] / row["median_s"] / 1e9
        row["pct_mm"] = 100 * row["gflops"] / mm_gflops
    table = list(rows.values())
    columns = [("case/work", "case", ""), ("impl", "impl", ""), ("median ms", "median_ms", ".2f"),
               ("IQR ms", "iqr_ms", ".2f"), ("ref/this", "speedup_vs_ref", ".2f"),
               ("GFLOP/s", "gflops", ".1f"), ("% mm", "pct_mm", ".1f"), ("train MB", "train_mem_mb", ".2f"),
               ("runs", "runs", "d")]
    H.finish("cpu-quick" if args.quick else "cpu", env, table, columns, args)

    goal_case = "d6-h128-l3-b2000-s3"
    if (goal_case, "compiled", "train_step") in rows:
        get = lambda impl, key="median_s": rows[goal_case, impl, "train_step"][key]  # noqa: E731
        print(f"\ngoal row ({goal_case} train_step): compiled vs backward-loop "
              f"{get('backward-loop') / get('compiled'):.2f}x (goal 3x), vs reference "
              f"{get('reference') / get('compiled'):.2f}x (goal 2x), vs reference+compile "
              f"{get('reference+compile') / get('compiled'):.2f}x (goal > 1x), {get('compiled', 'pct_mm'):.0f}% of "
              f"matmul rate (goal 70%), memory {get('reference', 'train_mem_mb') / get('compiled', 'train_mem_mb'):.0f}x "
              f"below the reference (goal 10x)")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
