"""Stochastic-interpolant training (Albergo & Vanden-Eijnden, arXiv 2209.15571; docs/METHOD.md 4).

The velocity is fitted without any ODE: for data x1, a base draw x0 ~ N(0, I) and a time t, the
interpolant I_t = a_t x0 + b_t x1 gives the loss

    G(v) = E_t E[ |v(I_t, t)|^2 - 2 dI_t/dt . v(I_t, t) ],

minimised by v_t(x) = E[dI_t/dt | I_t = x], the velocity whose flow carries N(0, I) (t = 0) to
the data (t = 1). A Flow runs from data to latent over s in [0, 1], so the trained field is
g(x, s) = -v(x, 1 - s): the loss is written directly in s (t = 1 - s, dI/ds = -dI/dt), and the
result is an ordinary one-block :class:`Flow` of a :class:`~jkofast.VelocityField`, so
likelihood, sampling and inversion run on the same rk4 engine (compiled ops included) as JKO-iFlow.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor

from .divergence import velocity
from .flow import Flow
from .interpolant_config import InterpolantConfig
from .interpolants import interpolate, sample_times
from .metrics import push, standard_normal_nll
from .optim_step import check_weights, cosine_lr, optimizer_step, random_rows
from .progress import progress_bar
from .run_state import load_run, save_run

__all__ = ["InterpolantTrainer", "interpolant_loss"]

METHOD = "interpolant"
VAL_POINTS = 2000  # validation rows scored during training (the full set is scored at the end)


def interpolant_loss(field, x1: Tensor, x0: Tensor, t: Tensor, interpolant: str = "trig",
                     backend: str = "auto") -> Tensor:
    """The interpolant loss on one batch, in the flow's time s = 1 - t.

    Arguments:
        field: the block's field g(x, s), data (s = 0) to latent (s = 1).
        x1: data (B, d); x0: base draws (B, d); t: the paper's times (B,), 0 = base, 1 = data.

    Returns:
        mean over the batch of |g(I, s)|^2 - 2 dI/ds . g(I, s), a scalar.
    """
    point, rate = interpolate(interpolant, x0, x1, t)
    g = velocity(field, point, 1 - t, backend=backend)
    return (g.square().sum(1) + 2 * (rate * g).sum(1)).mean()   # dI/ds = -dI/dt


class InterpolantTrainer:
    """Trains the single block of a :class:`Flow` on standardized data ``u_train`` (N, d)
    (``u_val`` optional). ``out`` is a folder for ``checkpoint.pt`` and ``log.json``; ``data_id``
    identifies the data. Call :meth:`resume`, then :meth:`run`.
    """

    def __init__(self, flow: Flow, config: InterpolantConfig, u_train: Tensor, u_val: Tensor | None = None,
                 *, out: str | Path | None = None, data_id: str = "", progress: bool = True,
                 backend: str = "auto", log: dict | None = None) -> None:
        self.flow, self.cfg = flow, config
        self.u_train, self.u_val = u_train, u_val
        self.out = Path(out) if out is not None else None
        self.data_id, self.progress, self.backend = data_id, progress, backend
        self.log = log if log is not None else {}
        self.log.setdefault("segments", [])
        self.resume_notes: list[str] = []  # (train() says them; the interpolant has none)
        self.generator = torch.Generator(device=u_train.device).manual_seed(config.seed)
        self.iteration = 0
        self.optimizer_state: dict | None = None
        if flow.num_blocks == 0:
            with torch.random.fork_rng(devices=[]):  # the initialisation depends on the seed alone
                torch.manual_seed(config.seed)
                flow.add_block(flow.new_field(), math.inf)

    def resume(self) -> bool:
        """Continue from ``out/checkpoint.pt`` if present; refuse one from other settings or data."""
        record = load_run(self.out, method=METHOD, config=self.cfg.to_dict(), data_id=self.data_id,
                          device=self.u_train.device)
        if record is None:
            return False
        self.flow.blocks, self.flow.h = record["flow"].blocks, record["flow"].h
        self.iteration, self.optimizer_state = int(record["cursor"]["iteration"]), record["optimizer"]
        self.generator.set_state(record["generator"])
        self.log = record["log"]
        return True

    def _save(self) -> None:
        save_run(self.out, method=METHOD, flow=self.flow, config=self.cfg.to_dict(),
                 cursor={"iteration": self.iteration}, optimizer=self.optimizer_state, generator=self.generator,
                 data_id=self.data_id, log=self.log)

    def _batch_loss(self, field) -> Tensor:
        cfg, u = self.cfg, self.u_train
        x1 = u[random_rows(u.shape[0], cfg.batch, self.generator, u.device)]
        x0 = torch.randn(x1.shape, generator=self.generator, dtype=u.dtype, device=u.device)
        t = sample_times(x1.shape[0], cfg.time_beta, generator=self.generator, dtype=u.dtype, device=u.device)
        return interpolant_loss(field, x1, x0, t, cfg.interpolant, self.backend)

    def run(self) -> Flow:
        """Train the remaining iterations; log and checkpoint every ``val_every`` /
        ``checkpoint_every`` iterations and at the end."""
        cfg, field = self.cfg, self.flow.blocks[0]
        params = list(field.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        if self.iteration == 0:
            self._save()
        bar = progress_bar(total=cfg.iters, desc="interpolant", enabled=self.progress)
        bar.update(self.iteration)
        start, losses = time.perf_counter(), []
        try:
            while self.iteration < cfg.iters:
                it = self.iteration
                cosine_lr(opt, it, cfg.iters, cfg.lr, cfg.lr_final)
                loss = self._batch_loss(field)
                losses.append(optimizer_step(opt, loss, params, cfg.clip, f"at iteration {it + 1}"))
                self.iteration += 1
                bar.update(1)
                if it % 10 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                end = self.iteration == cfg.iters
                if end or self.iteration % cfg.val_every == 0 or self.iteration % cfg.checkpoint_every == 0:
                    check_weights(params, f"at iteration {self.iteration}")
                    self._log_segment(losses, time.perf_counter() - start)
                    start, losses = time.perf_counter(), []
                    self.optimizer_state = opt.state_dict()
                    if end or self.iteration % cfg.checkpoint_every == 0:
                        self._save()
        finally:
            bar.close()
        return self.flow

    def _log_segment(self, losses: list[float], seconds: float) -> None:
        """One log entry for the iterations since the last one (loss mean, time, val NLL)."""
        entry = {"iteration": self.iteration, "iters": len(losses), "loss": sum(losses) / len(losses),
                 "seconds": round(seconds, 3)}
        if self.u_val is not None and (self.iteration % self.cfg.val_every == 0 or self.iteration == self.cfg.iters):
            z, logdet = push(self.flow, self.u_val[:VAL_POINTS], divergence="exact", backend=self.backend)
            entry["val_nll_standardized"] = float(standard_normal_nll(z, logdet).mean())
        self.log["segments"].append(entry)
