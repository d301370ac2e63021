"""``Flow``: a trained stack of ODE blocks from data space to N(0, I), with exact likelihoods."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_points, check_positive_int
from ._precision import standardized
from .checkpoint import CheckpointError, load_payload, require, save_payload
from .divergence import DIVERGENCE_METHODS
from .field import VelocityField
from .integrate import rk4
from .metrics import standard_normal_nll
from .ot_flow_model import OTFlowPotential
from .reference import TABLEAUS

__all__ = ["Flow", "MODEL_FILE"]

MODEL_FILE = "model.pt"  # what Flow.save writes into a folder, and Flow.load reads from one
_KIND = "jkofast.flow"
# What a block can be: the MLP velocity field (jko-iflow, interpolant) or OT-Flow's potential,
# whose velocity is -grad Phi (jko-flow). Both are Fields, so rk4 integrates either.
BLOCK_KINDS = {"velocity": VelocityField, "ot-potential": OTFlowPotential}


def _model_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def _unfinished_run(path: Path) -> None:
    """Refuse to load a run folder whose training has not finished, saying how to finish it
    (rather than "no checkpoint at .../model.pt")."""
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{path} holds no {MODEL_FILE} yet: its training has not finished (checkpoint.pt is "
                                "there); run the same `jkofast train` command again (or jkofast.train with this out) "
                                "to resume and finish it")


class Flow(nn.Module):
    """A continuous normalizing flow F = T_L o ... o T_1 o standardize, from data to N(0, I).

    Block k integrates its field over unit time with RK4: a :class:`~jkofast.VelocityField`
    (``block="velocity"``) or an OT-Flow potential whose velocity is -grad Phi
    (``block="ot-potential"``, :class:`~jkofast.ot_flow_model.OTFlowPotential`). ``h[k]`` is the
    JKO step size it was trained with (``inf``: none). The standardization (``loc``, ``scale``) is part of
    the model, so :meth:`log_prob` is the density in the user's data space.

    Arguments:
        dim: data dimension d.
        field: keyword arguments of each block's field (its class is given by ``block``).
        steps: RK4 steps per block (the training grid); methods take ``steps=`` to use a finer one.
        tableau: ``"rk4"`` or ``"rk4-3/8"``.
        loc, scale: standardization, ``u = (x - loc) / scale``; (d,) each. Default: identity.
        block: ``"velocity"`` or ``"ot-potential"``: the class of every block.

    ``flow.info`` (a dict, saved with the model) records how a flow from :func:`jkofast.train`
    was trained: the method and its settings, the data, validation NLLs, training time and memory.

    Examples:
        >>> import torch
        >>> from jkofast import Flow
        >>> flow = Flow(2, dict(hidden=8, layers=1))
        >>> flow.add_block(flow.new_field(), h=0.5)
        >>> x = torch.randn(4, 2)
        >>> z, logdet = flow.transform(x)
        >>> bool((flow.inverse(z) - x).abs().max() < 1e-4), flow.log_prob(x).shape
        (True, torch.Size([4]))
    """

    def __init__(self, dim: int, field: dict | None = None, *, steps: int = 3, tableau: str = "rk4",
                 loc: Tensor | None = None, scale: Tensor | None = None, block: str = "velocity") -> None:
        """An empty flow (no blocks: the standardized Gaussian); the arguments are the class's."""
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.field_config = dict(field or {})
        self.steps = check_positive_int(steps, "steps")
        self.tableau = check_choice(tableau, "tableau", TABLEAUS)
        self.block_kind = check_choice(block, "block", BLOCK_KINDS)
        self.blocks = nn.ModuleList()
        self.h: list[float] = []  # JKO step size of each block (a list: .to(dtype) must not round it)
        loc = torch.zeros(dim) if loc is None else torch.as_tensor(loc).reshape(-1)
        scale = torch.ones(dim) if scale is None else torch.as_tensor(scale).reshape(-1)
        if not (loc.is_floating_point() and scale.is_floating_point()):
            raise TypeError(f"loc and scale must be floating-point, got {loc.dtype} and {scale.dtype}")
        if loc.shape != (dim,) or scale.shape != (dim,):
            raise ValueError(f"loc and scale must have shape ({dim},), got {tuple(loc.shape)} and {tuple(scale.shape)}")
        if scale.device.type != "meta" and not (bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
                                                and bool(torch.isfinite(loc).all())):
            raise ValueError("scale must be positive and finite, and loc finite (a constant data column has scale 0)")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)
        self.info: dict = {}  # how the flow was trained (method, data, settings); saved with it

    # ------------------------------------------------------------------ building
    def new_field(self) -> VelocityField | OTFlowPotential:
        """A freshly initialised block field with this flow's block kind, field configuration,
        dtype and device."""
        return BLOCK_KINDS[self.block_kind](self.dim, **self.field_config).to(self.loc.device, self._dtype)

    def add_block(self, field: VelocityField | OTFlowPotential, h: float) -> None:
        """Append a block (its field and its JKO step size h; ``inf`` for a free block)."""
        if not isinstance(field, BLOCK_KINDS[self.block_kind]):
            raise TypeError(f"this flow's blocks are {BLOCK_KINDS[self.block_kind].__name__} "
                            f"(block={self.block_kind!r}), got a {type(field).__name__}")
        if field.dim != self.dim:
            raise ValueError(f"block field has dim {field.dim}, the flow has dim {self.dim}")
        self.blocks.append(field)
        self.h.append(float(h))

    @property
    def num_blocks(self) -> int:
        """The number of ODE blocks L."""
        return len(self.blocks)

    @property
    def _dtype(self) -> torch.dtype:
        # The buffers follow .to(dtype) like the weights, and exist before the first block does.
        return self.loc.dtype

    # ------------------------------------------------------------------ the map and its inverse
    def _check_latent(self, z: Tensor, name: str) -> Tensor:
        """Latent input on the model's device, in the model's dtype: a narrower float is converted
        (exactly); a wider one is refused (the blocks, in the model's dtype, would round it)."""
        check_points(z, name, self.dim, like=self, allow_narrower=True)
        return z.to(self._dtype)

    def _check_data(self, x: Tensor, name: str) -> Tensor:
        """Data-space input of any float dtype on the model's device: it is standardized in the
        wider of its dtype and the model's (see :meth:`standardize`)."""
        return check_points(x, name, self.dim, like=self, allow_wider=True, allow_narrower=True)

    def transform(self, x: Tensor, *, steps: int | None = None, divergence: str = "exact",
                  probes: int = 1, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """Push data to the latent space.

        Arguments:
            x: data, (B, d), of any float dtype (standardized in the wider of its dtype and the
                model's: float64 data for a float32 model is standardized in float64 first, see
                :meth:`standardize`).
            steps: RK4 steps per block (default: the training grid, ``self.steps``).
            divergence: ``"exact"`` or ``"hutchinson"`` (then logdet is an estimate).

        Returns:
            ``(z, logdet)``: z = F(x), (B, d); logdet = log|det dF/dx|, (B,).
        """
        self._check_data(x, "x")
        check_choice(divergence, "divergence", DIVERGENCE_METHODS)  # (push also takes None: no log-determinant)
        z, logdet = self._push(self.standardize(x), divergence=divergence, probes=probes, steps=steps,
                               backend=backend)
        return z, logdet - torch.log(self.scale).sum()

    def inverse(self, z: Tensor, *, steps: int | None = None, backend: str = "auto",
                dtype: torch.dtype | None = None) -> Tensor:
        """Map latent points back to data space: F^{-1}(z), (B, d) -> (B, d).

        ``z``: in the model's dtype or a narrower float (converted exactly; a wider one is refused,
        since the blocks, in the model's dtype, would round it).
        ``dtype``: of the result (default: the model's). The blocks run in the model's dtype; the
        last step, x = u * scale + loc, runs in ``dtype``, so ``torch.float64`` keeps data with a
        large offset and a small spread (1e8 +/- 1) that float32 would round to multiples of 8."""
        z = self._check_latent(z, "z")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")
        steps = self.steps if steps is None else steps
        for block in reversed(self.blocks):
            z, _, _ = rk4(block, z, 1.0, 0.0, steps, divergence=None, tableau=self.tableau, backend=backend)
        out = self._dtype if dtype is None else dtype
        return z.to(out) * self.scale.to(out) + self.loc.to(out)

    def log_prob(self, x: Tensor, *, steps: int | None = None, backend: str = "auto") -> Tensor:
        """Exact log-density log p(x) in nats, in the user's data space; (B, d) -> (B,), in the
        model's dtype, with its autograd graph (under ``torch.no_grad()`` none is kept)."""
        return -standard_normal_nll(*self.transform(x, steps=steps, backend=backend))

    def sample(self, n: int, *, generator: torch.Generator | None = None, steps: int | None = None,
               backend: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
        """Draw n samples: z ~ N(0, I) pushed through the inverse flow; (n, d) in ``dtype``
        (default: the model's; see :meth:`inverse`). Without a graph, as
        ``torch.distributions``' ``sample``: :meth:`rsample` keeps one."""
        with torch.no_grad():
            return self.rsample(n, generator=generator, steps=steps, backend=backend, dtype=dtype)

    def rsample(self, n: int, *, generator: torch.Generator | None = None, steps: int | None = None,
                backend: str = "auto", dtype: torch.dtype | None = None) -> Tensor:
        """:meth:`sample` with its autograd graph (reparametrized): the samples are
        differentiable functions of the weights, for a loss on the samples themselves."""
        n = check_positive_int(n, "n", low=0)
        z = torch.randn(n, self.dim, generator=generator, dtype=self._dtype, device=self.loc.device)
        return self.inverse(z, steps=steps, backend=backend, dtype=dtype)

    @torch.no_grad()
    def trajectory(self, x: Tensor, *, steps: int | None = None, backend: str = "auto") -> list[Tensor]:
        """The points after standardization and after each block: L + 1 tensors of shape (B, d)."""
        self._check_data(x, "x")
        points = [self.standardize(x)]
        for k in range(self.num_blocks):
            points.append(self._push(points[-1], blocks=slice(k, k + 1), steps=steps, backend=backend)[0])
        return points

    def standardize(self, x: Tensor) -> Tensor:
        """u = (x - loc) / scale, the space the blocks work in; (B, d) -> (B, d) in the model's
        dtype. Computed in x's dtype where that is wider, then rounded (see jkofast/_precision.py)."""
        return standardized(x, self.loc, self.scale)

    def push(self, u: Tensor, *, blocks: slice = slice(None), divergence: str | None = "exact",
             probes: int = 1, steps: int | None = None, backend: str = "auto") -> tuple[Tensor, Tensor | None]:
        """Run standardized points through ``self.blocks[blocks]`` (unit time each).

        Returns ``(u1, logdet)``: the pushed points (B, d) and the summed log-determinants (B,)
        of those blocks, or ``None`` with ``divergence=None`` (no divergence is computed).
        """
        return self._push(self._check_latent(u, "u"), blocks=blocks, divergence=divergence, probes=probes,
                          steps=steps, backend=backend)

    def _push(self, u: Tensor, *, blocks: slice = slice(None), divergence: str | None = "exact", probes: int = 1,
              steps: int | None = None, backend: str = "auto") -> tuple[Tensor, Tensor | None]:
        """:meth:`push` of points already in the model's dtype (standardize's, a block's output)."""
        steps = self.steps if steps is None else steps
        logdet = None if divergence is None else u.new_zeros(u.shape[0])
        for block in self.blocks[blocks]:
            u, block_logdet, _ = rk4(block, u, 0.0, 1.0, steps, divergence=divergence, probes=probes,
                                     tableau=self.tableau, backend=backend)
            if logdet is not None:
                logdet = logdet + block_logdet
        return u, logdet

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """The constructor arguments (weights aside): enough to rebuild an empty flow."""
        return {"dim": self.dim, "field": dict(self.field_config), "steps": self.steps, "tableau": self.tableau,
                "block": self.block_kind}

    def payload(self) -> dict:
        """Everything :meth:`load` needs, as plain tensors and primitives."""
        return {"config": self.config(), "h": list(self.h), "info": self.info,
                "dtype": str(self._dtype).removeprefix("torch."),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    def save(self, path: str | os.PathLike) -> Path:
        """Save weights, block step sizes, standardization, config and version to ``path``
        (a file, or a folder that gets ``model.pt``). Returns the file written."""
        return save_payload(self.payload(), _model_path(path), _KIND)

    @classmethod
    def from_payload(cls, record: dict, where="checkpoint", map_location="cpu") -> "Flow":
        """Rebuild a flow from :meth:`payload`'s dict on the device ``map_location``."""
        require(record, ("config", "h", "state_dict", "dtype"), where)
        cfg = record["config"]
        try:
            # Build on the meta device (no random initialisation, no global RNG use) and then
            # take the stored tensors as they are, already on map_location.
            with torch.device("meta"):
                # Files from before OT-Flow blocks existed have no "block": they hold velocity fields.
                flow = cls(cfg["dim"], cfg["field"], steps=cfg["steps"], tableau=cfg["tableau"],
                           block=cfg.get("block", "velocity"))
                for h in record["h"]:
                    flow.add_block(flow.new_field(), h)
            flow.to(getattr(torch, record["dtype"]))
            # torch.load already placed the tensors; a device map (dict, callable) has no .to form
            where_to = map_location if isinstance(map_location, (str, torch.device, int)) else None
            state = {k: v.to(where_to) if where_to is not None else v for k, v in record["state_dict"].items()}
            flow.load_state_dict(state, strict=True, assign=True)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"{where} does not describe a valid flow: {type(exc).__name__}: {exc}") from exc
        flow.info = dict(record.get("info", {}))
        return flow

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> "Flow":
        """Load a flow saved by :meth:`save` (a file, or a folder holding ``model.pt``, such as the
        output folder of ``jkofast train``). Never executes code from the file."""
        _unfinished_run(Path(path))
        path = _model_path(path)
        return cls.from_payload(load_payload(path, _KIND, map_location), path, map_location)

    def extra_repr(self) -> str:
        h = ", ".join(f"{v:.3g}" for v in self.h)
        return (f"dim={self.dim}, blocks={self.num_blocks}, block={self.block_kind!r}, steps={self.steps}, "
                f"tableau={self.tableau!r}, h=[{h}]")

