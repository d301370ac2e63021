"""Block-by-block JKO-iFlow training (Xu, Cheng, Xie, arXiv 2212.14424; docs/METHOD.md 2.5-2.7).

The run is a list of phases, each a pass over the blocks: the first pass adds blocks until the
stopping rule fires, each reparametrization round re-times and retrains every block, each
refinement round splits every block in two and retrains. Block k always trains on the data
pushed through blocks 1..k-1, pushed once when block k-1 finishes and carried forward
(jko_iflow_pushed.py). A checkpoint after every block (jko_iflow_state.py) lets a killed run
resume exactly, and a finished one go on with a larger ``blocks`` (JKOIFlowTrainer._grow).

Under a process group (distributed.py) every rank trains the same block on its own shard
(shard.py) with DistributedDataParallel: each takes ``batch / world`` rows per step, so the
averaged gradient is the gradient of the global batch, and Adam, the clipping and the learning
rate schedule run identically on every rank. Every number a decision depends on (the loss, Ter(k),
the block movements of a reparametrization, validation NLLs) is a sum over all ranks' rows, so
the step sizes, the stopping rule and the log are the same on every rank and for any world size.
The random numbers of the j-th trained block on rank r come from (seed, j, r) alone: nothing
random is carried between blocks, so a checkpoint resumes with any number of processes.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .distributed import Dist, raised_on_every_rank
from .flow import Flow
from .jko_iflow_config import JKOIFlowConfig, check_global_batch
from .jko_iflow_pushed import PushedData
from .jko_iflow_state import restore_state, save_state
from .jko_loss import block_loss
from .memory import peak_memory
from .progress import progress_bar, say
from .schedule import reparametrized_step_sizes, split_block, step_sizes
from .shard import MemoryShard, ShardStore

__all__ = ["JKOIFlowTrainer", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The loss, the gradients or the weights became NaN or inf; the message names where."""


class BlockObjective(nn.Module):
    """Block k's loss as a module, so DistributedDataParallel can wrap it: DDP averages the
    gradients of the parameters its ``forward`` used."""

    def __init__(self, field: nn.Module, h: float, cfg: JKOIFlowConfig, generator: torch.Generator,
                 backend: str) -> None:
        super().__init__()
        self.field, self.h, self.cfg, self.generator, self.backend = field, h, cfg, generator, backend

    def forward(self, x0: Tensor):
        cfg = self.cfg
        return block_loss(self.field, x0, self.h, cfg.steps, divergence=cfg.divergence, probes=cfg.probes,
                          tableau=cfg.tableau, transport=cfg.transport, generator=self.generator,
                          backend=self.backend)


