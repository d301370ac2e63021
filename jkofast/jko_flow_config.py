"""Settings of a JKO-Flow run (OT-Flow re-solved in rounds), with the presets ``budget=`` selects."""
from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_choice, check_flag, check_number, check_positive_int
from .method_config import MethodConfig
from .reference import TABLEAUS

__all__ = ["JKOFlowConfig", "INITS"]

INITS = ("identity", "ot-flow")


@dataclass
class JKOFlowConfig(MethodConfig):
    """Every setting of :func:`jkofast.train` with ``method="jko-flow"`` (docs/METHOD.md 3).

    Objective: J = L + ``alpha`` C + ``alpha_r`` R, OT-Flow's alpha = (1, alpha, alpha_r): L the
    transport cost, C the KL term, R the HJB penalty. ``alpha`` is the JKO step size: each round
    is one step of the JKO scheme.
    Rounds: ``rounds`` solves, each on the training data pushed through the previous rounds and
    adding one block to the flow; ``warm_start`` carries the network and Adam's state from round
    to round (as the paper's code does), else each round starts afresh. A resumed run may raise
    ``rounds`` (and nothing else that changes training): it goes on as a longer run would have.
    Network: OT-Flow's potential with width ``hidden``, ``layers`` ResNet layers (OT-Flow's nTh)
    and a rank-``rank`` quadratic term (None: min(10, d + 1)). ``init="identity"`` starts the
    first round near the identity map (w = 0 and A scaled by 0.1, so v = -grad Phi is small: on
    two moons it reached in 120 steps what OT-Flow's own initialisation, ``init="ot-flow"``
    (w = 1), had not reached, 2.89 against 3.44 nats).
    Integration: ``steps`` classical RK4 steps per round over unit time (OT-Flow's nt),
    ``eval_steps`` for the finer evaluation grid (None: none).
    Optimisation per round: ``iters`` Adam steps of ``batch`` samples at ``lr``, cosine decay to
    ``lr * lr_final`` within the round, gradient norm clipped to ``clip`` (None: no clipping).
    ``kl_points`` training points are carried through the rounds with their log-determinants,
    so the log reports the KL term of the whole flow after each round.
    ``seed``, ``dtype``, ``standardize`` as for jko-iflow.
    """

    method = "jko-flow"

    rounds: int = 5
    alpha: float = 10.0
    alpha_r: float = 0.5
    hidden: int = 32
    layers: int = 2
    rank: int | None = None
    init: str = "identity"
    steps: int = 8
    eval_steps: int | None = 16
    tableau: str = "rk4"
    iters: int = 300
    batch: int = 1000
    lr: float = 1e-2
    lr_final: float = 0.1
    clip: float | None = None
    warm_start: bool = True
    kl_points: int = 4096
    seed: int = 0
    dtype: str = "float32"
    standardize: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        check_positive_int(self.rounds, "rounds")
        check_positive_int(self.kl_points, "kl_points")
        check_positive_int(self.layers, "layers", low=2)
        if self.rank is not None:
            check_positive_int(self.rank, "rank")
        check_number(self.alpha, "alpha")
        check_number(self.alpha_r, "alpha_r", strict=False)
        check_number(self.lr, "lr")
        if not 0 < check_number(self.lr_final, "lr_final") <= 1:
            raise ValueError(f"lr_final must be in (0, 1], got {self.lr_final!r}")
        if self.clip is not None:
            check_number(self.clip, "clip")
        check_choice(self.tableau, "tableau", TABLEAUS)
        check_choice(self.init, "init", INITS)
        check_flag(self.warm_start, "warm_start")

    block = "ot-potential"  # the kind of Flow block this method trains

    def field_config(self) -> dict:
        """Keyword arguments of each round's :class:`~jkofast.ot_flow_model.OTFlowPotential`."""
        return dict(hidden=self.hidden, layers=self.layers, rank=self.rank)


# "quick" trains in seconds (smoke tests); "default" (1,500 steps of 1,000, 0.2 s each) fits a
# 2-D set in about five minutes on one CPU core; "paper" is the JKO-Flow code's 2-D setting
# (docs/METHOD.md 3.2: K = 5, m = 16, nt = 8, alpha = (1, 10, 0.5), Adam 1e-2, batch 2,000, 1,000
# epochs of 6,000 samples = 3,000 steps, float64, OT-Flow's initialisation).
JKOFlowConfig.budgets = {
    "quick": dict(rounds=2, hidden=16, iters=40, batch=256, steps=4, eval_steps=None, kl_points=1024),
    "default": {},
    "paper": dict(rounds=5, hidden=16, init="ot-flow", steps=8, alpha=10.0, alpha_r=0.5, lr=1e-2, lr_final=1.0,
                  iters=3000, batch=2000, dtype="float64"),
}
