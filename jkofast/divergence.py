"""``divergence``: the field and its divergence tr(df/dx), exact or by Hutchinson probes."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import _backend
from ._backend import compiled_ops as _ops
from ._checks import check_choice, check_points, check_positive_int
from .field import Field, inference_tensors_named

__all__ = ["divergence", "draw_probes", "velocity"]

DIVERGENCE_METHODS = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")


def draw_probes(x: Tensor, probes: int, noise: str = "rademacher",
                generator: torch.Generator | None = None) -> Tensor:
    """Probe vectors v with E[v v^T] = I, one set per sample: (B, probes, d).

    Rademacher probes (entries +-1) give the lower-variance Hutchinson estimate for a fixed
    Jacobian; Gaussian probes are what the official JKO-iFlow code draws.
    """
    check_choice(noise, "noise", PROBE_NOISES)
    shape = (x.shape[0], check_positive_int(probes, "probes"), x.shape[1])
    if noise == "gaussian":
        return torch.randn(shape, dtype=x.dtype, device=x.device, generator=generator)
    bits = torch.randint(0, 2, shape, device=x.device, generator=generator)
    return bits.to(x.dtype).mul_(2).sub_(1)


def check_field(field) -> None:
    """The engine's functions take a :class:`~jkofast.Field`: it holds ``dim`` and the
    divergence of the torch engine (``velocity_and_divergence``)."""
    if not isinstance(field, Field):
        raise TypeError(f"field must be a jkofast.Field, got {type(field).__name__}: subclass jkofast.Field "
                        "(set self.dim, define forward(x, t) -> (B, dim)) or use jkofast.VelocityField")


def check_probes(probes: Tensor, x: Tensor, method: str) -> None:
    """Hutchinson probes given as a tensor: (B, k, d), k >= 1, real floating point."""
    if method != "hutchinson":
        raise ValueError(f"probes given as a tensor are Hutchinson's; method={method!r} takes none "
                         "(pass method='hutchinson')")
    if probes.dim() != 3 or probes.shape[0] != x.shape[0] or probes.shape[2] != x.shape[1] or probes.shape[1] < 1:
        raise ValueError(f"probes must have shape ({x.shape[0]}, k, {x.shape[1]}) with k >= 1, "
                         f"got {tuple(probes.shape)}")
    if not probes.is_floating_point():
        raise TypeError(f"probes must be a floating-point tensor (e.g. +/-1 or N(0, 1) values), got dtype {probes.dtype}")


def as_time(t, x: Tensor) -> Tensor:
    """t as a tensor on x's device and dtype: a 0-d tensor or a (B,) vector."""
    if isinstance(t, numbers.Real) and not math.isfinite(t):
        raise ValueError(f"t must be finite, got {t}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t


def divergence(field: Field, x: Tensor, t=0.0, *, method: str = "exact", probes: int | Tensor = 1,
               noise: str = "rademacher", generator: torch.Generator | None = None,
               backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Evaluate the field and its divergence in one pass.

    Arguments:
        field: a :class:`~jkofast.Field` (e.g. :class:`~jkofast.VelocityField`).
        x: points, (B, d).
        t: time, a float, a 0-d tensor or (B,).
        method: ``"exact"`` (d tangent rows in forward mode) or ``"hutchinson"``.
        probes: with Hutchinson, the number k of probe vectors per sample, or the probes
            themselves as a (B, k, d) tensor.
        noise: ``"rademacher"`` or ``"gaussian"`` probes.
        generator: random generator for the probes (reproducibility).
        backend: ``"auto"``, ``"torch"`` or ``"compiled"``.

    Returns:
        ``(f, div)``: f (B, d) and div (B,); with Hutchinson, div is an unbiased estimate.

    Examples:
        >>> from jkofast import VelocityField
        >>> f, div = divergence(VelocityField(3, hidden=8), torch.randn(4, 3), 0.5)
        >>> f.shape, div.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """
    check_choice(method, "method", DIVERGENCE_METHODS)
    check_field(field)
    check_points(x, "x", field.dim, like=field)
    given = probes if isinstance(probes, Tensor) else None
    if given is not None:
        check_probes(given, x, method)
    engine = _backend.choose(backend, field, x, given)
    t = as_time(t, x)
    v = None
    if method == "hutchinson":
        v = given.to(dtype=x.dtype, device=x.device) if given is not None else draw_probes(x, probes, noise, generator)
    with inference_tensors_named(field):
        if engine == "compiled":
            return _ops.mlp_field_div(x, field._t(t), field.weights, field.biases, field.activation, field.beta, v)
        return field.velocity_and_divergence(x, t, v)


def velocity(field: Field, x: Tensor, t=0.0, *, backend: str = "auto") -> Tensor:
    """Evaluate the field f(x, t) alone, on the compiled op where it fits.

    Arguments:
        field: a :class:`~jkofast.Field`.
        x: points, (B, d).
        t: time, a float, a 0-d tensor or (B,).
        backend: ``"auto"``, ``"torch"`` or ``"compiled"``.

    Returns:
        f: (B, d). Differentiable once (the compiled op has no double backward).

    Examples:
        >>> from jkofast import VelocityField
        >>> velocity(VelocityField(3, hidden=8), torch.randn(4, 3), 0.5).shape
        torch.Size([4, 3])
    """
    check_points(x, "x", field.dim, like=field)
    engine = _backend.choose(backend, field, x)
    t = as_time(t, x)
    if engine == "compiled":
        return _ops.mlp_field(x, field._t(t), field.weights, field.biases, field.activation, field.beta)
    return field(x, t)
