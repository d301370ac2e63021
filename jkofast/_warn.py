"""Warnings that point at the user's code: the first caller outside jkofast, however deep in the
package the warning is raised (a fixed stacklevel points into jkofast when the same check is
reached through train(), a data loader or the command line)."""
from __future__ import annotations

import os
import sys
import warnings

class JkofastWarning(UserWarning):
    """What jkofast warns of (a data file's header read one way of two, columns of whole numbers,
    an option with no effect, the pure-torch fallback): filter them by this class."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = JkofastWarning) -> None:
    """``warnings.warn(message, category)`` at the first frame outside the jkofast package."""
    frame, level = sys._getframe(1), 2  # level 2: warn_user's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
