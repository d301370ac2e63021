"""Velocity fields f(x, t): the protocol the integrator needs, and the MLP field of JKO-iFlow."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from . import reference
from ._checks import check_positive_int

__all__ = ["Field", "VelocityField"]


class Field(nn.Module):
    """A velocity field f(x, t) on R^dim that the engine can integrate.

    Subclasses implement :meth:`forward`; :meth:`velocity_and_divergence` defaults to autograd
    (a loop of ``dim`` backward passes for the exact trace, one vector-Jacobian product per
    probe for Hutchinson). Fields with a cheaper divergence override it: :class:`VelocityField`
    carries tangent rows through its layers in forward mode.

    Attributes:
        dim: the data dimension d.
    """

    dim: int

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """f(x, t): x (B, d), t a 0-d tensor or (B,); returns the velocities (B, d)."""
        raise NotImplementedError

    def velocity_and_divergence(
        self, x: Tensor, t: Tensor, probes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(f, div)``: f (B, d) and tr(df/dx) (B,), exact or with probes (B, k, d)."""
        # Under inference_mode, enable_grad() alone records no graph (f would not depend on x and
        # the divergence would come out 0): leave it here, with inference tensors copied out, and
        # return no graph, as inference mode records none.
        inference = torch.is_inference_mode_enabled()
        grad_enabled = torch.is_grad_enabled() and not inference
        with inference_tensors_named(self), torch.inference_mode(False) if inference else contextlib.nullcontext(), \
                torch.enable_grad():
            if inference:
                x, t, probes = (v.clone() if isinstance(v, Tensor) and v.is_inference() else v for v in (x, t, probes))
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            f = self(x_in, t)
            # create_graph only when the caller differentiates through the divergence;
            # retain_graph: the d passes share one graph; materialize_grads: a field that
            # ignores x has zero divergence, not an error.
            grad = lambda out, v=None: torch.autograd.grad(  # noqa: E731
                out, x_in, v, create_graph=grad_enabled, retain_graph=True, allow_unused=True,
                materialize_grads=True)[0]
            if not f.requires_grad:  # f does not depend on x at all
                div = f.new_zeros(f.shape[0])
            elif probes is None:
                div = sum(grad(f[:, j].sum())[:, j] for j in range(f.shape[1]))
            else:
                div = sum((grad(f, v) * v).sum(-1) for v in probes.unbind(1)) / probes.shape[1]
        if not grad_enabled:
            f, div = f.detach(), div.detach()
        return f, div


def inference_tensors_named(field: nn.Module):
    """A context in which torch's "Inference tensors cannot be saved for backward", raised where
    the field's parameters or buffers were made under torch.inference_mode(), names the field and
    the cause (torch's error names neither). Only the error is rewritten: a field made that way
    serves wherever autograd need not save its tensors (frozen, under no_grad, a buffer added)."""
    if torch.compiler.is_compiling():  # (no error to rewrite in a traced graph)
        return contextlib.nullcontext()
    return _InferenceTensorsNamed(field)


class _InferenceTensorsNamed(contextlib.AbstractContextManager):
    def __init__(self, field: nn.Module):
        self.field = field

    def __exit__(self, kind, exc, tb):
        if kind is not RuntimeError or "Inference tensors cannot be saved for backward" not in str(exc):
            return None
        made = [what for what, tensors in (("parameters", self.field.parameters()), ("buffers", self.field.buffers()))
                if any(t.is_inference() for t in tensors)]
        if made:
            raise RuntimeError(f"the {type(self.field).__name__}'s {' and '.join(made)} were made under "
                               "torch.inference_mode(), and autograd cannot save them for backward: build (or load) "
                               "the field outside inference_mode") from exc
        return None


class VelocityField(Field):
    """The MLP velocity field of JKO-iFlow: ``[x, t] -> hidden -> ... -> hidden -> x``.

    Arguments:
        dim: data dimension d.
        hidden: width of each hidden layer.
        layers: number of hidden layers; the official JKO-iFlow field d -> 128 -> 128 -> 128 -> d
            is ``hidden=128, layers=3``.
        activation: ``"softplus"`` (default), ``"tanh"`` or ``"silu"``: smooth, because the
            divergence differentiates the field and training differentiates the divergence.
        time: feed t as an extra input (default). ``False`` gives the autonomous field of the
            official code.
        beta: softplus sharpness, ``softplus(beta z) / beta`` (the official code uses 20).

    Examples:
        >>> field = VelocityField(2, hidden=16, layers=2)
        >>> field(torch.zeros(5, 2), torch.tensor(0.0)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        layers: int = 3,
        activation: str = "softplus",
        *,
        time: bool = True,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("layers", layers)):
            check_positive_int(value, f"VelocityField: {name}")
        if activation not in reference.ACTIVATIONS:
            raise ValueError(
                f"VelocityField: unknown activation {activation!r}; expected one of {sorted(reference.ACTIVATIONS)}"
            )
        if not beta > 0:
            raise ValueError(f"VelocityField: beta must be > 0, got {beta!r}")
        self.dim, self.hidden, self.layers = dim, hidden, layers
        self.activation, self.time, self.beta = activation, bool(time), float(beta)
        sizes = [dim + int(self.time)] + [hidden] * layers + [dim]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild the field (weights aside)."""
        return dict(dim=self.dim, hidden=self.hidden, layers=self.layers,
                    activation=self.activation, time=self.time, beta=self.beta)

    @property
    def weights(self) -> list[Tensor]:
        """The layers' weight matrices, (H_out, H_in) each: the tensors themselves, not copies."""
        return [lin.weight for lin in self.linears]

    @property
    def biases(self) -> list[Tensor]:
        """The layers' bias vectors, (H_out,) each."""
        return [lin.bias for lin in self.linears]

    def _t(self, t: Tensor) -> Tensor | None:
        return t if self.time else None

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t): x (B, d), t a 0-d tensor or (B,); returns (B, d)."""
        return reference.mlp_velocity(x, self._t(t), self.weights, self.biases, self.activation, self.beta)

    def velocity_and_divergence(
        self, x: Tensor, t: Tensor, probes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """f (B, d) and its divergence (B,) in one forward-mode pass (see
        :func:`jkofast.reference.mlp_velocity_and_divergence`)."""
        return reference.mlp_velocity_and_divergence(
            x, self._t(t), self.weights, self.biases, self.activation, self.beta, probes
        )

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, time={self.time}, beta={self.beta}"
