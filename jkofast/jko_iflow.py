"""Block-by-block JKO-iFlow training (Xu, Cheng, Xie, arXiv 2212.14424; METHOD.md 2.5-2.7).

The run is a list of phases, each a pass over the blocks: the first pass adds blocks until the
stopping rule fires, each reparametrization round re-times and retrains every block, each
refinement round splits every block in two and retrains. Block k always trains on the data
pushed through blocks 1..k-1, pushed once when block k-1 finishes and cached. A checkpoint
after every block (``cursor`` = where the run continues) lets a killed run resume exactly.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import load_payload, require, save_payload
from .flow import Flow
from .jko_iflow_config import JKOIFlowConfig
from .jko_loss import block_loss
from .metrics import push, push_with_logdet
from .progress import progress_bar
from .schedule import reparametrized_step_sizes, split_block, step_sizes
from .reference import LOG_2PI

__all__ = ["JKOIFlowTrainer", "TrainingDivergedError", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"
_KIND = "jkofast.jko-iflow-state"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the message names the block and iteration."""


class JKOIFlowTrainer:
    """Trains a :class:`Flow` on standardized data ``u_train`` (N, d) (``u_val`` optional).

    ``out`` is a folder for ``checkpoint.pt``; with ``resume=True`` a checkpoint found there
    (from the same settings and data) is continued from its last finished block.
    """

    def __init__(self, flow: Flow, config: JKOIFlowConfig, u_train: Tensor, u_val: Tensor | None = None,
                 *, out: str | Path | None = None, progress: bool = True, log: dict | None = None) -> None:
        self.flow, self.cfg = flow, config
        self.u_train, self.u_val = u_train, u_val
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.log = log if log is not None else {}
        self.log.setdefault("blocks", [])
        self.generator = torch.Generator(device=u_train.device).manual_seed(config.seed)
        self.phases = (["initial"] + ["reparam"] * config.reparam_rounds + ["refine"] * config.refine_rounds)
        self.cursor = {"phase": 0, "block": 0, "started": False, "done": False}
        # (k, train data, val data, val log-det) pushed through blocks 1..k: carried from one
        # block to the next, rebuilt only on resume or when a round changes the blocks.
        self._pushed: tuple | None = None

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> list:
        u = self.u_train.double()
        return [list(u.shape), round(float(u.sum()), 6), round(float(u.square().sum()), 6)]

    def save_checkpoint(self) -> None:
        if self.out is None:
            return
        save_payload({"flow": self.flow.payload(), "config": self.cfg.to_dict(), "cursor": dict(self.cursor),
                      "generator": self.generator.get_state(), "data": self._fingerprint(), "log": self.log},
                     self.out / CHECKPOINT_FILE, _KIND)

    def try_resume(self) -> bool:
        """Continue from ``out/checkpoint.pt`` if there is one; errors if it is from other settings."""
        path = None if self.out is None else self.out / CHECKPOINT_FILE
        if path is None or not path.exists():
            return False
        record = load_payload(path, _KIND)
        require(record, ("flow", "config", "cursor", "generator", "data", "log"), path)
        if record["config"] != self.cfg.to_dict() or record["data"] != self._fingerprint():
            changed = sorted(k for k, v in self.cfg.to_dict().items() if record["config"].get(k) != v)
            what = f"settings {changed}" if changed else "training data"
            raise ValueError(f"{path} is from a run with different {what}; pass another output folder, "
                             "or restart (resume=False / --restart) to overwrite it")
        restored = Flow.from_payload(record["flow"], path).to(self.u_train.device)
        self.flow.blocks, self.flow.h = restored.blocks, restored.h
        self.cursor, self.log = dict(record["cursor"]), record["log"]
        self.generator.set_state(record["generator"])
        return True

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

    def train_block(self, k: int, x: Tensor, iters: int, label: str) -> dict:
        """Train block k's field in place on x ~ p_{k-1}; returns the block's log entry."""
        cfg, field, h = self.cfg, self.flow.blocks[k], self.flow.h[k]
        opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=cfg.lr * cfg.lr_final)
        batches = self._batches(x.shape[0])
        bar = progress_bar(total=iters, desc=f"{label} block {k + 1}/{self.flow.num_blocks} h={h:.3g}",
                           enabled=self.progress)
        start, losses = time.perf_counter(), []
        for it in range(iters):
            loss, parts = block_loss(field, x[next(batches)], h, cfg.steps, divergence=cfg.divergence,
                                     probes=cfg.probes, tableau=cfg.tableau, transport=cfg.transport,
                                     generator=self.generator)
            value = float(loss.detach())
            if not math.isfinite(value):
                bar.close()
                raise TrainingDivergedError(
                    f"loss became {value} in {label} block {k + 1} at iteration {it + 1} "
                    f"(terms: { {n: float(v) for n, v in parts.items()} }); the last good checkpoint "
                    f"{'is in ' + str(self.out) if self.out else 'was not kept (no output folder)'}. "
                    "Try a smaller lr, a smaller h0 or more RK4 steps.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(field.parameters(), cfg.clip)
            opt.step()
            sched.step()
            losses.append(value)
            bar.update(1)
            if it % 10 == 0 or it == iters - 1:
                bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        tail = losses[-max(1, iters // 10):]
        return {"phase": label, "block": k + 1, "h": h, "iters": iters, "loss": sum(tail) / len(tail),
                "loss_first": losses[0], "V": float(parts["V"]), "div": float(parts["div"]),
                "W2": float(parts["W2"]), "seconds": round(time.perf_counter() - start, 3)}

    # ------------------------------------------------------------------ phases
    def _push_through(self, blocks: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Train data (and val data with its log-det) pushed through the first ``blocks``."""
        sub = self.flow.blocks[:blocks]
        x = push(sub, self.u_train, self.cfg.steps, self.cfg.tableau)
        if self.u_val is None:
            return x, None, None
        v, ld = push_with_logdet(sub, self.u_val, self.cfg.steps, self.cfg.tableau)
        return x, v, ld

    def _start_phase(self, phase: str) -> None:
        """Re-time (reparam) or split (refine) the blocks at the start of a retraining round."""
        flow = self.flow
        if phase == "reparam":
            x, movement = self.u_train, []
            for block in flow.blocks:
                y = push([block], x, self.cfg.steps, self.cfg.tableau)
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

    def run(self) -> Flow:
        """Train until every phase is done, checkpointing after each block."""
        cfg, flow = self.cfg, self.flow
        schedule = step_sizes(cfg.blocks, cfg.h0, cfg.h_growth, cfg.h_max)
        while not self.cursor["done"]:
            phase_index, k = self.cursor["phase"], self.cursor["block"]
            phase = self.phases[phase_index]
            if not self.cursor["started"]:
                self._start_phase(phase)
                self._pushed = None
                self.cursor["started"] = True
                self.save_checkpoint()
            if self._pushed is None or self._pushed[0] != k:
                self._pushed = (k, *self._push_through(k))
            _, x, v, v_logdet = self._pushed
            if phase == "initial":
                if k == flow.num_blocks:  # add block k (not yet there unless resumed mid-block)
                    free = self.cursor.get("free_next", False)
                    field = self._new_field() if k == 0 or not cfg.warm_start else copy.deepcopy(flow.blocks[k - 1])
                    flow.add_block(field, math.inf if free else schedule[k])
                iters = cfg.iters
            else:
                iters = cfg.retrain_iters or cfg.iters
            entry = self.train_block(k, x, iters, phase if phase == "initial" else f"{phase}{phase_index}")
            with torch.no_grad():
                y = push([flow.blocks[k]], x, cfg.steps, cfg.tableau)
                entry["ter"] = float((y - x).square().sum(1).mean() / y.square().sum(1).mean())
                if v is not None:
                    v, ld = push_with_logdet([flow.blocks[k]], v, cfg.steps, cfg.tableau)
                    v_logdet = v_logdet + ld
                    nll = 0.5 * v.square().sum(1) + 0.5 * flow.dim * LOG_2PI - v_logdet
                    entry["val_nll_standardized"] = float(nll.mean())
            self._pushed = (k + 1, y, v, v_logdet)
            self.log["blocks"].append(entry)
            # The first pass ends when the stopping rule fires or the block budget is spent, or,
            # with free_block, after the one free block (h = inf) that follows.
            stop = k + 1 >= cfg.blocks or entry["ter"] < cfg.stop_tol
            if phase == "initial" and stop and cfg.free_block and math.isfinite(flow.h[k]):
                self.cursor.update(block=k + 1, free_next=True)
            elif (phase == "initial" and (stop or not math.isfinite(flow.h[k]))) or (
                    phase != "initial" and k + 1 == flow.num_blocks):
                self.cursor.update(phase=phase_index + 1, block=0, started=False)
                self.cursor["done"] = phase_index + 1 == len(self.phases)
            else:
                self.cursor["block"] = k + 1
            self.save_checkpoint()
        return flow
