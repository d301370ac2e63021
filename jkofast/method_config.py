"""What the settings dataclasses of the jko-flow and interpolant methods share: building one from
``train``'s keyword options over a ``budget`` preset, and turning it into JSON and back."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ._checks import check_choice, check_flag, check_positive_int, check_seed, dtype_name, plain_fields

__all__ = ["MethodConfig"]


class MethodConfig:
    """Mixin for a settings dataclass; subclasses set ``method`` (its name in ``train``) and
    ``budgets`` (preset name -> overrides of the defaults; ``"default"`` is ``{}``)."""

    method: ClassVar[str]
    budgets: ClassVar[dict[str, dict]]

    @classmethod
    def option_names(cls) -> set[str]:
        """The keyword options :func:`jkofast.train` accepts for this method."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, budget: str = "default", **options):
        """The ``budget`` preset overridden by ``options``; unknown names are an error that lists
        the valid ones."""
        check_choice(budget, "budget", cls.budgets)
        unknown = sorted(set(options) - cls.option_names())
        if unknown:
            raise TypeError(f"unknown {cls.method} option(s) {unknown}; valid options are {sorted(cls.option_names())}")
        return cls(**{**cls.budgets[budget], **options})

    def to_dict(self) -> dict:
        """The settings as a JSON- and checkpoint-safe dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def eval_grids(self) -> list[int]:
        """RK4 steps to report NLLs on: the model's grid ``steps``, then ``eval_steps`` if set."""
        steps, finer = self.steps, self.eval_steps
        return [steps] + ([finer] if finer and finer != steps else [])

    def _check_common(self) -> None:
        """Checks of the fields every method has (numpy numbers made Python ones first)."""
        plain_fields(self)
        for name in ("hidden", "layers", "steps", "iters", "batch"):
            check_positive_int(getattr(self, name), name)
        check_seed(self.seed)
        if self.eval_steps is not None:
            check_positive_int(self.eval_steps, "eval_steps")
        self.dtype = dtype_name(self.dtype)
        check_choice(self.dtype, "dtype", ("float32", "float64"))
        check_flag(self.standardize, "standardize")
