"""Progress bars: tqdm where it is enabled, a silent stand-in where it is not."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm


class _Silent:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A bar over ``total`` steps. On a terminal it refreshes twice a second (nothing measurable
    against a training iteration); into a log file, every 10 s, so logs stay readable."""
    if not enabled:
        return _Silent()
    interval = 0.5 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=desc, mininterval=interval, dynamic_ncols=True, leave=True)


_log = logging.getLogger("jkofast")


def say(message: str, *, bars: bool, main: bool = True) -> None:
    """A note for the user about what training did (stopped early, resumed, dropped blocks): on
    stderr next to the bars where they are shown (tqdm keeps an open bar intact), else as an
    INFO record of the ``jkofast`` logger (the command line shows those; a script sees them once
    it configures logging). Rank 0 alone speaks in a distributed run."""
    if not main:
        return
    if bars:
        tqdm.write(f"jkofast: {message}", file=sys.stderr)
    else:
        _log.info(message)
