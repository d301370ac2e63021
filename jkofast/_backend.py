"""The one place that chooses between the compiled ops and the pure-torch reference.

``backend="auto"`` runs the compiled op when the extension is built and the call fits it (an
MLP :class:`~jkofast.VelocityField`, float32 or float64, a device the ops were built for, and on
CUDA the kernels' size limits) and the reference otherwise; ``"torch"`` always runs the reference;
``"compiled"`` runs the op or raises, so a test or a benchmark that asks for the kernels can never
measure the wrong thing.

The CUDA fit rule: d <= 128, width <= 512 and at most 16 weight matrices (any batch, any number of
probes), on a GPU of compute capability 8.x or 9.x (the architectures the kernels are built for).
The numbers come from the compiled extension (csrc/ops/tile_plan.h), whose CUDA glue refuses
anything else with the same rule.

On a GPU, a field's shape is handed to the kernels only after they agreed with the pure-torch
engine on a small case of that shape on that device (:mod:`jkofast._kernel_check`, once per
process): where they do not, jkofast warns and runs the reference.
"""
from __future__ import annotations

import re

import torch
from torch.autograd import forward_ad

from . import _kernel_check
from ._extension import HOW_TO_BUILD, CompiledExtensionWarning, load
from ._warn import warn_user

BACKENDS = ("auto", "torch", "compiled")
COMPILED_DTYPES = (torch.float32, torch.float64)

# Checks the build against the running torch (raises TorchMismatchError on a mismatch), then
# loads the extension, which registers its ops with torch (TORCH_LIBRARY).
EXTENSION = load()
compiled_ops = EXTENSION.ops  # wrappers, fakes, autograd formulas; None without the extension
COMPILED_ERROR: str | None = EXTENSION.error
_warned_fallback = False


def cuda_limits() -> dict[str, int]:
    """The CUDA kernels' size limits: ``{"dim": ..., "hidden": ..., "weights": ...}``."""
    from . import _C

    return {"dim": _C.CUDA_MAX_DIM, "hidden": _C.CUDA_MAX_HIDDEN, "weights": _C.CUDA_MAX_WEIGHTS}


def cuda_misfit(dim: int, hidden: int, weights: int) -> str | None:
    """Why the CUDA kernels cannot run a field of these sizes (``weights`` weight matrices), or None."""
    limits = cuda_limits()
    if 1 <= dim <= limits["dim"] and 1 <= hidden <= limits["hidden"] and 2 <= weights <= limits["weights"]:
        return None
    return (f"d={dim}, width {hidden}, {weights} weight matrices (the CUDA kernels take d <= {limits['dim']}, "
            f"width <= {limits['hidden']}, at most {limits['weights']} weight matrices)")


def _cuda_arch_misfit(device: torch.device) -> str | None:
    """Whether the build has machine code for this GPU: code for x.y runs on x.z with z >= y, and
    PTX (an entry like "9.0+PTX") on anything newer. Without it, a launch would fail rather than
    fall back."""
    from . import _C

    major, minor = torch.cuda.get_device_capability(device)
    built = getattr(_C, "CUDA_ARCH_LIST", "")
    for entry in built.replace(";", " ").split():
        found = re.match(r"(\d+)\.(\d+)", entry)
        if found is None:
            continue
        arch = (int(found[1]), int(found[2]))
        if (arch[0] == major and arch[1] <= minor) or ("PTX" in entry and arch <= (major, minor)):
            return None
    return f"a GPU of compute capability {major}.{minor} (the CUDA kernels were built for {built!r})"


def compiled_available() -> bool:
    """Whether the compiled extension loaded (``jkofast._C`` with its ops)."""
    return COMPILED_ERROR is None


