"""The OT-Flow potential Phi(x, t) (Onken et al. 2021; docs/METHOD.md 3.1): a scalar network whose
negative gradient is the velocity, with its gradient, time derivative and Laplacian in closed form.

    Phi(s) = w^T N(s) + 1/2 s^T A^T A s + b^T s + c,        s = (x, t) in R^(d+1)
    N:  u_0 = sigma(K_0 s + b_0),  u_i = u_(i-1) + h sigma(K_i u_(i-1) + b_i),  h = 1 / (M - 1)
    sigma(z) = log(e^z + e^-z),  sigma' = tanh,  sigma'' = 1 - tanh^2

The velocity is v = -grad_x Phi, so div v = -tr(Hess_x Phi). Every activation is elementwise and
everything else linear, so the Hessian's trace is a sum over the network's units,
sum_units (dPhi/d out) sigma''(in) |grad_x in|^2, plus tr(A_x^T A_x): one forward pass carrying the
Jacobian of each layer and one backward pass for dPhi/du, no second autograd pass. The
code is plain differentiable torch, so training backpropagates through it.

Layouts: x (B, d); t a 0-d tensor or (B,); K_0 (m, d + 1); K_i (m, m); A (r, d + 1); the
Jacobian d u_i / dx as d rows per sample, (B, d, m).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_positive_int
from .field import Field

__all__ = ["OTFlowPotential"]


def _sigma(z: Tensor) -> Tensor:
    # log(e^z + e^-z) = |z| + log(1 + e^(-2|z|)): never overflows.
    a = z.abs()
    return a + torch.log1p(torch.exp(-2 * a))


class OTFlowPotential(Field):
    """OT-Flow's potential network; as a :class:`~jkofast.Field` it is the velocity -grad_x Phi.

    Arguments:
        dim: data dimension d.
        hidden: width m of the ResNet.
        layers: ResNet depth M >= 2 (OT-Flow's ``nTh``): the opening layer and M - 1 residual
            layers of step 1 / (M - 1).
        rank: rows r of the quadratic term's A; default min(10, d + 1) as in OT-Flow.

    Initialisation as in OT-Flow: default ``nn.Linear`` layers, w = 1, A Xavier-uniform, b = c = 0.

    Examples:
        >>> phi = OTFlowPotential(2, hidden=8)
        >>> grad, dt, lap = phi.terms(torch.randn(5, 2), torch.tensor(0.5))
        >>> grad.shape, dt.shape, lap.shape
        (torch.Size([5, 2]), torch.Size([5]), torch.Size([5]))
    """

    def __init__(self, dim: int, hidden: int = 32, layers: int = 2, rank: int | None = None) -> None:
        super().__init__()
        check_positive_int(dim, "OTFlowPotential: dim")
        check_positive_int(hidden, "OTFlowPotential: hidden")
        check_positive_int(layers, "OTFlowPotential: layers", low=2)
        rank = min(10, dim + 1) if rank is None else check_positive_int(rank, "OTFlowPotential: rank")
        self.dim, self.hidden, self.layers, self.rank = dim, hidden, layers, rank
        self.opening = nn.Linear(dim + 1, hidden)
        self.residual = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.w = nn.Parameter(torch.ones(hidden))
        self.A = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, dim + 1)))
        self.b = nn.Parameter(torch.zeros(dim + 1))
        self.c = nn.Parameter(torch.zeros(()))

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild the potential (weights aside)."""
        return dict(dim=self.dim, hidden=self.hidden, layers=self.layers, rank=self.rank)

    @property
    def step(self) -> float:
        """The residual step h = 1 / (M - 1)."""
        return 1.0 / (self.layers - 1)

    def _inputs(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], dim=1)

    def potential(self, x: Tensor, t: Tensor) -> Tensor:
        """Phi(x, t), (B,)."""
        s = self._inputs(x, t)
        u = _sigma(self.opening(s))
        for layer in self.residual:
            u = u + self.step * _sigma(layer(u))
        return u @ self.w + 0.5 * (s @ self.A.t()).square().sum(1) + s @ self.b + self.c

    def terms(self, x: Tensor, t: Tensor, laplacian: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(grad_x Phi (B, d), d/dt Phi (B,), tr Hess_x Phi (B,))`` in closed form (the last is
        None with ``laplacian=False``)."""
        d, h = self.dim, self.step
        s = self._inputs(x, t)
        pre = [self.opening(s)]                                # pre-activations z_i, (B, m) each
        u = _sigma(pre[0])
        for layer in self.residual:
            pre.append(layer(u))
            u = u + h * _sigma(pre[-1])
        slopes = [torch.tanh(z) for z in pre]                  # sigma'(z_i)
        # Backward: g_i = dPhi/du_i; g_(i-1) = g_i + h (sigma'(z_i) * g_i) K_i.
        g = self.w.expand(x.shape[0], -1)
        grads = [g]
        for i in range(len(self.residual), 0, -1):
            g = g + h * (slopes[i] * g) @ self.residual[i - 1].weight
            grads.append(g)
        grads.reverse()                                        # grads[i] = dPhi/du_i
        sym = self.A.t() @ self.A                              # (d + 1, d + 1)
        grad_s = (slopes[0] * grads[0]) @ self.opening.weight + s @ sym + self.b
        if not laplacian:
            return grad_s[:, :d], grad_s[:, d], None
        # Trace of the x-Hessian: each unit adds (dPhi/d its output) sigma''(z) |grad_x z|^2. The
        # Jacobians ride as d rows per sample, (B, d, m), so each layer's product is one GEMM.
        k0x = self.opening.weight[:, :d]                       # (m, d)
        curv = [1 - sl.square() for sl in slopes]              # sigma''(z_i)
        lap = (curv[0] * grads[0]) @ k0x.square().sum(1)
        jac = slopes[0].unsqueeze(1) * k0x.t()                 # du_0/dx, (B, d, m)
        for i, layer in enumerate(self.residual, start=1):
            kj = jac @ layer.weight.t()                        # dz_i/dx, (B, d, m)
            lap = lap + h * ((curv[i] * grads[i]).unsqueeze(1) * kj.square()).sum((1, 2))
            if i < len(self.residual):
                jac = jac + h * slopes[i].unsqueeze(1) * kj
        lap = lap + sym[:d, :d].diagonal().sum()
        return grad_s[:, :d], grad_s[:, d], lap

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The velocity v(x, t) = -grad_x Phi, (B, d)."""
        return -self.terms(x, t, laplacian=False)[0]

    def velocity_and_divergence(self, x: Tensor, t: Tensor, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """v = -grad_x Phi (B, d) and div v = -tr Hess_x Phi (B,), exact in closed form; with
        ``probes`` the Hutchinson estimate by autograd (:class:`~jkofast.Field`'s default)."""
        if probes is not None:
            return super().velocity_and_divergence(x, t, probes)
        grad, _, lap = self.terms(x, t)
        return -grad, -lap

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, layers={self.layers}, rank={self.rank}"

