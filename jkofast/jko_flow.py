"""JKO-Flow training (Vidal et al., arXiv 2211.16757; docs/METHOD.md 3.2): the OT-Flow objective with a
fixed alpha, solved in rounds, each round on the training data pushed through the previous ones.

Round k trains OT-Flow's potential Phi_k on p_(k-1) (the data pushed through Phi_1..Phi_(k-1)),
starting from Phi_(k-1) and Adam's state (warm start, as the paper's code does), then appends it
to the flow as block k and pushes the data on. Minimising L + alpha C over a round is one JKO
step of size alpha, so the KL term of the whole flow goes down from round to round. A checkpoint
after every round (run_state.py) lets a killed run resume exactly.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import Tensor

from .flow import Flow
from .jko_flow_config import JKOFlowConfig
from .metrics import push, rows_per_chunk, standard_normal_nll
from .optim_step import check_weights, cosine_lr, optimizer_step, random_rows
from .ot_flow_loss import ot_flow_loss
from .progress import progress_bar
from .run_state import load_run, save_run

__all__ = ["JKOFlowTrainer"]

METHOD = "jko-flow"


class JKOFlowTrainer:
    """Trains a :class:`Flow` with ``block="ot-potential"`` on standardized data ``u_train``
    (N, d) (``u_val`` optional). ``out`` is a folder for ``checkpoint.pt`` and ``log.json``;
    ``data_id`` identifies the data. Call :meth:`resume`, then :meth:`run`.
    """

    def __init__(self, flow: Flow, config: JKOFlowConfig, u_train: Tensor, u_val: Tensor | None = None,
                 *, out: str | Path | None = None, data_id: str = "", progress: bool = True,
                 backend: str = "auto", log: dict | None = None) -> None:
        self.flow, self.cfg = flow, config
        self.u_train, self.u_val = u_train, u_val
        self.out = Path(out) if out is not None else None
        self.data_id, self.progress, self.backend = data_id, progress, backend
        self.log = log if log is not None else {}
        self.log.setdefault("blocks", [])
        self.generator = torch.Generator(device=u_train.device).manual_seed(config.seed)
        self.round = 0
        self.optimizer_state: dict | None = None
        self.chunk = rows_per_chunk(flow)
        self.resume_notes: list[str] = []

    def resume(self) -> bool:
        """Continue from ``out/checkpoint.pt`` if present; refuse one from other settings or data,
        except more ``rounds``: the run goes on, as a run with that many from the start (its
        random numbers and Adam's state carry over from round to round in either). What the
        resume decided by itself is left in ``resume_notes`` (train() says it)."""
        record = load_run(self.out, method=METHOD, config=self.cfg.to_dict(), data_id=self.data_id,
                          device=self.u_train.device, growable="rounds")
        if record is None:
            return False
        self.flow.blocks, self.flow.h = record["flow"].blocks, record["flow"].h
        self.round, self.optimizer_state = int(record["cursor"]["round"]), record["optimizer"]
        self.generator.set_state(record["generator"])
        self.log = record["log"]
        then = record["config"].get("rounds", self.cfg.rounds)
        if then != self.cfg.rounds:  # (the next checkpoint, after the next round, records it)
            self.log.setdefault("events", []).append({"grown": {"rounds": [then, self.cfg.rounds]}})
            self.resume_notes.append(f"rounds={self.cfg.rounds} on resuming a run of rounds={then}: the run goes on "
                                     f"after round {self.round}, up to round {self.cfg.rounds}")
        return True

    def _save(self) -> None:
        save_run(self.out, method=METHOD, flow=self.flow, config=self.cfg.to_dict(), cursor={"round": self.round},
                 optimizer=self.optimizer_state, generator=self.generator, data_id=self.data_id, log=self.log)

    def _push(self, u: Tensor, blocks: slice, divergence: str | None) -> tuple[Tensor, Tensor | None]:
        return push(self.flow, u, blocks=blocks, divergence=divergence, backend=self.backend, chunk=self.chunk)

    def _start_potential(self, k: int):
        if k > 0 and self.cfg.warm_start:
            return copy.deepcopy(self.flow.blocks[k - 1])
        # A fresh network's initialisation depends on the seed and the round alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + k)
            potential = self.flow.new_field()
        if self.cfg.init == "identity":
            with torch.no_grad():
                potential.w.zero_()
                potential.A.mul_(0.1)
        return potential

    def train_round(self, k: int, x: Tensor):
        """Train round k's potential on x ~ p_k; returns (potential, its log entry)."""
        cfg = self.cfg
        potential = self._start_potential(k)
        params = list(potential.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        if cfg.warm_start and self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        bar = progress_bar(total=cfg.iters, desc=f"jko-flow round {k + 1}/{cfg.rounds}", enabled=self.progress)
        start, losses = time.perf_counter(), []
        try:
            for it in range(cfg.iters):
                cosine_lr(opt, it, cfg.iters, cfg.lr, cfg.lr_final)
                batch = x[random_rows(x.shape[0], cfg.batch, self.generator, x.device)]
                loss, parts = ot_flow_loss(potential, batch, cfg.alpha, cfg.alpha_r, cfg.steps, cfg.tableau)
                losses.append(optimizer_step(opt, loss, params, cfg.clip, f"in round {k + 1} at iteration {it + 1}"))
                bar.update(1)
                if it % 10 == 0 or it + 1 == cfg.iters:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", C=f"{float(parts['C']):.4f}")
        finally:
            bar.close()
        check_weights(params, f"in round {k + 1} at iteration {cfg.iters}")
        self.optimizer_state = opt.state_dict() if cfg.warm_start else None
        tail = losses[-max(1, cfg.iters // 10):]
        entry = {"phase": "round", "block": k + 1, "h": cfg.alpha, "iters": cfg.iters, "loss": sum(tail) / len(tail),
                 "loss_first": losses[0], **{name: float(v) for name, v in parts.items()},
                 "seconds": round(time.perf_counter() - start, 3)}
        return potential, entry

    def run(self) -> Flow:
        """Train the remaining rounds, checkpointing after each."""
        cfg, flow = self.cfg, self.flow
        done = slice(0, flow.num_blocks)
        x, _ = self._push(self.u_train, done, None)
        kl_u, kl_logdet = self._push(self.u_train[:cfg.kl_points], done, "exact")
        val = None if self.u_val is None else self._push(self.u_val, done, "exact")
        if self.round == 0:
            self._save()  # the empty start: a run killed in round 1 resumes from here
        while self.round < cfg.rounds:
            k = self.round
            potential, entry = self.train_round(k, x)
            flow.add_block(potential, cfg.alpha)
            new = slice(k, k + 1)
            with torch.no_grad():
                y, _ = self._push(x, new, None)
                entry["ter"] = float((y - x).square().sum(1).mean() / y.square().sum(1).mean())
                x = y
                kl_u, ld = self._push(kl_u, new, "exact")
                kl_logdet = kl_logdet + ld
                # The KL term of the whole flow so far: the mean NLL of training points in the
                # standardized space, KL(p_0 || model) + the data's entropy.
                entry["kl_term"] = float(standard_normal_nll(kl_u, kl_logdet).mean())
                if val is not None:
                    v, ld = self._push(val[0], new, "exact")
                    val = (v, val[1] + ld)
                    entry["val_nll_standardized"] = float(standard_normal_nll(*val).mean())
            self.log["blocks"].append(entry)
            self.round += 1
            self._save()
        return flow
