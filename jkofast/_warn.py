"""Warnings that point at the user's code: the caller of the outermost jkofast frame, however deep
in the package the warning is raised (a fixed stacklevel points into jkofast when the same check
is reached through train(), a data loader or the command line; torch's Module.__call__ may sit
between jkofast frames)."""
from __future__ import annotations

import os
import sys
import warnings


class JkofastWarning(UserWarning):
    """What jkofast warns of (a data file's header read one way of two, columns of whole numbers,
    an option with no effect, the pure-torch fallback): filter them by this class."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _in_package(filename: str) -> bool:
    # ("<string>", "<stdin>": code typed or exec'd, never jkofast's, wherever the working folder is)
    return not filename.startswith("<") and os.path.abspath(filename).startswith(_PACKAGE)


def warn_user(message: str, category: type[Warning] = JkofastWarning) -> None:
    """``warnings.warn(message, category)`` at the caller of the outermost jkofast frame."""
    frame, level, user = sys._getframe(1), 2, 2  # level 2: warn_user's caller
    while frame is not None:
        if _in_package(frame.f_code.co_filename):
            user = level + 1
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=user)
