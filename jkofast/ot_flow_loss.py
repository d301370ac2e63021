"""The OT-Flow objective J = L + alpha C + alpha_R R (Onken et al. 2021; docs/METHOD.md 3.1-3.2).

Training integrates OT-Flow's four-channel state (x, l, L, R) with the same Butcher tableaus as
:func:`jkofast.rk4`: x, the log-determinant l = int div v and the transport cost
L = int |v|^2 / 2 are what ``rk4`` carries (its kinetic energy is 2 L), but the HJB residual R is
not, and a second pass just for it would double the cost. tests/test_ot_flow.py checks that the
three shared channels agree with ``rk4`` to rounding, so the two integrators cannot drift apart.
Likelihood, sampling and inversion of a trained model go through ``rk4`` (a :class:`Flow`).
"""
from __future__ import annotations

from torch import Tensor

from .metrics import standard_normal_nll
from .ot_flow_model import OTFlowPotential
from .reference import TABLEAUS

__all__ = ["ot_flow_integrate", "ot_flow_loss"]


def ot_flow_integrate(potential: OTFlowPotential, x: Tensor, steps: int,
                      tableau: str = "rk4") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integrate dx/dt = -grad Phi over t in [0, 1] with ``steps`` RK steps.

    Returns:
        ``(x1, logdet, transport, hjb)``, (B, d) and (B,) each: logdet = int div v dt,
        transport L = int |v|^2 / 2 dt, hjb R = int |d/dt Phi - |grad Phi|^2 / 2| dt.
    """
    a, b, c = TABLEAUS[tableau]
    h = 1.0 / steps
    logdet, transport, hjb = (x.new_zeros(x.shape[0]) for _ in range(3))
    for step in range(steps):
        t = step * h
        ks, rates = [], []
        for a_row, c_i in zip(a, c):
            xi = x
            for a_ij, k_j in zip(a_row, ks):
                if a_ij != 0.0:
                    xi = xi + (h * a_ij) * k_j
            grad, dt, lap = potential.terms(xi, x.new_tensor(t + c_i * h))
            speed = 0.5 * grad.square().sum(1)
            ks.append(-grad)
            rates.append((-lap, speed, (dt - speed).abs()))
        x = x + h * sum(b_i * k_i for b_i, k_i in zip(b, ks))
        logdet = logdet + h * sum(b_i * r[0] for b_i, r in zip(b, rates))
        transport = transport + h * sum(b_i * r[1] for b_i, r in zip(b, rates))
        hjb = hjb + h * sum(b_i * r[2] for b_i, r in zip(b, rates))
    return x, logdet, transport, hjb


def ot_flow_loss(potential: OTFlowPotential, x0: Tensor, alpha: float, alpha_r: float, steps: int,
                 tableau: str = "rk4") -> tuple[Tensor, dict]:
    """J = E[L] + alpha E[C] + alpha_r E[R] on a batch x0 (B, d), with the KL term

        C = |x(1)|^2 / 2 + (d/2) log 2 pi - int div v dt,

    the negative log-likelihood of x0 under this one map to N(0, I). Dividing J by alpha gives
    C + L / alpha ~ KL + W2^2 / (2 alpha): one JKO step of size alpha (docs/METHOD.md 3.2).

    Returns:
        ``(J, parts)``: the scalar objective and its detached means ``{"L", "C", "R"}``.
    """
    x1, logdet, transport, hjb = ot_flow_integrate(potential, x0, steps, tableau)
    kl = standard_normal_nll(x1, logdet).mean()
    cost, reg = transport.mean(), hjb.mean()
    loss = cost + alpha * kl + alpha_r * reg
    return loss, {"L": cost.detach(), "C": kl.detach(), "R": reg.detach()}
