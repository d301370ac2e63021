"""Progress bars: tqdm where it is enabled, a silent stand-in where it is not."""
from __future__ import annotations

from tqdm.auto import tqdm


class _Silent:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A bar over ``total`` steps; tqdm refreshes at most twice a second, so it costs nothing
    measurable against a training iteration."""
    if not enabled:
        return _Silent()
    return tqdm(total=total, desc=desc, mininterval=0.5, dynamic_ncols=True, leave=True)
