"""The 2-D toy densities of FFJORD's ``inf_train_gen`` (Grathwohl et al., 2019), in numpy,
and the picture-based ``rose`` and ``fractal_tree`` of JKO-iFlow (drawn procedurally: drawn.py).

Each generator ``_name(rng, n)`` returns a float64 (n, 2) array drawn from a
``np.random.Generator``; :func:`toy` validates the arguments, dispatches by name and casts.

Deviations from FFJORD, all so that samples are i.i.d. draws of one fixed density (needed
when a held-out set is used to estimate a log-likelihood):

* ``moons``, ``rings`` and ``circles`` draw their angles uniformly at random instead of on
  a ``linspace`` grid.
* every generator returns exactly ``n`` rows (FFJORD's ``pinwheel``, ``rings`` and
  ``2spirals`` drop or duplicate rows when ``n`` is not a multiple of 5, 4 or 2).
* rows are shuffled, so any prefix of a sample is itself a fair sample.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ._checks import check_count, float_dtype
from .drawn import fractal_tree_ink, rose_ink, sample_ink

__all__ = ["toy", "TOY_NAMES"]


def _shuffled(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return x[rng.permutation(len(x))]


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """sklearn ``make_moons(noise=0.1)``, then ``* 2 + (-1, -0.2)`` (mean (0, 0.3))."""
    n_out = n // 2  # sklearn puts the extra point of an odd n on the inner moon
    a = rng.uniform(0.0, math.pi, size=n)
    outer = np.stack([np.cos(a[:n_out]), np.sin(a[:n_out])], axis=1)
    inner = np.stack([1.0 - np.cos(a[n_out:]), 1.0 - np.sin(a[n_out:]) - 0.5], axis=1)
    x = np.concatenate([outer, inner]) + rng.normal(0.0, 0.1, size=(n, 2))
    return _shuffled(rng, x) * 2.0 + np.array([-1.0, -0.2])


_SQRT_HALF = 1.0 / math.sqrt(2.0)
# FFJORD's centre order; only the set matters since the centre is drawn uniformly.
_EIGHT_CENTERS = 4.0 * np.array(
    [(1, 0), (-1, 0), (0, 1), (0, -1),
     (_SQRT_HALF, _SQRT_HALF), (_SQRT_HALF, -_SQRT_HALF),
     (-_SQRT_HALF, _SQRT_HALF), (-_SQRT_HALF, -_SQRT_HALF)]
)


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Equal mixture of N(c_k, 0.5^2 I), c_k on the circle of radius 4, all divided by 1.414."""
    centers = _EIGHT_CENTERS[rng.integers(0, 8, size=n)]
    return (centers + 0.5 * rng.standard_normal((n, 2))) / 1.414  # FFJORD's constant, not sqrt(2)


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the 8 squares of [-4, 4]^2 where floor(x1/2) + floor(x2/2) is even."""
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2.0


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five curved arms: Gaussian blobs at radius 1, each rotated by a radius-dependent angle."""
    num_classes, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    rads = np.linspace(0.0, 2.0 * math.pi, num_classes, endpoint=False)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = np.arange(n) % num_classes  # arms as balanced as n allows; shuffled below
    angles = rads[labels] + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([c, -s], axis=1), np.stack([s, c], axis=1)], axis=1)  # (n, 2, 2)
    # Row vector times matrix, exactly as FFJORD's einsum (a rotation by -angle).
    return 2.0 * _shuffled(rng, np.einsum("ti,tij->tj", features, rotations))


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    """sklearn ``make_swiss_roll(noise=1.0)``, the (x, z) plane, divided by 5."""
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return x / 5.0


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved spirals of 1.5 turns each, point-symmetric about the origin."""
    t = np.sqrt(rng.random(n)) * 540.0 * (2.0 * math.pi) / 360.0
    d1x = -np.cos(t) * t + rng.random(n) * 0.5
    d1y = np.sin(t) * t + rng.random(n) * 0.5
    sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)  # n // 2 on the first arm, the rest mirrored
    x = sign[:, None] * np.stack([d1x, d1y], axis=1) / 3.0 + 0.1 * rng.standard_normal((n, 2))
    return _shuffled(rng, x)


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four concentric circles of radii 3, 2.25, 1.5, 0.75 plus N(0, 0.08^2) noise."""
    radii = np.array([3.0, 2.25, 1.5, 0.75])[np.arange(n) % 4]  # as even a split as n allows
    a = rng.uniform(0.0, 2.0 * math.pi, size=n)
    x = radii[:, None] * np.stack([np.cos(a), np.sin(a)], axis=1)
    return _shuffled(rng, x) + rng.normal(0.0, 0.08, size=(n, 2))


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    """sklearn ``make_circles(factor=0.5, noise=0.08)`` times 3: radii 3 and 1.5."""
    n_out = n // 2
    radii = np.where(np.arange(n) < n_out, 1.0, 0.5)
    a = rng.uniform(0.0, 2.0 * math.pi, size=n)
    x = radii[:, None] * np.stack([np.cos(a), np.sin(a)], axis=1) + rng.normal(0.0, 0.08, size=(n, 2))
    return 3.0 * _shuffled(rng, x)  # noise added before the scaling, as in FFJORD


