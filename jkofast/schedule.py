"""JKO step sizes: the block schedule, the adaptive time reparametrization and the refinement
that splits every block in two (JKO-iFlow, docs/METHOD.md 2.6-2.7)."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from .field import VelocityField

__all__ = ["step_sizes", "reparametrized_step_sizes", "split_block"]


def step_sizes(blocks: int, h0: float = 0.25, growth: float = 1.4, h_max: float = math.inf) -> list[float]:
    """h_k = min(h0 * growth**(k-1), h_max) for k = 1..blocks.

    The official code's defaults give [0.25, 0.35, 0.49, 0.69, 0.96, 1.34, 1.88, 2.64]: small
    steps first, where the data is far from N(0, I) and the transport penalty keeps each block
    close to the identity (hence invertible and easy to integrate), then growing ones.
    """
    if not (h0 > 0 and growth > 0 and h_max > 0):
        raise ValueError(f"h0, growth and h_max must be positive, got {h0}, {growth}, {h_max}")
    return [min(h0 * growth ** k, h_max) for k in range(blocks)]


def reparametrized_step_sizes(h: Sequence[float], movement: Sequence[float], eta: float = 0.5) -> list[float]:
    """One damped step of the adaptive time reparametrization.

    With fixed h_k the first blocks carry most of the transport and the last barely move.
    Assuming a block's movement W_k = sqrt(E|T_k(x) - x|^2) scales with its h_k, the steps
    h*_k = T (h_k / W_k) / sum_j (h_j / W_j) equalise the movement at the same total time
    T = sum h_k; the update moves a fraction ``eta`` of the way there. (The paper describes the
    idea and eta = 0.5; this formula is the reconstruction in docs/METHOD.md 2.7.) Free blocks
    (h = inf) keep their h and are left out of T.
    """
    if len(h) != len(movement):
        raise ValueError(f"h and movement must have the same length, got {len(h)} and {len(movement)}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    finite = [k for k, hk in enumerate(h) if math.isfinite(hk)]
    # A block that did not move at all would get an infinite share; floor its movement.
    floor = 1e-12 + 1e-6 * max((movement[k] for k in finite), default=0.0)
    score = {k: h[k] / max(movement[k], floor) for k in finite}
    total_h, total_score = sum(h[k] for k in finite), sum(score.values())
    out = list(h)
    for k in finite:
        target = total_h * score[k] / total_score
        out[k] = (1 - eta) * h[k] + eta * target
    return out


@torch.no_grad()
def split_block(field: VelocityField) -> tuple[VelocityField, VelocityField]:
    """Two fields whose composition over unit time each equals ``field`` over unit time.

    Child 1 runs the parent's first half, child 2 its second half: with s the parent's time and
    u in [0, 1] the child's, child_i(y, u) = f(y, (i - 1 + u) / 2) / 2. Both halves are exact
    rewrites of the weights: the velocity (last layer) is halved, and the time column of layer 0
    is halved with child 2's bias shifted by half of it. With S RK4 steps per child the pair
    reproduces the parent integrated with 2S steps, stage for stage.
    """
    first, second = copy.deepcopy(field), copy.deepcopy(field)
    for child in (first, second):
        child.linears[-1].weight.mul_(0.5)
        child.linears[-1].bias.mul_(0.5)
    if field.time:
        w_t = field.linears[0].weight[:, field.dim]
        for child in (first, second):
            child.linears[0].weight[:, field.dim].mul_(0.5)
        second.linears[0].bias.add_(0.5 * w_t)
    return first, second
