"""The one place that chooses between the compiled ops and the pure-torch reference.

Until the compiled extension (``jkofast._C``) provides ops, every call resolves to ``"torch"``.
``backend="compiled"`` then fails loudly instead of silently running the reference, so a test
or a benchmark that asks for the kernels can never measure the wrong thing.
"""
from __future__ import annotations

import importlib

BACKENDS = ("auto", "torch", "compiled")

try:  # The extension registers its ops with torch on import (TORCH_LIBRARY).
    importlib.import_module("jkofast._C")
    COMPILED_ERROR: str | None = None
except ImportError as exc:  # not built (pure-Python install) or failed to load
    COMPILED_ERROR = f"{type(exc).__name__}: {exc}"


def compiled_available() -> bool:
    """Whether the compiled ops can serve calls (none are registered yet: see csrc/README.md)."""
    return False


def resolve(backend: str) -> str:
    """Map a user's ``backend=`` argument to the engine that will run: ``"torch"`` for now."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid backend {backend!r}; must be one of {list(BACKENDS)}")
    if backend == "compiled" and not compiled_available():
        why = COMPILED_ERROR or "this build has no compiled ops yet"
        raise RuntimeError(f"backend='compiled' was requested but the compiled ops are not available ({why}); "
                           "use backend='torch' or 'auto'")
    return "torch"
