"""How much the instruction set a build targets is worth: one compiled op, several builds of ``_C``.

A wheel cannot use ``-march=native`` (it must run on machines other than the builder's); this
times the same ops from differently compiled libraries so the choice rests on a number. Each
library is loaded in its own worker process (two copies of ``TORCH_LIBRARY(jkofast)`` cannot
share a process); the parent asks the workers in turn for one timing sample per round, so a
burst of load from other processes hits every build alike and the median over rounds drops it.

Work (softplus, time input, 3 hidden layers, float32, identical seeded inputs in every worker):

* ``field_div``: ``mlp_field_div`` forward, exact divergence;
* ``rk4_train``: ``rk4_block`` forward + ``rk4_block_backward`` (3 RK4 steps, exact divergence).

Build the libraries first, e.g. (from the repository root)::

    cmake -S . -B /tmp/jk-native -G Ninja -DJKOFAST_NATIVE=ON  && cmake --build /tmp/jk-native
    cmake -S . -B /tmp/jk-portable -G Ninja -DJKOFAST_NATIVE=OFF && cmake --build /tmp/jk-portable
    python bench/bench_cpu_isa.py native=/tmp/jk-native/_C*.so portable=/tmp/jk-portable/_C*.so
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import _harness as H

LAYERS, STEPS = 3, 3
CASES = [(2, 64, 2000), (6, 128, 2000)]  # (d, H, B)
WORKS = ("field_div", "rk4_train")


def _inputs(dim, hidden, batch):
    torch.manual_seed(0)
    sizes = [dim + 1] + [hidden] * LAYERS + [dim]
    weights = [torch.randn(o, i) / i ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [0.1 * torch.randn(o) for o in sizes[1:]]
    return torch.randn(batch, dim), torch.rand(batch), weights, biases


def _work_fns():
    """{(case, work): fn} on the loaded library's ops (worker side)."""
    ops, fns = torch.ops.jkofast, {}
    for dim, hidden, batch in CASES:
        x, t, w, b = _inputs(dim, hidden, batch)
        case = f"d{dim}-h{hidden}-b{batch}"
        fns[case, "field_div"] = lambda x=x, t=t, w=w, b=b: ops.mlp_field_div(x, t, None, w, b, "softplus", 1.0)
        block = (None, w, b, 0.0, 1.0, STEPS, "rk4", "exact", True, "softplus", 1.0)

        def rk4_train(x=x, block=block):
            x1, logdet, kinetic, states = ops.rk4_block(x, *block)
            grad_x, grad_w, grad_b = ops.rk4_block_backward(torch.ones_like(x1), torch.ones_like(logdet),
                                                            torch.ones_like(kinetic), states, x, *block)
            return (x1, logdet, grad_x, *grad_w, *grad_b)
        fns[case, "rk4_train"] = rk4_train
    return fns


def worker(library: str) -> None:
    """Load ``library``; answer each stdin line ``<index> <calls>`` with the seconds per call."""
    torch.ops.load_library(library)
    fns = list(_work_fns().values())
    # The first call warms up and gives a fingerprint of the results (the parent compares builds).
    print(json.dumps([[float(t.double().abs().sum()) for t in fn()] for fn in fns]), flush=True)
    for line in sys.stdin:
        index, calls = map(int, line.split())
        start = time.perf_counter()
        for _ in range(calls):
            fns[index]()
        print((time.perf_counter() - start) / calls, flush=True)


def main() -> None:
    parser = H.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("builds", nargs="*", metavar="LABEL=LIBRARY", help="a label and a built _C library")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker)
    if not args.builds:
        parser.error("give at least one LABEL=LIBRARY")
    builds = dict(b.split("=", 1) for b in args.builds)
    # PASSIVE: an idle worker's OpenMP threads would otherwise spin after each sample, on the
    # cores the next worker is timed on.
    worker_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    workers = {label: subprocess.Popen([sys.executable, __file__, "--threads", str(args.threads), "--worker", lib],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=worker_env)
               for label, lib in builds.items()}
    fingerprints = {label: json.loads(proc.stdout.readline() or "null") for label, proc in workers.items()}
    first_prints = next(iter(fingerprints.values()))
    for label, prints in fingerprints.items():
        if prints is None:
            sys.exit(f"the worker for {label} failed to load {builds[label]}")
        # Instruction sets change rounding (FMA contraction, vector reductions), not results.
        torch.testing.assert_close(torch.tensor(sum(prints, [])), torch.tensor(sum(first_prints, [])),
                                   rtol=1e-4, atol=0, msg=lambda m, label=label: f"{label}: {m}")
    keys = [(f"d{d}-h{h}-b{b}", w) for d, h, b in CASES for w in WORKS]

    def sample(label, index, calls):
        workers[label].stdin.write(f"{index} {calls}\n")
        workers[label].stdin.flush()
        return float(workers[label].stdout.readline())

    calls = {i: max(1, round(0.05 / sample(next(iter(builds)), i, 1))) for i in range(len(keys))}
    times = {(label, i): [] for label in builds for i in range(len(keys))}
    labels = list(builds)
    with H.foreign_cpu_load(pids=[proc.pid for proc in workers.values()]) as load:  # (the workers are ours)
        for r in range(args.rounds):
            for i in range(len(keys)):
                for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                    times[label, i].append(sample(label, i, calls[i]))
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()

    env = H.environment("cpu")
    env["foreign_cpu_load_cores"], env["builds"] = load.cores, builds
    rows, first = [], labels[0]
    for i, (case, work) in enumerate(keys):
        base = statistics.median(times[first, i])
        for label in labels:
            ts = times[label, i]
            q1, _, q3 = statistics.quantiles(ts, n=4)
            rows.append({"case": f"{case}/{work}", "impl": label, "median_s": statistics.median(ts),
                         "median_ms": 1e3 * statistics.median(ts), "iqr_ms": 1e3 * (q3 - q1),
                         "vs_first": statistics.median(ts) / base, "runs": len(ts) * calls[i]})
    print(f"{env['device']}, torch {env['torch']}, {env['threads']} threads; other processes kept "
          f"{load.cores if load.cores is None else round(load.cores, 2)} cores busy")
    columns = [("case/work", "case", ""), ("build", "impl", ""), ("median ms", "median_ms", ".2f"),
               ("IQR ms", "iqr_ms", ".2f"), (f"time / {first}", "vs_first", ".2f"), ("runs", "runs", "d")]
    H.finish("cpu-isa", env, rows, columns, args)


if __name__ == "__main__":
    main()
