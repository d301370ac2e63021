"""Data-parallel scaling: training samples per second against the number of processes.

For each process count P the script launches ``torchrun --standalone --nproc_per_node P`` on
itself (the way users scale out), trains the same JKO-iFlow run (same seed, same GLOBAL batch,
so each rank takes batch / P rows per step) and reports, from rank 0:

* ``samples/s``: global batch x iterations / seconds spent in the training loops of all blocks
  (block pushes, evaluation and start-up excluded; the log's per-block ``seconds``);
* ``efficiency``: samples/s at P over P x samples/s at 1 process (1.0 = linear scaling);
* the test NLL with its standard error, reduced over the ranks. The ranks draw other minibatches
  than one process does, so a run with P processes is another draw of the training noise: with
  ``--seeds 0 1 2`` the summary gives, per P, the NLL's mean and spread over seeds, the noise
  that a difference between process counts must be judged against;
* the peak resident memory of the largest rank.

Every process runs ``--threads`` intra-op threads (default 1, as torchrun sets), so P processes
use P x threads cores. On a GPU machine each process takes one GPU (NCCL).

    python bench/bench_scale.py [--procs 1 2 4] [--seeds 0 1 2] [--device cpu|cuda] [--quick] [--no-save]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import _harness as H

CASE = dict(blocks=3, hidden=64, layers=3, iters=150, batch=1024, lr=3e-3, steps=3, stop_tol=0.0,
            select_blocks="all", eval_steps=None, seed=0)
QUICK = dict(blocks=2, hidden=32, layers=2, iters=30, batch=512)
DATA = dict(name="moons", n_train=20_000, n_val=2_000, n_test=10_000, seed=0)


def worker(args) -> None:
    """One rank: train, evaluate on the sharded test set, and (rank 0) write the numbers."""
    torch.set_num_threads(args.threads)
    H.import_jkofast_submodules()
    import jkofast
    from jkofast import distributed
    from jkofast.memory import peak_memory_of_run
    from jkofast.metrics import sharded_nll

    case = json.loads(args.case)
    x, val, test = jkofast.datasets.get(DATA["name"], DATA["n_train"], DATA["n_val"], DATA["n_test"],
                                        seed=DATA["seed"])
    dist = distributed.connect(args.device)
    start = time.perf_counter()
    flow = jkofast.train(x, val=val, out=args.out, resume=False, device=dist.device, progress=False, **case)
    wall = time.perf_counter() - start
    log = json.loads((Path(args.out) / "log.json").read_text()) if dist.main else None
    mean, se = sharded_nll(flow, test, dist)
    peak = peak_memory_of_run(dist)
    if dist.main:
        seconds = sum(b["seconds"] for b in log["blocks"])
        samples = sum(b["iters"] for b in log["blocks"]) * case["batch"]
        result = {"procs": dist.world, "samples_per_s": samples / seconds, "train_s": seconds, "wall_s": wall,
                  "nll": mean, "nll_se": se, "peak_rss_mb": peak["rss_bytes_max"] / 2**20,
                  "peak_cuda_mb": peak.get("cuda_bytes_max", 0) / 2**20 or None, "blocks": flow.num_blocks}
        (Path(args.out) / "bench.json").write_text(json.dumps(result))
    dist.close()


def launch(procs: int, case: dict, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           __file__, "--worker", "--out", str(out), "--case", json.dumps(case), "--device", args.device,
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start, busy, ours = time.perf_counter(), _busy_seconds(), _children_seconds()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{procs} processes failed:\n{run.stderr[-4000:]}")
    row = json.loads((out / "bench.json").read_text())
    if busy is not None:
        # CPU time the rest of the machine used meanwhile, in cores: above ~0.2 the timings are
        # contaminated (this machine is shared).
        foreign = (_busy_seconds() - busy) - (_children_seconds() - ours)
        row["foreign_load_cores"] = round(max(0.0, foreign) / (time.perf_counter() - start), 2)
    return row


def _busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux), None elsewhere."""
    try:
        return H._busy_ticks()[0] / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children_seconds() -> float:
    """CPU seconds used by this script's finished child processes (the launched ranks)."""
    t = os.times()
    return t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the runs (same data)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--note", default="", help="a remark stored with the results (e.g. shared machine)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    case = {**CASE, **(QUICK if args.quick else {})}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        for seed in args.seeds:
            for procs in args.procs:
                row = launch(procs, {**case, "seed": seed}, args, Path(tmp) / f"p{procs}s{seed}")
                rows.append({**row, "seed": seed})
                print(f"seed {seed}, {procs} process(es): {row['samples_per_s']:.0f} samples/s, "
                      f"test NLL {row['nll']:.4f} +/- {row['nll_se']:.4f}", flush=True)
    summary = _summary(rows, case)
    env = H.environment(args.device)
    env.update(threads=args.threads, case=case, data=DATA, note=args.note, load_average=os.getloadavg(),
               quick=args.quick)
    columns = [("procs", "procs", "d"), ("samples/s", "samples_per_s", ".0f"), ("efficiency", "efficiency", ".2f"),
               ("runs", "runs", "d"), ("test NLL mean", "nll_mean", ".4f"), ("sd over seeds", "nll_sd", ".4f"),
               ("mean se", "nll_se", ".4f"), ("peak RSS MB", "peak_rss_mb", ".0f"),
               ("foreign load (cores)", "foreign_load_cores", ".2f")]
    print()
    H.print_table(summary, columns)
    if not args.no_save:
        print(f"\nsaved {H.save_results('scale-quick' if args.quick else 'scale', env, summary + rows)}")


def _summary(rows: list[dict], case: dict) -> list[dict]:
    """Per process count: median samples/s over the seeds and its efficiency against 1 process;
    the test NLL's mean and standard deviation over the seeds, and the mean standard error."""
    out = []
    for procs in sorted({r["procs"] for r in rows}):
        mine = [r for r in rows if r["procs"] == procs]
        nlls = [r["nll"] for r in mine]
        mean = sum(nlls) / len(nlls)
        sd = (sum((v - mean) ** 2 for v in nlls) / (len(nlls) - 1)) ** 0.5 if len(nlls) > 1 else None
        loads = [r["foreign_load_cores"] for r in mine if r.get("foreign_load_cores") is not None]
        out.append({"case": f"jko-iflow {DATA['name']} global batch {case['batch']}", "impl": f"{procs} proc summary",
                    "procs": procs, "runs": len(mine), "samples_per_s": statistics.median(r["samples_per_s"] for r in mine),
                    "nll_mean": mean, "nll_sd": sd, "nll_se": sum(r["nll_se"] for r in mine) / len(mine),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "foreign_load_cores": max(loads) if loads else None})
    base = next((r["samples_per_s"] for r in out if r["procs"] == 1), None)
    for r in out:
        r["efficiency"] = None if base is None else r["samples_per_s"] / (r["procs"] * base)
    return out


if __name__ == "__main__":
    main()