class JKOIFlowTrainer:
    """Trains a :class:`Flow` on standardized data ``u_train`` (``u_val`` optional): this rank's
    shards (shard.py), or tensors (N, d) for a single process.

    ``out`` is a folder for ``checkpoint.pt`` and ``log.json`` (written by rank 0 only);
    ``data_id`` identifies the data (a resumed run must see the same); ``dist`` is this
    process's place in a distributed run (default: a single process); ``store`` makes the
    pushed shards (default: in memory). Call :meth:`resume` to continue a checkpoint, then
    :meth:`run`.
    """

    def __init__(self, flow: Flow, config: JKOIFlowConfig, u_train, u_val=None,
                 *, out: str | Path | None = None, data_id: str = "", progress: bool = True,
                 backend: str = "auto", log: dict | None = None, dist: Dist | None = None,
                 store: ShardStore | None = None) -> None:
        self.flow, self.cfg = flow, config
        if isinstance(u_train, Tensor):
            u_train = MemoryShard(u_train)
        if isinstance(u_val, Tensor):
            u_val = MemoryShard(u_val, u_val.new_zeros(u_val.shape[0]))
        self.device = flow.loc.device
        self.dist = dist if dist is not None else Dist(device=self.device)
        store = store if store is not None else ShardStore("memory", 0, dtype=flow.loc.dtype, device=self.device)
        config.check_validation(u_val is not None)
        self.data = PushedData(flow, u_train, u_val, store=store, dist=self.dist, backend=backend)
        check_global_batch(config.batch, self.dist.world)  # (train() checked it before reading the data)
        self.local_batch = config.batch // self.dist.world
        self.out = Path(out) if out is not None else None
        self.data_id, self.progress, self.backend = data_id, progress and self.dist.main, backend
        self.log = log if log is not None else {}
        self.log.setdefault("blocks", [])
        self.phases = ["initial"] + ["reparam"] * config.reparam_rounds + ["refine"] * config.refine_rounds
        self.cursor = {"phase": 0, "block": 0, "started": False, "done": False}
        self.resume_notes: list[str] = []

    def resume(self) -> bool:
        """Continue from ``out/checkpoint.pt`` if present (see :func:`restore_state`); with more
        ``blocks`` than the checkpoint's, the first pass goes on (:meth:`_grow`). What the resume
        decided by itself is left in ``resume_notes`` (train() says it after "resuming")."""
        then = restore_state(self)
        if then is None:
            return False
        grows = then["blocks"] < self.cfg.blocks
        if grows and (self.cursor["phase"] > 1 or (self.cursor["phase"] == 1 and self.cursor["started"])):
            raise raised_on_every_rank(ValueError(
                f"blocks={self.cfg.blocks} on resuming a run of blocks={then['blocks']}: its {self._label(1)} "
                "round has begun, and blocks can only be added to the first pass; restart (resume=False / "
                "--restart) to train more blocks, or pass another output folder"))
        self._check_pass_rules_kept(then, grows)
        if grows:
            self._grow(then["blocks"])
        return True

    def _stall_patience(self, select_blocks: str) -> int:
        """val_patience where the blocks are selected by validation (``select_blocks``), else 0."""
        return self.cfg.val_patience if self._selects_by_validation(select_blocks) else 0

    def _check_pass_rules_kept(self, then: dict, grows: bool) -> None:
        """Refuse a changed ``select_blocks`` (a resumable setting) where it would change where
        the first pass ends: with validation data it turns the val_patience rule on or off, so
        it may change once the first pass is over, unless the pass goes on (``grows``)."""
        if self._stall_patience(then["select_blocks"]) == self._stall_patience(self.cfg.select_blocks):
            return
        in_pass = self.cursor["phase"] == 0 and not self.cursor.get("free_next")  # (no rule after the free block)
        if in_pass or grows:
            when = "and that pass is not over" if in_pass else f"which blocks={self.cfg.blocks} asks again"
            raise raised_on_every_rank(ValueError(
                f"select_blocks={self.cfg.select_blocks!r} on resuming a run of select_blocks="
                f"{then['select_blocks']!r}: with validation data and val_patience={self.cfg.val_patience} it also "
                f"decides where the first pass ends, {when}; pass select_blocks={then['select_blocks']!r} (it may "
                "change once the first pass is over, with the same blocks)"))

    def _grow(self, then: int) -> None:
        """Turn a run restored from a checkpoint of ``blocks=then`` into the run that this
        ``blocks`` would have trained from the start: the first pass goes on where the smaller
        budget ended it. Block k's random numbers come from (seed, k, rank), so the blocks it
        adds are those a fresh run trains (bit for bit on the same machine and world size).

        A pass that the stopping rule or the validation NLL ended before its budget would end
        there under any larger one; the old budget ended the pass after its last block without
        asking those rules, so they are asked now, and where they end it nothing changes
        either. Otherwise a free block that followed the pass (``free_block``) is dropped (and
        trained again after the new last block). (resume() has refused the grow once a
        retraining round has begun: the blocks are no longer the first pass's.) Nothing is
        written here: the next checkpoint follows the next block."""
        cfg, cursor, flow = self.cfg, self.cursor, self.flow
        grown = f"blocks={cfg.blocks} on resuming a run of blocks={then}"
        stopped = [e["stopped"]["block"] for e in self.log.get("events", []) if "stopped" in e]
        trained = sum(math.isfinite(h) for h in flow.h)
        events = self.log.setdefault("events", [])
        if not (stopped or cursor["phase"] or cursor.get("free_next")):  # killed in the pass: it goes on
            events.append({"grown": {"blocks": [then, cfg.blocks], "free_block_dropped": False}})
            self.resume_notes.append(f"{grown}: the first pass goes on, up to block {cfg.blocks}")
            return
        if stopped or trained < then:  # (a checkpoint from before the "stopped" events has none)
            why = " (log.json's events say why)" if stopped else ""
            self.resume_notes.append(f"{grown} adds no block: the first pass ended at block "
                                     f"{stopped[-1] if stopped else trained} before its budget{why}, as it would "
                                     "under any budget")
            return
        if len(self.log["blocks"]) != flow.num_blocks or any(e["phase"] != "initial" for e in self.log["blocks"]):
            raise RuntimeError(f"inconsistent training state: {flow.num_blocks} blocks, "
                               f"{len(self.log['blocks'])} logged")
        end = self._early_end(trained - 1, self.log["blocks"][trained - 1]["ter"])
        if end is not None:
            event, why, _ = end
            events.append({"stopped": {"block": trained, **event}})
            self.resume_notes.append(f"{grown} adds no block: {why}, so the first pass ends there under any budget")
            return
        free = flow.num_blocks > trained
        if free:  # trained again after the new last block, as a run with this budget does
            self.log.setdefault("discarded", []).extend(self.log["blocks"][trained:])
            del self.log["blocks"][trained:]
            flow.blocks, flow.h = nn.ModuleList(list(flow.blocks)[:trained]), flow.h[:trained]
        events.append({"grown": {"blocks": [then, cfg.blocks], "free_block_dropped": free}})
        self.cursor = {"phase": 0, "block": trained, "started": True, "done": False, "free_next": False}
        again = ", then the free block again" if free else ""
        self.resume_notes.append(f"{grown}: the first pass goes on after block {trained}, up to block {cfg.blocks}"
                                 f"{again}")

    # ------------------------------------------------------------------ one block
    def _new_field(self):
        # The first block's initialisation depends on the seed alone, not on RNG use elsewhere.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return self.flow.new_field()

    def _block_generator(self) -> torch.Generator:
        """The random numbers (batches, probes) of the next block to train on this rank, from
        (seed, blocks trained so far, rank): independent across blocks and ranks, and the same
        after a resume with any world size."""
        j = len(self.log["blocks"])
        seed = int(np.random.SeedSequence([self.cfg.seed, j, self.dist.rank]).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _diverged(self, what: str, label: str, k: int, it: int) -> TrainingDivergedError:
        """The error for a loss or weights gone NaN: raised on every rank alike, since the loss is
        the ranks' mean and the weights are the same on every rank (DDP)."""
        where = f"is in {self.out}" if self.out else "was not kept (no output folder)"
        return raised_on_every_rank(TrainingDivergedError(
            f"{what} in {label} block {k + 1} at iteration {it}; the last good checkpoint {where}. Try a smaller "
            "lr, a smaller h0 or more RK4 steps, in another output folder or with resume=False (--restart): a run "
            "resumes with its own settings."))

    def train_block(self, k: int, x, iters: int, label: str) -> dict:
        """Train block k's field in place on x ~ p_{k-1} (this rank's shard); returns the
        block's log entry (losses averaged over the ranks)."""
        cfg, field, h = self.cfg, self.flow.blocks[k], self.flow.h[k]
        generator = self._block_generator()
        opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=cfg.lr * cfg.lr_final)
        batches = x.batches(self.local_batch, generator)
        # the first pass adds blocks as it goes: count against its budget, not the blocks so far
        of = cfg.blocks + cfg.free_block if label == "initial" else self.flow.num_blocks
        bar = progress_bar(total=iters, desc=f"{label} block {k + 1}/{of} h={h:.3g}", enabled=self.progress)
        start, losses = time.perf_counter(), []
        try:
            with self.dist.data_parallel(BlockObjective(field, h, cfg, generator, self.backend)) as objective:
                for it in range(1, iters + 1):
                    loss, parts = objective(next(batches))
                    # The ranks' mean loss (and terms) is reduced while backward runs; every rank
                    # then sees the same value, so all stop together on a NaN.
                    pending = self.dist.mean_async(torch.stack([loss.detach(), *parts.values()]))
                    opt.zero_grad(set_to_none=True)
                    self.dist.guard("the gradient all-reduce", loss.backward)
                    terms = pending.wait().tolist()
                    value = terms[0]
                    if not math.isfinite(value):
                        named = {n: round(v, 6) for n, v in zip(parts, terms[1:])}
                        raise self._diverged(f"loss became {value} (terms {named})", label, k, it)
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
        last = dict(zip(parts, terms[1:]))
        return {"phase": label, "block": k + 1, "h": h, "iters": iters, "loss": sum(tail) / len(tail),
                "loss_first": losses[0], "V": last["V"], "div": last["div"], "W2": last["W2"],
                "seconds": round(time.perf_counter() - start, 3),
                "peak_rss_bytes_rank0": peak_memory(self.device)["rss_bytes"]}

    # ------------------------------------------------------------------ phases
    def _start_phase(self, phase: str) -> None:
        """Re-time (reparam) or split (refine) the blocks at the start of a retraining round."""
        flow = self.flow
        if phase == "reparam":
            movement = self.data.movements()
            flow.h = reparametrized_step_sizes(flow.h, movement, self.cfg.reparam_eta)
            self.log.setdefault("events", []).append({"reparam": {"movement": movement, "h": list(flow.h)}})
        elif phase == "refine":
            blocks, h = list(flow.blocks), list(flow.h)
            flow.blocks, flow.h = torch.nn.ModuleList(), []
            for block, hk in zip(blocks, h):
                for child in split_block(block):
                    flow.add_block(child, hk / 2)
            self.log.setdefault("events", []).append({"refine": {"blocks": flow.num_blocks}})
        self.data.invalidate()  # the blocks changed: what was pushed through them is stale

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
            x = self.data.through(k).train
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
            entry.update(self.data.past(k))
            self.log["blocks"].append(entry)
            self._advance(phase, phase_index, k, entry["ter"])
            save_state(self)
        # After the last checkpoint: the checkpoint keeps every block, so a finished run can be
        # resumed with the other select_blocks (a resumable change) and cut again the same way.
        self._select_blocks()
        self.data.invalidate()
        return flow

    def _select_blocks(self) -> bool:
        """With ``select_blocks="val"`` (or ``"auto"`` and validation data), cut the flow to the
        shortest prefix of blocks with the lowest validation NLL. The final round logged each
        prefix's NLL as it trained it (the same number on every rank), so this needs no extra
        pass, and a resumed finished run cuts to the same prefix. Non-finite NLLs never win.
        Returns whether the flow changed."""
        if not self._selects_by_validation():
            return False
        final = self._label(len(self.phases) - 1)
        nll = [e["val_nll_standardized"] for e in self.log["blocks"] if e["phase"] == final]
        finite = [i for i, v in enumerate(nll) if math.isfinite(v)]
        if not finite:
            return False
        keep = 1 + min(finite, key=nll.__getitem__)
        if keep >= self.flow.num_blocks:
            return False
        self.log.setdefault("events", []).append(
            {"select_blocks": {"kept": keep, "of": self.flow.num_blocks, "val_nll_standardized": nll}})
        say(f"select_blocks: kept the first {keep} of {self.flow.num_blocks} blocks, the lowest validation NLL "
            f"({nll[keep - 1]:.4g} standardized, {nll[-1]:.4g} with all; select_blocks='all' keeps every block)",
            bars=self.progress, main=self.dist.main)
        self.flow.blocks = torch.nn.ModuleList(list(self.flow.blocks)[:keep])
        self.flow.h = self.flow.h[:keep]
        return True

    def _selects_by_validation(self, select_blocks: str | None = None) -> bool:
        """Whether the blocks are selected by their validation NLL under ``select_blocks``
        (default: this run's)."""
        select = select_blocks or self.cfg.select_blocks
        return select == "val" or (select == "auto" and self.data.val is not None)

    def _validation_stalled(self, k: int) -> bool:
        """Whether the last ``val_patience`` blocks of the first pass up to block k all left the
        validation NLL above the best before them (a NaN counts as above), when the blocks are
        selected by it: blocks past that point are dropped at the end unless the NLL comes back
        below."""
        patience = self.cfg.val_patience
        if not patience or not self._selects_by_validation():
            return False
        nll = [e["val_nll_standardized"] for e in self.log["blocks"] if e["phase"] == "initial"][:k + 1]
        if len(nll) <= patience:
            return False
        best = min((v for v in nll[:-patience] if math.isfinite(v)), default=math.inf)
        return all(not v <= best for v in nll[-patience:])

    def _early_end(self, k: int, ter: float) -> tuple[dict, str, str] | None:
        """Why the first pass ends after block k before its budget of blocks, as (the log
        event, the reason, the setting that turns the rule off), or None where it goes on (and
        after the budget's last block or the free block, which end it anyway)."""
        cfg = self.cfg
        if k + 1 >= cfg.blocks or not math.isfinite(self.flow.h[k]):
            return None
        if self._validation_stalled(k):
            return ({"val_patience": cfg.val_patience},
                    f"the validation NLL has been above its best for {cfg.val_patience} block(s)", "val_patience=0")
        if ter < cfg.stop_tol:
            return ({"ter": ter, "stop_tol": cfg.stop_tol},
                    f"stopping rule: block {k + 1} moved the data by Ter = {ter:.2g} < stop_tol = {cfg.stop_tol:g}",
                    "stop_tol=0")
        return None

    def _note_early_end(self, k: int, event: dict, why: str, off: str) -> None:
        """Log and say that the first pass ends after block k, before its budget of blocks."""
        self.log.setdefault("events", []).append({"stopped": {"block": k + 1, **event}})
        then = ", then the free block" if self.cfg.free_block else ""
        say(f"{why}, so the first pass ends at {k + 1} of {self.cfg.blocks} blocks{then} ({off} trains them all)",
            bars=self.progress, main=self.dist.main)

    def _advance(self, phase: str, phase_index: int, k: int, ter: float) -> None:
        """Move the cursor past block k. The first pass ends when the stopping rule fires or
        the block budget is spent, or, with free_block, after the free block (h = inf) that
        follows; a retraining round ends after its last block."""
        cfg, flow = self.cfg, self.flow
        free = not math.isfinite(flow.h[k])
        end = self._early_end(k, ter) if phase == "initial" else None
        stop = k + 1 >= cfg.blocks or end is not None
        if end is not None:
            self._note_early_end(k, *end)
        if phase == "initial" and stop and cfg.free_block and not free:
            self.cursor.update(block=k + 1, free_next=True)
        elif (phase == "initial" and (stop or free)) or (phase != "initial" and k + 1 == flow.num_blocks):
            self.cursor.update(phase=phase_index + 1, block=0, started=False, free_next=False)
            self.cursor["done"] = phase_index + 1 == len(self.phases)
        else:
            self.cursor["block"] = k + 1
