"""``jkofast train``: the options checked, the flow trained into --out, and its report
(samples, plot, metrics.json, the printed evaluation)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from .. import distributed
from .._checks import check_folder
from .._locks import held_lock
from .._version import __version__
from ..checkpoint import CheckpointError, OtherRunError, write_json
from ..datasets.streaming import Rows
from ..evaluate import evaluate, evaluate_sharded
from ..jko_iflow import TrainingDivergedError
from ..memory import peak_memory_of_run
from ..train import OUT_LOCK, RUN_FILES, check_no_files_of_others, check_world, settings, train
from .data_spec import _as_array, _data_spec, _ignored_sizes, _load_data, _shape, _train_info, _what_sets_the_rows
from .options import _check_method_flags, _device, _named_as_a_flag, _train_options
from .output_files import _REPORT_FILES, _drop_report, _save_npy
from .process import _note, _one_command_line, _print_error
from .report import _baseline_train, _print_evaluation, _recorded_or


def cmd_train(args) -> int:
    """``jkofast train``: train a flow on a data set, then write its samples, plot and metrics."""
    # The options first: a mistyped one is refused before a data file is read or a process group
    # joined (the checks train() makes). Marked as every rank's only where every rank runs this
    # same command line: one torchrun starts them all (on several hosts, each host's its own).
    with distributed.alike_on_every_rank() if _one_command_line() else contextlib.nullcontext():
        _check_method_flags(args)
        try:
            cfg = settings(args.method, args.budget, **_train_options(args))
        except (TypeError, ValueError) as exc:
            raise _named_as_a_flag(exc) from exc
        check_world(args.method, distributed.launched_world(), getattr(cfg, "batch", None))
    device = _device(args, "cuda" if torch.cuda.is_available() else "cpu")
    dist = distributed.connect(device)  # a process group under torchrun, else one process
    try:
        # the output folder stays held through the report (samples, plot, metrics), not just train()
        out = check_folder(args.out, "--out")
        if not args.restart:  # (before the data is read: a user's own plot.png is not replaced)
            check_no_files_of_others(out, RUN_FILES + _REPORT_FILES)
        with held_lock(out / OUT_LOCK if dist.main else None):
            return _train_and_report(args, dist, out)
    finally:
        dist.close()


def _train_and_report(args, dist, out: Path) -> int:
    """Train into ``out`` (--out as check_folder read it: ~ expanded) and write the report."""
    spec = _data_spec(args)
    x_train, x_val, x_test = _load_data(spec)
    options = _train_options(args)
    say = print if dist.main else (lambda *a, **k: None)
    processes = f", {dist.world} processes" if dist.world > 1 else ""
    ignored = _ignored_sizes(args, spec)
    if ignored:
        _note(ignored)
    say(f"jkofast {__version__}: {args.method} on {spec['name']} (train {_shape(x_train)}, "
        f"test {_shape(x_test)}{processes}) -> {out}", flush=True)
    start = time.perf_counter()
    if args.restart and dist.main:  # (train() drops the model and the log)
        _drop_report(out)
    try:
        flow = train(x_train, args.method, val=x_val, out=out, resume=not args.restart, device=dist.device,
                     budget=args.budget, progress=not args.no_progress, info=_train_info(spec), **options)
    except TrainingDivergedError as exc:
        _print_error(exc)
        return 2
    except CheckpointError as exc:  # (the hint, unless the message gives it already)
        _print_error(exc, "" if "--restart" in str(exc) else "\n(pass --restart to start over, or choose another --out)")
        return 2
    except OtherRunError as exc:
        if not exc.data_differs:
            raise
        better = ValueError(f"{exc}\n({_what_sets_the_rows(spec, out)})")
        raise (distributed.raised_on_every_rank(better) if distributed.is_raised_on_every_rank(exc) else better) from exc
    if dist.main:  # model.pt is this run's now: an earlier report must not sit beside it while this one is made
        _drop_report(out)
    grids = flow.info["eval_grids"]
    baseline = _recorded_or(flow, lambda: _baseline_train(x_train))
    if dist.world > 1 or isinstance(x_test, Rows):
        metrics = evaluate_sharded(flow, x_test, steps=grids, dist=dist, baseline_train=baseline)
    else:
        metrics = evaluate(flow, x_test, steps=grids, mmd_points=0, baseline_train=baseline)
    metrics.update(blocks=flow.num_blocks, train_seconds=flow.info["train_seconds"], world_size=dist.world,
                   total_seconds=round(time.perf_counter() - start, 3), peak_memory=peak_memory_of_run(dist))
    if not dist.main:
        return 0
    g = torch.Generator(device=flow.loc.device).manual_seed(args.seed)
    # float64: the de-standardization keeps a large offset exact (Flow.inverse)
    samples = flow.sample(args.samples, generator=g, dtype=torch.float64).detach().cpu().numpy()
    _save_npy(out / "samples.npy", samples)
    if flow.dim == 2 and not args.no_plot:
        from ..plotting import PLOT_POINTS, plot_flow
        plot_flow(flow, _as_array(x_test, args.seed, PLOT_POINTS), out / "plot.png", samples=samples,
                  title=f"{spec['name']}: {flow.num_blocks} blocks")
    write_json(out / "metrics.json", metrics)  # last: its presence says the report is complete
    _print_evaluation(metrics, grids)
    peak = metrics["peak_memory"]["rss_bytes_max"] / 2**20
    # a resumed run's training seconds add up over its processes; the total is this process's
    total = "this process" if flow.info.get("resumed") else "total"
    print(f"{flow.num_blocks} block{'s' * (flow.num_blocks != 1)}, training {metrics['train_seconds']:.1f} s, {total} "
          f"{metrics['total_seconds']:.1f} s, peak memory {peak:.0f} MB per process; wrote "
          f"{', '.join(sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith('.')))}")
    return 0
