"""The pure-torch engine against its peers, on identical inputs in one run.

Case: VelocityField(6, 128, 3) (softplus, time input), batch 2000, 3 classical RK4 steps over
[0, 1], float32, h = 1. Work items:

* ``train_step``: one block's step: loss forward + backward + Adam step;
* ``likelihood``: mean negative log-likelihood 0.5|x1|^2 + d/2 log 2pi - logdet, no graph kept.

Implementations, all with the same weights:

* ``reference``: ``block_loss`` / ``rk4`` as shipped (d tangent rows stacked in forward mode);
* ``reference+compile``: the same functions under ``torch.compile`` (compile time excluded);
* ``torch.func``: the same rk4 and loss, divergence = trace of ``vmap(jacfwd(f))`` per sample;
* ``backward-loop``: the same rk4 and loss, divergence by d backward passes (torchdiffeq/FFJORD).

GFLOP/s are "useful" rates: every row divides the reference's FLOP count (FlopCounterMode:
matmuls only, 2 per multiply-add) by its own time, so a row that does more arithmetic for
the same result shows a lower rate. ``% mm`` is that rate over the measured
(12000x128)@(128x128) matmul rate of this run.

    python bench/bench_reference.py [--quick] [--threads N] [--compare PATH [--fail-if-regression]]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import _harness as H

H.import_jkofast_submodules()
from jkofast.field import Field, VelocityField  # noqa: E402
from jkofast.integrate import rk4  # noqa: E402
from jkofast.jko_loss import block_loss  # noqa: E402
from jkofast.metrics import standard_normal_nll  # noqa: E402

DIM, HIDDEN, LAYERS, STEPS, STEP_H = 6, 128, 3, 3, 1.0


# ----------------------------------------------------------------------------- peers
# Each peer is the same VelocityField with another divergence, integrated by the same
# jkofast.rk4 and scored by the same loss: the rows differ in the divergence alone.
class JacfwdField(Field):
    """Per-sample Jacobian by forward mode (d jvps, vmapped), then its trace."""

    def __init__(self, inner: VelocityField) -> None:
        super().__init__()
        self.inner, self.dim = inner, inner.dim

        def f_single(x, t):
            out = inner(x.unsqueeze(0), t).squeeze(0)
            return out, out  # the aux copy returns f itself, so f costs no extra forward
        self._jac = torch.func.vmap(torch.func.jacfwd(f_single, has_aux=True), in_dims=(0, None))

    def forward(self, x, t):
        return self.inner(x, t)

    def velocity_and_divergence(self, x, t, probes=None):
        jac, f = self._jac(x, t)
        return f, jac.diagonal(dim1=1, dim2=2).sum(-1)


class BackwardLoopField(Field):
    """The field alone: Field's default divergence is the loop of d backward passes
    (torchdiffeq/FFJORD style), detached under no_grad."""

    def __init__(self, inner: VelocityField) -> None:
        super().__init__()
        self.inner, self.dim = inner, inner.dim

    def forward(self, x, t):
        return self.inner(x, t)


def nll(field, x0):
    """Mean negative log-likelihood of x0 through one block."""
    x1, logdet, _ = rk4(field, x0, 0.0, 1.0, STEPS, backend="torch")  # (auto: the compiled op, which
    # FlopCounterMode does not see and which is not the reference)
    return standard_normal_nll(x1, logdet).mean()


def implementations(field0):
    """name -> (field, loss(x0), likelihood(x0)); each has its own copy of the same weights."""
    impls = {}
    for name, wrap in (("reference", None), ("reference+compile", None), ("torch.func", JacfwdField),
                       ("backward-loop", BackwardLoopField)):
        f = copy.deepcopy(field0)
        g = f if wrap is None else wrap(f)
        loss_fn = lambda x0, g=g: block_loss(g, x0, STEP_H, STEPS, backend="torch")[0]  # noqa: E731
        nll_fn = lambda x0, g=g: nll(g, x0)  # noqa: E731
        if name == "reference+compile":
            loss_fn, nll_fn = torch.compile(loss_fn), torch.compile(nll_fn)
        impls[name] = (f, loss_fn, nll_fn)
    return impls


def work(f, loss_fn, nll_fn, x0):
    """The timed work items on x0: one Adam training step, one likelihood without a graph."""
    opt = torch.optim.Adam(f.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(x0).backward()
        opt.step()

    def likelihood():
        with torch.no_grad():
            return nll_fn(x0)
    return {"train_step": train_step, "likelihood": likelihood}


# ----------------------------------------------------------------------------- run
def main() -> None:
    args = H.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    batch, rounds, budget = (500, 3, 10.0) if args.quick else (2000, 15, 120.0)
    torch.manual_seed(0)
    field0 = VelocityField(DIM, HIDDEN, LAYERS)
    x0 = torch.randn(batch, DIM)
    case = f"d{DIM}-h{HIDDEN}-l{LAYERS}-b{batch}-s{STEPS}"
    env = H.environment("cpu")
    print(f"{env['device']}, torch {env['torch']}, {env['threads']} threads, case {case}")

    impls, errors = implementations(field0), {}
    # Same work check: every peer's loss, likelihood and gradient against the reference's.
    print("\nsame-result check (relative to reference, float32, tolerance 1e-4 on values):")
    ref_vals = None
    for name, (f, loss_fn, nll_fn) in list(impls.items()):
        try:
            f.zero_grad(set_to_none=True)
            loss = loss_fn(x0)
            loss.backward()
            with torch.no_grad():
                value = nll_fn(x0)
        except Exception as exc:  # e.g. torch.compile without a working toolchain
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"  {name:<18} FAILED: {errors[name]}")
            del impls[name]
            continue
        grad = torch.cat([p.grad.flatten() for p in f.parameters()])
        vals = (loss.item(), value.item(), grad)
        ref_vals = ref_vals or vals
        rel = [abs(v - r) / abs(r) for v, r in zip(vals[:2], ref_vals[:2])]
        grad_rel = ((grad - ref_vals[2]).norm() / ref_vals[2].norm()).item()
        ok = max(rel) <= 1e-4
        print(f"  {name:<18} loss {vals[0]:.6f} (rel {rel[0]:.1e})  nll {vals[1]:.6f} (rel {rel[1]:.1e})"
              f"  grad rel {grad_rel:.1e}  {'ok' if ok else 'MISMATCH'}  [{time.perf_counter() - start:.0f} s]")
        if not ok:
            raise SystemExit(f"{name} does not compute the reference's loss; refusing to time it")

    fns = {(name, item): fn for name in impls for item, fn in work(*impls[name], x0).items()}
    flops = {item: H.count_flops(fns["reference", item]) for item in ("train_step", "likelihood")}
    # What FlopCounterMode counts, by hand, for the likelihood: per field evaluation the layer-0
    # product (d+1 -> H, primal only: its tangent is W0 itself), (layers-1) hidden products on
    # 1 + d rows, the output product and the diagonal contraction (d x H per sample); 4 stages x S.
    per_eval = 2 * batch * ((DIM + 1) * HIDDEN + (LAYERS - 1) * (1 + DIM) * HIDDEN ** 2 + 2 * HIDDEN * DIM)
    print(f"\nreference FLOPs (FlopCounterMode): train_step {flops['train_step'] / 1e9:.2f} G, likelihood "
          f"{flops['likelihood'] / 1e9:.2f} G (by hand: {4 * STEPS * per_eval / 1e9:.2f} G)")

    rows = {}
    for (name, item), fn in fns.items():
        fn()  # warm-up (compiled graphs, allocator, oneDNN); the counting calls below warm up too
        row = rows[name, item] = {"case": f"{case}/{item}", "impl": name}
        if name != "reference+compile":  # FlopCounterMode would trace the compiled graph anew
            row["own_gflop"] = H.count_flops(fn) / 1e9
        if item == "train_step":
            mem = H.memory_of_call(fn, "cpu", exclude=list(impls[name][0].parameters()))
            row["train_mem_mb"], row["mem_measure"] = mem["bytes"] / 2 ** 20, mem["measure"]
    print(f"warmed up, FLOPs and memory counted [{time.perf_counter() - start:.0f} s]; timing "
          f"{len(fns)} rows and the matmul ceiling interleaved, {rounds} rounds at most", flush=True)

    mm = H.matmul_cases("cpu")
    with H.foreign_cpu_load() as load:
        timed = H.time_interleaved({**fns, **{k: fn for k, (fn, _) in mm.items()}}, rounds, budget)
    env["ceiling"] = {k + "_gflops": f / timed[k]["median_s"] / 1e9 for k, (_, f) in mm.items()}
    env["flops"], env["foreign_cpu_load_cores"] = flops, load.cores
    mm_gflops = env["ceiling"]["mm_12000x128x128_gflops"]
    print(f"done [{time.perf_counter() - start:.0f} s]; matmul ceiling "
          + ", ".join(f"{k[:-7]} {v:.1f} GFLOP/s" for k, v in env["ceiling"].items()))
    if load.cores is not None:
        print(f"other processes kept {load.cores:.2f} cores busy while timing"
              + (": WARNING, timings contaminated, rerun on a quiet machine" if load.cores > 0.2 else ""))
    print()

    for key, row in rows.items():
        row.update(timed[key])
        ref = timed["reference", key[1]]
        row["median_ms"], row["iqr_ms"] = 1e3 * row["median_s"], 1e3 * row["iqr_s"]
        row["speedup_vs_ref"] = ref["median_s"] / row["median_s"]
        row["gflops"] = flops[key[1]] / row["median_s"] / 1e9
        row["pct_mm"] = 100 * row["gflops"] / mm_gflops
    rows = sorted(rows.values(), key=lambda r: r["case"], reverse=True)  # train_step first
    rows += [{"case": f"{case}/{k}", "impl": n, "error": e} for n, e in errors.items() for k in flops]

    columns = [("case/work", "case", ""), ("impl", "impl", ""), ("median ms", "median_ms", ".2f"),
               ("IQR ms", "iqr_ms", ".2f"), ("ref/this", "speedup_vs_ref", ".2f"),
               ("GFLOP/s", "gflops", ".1f"), ("% mm", "pct_mm", ".1f"), ("own GFLOP", "own_gflop", ".2f"),
               ("train MB", "train_mem_mb", ".1f"), ("runs", "runs", "d")]
    H.finish("reference-quick" if args.quick else "reference", env, rows, columns, args)
    for r in rows:
        if r.get("error"):
            print(f"{r['impl']} {r['case']}: {r['error']}")
    peers = [r for r in rows if r["impl"] in ("torch.func", "backward-loop") and r.get("median_s")]
    faster = [f"{r['impl']} {r['case'].split('/')[1]}" for r in peers if r["speedup_vs_ref"] > 1]
    print("\nreference is the fastest of reference / torch.func / backward-loop" if not faster
          else f"\nreference is NOT the fastest: slower than {', '.join(faster)}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