# Asked of the dispatcher once: the kernels register when _C loads, and torch.compile cannot trace
# the dispatcher query (every entry point broke fullgraph=True on it).
# The ops are the wrappers' names (jkofast/_ops exports one per forward op).
_KERNELS = {(op, device): torch._C._dispatch_has_kernel_for_dispatch_key(f"jkofast::{op}", device.upper())
            for op in (compiled_ops.__all__ if compiled_available() else ()) for device in ("cpu", "cuda")}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the compiled op ``jkofast::<op>`` has a kernel for ``device_type`` ("cpu", "cuda")."""
    return _KERNELS.get((op, device_type), False)


def compiled_devices() -> tuple[str, ...]:
    """Device types that have kernels registered for the compiled ops."""
    return tuple(dev for dev in ("cpu", "cuda") if has_kernel("rk4_block", dev))


def check_backend(backend: str) -> None:
    """Validate a ``backend=`` argument (also where no field is at hand yet: :func:`jkofast.train`)."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid backend {backend!r}; must be one of {list(BACKENDS)}")
    if backend == "compiled" and not compiled_available():
        raise RuntimeError(f"backend='compiled' was requested but the compiled ops are not available: "
                           f"{COMPILED_ERROR}. Use backend='torch' or 'auto', or {HOW_TO_BUILD}")


def _warn_fallback() -> None:
    """Say once per process that the engine runs on pure torch because the extension is
    unavailable (not when the user switched it off: that is a choice, not a surprise)."""
    global _warned_fallback
    if _warned_fallback or EXTENSION.disabled:
        return
    _warned_fallback = True
    warn_user(f"jkofast is running on its pure-torch engine (slower): {COMPILED_ERROR}. To use the "
              f"compiled ops, {HOW_TO_BUILD}", CompiledExtensionWarning)


def _misfit(field, x: torch.Tensor, probes: torch.Tensor | None = None) -> str | None:
    """Why the compiled ops cannot run ``field`` on ``x`` (with Hutchinson ``probes``), or None
    if they can."""
    from .field import VelocityField  # here: field.py imports this module's users

    # The ops have a backward but no batching or forward-mode rule: torch.func's jvp/jacfwd
    # would treat them as constants and return zero derivatives (torch's custom-op behaviour,
    # not an error), vmap/jacrev would refuse them with torch's generic message.
    if torch._C._are_functorch_transforms_active():
        return "a torch.func transform (vmap, grad, jacrev, jacfwd, jvp, hessian) is active, and the compiled ops " \
               "have no batching or forward-mode rule"
    # (any dual level: the tangent may ride on x, t, the probes or the field's parameters)
    if not torch.compiler.is_compiling() and forward_ad._current_level >= 0:
        return "forward-mode AD (torch.autograd.forward_ad) is active, and the compiled ops propagate no tangents"
    if probes is not None and probes.requires_grad:
        return "the probes require a gradient, which the compiled ops do not compute"
    if not isinstance(field, VelocityField) or any(
            getattr(type(field), name) is not getattr(VelocityField, name)
            for name in ("forward", "velocity_and_divergence")):
        return f"{type(field).__name__} is not jkofast's MLP VelocityField"
    if x.dtype not in COMPILED_DTYPES:
        return f"dtype {x.dtype} (the ops take float32 and float64)"
    if x.device.type not in compiled_devices():
        return f"device {x.device.type!r} (this build has kernels for {list(compiled_devices())})"
    if x.device.type == "cuda":
        why = cuda_misfit(field.dim, field.hidden, len(field.weights)) or _cuda_arch_misfit(x.device)
        if why is not None:
            return why
    return _kernel_check.disagreement(field, x)  # (a first use of this shape on a GPU: the kernels checked)


def choose(backend: str, field, x: torch.Tensor, probes: torch.Tensor | None = None) -> str:
    """The engine that runs ``field`` on ``x`` (with Hutchinson ``probes``, if given as a
    tensor): ``"compiled"`` or ``"torch"``."""
    check_backend(backend)
    if backend == "torch":
        return "torch"
    if not compiled_available():
        _warn_fallback()
        return "torch"
    why = _misfit(field, x, probes)
    if why is None:
        return "compiled"
    if backend == "compiled":
        raise ValueError(f"backend='compiled' cannot run this call: {why}; use backend='torch' or 'auto'")
    return "torch"

