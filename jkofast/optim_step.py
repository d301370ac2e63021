"""The pieces of an optimisation step that the jko-flow and interpolant trainers share: random
minibatches from the run's generator, the cosine learning rate, and a step that stops loudly on
a non-finite loss or weights."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .jko_iflow import TrainingDivergedError

__all__ = ["random_rows", "cosine_lr", "optimizer_step", "check_weights"]


def random_rows(n: int, batch: int, generator: torch.Generator, device) -> Tensor:
    """``min(batch, n)`` row indices drawn uniformly with replacement. Independent draws (not
    epochs of a permutation) make the generator's state the whole sampling state, so a run
    resumed from a checkpoint draws exactly the batches the uninterrupted run would have."""
    return torch.randint(0, n, (min(batch, n),), generator=generator, device=device)


def cosine_lr(optimizer: torch.optim.Optimizer, it: int, iters: int, lr: float, lr_final: float) -> None:
    """Set the learning rate of step ``it`` (0-based) of ``iters``: a cosine from ``lr`` down to
    ``lr * lr_final``. A function of ``it`` alone, so it needs no state in a checkpoint."""
    low = lr * lr_final
    for group in optimizer.param_groups:
        group["lr"] = low + 0.5 * (lr - low) * (1 + math.cos(math.pi * it / iters))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor, params: list[Tensor], clip: float | None,
                   where: str) -> float:
    """Backward and step; returns the loss value. A NaN or inf loss raises
    :class:`~jkofast.jko_iflow.TrainingDivergedError` naming ``where`` before any weight changes."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDivergedError(f"loss became {value} {where}; the last good checkpoint is kept. "
                                    "Try a smaller lr or more RK4 steps, in another output folder or with "
                                    "resume=False (--restart): a run resumes with its own settings.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return value


def check_weights(params, where: str) -> None:
    """Raise if a weight is NaN or inf (a bad last gradient would otherwise be checkpointed)."""
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise TrainingDivergedError(f"the weights became NaN or inf {where}; the last good checkpoint is kept. "
                                    "Try a smaller lr, in another output folder or with resume=False (--restart).")
