"""Block-by-block JKO-iFlow training (Xu, Cheng, Xie, arXiv 2212.14424; METHOD.md 2.5-2.7).

The run is a list of phases, each a pass over the blocks: the first pass adds blocks until the
stopping rule fires, each reparametrization round re-times and retrains every block, each
refinement round splits every block in two and retrains. Block k always trains on the data
pushed through blocks 1..k-1, pushed once when block k-1 finishes and carried forward. A
checkpoint after every block (jko_iflow_state.py) lets a killed run resume exactly.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .flow import Flow
from .jko_iflow_config import JKOIFlowConfig
from .jko_iflow_state import restore_state, save_state
from .jko_loss import block_loss
from .metrics import push, standard_normal_nll
from .progress import progress_bar
from .schedule import reparametrized_step_sizes, split_block, step_sizes

__all__ = ["JKOIFlowTrainer", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The loss, the gradients or the weights became NaN or inf; the message names where."""


class Pushed(NamedTuple):
    """Data pushed through blocks 1..k: what block k + 1 trains on, and the val log-det so far."""
    k: int
    train: Tensor
    val: Tensor | None
    val_logdet: Tensor | None


class JKOIFlowTrainer:
    """Trains a :class:`Flow` on standardized data ``u_train`` (N, d) (``u_val`` optional).

    ``out`` is a folder for ``checkpoint.pt`` and ``log.json``; ``data_id`` identifies the data
    (a resumed run must see the same). Call :meth:`resume` to continue a checkpoint, then
    :meth:`run`.
    """

    def __init__(self, flow: Flow, config: JKOIFlowConfig, u_train: Tensor, u_val: Tensor | None = None,
                 *, out: str | Path | None = None, data_id: str = "", progress: bool = True,
                 backend: str = "auto", log: dict | None = None) -> None:
        self.flow, self.cfg = flow, config
        self.u_train, self.u_val = u_train, u_val
        self.out = Path(out) if out is not None else None
        self.data_id, self.progress, self.backend = data_id, progress, backend
        self.log = log if log is not None else {}
        self.log.setdefault("blocks", [])
        self.generator = torch.Generator(device=u_train.device).manual_seed(config.seed)
        self.phases = ["initial"] + ["reparam"] * config.reparam_rounds + ["refine"] * config.refine_rounds
        self.cursor = {"phase": 0, "block": 0, "started": False, "done": False}
        self._pushed: Pushed | None = None

    def resume(self) -> bool:
        """Continue from ``out/checkpoint.pt`` if present (see :func:`restore_state`)."""
        return restore_state(self)

    # ------------------------------------------------------------------ one block
    def _new_field(self):
        # The first block's initialisation depends on the seed alone, not on RNG use elsewhere.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return self.flow.new_field()

    def _batches(self, n: int):
        """Shuffled minibatch indices, cycling through epochs, from the run's generator."""
        batch = min(self.cfg.batch, n)
        while True:
            perm = torch.randperm(n, generator=self.generator, device=self.u_train.device)
            for i in range(0, n - batch + 1, batch):
                yield perm[i:i + batch]

    def _diverged(self, what: str, label: str, k: int, it: int) -> TrainingDivergedError:
        where = f"is in {self.out}" if self.out else "was not kept (no output folder)"
        return TrainingDivergedError(f"{what} in {label} block {k + 1} at iteration {it}; the last good "
                                     f"checkpoint {where}. Try a smaller lr, a smaller h0 or more RK4 steps.")

    def train_block(self, k: int, x: Tensor, iters: int, label: str) -> dict:
        """Train block k's field in place on x ~ p_{k-1}; returns the block's log entry."""
        cfg, field, h = self.cfg, self.flow.blocks[k], self.flow.h[k]
        opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=cfg.lr * cfg.lr_final)
        batches = self._batches(x.shape[0])
        bar = progress_bar(total=iters, desc=f"{label} block {k + 1}/{self.flow.num_blocks} h={h:.3g}",
                           enabled=self.progress)
        start, losses = time.perf_counter(), []
        try:
            for it in range(1, iters + 1):
                loss, parts = block_loss(field, x[next(batches)], h, cfg.steps, divergence=cfg.divergence,
                                         probes=cfg.probes, tableau=cfg.tableau, transport=cfg.transport,
                                         generator=self.generator, backend=self.backend)
                value = float(loss.detach())
                if not math.isfinite(value):
                    terms = {n: round(float(v), 6) for n, v in parts.items()}
                    raise self._diverged(f"loss became {value} (terms {terms})", label, k, it)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(field.parameters(), cfg.clip)
                opt.step()
                sched.step()
                losses.append(value)
                bar.update(1)
                if it % 10 == 1 or it == iters:
                    bar.set_postfix(loss=f"{value:.4f}")
        finally:
            bar.close()
        # A NaN gradient in the last step would only surface in the next block: check here, so
        # a broken block is never checkpointed as good.
        if not all(bool(torch.isfinite(p).all()) for p in field.parameters()):
            raise self._diverged("the weights became NaN or inf", label, k, iters)
        tail = losses[-max(1, iters // 10):]
        return {"phase": label, "block": k + 1, "h": h, "iters": iters, "loss": sum(tail) / len(tail),
                "loss_first": losses[0], "V": float(parts["V"]), "div": float(parts["div"]),
                "W2": float(parts["W2"]), "seconds": round(time.perf_counter() - start, 3)}

    # ------------------------------------------------------------------ phases
    def _push_through(self, k: int) -> Pushed:
        """Train data (and val data with its log-det) pushed through the first k blocks."""
        first = slice(0, k)
        x, _ = push(self.flow, self.u_train, blocks=first, backend=self.backend)
        if self.u_val is None:
            return Pushed(k, x, None, None)
        v, ld = push(self.flow, self.u_val, blocks=first, divergence="exact", backend=self.backend)
        return Pushed(k, x, v, ld)

    def _start_phase(self, phase: str) -> None:
        """Re-time (reparam) or split (refine) the blocks at the start of a retraining round."""
        flow = self.flow
        if phase == "reparam":
            x, movement = self.u_train, []
            for k in range(flow.num_blocks):
                y, _ = push(flow, x, blocks=slice(k, k + 1), backend=self.backend)
                movement.append(float((y - x).square().sum(1).mean().sqrt()))
                x = y
            flow.h = reparametrized_step_sizes(flow.h, movement, self.cfg.reparam_eta)
            self.log.setdefault("events", []).append({"reparam": {"movement": movement, "h": list(flow.h)}})
        elif phase == "refine":
            blocks, h = list(flow.blocks), list(flow.h)
            flow.blocks, flow.h = torch.nn.ModuleList(), []
            for block, hk in zip(blocks, h):
                for child in split_block(block):
                    flow.add_block(child, hk / 2)
            self.log.setdefault("events", []).append({"refine": {"blocks": flow.num_blocks}})
        self._pushed = None  # the blocks changed: what was pushed through them is stale

    def _label(self, phase_index: int) -> str:
        """"initial", or the round's name and number within its kind: "reparam1", "refine2"."""
        phase = self.phases[phase_index]
        return phase if phase == "initial" else f"{phase}{self.phases[:phase_index + 1].count(phase)}"

    def run(self) -> Flow:
        """Train until every phase is done, checkpointing after each block."""
        cfg, flow = self.cfg, self.flow
        schedule = step_sizes(cfg.blocks, cfg.h0, cfg.h_growth, cfg.h_max)
        while not self.cursor["done"]:
            phase_index, k = self.cursor["phase"], self.cursor["block"]
            phase = self.phases[phase_index]
            if not self.cursor["started"]:
                self._start_phase(phase)
                self.cursor["started"] = True
                save_state(self)
            if self._pushed is None or self._pushed.k != k:
                self._pushed = self._push_through(k)
            x, v, v_logdet = self._pushed.train, self._pushed.val, self._pushed.val_logdet
            if phase == "initial":
                # Checkpoints fall between blocks, so block k is always the next one to add.
                if k != flow.num_blocks:
                    raise RuntimeError(f"inconsistent training state: next block {k + 1}, {flow.num_blocks} built")
                free = self.cursor.get("free_next", False)
                field = self._new_field() if k == 0 or not cfg.warm_start else copy.deepcopy(flow.blocks[k - 1])
                flow.add_block(field, math.inf if free else schedule[k])
                iters = cfg.iters
            else:
                iters = cfg.retrain_iters or cfg.iters
            label = self._label(phase_index)
            entry = self.train_block(k, x, iters, label)
            with torch.no_grad():
                y, _ = push(flow, x, blocks=slice(k, k + 1), backend=self.backend)
                entry["ter"] = float((y - x).square().sum(1).mean() / y.square().sum(1).mean())
                if v is not None:
                    v, ld = push(flow, v, blocks=slice(k, k + 1), divergence="exact", backend=self.backend)
                    v_logdet = v_logdet + ld
                    entry["val_nll_standardized"] = float(standard_normal_nll(v, v_logdet).mean())
            self._pushed = Pushed(k + 1, y, v, v_logdet)
            self.log["blocks"].append(entry)
            self._advance(phase, phase_index, k, entry["ter"])
            save_state(self)
        return flow

    def _advance(self, phase: str, phase_index: int, k: int, ter: float) -> None:
        """Move the cursor past block k. The first pass ends when the stopping rule fires or
        the block budget is spent, or, with free_block, after the free block (h = inf) that
        follows; a retraining round ends after its last block."""
        cfg, flow = self.cfg, self.flow
        free = not math.isfinite(flow.h[k])
        stop = k + 1 >= cfg.blocks or ter < cfg.stop_tol
        if phase == "initial" and stop and cfg.free_block and not free:
            self.cursor.update(block=k + 1, free_next=True)
        elif (phase == "initial" and (stop or free)) or (phase != "initial" and k + 1 == flow.num_blocks):
            self.cursor.update(phase=phase_index + 1, block=0, started=False, free_next=False)
            self.cursor["done"] = phase_index + 1 == len(self.phases)
        else:
            self.cursor["block"] = k + 1
