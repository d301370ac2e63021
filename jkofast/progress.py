"""Progress bars: tqdm where it is enabled, a silent stand-in where it is not."""
from __future__ import annotations

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
