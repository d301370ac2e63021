"""The picture-based 2-D densities of JKO-iFlow (rose, fractal tree), drawn procedurally.

The paper samples these sets from two bitmaps (a rose, 222x227 pixels; a fractal tree,
530x450; docs/METHOD.md section 5.3): the pixels are laid on a grid over [-4, 4]^2, a pixel
is drawn with probability proportional to its ink, and Gaussian jitter of half a pixel spreads
it. The bitmaps are not redistributable, so jkofast draws its own with the same sampler:

* ``rose``: the rose curve (rhodonea) r = 3.6 cos(4 theta), eight petals, as a stroke about
  0.16 wide;
* ``fractal_tree``: a binary tree of line segments (trunk, then two branches at +/-25 degrees,
  each 0.72 the length and 0.7 the width of its parent, 10 levels), so the thick trunk holds
  more mass than the thin twigs, as in a drawing.

The densities therefore differ from the paper's images: NLLs on them are not comparable with the
paper's rose numbers (2.64 nats for JKO-iFlow).

Ink is binary (inside a stroke or not), so the mass along a stroke is uniform per unit area.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["rose_ink", "fractal_tree_ink", "sample_ink"]

HALF_WIDTH = 4.0  # the pictures span [-4, 4]^2, as in the paper's code


def _pixel_centres(size: int) -> np.ndarray:
    return np.linspace(-HALF_WIDTH, HALF_WIDTH, size)


def _stamp(ink: np.ndarray, points: np.ndarray, radius: float) -> None:
    """Mark every pixel whose centre lies within ``radius`` of one of ``points`` (m, 2) (x, y).

    ``points`` must be spaced closer than about one pixel along a stroke so the disks join up.
    """
    h, w = ink.shape
    spacing = 2.0 * HALF_WIDTH / (w - 1)
    reach = int(math.ceil(radius / spacing))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    col = np.rint((points[:, 0] + HALF_WIDTH) / spacing).astype(np.int64)
    row = np.rint((points[:, 1] + HALF_WIDTH) / spacing).astype(np.int64)
    rows, cols = row[:, None] + dy.reshape(1, -1), col[:, None] + dx.reshape(1, -1)
    # Distance from the exact point (not its nearest pixel) to each candidate pixel centre.
    dist2 = (cols * spacing - HALF_WIDTH - points[:, :1]) ** 2 + (rows * spacing - HALF_WIDTH - points[:, 1:]) ** 2
    keep = (dist2 <= radius ** 2) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    ink[rows[keep], cols[keep]] = True


@lru_cache(maxsize=None)
def rose_ink(size: int = 256) -> np.ndarray:
    """Binary picture (size, size) of the rose curve r = 3.6 cos(4 theta); row i is
    y = linspace(-4, 4, size)[i], column j is x = linspace(-4, 4, size)[j]. Read-only."""
    ink = np.zeros((size, size), dtype=bool)
    # 2 pi of theta traces the 8 petals once; 20,000 points are ~0.01 apart along the curve,
    # a third of a pixel at size 256, so the stamped disks overlap into a solid stroke.
    theta = np.linspace(0.0, 2.0 * math.pi, 20_000)
    r = 3.6 * np.cos(4.0 * theta)
    _stamp(ink, np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1), radius=0.08)
    ink.flags.writeable = False
    return ink


def _tree_segments(depth: int = 10, angle: float = math.radians(25.0), shrink: float = 0.72,
                   thinning: float = 0.7) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(start, end, half-width) of every branch, trunk first, scaled to fit in [-3.8, 3.8]^2."""
    segments = []
    stack = [(np.zeros(2), math.pi / 2, 1.0, 0.09, 0)]  # start, heading, length, half-width, level
    while stack:
        start, heading, length, half_width, level = stack.pop()
        end = start + length * np.array([math.cos(heading), math.sin(heading)])
        segments.append((start, end, half_width))
        if level + 1 < depth:
            for turn in (angle, -angle):
                stack.append((end, heading + turn, length * shrink, half_width * thinning, level + 1))
    ends = np.array([p for s, e, _ in segments for p in (s, e)])
    lo, hi = ends.min(0), ends.max(0)
    scale = 7.6 / float((hi - lo).max())
    centre = (lo + hi) / 2
    return [((s - centre) * scale, (e - centre) * scale, hw * scale) for s, e, hw in segments]


@lru_cache(maxsize=None)
def fractal_tree_ink(size: int = 512) -> np.ndarray:
    """Binary picture (size, size) of a 10-level fractal tree, trunk at the bottom; same
    axes as :func:`rose_ink`. Read-only."""
    ink = np.zeros((size, size), dtype=bool)
    spacing = 2.0 * HALF_WIDTH / (size - 1)
    for start, end, half_width in _tree_segments():
        n = max(2, int(math.ceil(np.linalg.norm(end - start) / (0.5 * spacing))) + 1)
        points = start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)
        # At least half a pixel wide, so the finest twigs stay connected strokes.
        _stamp(ink, points, radius=max(half_width, 0.5 * spacing))
    ink.flags.writeable = False
    return ink


def sample_ink(ink: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n points (n, 2) from a picture, the JKO-iFlow way: a pixel drawn with probability
    proportional to its ink, placed at its centre on the [-4, 4]^2 grid, plus Gaussian jitter
    with std (4 / width, 4 / height), about half a pixel."""
    h, w = ink.shape
    weights = ink.ravel().astype(np.float64)
    index = rng.choice(weights.size, size=n, p=weights / weights.sum())
    x = _pixel_centres(w)[index % w]
    y = _pixel_centres(h)[index // w]
    jitter = rng.standard_normal((n, 2)) * np.array([HALF_WIDTH / w, HALF_WIDTH / h])
    return np.stack([x, y], axis=1) + jitter
