"""Settings of a JKO-iFlow run, with the presets ``budget=`` selects."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields

from ._checks import (check_choice, check_flag, check_number, check_positive_int, check_seed, dtype_name,
                      plain_fields)
from ._warn import warn_user
from .divergence import DIVERGENCE_METHODS
from .jko_loss import TRANSPORT_COSTS
from .reference import ACTIVATIONS, TABLEAUS
from .shard import STORAGES

# keep every block, the prefix with the lowest validation NLL, or "val" where validation data is given
SELECT_BLOCKS = ("all", "val", "auto")

__all__ = ["JKOIFlowConfig", "BUDGETS"]


def check_global_batch(batch: int, world: int) -> None:
    """``batch`` is the global batch, split evenly over ``world`` processes (shard.py)."""
    if batch % world:
        raise ValueError(f"batch={batch} is the global batch, split evenly over the {world} processes: it must be "
                         f"a multiple of {world} (e.g. {batch // world * world or world})")


@dataclass
class JKOIFlowConfig:
    """Every setting of :func:`jkofast.train` with ``method="jko-iflow"``.

    Architecture: ``hidden``, ``layers``, ``activation``, ``beta`` (softplus sharpness),
    ``time`` (t as an input of each block's field).
    Blocks: at most ``blocks`` in the first pass, h_k = min(h0 * h_growth**(k-1), h_max) (the
    one setting a resumed run may raise: its first pass goes on, see JKOIFlowTrainer._grow);
    with ``stop_tol > 0`` the pass stops early once a block moves the data by less than
    ``stop_tol`` (relative: E|x - T_k x|^2 / E|T_k x|^2, the paper's Ter(k)); off by default: at
    these defaults Ter(k) is small and erratic long before the flow has converged (2-D sets
    checkerboard, rings, circles, rose: 0.0000-0.0026 after block 1, then up and down between
    0.0008 and 0.03, while the validation NLL still fell by 0.01-0.3 nats a block; the paper's
    0.01 would have stopped each of them after block 1). Where blocks are selected by their
    validation NLL (``select_blocks`` below), the pass also ends once ``val_patience`` blocks
    in a row left that NLL above its best before them (0: never; on small data every further
    block only over-fits more: 20-d Gaussian data, 1,600 rows, validation NLL 18.8 after block
    3 and 2,247 after block 6). ``free_block`` appends one block without transport penalty.
    Integration: ``steps`` RK4 steps per block in training (``tableau``), ``eval_steps`` for
    the finer evaluation grid (None: no second evaluation).
    Optimisation per block: ``iters`` Adam steps of ``batch`` samples at ``lr`` with gradient
    norm clipping ``clip``, a cosine decay to ``lr * lr_final`` within each block, the field
    warm-started from the previous block (``warm_start``).
    Loss: ``divergence`` ``"exact"`` or ``"hutchinson"`` (``probes`` per sample); ``transport``
    ``"endpoint"`` (|x(1) - x(0)|^2) or ``"path"`` (int |f|^2).
    Refinement: ``reparam_rounds`` rounds of the adaptive time reparametrization (damping
    ``reparam_eta``), then ``refine_rounds`` rounds that split every block in two; each retrains
    every block for ``retrain_iters`` (default ``iters``).
    Model selection: ``select_blocks="auto"`` (default) is ``"val"`` when validation data is
    given and ``"all"`` otherwise. ``"val"`` keeps, at the end, the shortest prefix of the
    trained blocks with the lowest validation NLL (each prefix is a flow of its own, and the
    validation NLL of every prefix is logged anyway); it needs validation data. On small data
    the last blocks can over-fit (digits, 1,439 training rows: validation NLL 62.7 after block
    4 of 8, 136 after block 8; wine, 178 rows: 14.3 after block 1, 7.5e10 after block 6).
    ``"all"`` keeps every block, as the paper does. The
    checkpoint keeps every block (a finished run resumes with either choice), and the validation
    NLL reported afterwards is of the set that chose the blocks, so it is optimistic: judge the
    result on a test set.
    ``seed`` seeds the initialisation, batches and probes; ``dtype`` is ``"float32"`` or
    ``"float64"``; ``standardize`` stores the data's mean and std in the model.
    Scale (shard.py): ``batch`` is the global batch, split evenly over the processes of a
    distributed run; ``pushed_storage`` keeps each process's pushed samples ``"memory"`` (on the
    training device), ``"disk"`` (memory-mapped files in ``scratch_dir``, default a temporary
    folder) or ``"auto"`` (disk when they would not fit in memory).
    """

    blocks: int = 6
    hidden: int = 64
    layers: int = 3
    activation: str = "softplus"
    beta: float = 1.0
    time: bool = True
    h0: float = 0.5
    h_growth: float = 1.4
    h_max: float = math.inf
    stop_tol: float = 0.0
    val_patience: int = 2
    free_block: bool = False
    steps: int = 3
    eval_steps: int | None = 12
    tableau: str = "rk4"
    iters: int = 300
    batch: int = 1000
    lr: float = 3e-3
    lr_final: float = 0.1
    clip: float = 1.0
    warm_start: bool = True
    divergence: str = "exact"
    probes: int = 1
    transport: str = "endpoint"
    reparam_rounds: int = 0
    reparam_eta: float = 0.5
    refine_rounds: int = 0
    retrain_iters: int | None = None
    select_blocks: str = "auto"
    seed: int = 0
    dtype: str = "float32"
    standardize: bool = True
    pushed_storage: str = "auto"
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        plain_fields(self)  # numpy numbers as Python ones: the checkpoint and the log must hold them
        for name in ("blocks", "hidden", "layers", "steps", "iters", "batch", "probes"):
            check_positive_int(getattr(self, name), name)
        for name in ("reparam_rounds", "refine_rounds", "val_patience"):
            check_positive_int(getattr(self, name), name, low=0)
        check_seed(self.seed)
        for name in ("time", "free_block", "warm_start", "standardize"):  # ("no" is truthy)
            check_flag(getattr(self, name), name)
        for name in ("eval_steps", "retrain_iters"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        check_choice(self.activation, "activation", ACTIVATIONS)
        check_choice(self.tableau, "tableau", TABLEAUS)
        check_choice(self.divergence, "divergence", DIVERGENCE_METHODS)
        check_choice(self.transport, "transport", TRANSPORT_COSTS)
        self.dtype = dtype_name(self.dtype)
        check_choice(self.dtype, "dtype", ("float32", "float64"))
        check_choice(self.pushed_storage, "pushed_storage", STORAGES)
        check_choice(self.select_blocks, "select_blocks", SELECT_BLOCKS)
        if self.scratch_dir is not None:
            self.scratch_dir = os.fspath(self.scratch_dir)  # a Path would not survive to_dict's JSON
        for name in ("beta", "h0", "h_growth", "h_max", "lr", "clip", "lr_final", "stop_tol", "reparam_eta"):
            check_number(getattr(self, name), name, strict=name not in ("stop_tol", "reparam_eta"))
        if not (0 <= self.stop_tol and 0 < self.lr_final <= 1 and 0 <= self.reparam_eta <= 1):
            raise ValueError("need stop_tol >= 0, 0 < lr_final <= 1 and 0 <= reparam_eta <= 1")

    @classmethod
    def from_options(cls, budget: str = "default", **options) -> "JKOIFlowConfig":
        """The ``budget`` preset overridden by ``options``; unknown names are an error that
        lists the valid ones."""
        check_choice(budget, "budget", BUDGETS)
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise TypeError(f"unknown jko-iflow option(s) {unknown}; valid options are {sorted(valid)}")
        cfg = cls(**{**BUDGETS[budget], **options})
        cfg._warn_of_inert(options)
        return cfg

    def _warn_of_inert(self, given: dict) -> None:
        """Say where an option the user gave has no effect under the other settings (it is kept
        and recorded all the same): better than a silent no-op for a setting meant to matter."""
        inert = []
        if "probes" in given and self.divergence == "exact":
            inert.append("probes (Hutchinson's probe count) with divergence='exact'")
        if "retrain_iters" in given and self.reparam_rounds + self.refine_rounds == 0:
            inert.append("retrain_iters with reparam_rounds=0 and refine_rounds=0")
        if "reparam_eta" in given and self.reparam_rounds == 0:
            inert.append("reparam_eta with reparam_rounds=0")
        if inert:
            warn_user(f"no effect: {'; '.join(inert)}")

    def check_validation(self, has_val: bool) -> None:
        """Refuse ``select_blocks="val"`` without validation data (train() asks before it
        prepares the data, the trainer again for direct use)."""
        if self.select_blocks == "val" and not has_val:
            raise ValueError('select_blocks="val" picks the blocks by their validation NLL: '
                             'pass validation data (val=...)')

    def to_dict(self) -> dict:
        """The settings as a JSON- and checkpoint-safe dict."""
        # inf is not JSON; the checkpoint and the log store it as a string.
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "JKOIFlowConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (float(v) if k == "h_max" else v) for k, v in d.items()})

    def eval_grids(self) -> list[int]:
        """RK4 steps per block to report NLLs on: the training grid, then the finer one if set."""
        return [self.steps] + ([self.eval_steps] if self.eval_steps and self.eval_steps != self.steps else [])

    def field_config(self) -> dict:
        """Keyword arguments of each block's :class:`~jkofast.VelocityField`."""
        return dict(hidden=self.hidden, layers=self.layers, activation=self.activation,
                    time=self.time, beta=self.beta)


# "quick" trains in seconds (smoke tests); "default" is the README's main job (minutes on a
# laptop CPU); "paper" follows the official 2-D settings (docs/METHOD.md 2.4, 2.8) apart from the data
# size and the divergence (exact; the official code uses a finite-difference probe and the adjoint).
BUDGETS: dict[str, dict] = {
    "quick": dict(blocks=3, hidden=32, layers=2, iters=40, batch=256, eval_steps=None),
    "default": {},
    "paper": dict(blocks=8, hidden=128, h0=0.25, beta=20.0, time=False, iters=10_000, batch=2000, lr=1e-4,
                  lr_final=1.0, tableau="rk4-3/8", stop_tol=0.0, select_blocks="all"),
}
