"""Optional dependencies of the data loaders, imported only when a data set needs them."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, *, package: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that says what needs it and how to install it.

    Arguments:
        module: the import name, e.g. ``"sklearn.datasets"``.
        package: the pip name, e.g. ``"scikit-learn"``.
        purpose: what asked for it, e.g. ``"the built-in data set 'wine'"``.
        extra: the jkofast extra that installs it (``pip install 'jkofast[extra]'``), if any.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install 'jkofast[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise ImportError(f"{purpose} needs the optional package {package}, which could not be imported "
                          f"({exc}); install it with: {how}") from exc