def _rose(rng: np.random.Generator, n: int) -> np.ndarray:
    """The rose curve r = 3.6 cos(4 theta) as a stroke, sampled like JKO-iFlow's pictures."""
    return sample_ink(rose_ink(), rng, n)


def _fractal_tree(rng: np.random.Generator, n: int) -> np.ndarray:
    """A 10-level fractal tree in [-3.8, 3.8]^2, sampled like JKO-iFlow's pictures."""
    return sample_ink(fractal_tree_ink(), rng, n)


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "swissroll": _swissroll,
    "2spirals": _two_spirals,
    "rings": _rings,
    "circles": _circles,
    "rose": _rose,
    "fractal_tree": _fractal_tree,
}

TOY_NAMES: tuple[str, ...] = tuple(_GENERATORS)

_ALIASES: dict[str, str] = {
    **{name: name for name in TOY_NAMES},
    "two_moons": "moons",
    "twomoons": "moons",
    "eight_gaussians": "8gaussians",
    "8_gaussians": "8gaussians",
    "swiss_roll": "swissroll",
    "two_spirals": "2spirals",
    "spirals": "2spirals",
    "fractaltree": "fractal_tree",
    "fractal tree": "fractal_tree",
    "tree": "fractal_tree",
}


def canonical_name(name) -> str | None:
    """The canonical toy name for ``name`` (case-insensitive, ``-`` read as ``_``), else None."""
    if not isinstance(name, str):
        return None
    return _ALIASES.get(name.strip().lower().replace("-", "_"))


def toy(name: str, n: int, seed=0, dtype=np.float32) -> np.ndarray:
    """Draw ``n`` i.i.d. samples from a 2-D toy density.

    Arguments:
        name: one of :data:`TOY_NAMES` (``"moons"``, ``"8gaussians"``, ``"checkerboard"``,
            ``"pinwheel"``, ``"swissroll"``, ``"2spirals"``, ``"rings"``, ``"circles"``, ``"rose"``,
            ``"fractal_tree"``) or an alias (``"two_moons"``, ``"eight_gaussians"``, ``"swiss_roll"``, ``"spirals"``, ...);
            case-insensitive.
        n: number of samples, an integer >= 1.
        seed: anything ``np.random.default_rng`` accepts (int, ``SeedSequence``, ``None`` for
            fresh entropy). The same seed gives the same array; the global numpy RNG is
            never used.
        dtype: floating dtype of the result (default float32).

    Returns:
        x: array of shape (n, 2) and the given dtype, rows in random order.
    """
    key = canonical_name(name)
    if key is None:
        raise ValueError(f"unknown toy data set {name!r}; must be one of {list(TOY_NAMES)}")
    n, dt = check_count(n, "n"), float_dtype(dtype)
    x = _GENERATORS[key](np.random.default_rng(seed), n)
    return np.ascontiguousarray(x, dtype=dt)
