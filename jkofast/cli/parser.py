"""The ``jkofast`` command line's parser: every command, its flags and their help."""
from __future__ import annotations

import argparse
import sys

from .. import datasets
from .._version import __version__
from ..jko_iflow_config import BUDGETS
from ..train import METHODS
from . import __doc__ as _PACKAGE_DOC  # its first paragraph is --help's description
from .commands import cmd_eval, cmd_info, cmd_plot, cmd_sample
from .data_spec import _SIZES
from .options import _METHOD_OPTIONS, _TRAIN_OPTIONS, _choices, _count, _defaults_help, _flag
from .train_command import cmd_train


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help=f"MAF sets ({', '.join(datasets.TABULAR_NAMES)}): the "
                   "folder holding power/data.npy, gas/..., hepmass/..., miniboone/..., BSDS300/...")
    p.add_argument("--allow-pickle", action="store_true", help="GAS: read gas/ethylene_CO.pickle (unpickling "
                   "runs code from the file: only for a file you trust; a .csv next to it needs no pickle)")


def build_parser() -> argparse.ArgumentParser:
    """The ``jkofast`` argument parser with its subcommands (train, eval, sample, plot, info)."""
    # allow_abbrev=False: a prefix is not taken for an option (--restar would start over, --sample is not --samples)
    p = argparse.ArgumentParser(prog="jkofast", description=_PACKAGE_DOC.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"jkofast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a flow; writes model, checkpoint, log, metrics, samples, plot",
                       allow_abbrev=False)
    t.add_argument("--data", required=True, help=f"built-in set ({', '.join(datasets.DATA_NAMES)}) or a .npy/.csv file")
    _add_data_root(t)
    t.add_argument("--out", required=True, help="output folder (a rerun with the same folder resumes)")
    t.add_argument("--method", default="jko-iflow", choices=METHODS)
    t.add_argument("--budget", default="default", choices=sorted(BUDGETS))
    t.add_argument("--seed", type=int, default=0,
                   help="seeds training, the built-in sets' draws, the split of a file, the samples (default: 0)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    choices = _choices()
    for flag, kind in _TRAIN_OPTIONS.items():
        name, preset = _flag(flag), _defaults_help(flag)
        if kind is bool:
            t.add_argument(name, dest=flag, action=argparse.BooleanOptionalAction, default=None, help=preset)
        else:
            t.add_argument(name, dest=flag, type=kind, default=None, help=preset, choices=choices.get(flag))
    for flag, (kind, _) in _METHOD_OPTIONS.items():
        t.add_argument(_flag(flag), dest=flag, type=kind, default=None, help=_defaults_help(flag),
                       choices=choices.get(flag), **({"nargs": 2, "metavar": ("A", "B")} if flag == "time_beta" else {}))
    for k, what in (("n_train", "training"), ("n_val", "validation"), ("n_test", "test")):
        t.add_argument(_flag(k), type=_count(1), default=None,
                       help=f"2-D sets and patches: {what} points drawn (default: {_SIZES[k]:,})")
    t.add_argument("--mmap", action=argparse.BooleanOptionalAction, default=None,
                   help=".npy files: read through a memory map in chunks and split without copying "
                        "(default: for a file of 1 GiB or more)")
    t.add_argument("--samples", type=_count(1), default=10_000, help="samples to write to samples.npy (default: 10,000)")
    t.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    t.add_argument("--no-plot", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    for name, fn, helptext in (("eval", cmd_eval, "test NLL in nats with its standard error"),
                               ("plot", cmd_plot, "picture (.png, .pdf, .svg) of data, samples, density and trajectory (2-D)"),
                               ("sample", cmd_sample, "draw samples to a .npy or .csv file")):
        c = sub.add_parser(name, help=helptext, allow_abbrev=False)
        c.add_argument("--model", required=True, help="model file, or the output folder of `jkofast train`")
        c.add_argument("--device", default=None)
        c.add_argument("--seed", type=int, default=0, help="seeds the draws: " + {
            "eval": "the MMD's samples and test points", "plot": "the test points plotted, the samples",
            "sample": "the samples"}[name] + " (default: 0)")
        c.set_defaults(func=fn)
        if name in ("eval", "plot"):
            c.add_argument("--data", default=None, help="data set (default: the one the model was trained on, "
                           "its test split); a built-in name draws that set's test points, any other .npy/.csv "
                           "file is held-out data, scored (or plotted) whole")
            _add_data_root(c)
            c.add_argument("--n-test", type=_count(1), default=None,
                           help="built-in sets: test points drawn" + ("" if name == "eval" else
                                                                       "; and at most this many plotted (default 5,000)"))
    sub.add_parser("info", help="version, the torch it was built for, compiled backends, GPU",
                   allow_abbrev=False).set_defaults(func=cmd_info)
    sub.choices["eval"].add_argument("--steps", type=_count(1), nargs="+", default=None,
                                     help="RK4 steps per block, one grid or several (default: the grids "
                                          "training reported, e.g. 3 12)")
    sub.choices["eval"].add_argument("--json", default=None, help="also write the numbers to this file")
    sub.choices["eval"].add_argument("--mmd-points", type=_count(0), default=10_000,
                                     help="samples and test points for the MMD (0: skip it; default: 10,000)")
    sub.choices["plot"].add_argument("--out", required=True, help="image file: .png, .pdf or .svg")
    sub.choices["sample"].add_argument("--n", type=_count(1), default=10_000, help="how many (default: 10,000)")
    sub.choices["sample"].add_argument("--steps", type=_count(1), default=None,
                                       help="RK4 steps per block (default: the training grid)")
    sub.choices["sample"].add_argument("--out", required=True, help=".npy or .csv file")
    p.set_defaults(subcommands=sub.choices)  # (parse: an unknown option is the subcommand's error)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line read; an option no command has is refused with the usage of the command
    it was given to (argparse alone shows the top level's, which lists no option of it)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        given = list(sys.argv[1:] if argv is None else argv)
        before = given.index(args.command) > given.index(unknown[0]) if unknown[0] in given else False
        (parser if before else args.subcommands[args.command]).error(f"unrecognized arguments: {' '.join(unknown)}")
    del args.subcommands
    return args
