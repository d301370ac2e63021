"""Settings of a stochastic-interpolant run, with the presets ``budget=`` selects."""
from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_choice, check_number, check_positive_int
from .interpolants import INTERPOLANTS
from .method_config import MethodConfig
from .reference import ACTIVATIONS, TABLEAUS

__all__ = ["InterpolantConfig"]


@dataclass
class InterpolantConfig(MethodConfig):
    """Every setting of :func:`jkofast.train` with ``method="interpolant"`` (docs/METHOD.md 4).

    Loss: E_t E[|v(I_t, t)|^2 - 2 dI_t/dt . v(I_t, t)] with ``interpolant`` ``"trig"`` (the
    paper's cos/sin) or ``"linear"``, t uniform on [0, 1] or Beta(a, b) with
    ``time_beta=(a, b)`` (same minimiser, other weighting).
    Network: one time-dependent :class:`~jkofast.VelocityField` (``hidden``, ``layers``,
    ``activation``, ``beta``). SiLU by default: with softplus(1) the same budget learned the
    velocity markedly slower (two moons, 2,000 steps: 2.83 against 2.52 nats).
    Optimisation: ``iters`` Adam steps of ``batch`` data points, each paired with its own
    N(0, I) draw and time, at ``lr`` with a cosine decay to ``lr * lr_final``, gradient norm
    clipped to ``clip`` (None: none).
    No ODE in training; the likelihood integrates the field with ``steps`` RK4 steps (the model's
    grid), and ``eval_steps`` gives a finer second grid for the reported NLLs.
    Every ``val_every`` steps the NLL of up to 2,000 validation points goes into the log, and
    every ``checkpoint_every`` steps the run is checkpointed (with ``out``).
    ``seed``, ``dtype``, ``standardize`` as for jko-iflow.
    """

    method = "interpolant"

    interpolant: str = "trig"
    time_beta: tuple[float, float] | None = None
    hidden: int = 128
    layers: int = 3
    activation: str = "silu"
    beta: float = 1.0
    steps: int = 8
    eval_steps: int | None = 32
    tableau: str = "rk4"
    iters: int = 2000
    batch: int = 1000
    lr: float = 5e-3
    lr_final: float = 0.05
    clip: float | None = None
    val_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    dtype: str = "float32"
    standardize: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        check_choice(self.interpolant, "interpolant", INTERPOLANTS)
        check_choice(self.activation, "activation", ACTIVATIONS)
        check_choice(self.tableau, "tableau", TABLEAUS)
        if self.time_beta is not None:
            if not (isinstance(self.time_beta, (tuple, list)) and len(self.time_beta) == 2):
                raise TypeError(f"time_beta must be None or a pair (a, b), got {self.time_beta!r}")
            self.time_beta = tuple(check_number(v, "time_beta") for v in self.time_beta)
        for name in ("beta", "lr"):
            check_number(getattr(self, name), name)
        if not 0 < check_number(self.lr_final, "lr_final") <= 1:
            raise ValueError(f"lr_final must be in (0, 1], got {self.lr_final!r}")
        if self.clip is not None:
            check_number(self.clip, "clip")
        check_positive_int(self.val_every, "val_every")
        check_positive_int(self.checkpoint_every, "checkpoint_every")

    block = "velocity"  # the kind of Flow block this method trains

    def field_config(self) -> dict:
        """Keyword arguments of the :class:`~jkofast.VelocityField`."""
        return dict(hidden=self.hidden, layers=self.layers, activation=self.activation, time=True, beta=self.beta)


# "quick" trains in seconds (smoke tests); "default" fits a 2-D set in about a minute on one CPU
# core; "paper" is what the paper's tabular runs are reported to use (docs/METHOD.md 4: Beta(1, 0.5)
# times; its architecture table was not found, so the width and steps here are ours).
InterpolantConfig.budgets = {
    "quick": dict(hidden=32, layers=2, iters=300, batch=256, steps=6, eval_steps=None, val_every=100,
                  checkpoint_every=300),
    "default": {},
    "paper": dict(time_beta=(1.0, 0.5), hidden=256, layers=3, iters=20_000, batch=1000, lr=1e-3,
                  val_every=2000, checkpoint_every=2000),
}
