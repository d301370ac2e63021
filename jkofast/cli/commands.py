"""``jkofast eval``, ``sample``, ``plot`` (the commands on a saved model) and ``info``."""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from .._atomic import replaced_atomically
from ..checkpoint import write_json
from ..datasets.streaming import Rows
from ..evaluate import evaluate, evaluate_sharded, evaluation_grids
from ..flow import Flow
from .data_spec import _as_array
from .options import _device
from .output_files import _csv_header, _output_file, _save_npy
from .recorded_data import _flow_and_data, _same_data, _training_rows
from .report import _print_evaluation, _recorded_or


def cmd_eval(args) -> int:
    """``jkofast eval``: the test NLL of a saved flow on each grid, against the Gaussian baseline."""
    dist = distributed.connect(_device(args))  # under torchrun the ranks share the passes; rank 0 reports
    try:
        return _evaluate_and_report(args, dist)
    finally:
        dist.close()


def _evaluate_and_report(args, dist) -> int:
    if args.json is not None:
        _output_file(args.json, "--json")
    flow, recorded, test = _flow_and_data(args, dist.device)
    baseline_train = _recorded_or(flow, lambda: _training_rows(recorded, args))
    steps = evaluation_grids(flow, args.steps)  # (default: the grids train reported, flow.info's)
    if isinstance(test, Rows) or dist.world > 1:
        # a memory-mapped set, or several processes: NLLs streamed in chunks (each rank its
        # shard), the MMD on a random subset of the test rows
        metrics = evaluate_sharded(flow, test, steps=steps, dist=dist if dist.world > 1 else None,
                                   baseline_train=baseline_train, mmd_points=args.mmd_points, seed=args.seed)
    else:
        metrics = evaluate(flow, test, steps=steps, mmd_points=args.mmd_points, seed=args.seed,
                           baseline_train=baseline_train)
    if not dist.main:
        return 0
    # (points other than the training data's own test split may not be like the training data)
    _print_evaluation(metrics, steps, held_out=args.data is not None and not _same_data(args.data, recorded))
    if args.json:
        write_json(args.json, metrics)
    return 0


def cmd_sample(args) -> int:
    """``jkofast sample``: draw samples from a saved flow into a .npy or .csv file."""
    out = _output_file(args.out, "--out", (".npy", ".csv"), "the samples are")
    flow = Flow.load(args.model, map_location=_device(args))
    g = torch.Generator(device=flow.loc.device).manual_seed(args.seed)
    x = flow.sample(args.n, generator=g, steps=args.steps, dtype=torch.float64).detach().cpu().numpy()
    if out.suffix.lower() == ".csv":
        names = flow.info.get("columns")  # the training table's header, where it had one
        header = _csv_header(names) if names and len(names) == flow.dim else ""
        with replaced_atomically(out) as tmp:
            np.savetxt(tmp, x, delimiter=",", header=header, comments="")
    else:
        _save_npy(out, x)
    print(f"wrote {args.n} samples to {out}")
    return 0


def cmd_plot(args) -> int:
    """``jkofast plot``: the data, samples, density and trajectories figure of a saved flow."""
    from ..plotting import PLOT_FORMATS, PLOT_POINTS, plot_flow
    _output_file(args.out, "--out", tuple("." + f for f in PLOT_FORMATS), "plots are")
    flow, recorded, test = _flow_and_data(args)
    title = args.data or (recorded or {}).get("name", "")
    n_points = args.n_test or PLOT_POINTS
    path = plot_flow(flow, _as_array(test, args.seed, n_points), args.out, n_points=n_points, seed=args.seed,
                     title=str(title))
    print(f"wrote {path}")
    return 0


def cmd_info(args) -> int:
    """``jkofast info``: the version, the torch it was built for, the compiled backends, the GPU."""
    from ..info import main as info_main
    return info_main()
