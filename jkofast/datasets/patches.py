"""BSDS300-style 8x8 natural-image patches, made the MAF way from the two photographs that
scikit-learn bundles (``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg, 427x640).

MAF's BSDS300 patches are 8x8 grey patches, dequantized, in [0, 1], with the patch mean removed
and the last pixel dropped (it is minus the sum of the others), d = 63 (docs/METHOD.md 5.1).
Here:

1. grey = round(0.299 R + 0.587 G + 0.114 B), integers 0..255 (ITU-R 601 luma, as PIL's "L");
2. each image is cut into 32x32 tiles (the last rows and columns that do not fill a tile are
   unused); a fixed permutation assigns 10% of all tiles to test, 10% to validation, the rest to
   training; the assignment does not depend on ``seed``;
3. a patch lies entirely inside one tile (25 x 25 = 625 positions per tile), so a test patch's
   pixels never touch a training or validation patch's pixels; positions are drawn without
   replacement, so no patch repeats within a split;
4. value = (grey + u) / 256 with u ~ U[0, 1) (dequantization), then the patch's mean is
   subtracted and the last pixel dropped.

Tiles rather than whole images per split: with two photographs a per-image split cannot give
three splits, and tiles spread each split over both photographs' content.
"""
from __future__ import annotations

import numpy as np

from ._optional import require

__all__ = ["PATCH", "TILE", "grey_images", "tile_split", "patch_corners", "make_patches", "patches"]

PATCH = 8
TILE = 32
POSITIONS_PER_TILE = (TILE - PATCH + 1) ** 2
_SPLIT_SEED = 300  # fixed, so the tiles of each split are the same for every user and seed


def grey_images() -> list[np.ndarray]:
    """scikit-learn's sample photographs as uint8 grey images (H, W)."""
    sk = require("sklearn.datasets", package="scikit-learn", purpose="the built-in data set 'patches'", extra="data")
    grey = []
    for rgb in sk.load_sample_images().images:
        luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        grey.append(np.clip(np.rint(luma), 0, 255).astype(np.uint8))
    return grey


def tile_split(shapes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles (image, top row, left column), one (k, 3) int array per split: train, val, test."""
    tiles = np.array([(i, r, c) for i, (h, w) in enumerate(shapes)
                      for r in range(0, h - TILE + 1, TILE) for c in range(0, w - TILE + 1, TILE)])
    tiles = tiles[np.random.default_rng(_SPLIT_SEED).permutation(len(tiles))]
    n_test = n_val = len(tiles) // 10
    return tiles[n_test + n_val:], tiles[n_test:n_test + n_val], tiles[:n_test]


def patch_corners(tiles: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """n distinct patch positions (image, top row, left column), (n, 3), inside the given tiles."""
    available = len(tiles) * POSITIONS_PER_TILE
    if n > available:
        raise ValueError(f"{what}: at most {available} distinct patches fit in its {len(tiles)} tiles, "
                         f"asked for {n}")
    index = rng.choice(available, size=n, replace=False)
    tile, offset = np.divmod(index, POSITIONS_PER_TILE)
    dr, dc = np.divmod(offset, TILE - PATCH + 1)
    return tiles[tile] + np.stack([np.zeros_like(dr), dr, dc], axis=1)


def make_patches(grey: list[np.ndarray], corners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dequantized, mean-removed patches without their last pixel, float64 (n, 63)."""
    raw = np.empty((len(corners), PATCH * PATCH), dtype=np.float64)
    for i, image in enumerate(grey):
        rows = corners[:, 0] == i
        windows = np.lib.stride_tricks.sliding_window_view(image, (PATCH, PATCH))  # (H-7, W-7, 8, 8)
        raw[rows] = windows[corners[rows, 1], corners[rows, 2]].reshape(-1, PATCH * PATCH)
    x = (raw + rng.random(raw.shape)) / 256.0
    x -= x.mean(axis=1, keepdims=True)
    return x[:, :-1]


def patches(n_train: int, n_val: int, n_test: int, seed, *, with_corners: bool = False):
    """The three splits, float64 (n, 63); each split's positions and noise come from its own child
    of ``np.random.SeedSequence(seed)``, so the test set does not depend on ``n_train``.
    ``with_corners=True`` also returns each split's patch positions (n, 3) (for tests)."""
    grey = grey_images()
    seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    out, corners = [], []
    for part, tiles, n, s in zip(("train", "val", "test"), tile_split([g.shape for g in grey]),
                                 (n_train, n_val, n_test), seeds.spawn(3)):
        rng = np.random.default_rng(s)
        corners.append(patch_corners(tiles, n, rng, f"patches {part}"))
        out.append(make_patches(grey, corners[-1], rng))
    return (tuple(out), tuple(corners)) if with_corners else tuple(out)
