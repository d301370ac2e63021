"""jkofast.datasets.load: the built-in real sets (scikit-learn's bundled data), their splits and
standardization, the patch split's no-overlap guarantee, the optional-import error, the CLI
flags for data, and a short training run on a real set."""
import math
import sys

import numpy as np
import pytest
import torch

import jkofast
from jkofast import datasets
from jkofast.cli import main
from jkofast.datasets.patches import PATCH, TILE, grey_images, patches

SIZES = {"digits": (1797, 64), "breast-cancer": (569, 30), "wine": (178, 13)}


@pytest.mark.parametrize("name", SIZES)
def test_fixed_sets_shapes_splits_and_standardization(name):
    n, d = SIZES[name]
    train, val, test = datasets.load(name)
    assert [a.shape for a in (train, val, test)] == [(n - 2 * (n // 10), d), (n // 10, d), (n // 10, d)]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in (train, val, test))
    # Standardized by the training split alone (ddof 1, as jkofast.train computes its statistics).
    np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(0, ddof=1), 1.0, atol=1e-5)
    # Every row of the data set exactly once: the rows of scikit-learn's sets are all distinct
    # (and the standardization is one map for all splits), so n distinct rows = disjoint splits.
    rows = np.vstack([train, val, test]).astype(np.float64)
    assert len(np.unique(rows, axis=0)) == n
    # The split is fixed: the same for every seed (only the digits' noise follows the seed).
    assert np.array_equal(test, datasets.load(name, seed=0)[2])
    if name != "digits":
        assert np.array_equal(test, datasets.load(name, seed=5)[2])


def test_digits_are_dequantized_by_the_seed():
    from sklearn.datasets import load_digits

    train = datasets.load("digits", seed=0, dtype=np.float64)[0]  # float32 could round two values together
    # Integer pixels 0..16 would give at most 17 values per column; uniform noise makes them all distinct.
    assert min(len(np.unique(col)) for col in train.T) == len(train)
    # (both float64: a float32 array never equals it, whatever the seed)
    assert not np.array_equal(train, datasets.load("digits", seed=1, dtype=np.float64)[0])
    assert np.array_equal(train, datasets.load("digits", seed=0, dtype=np.float64)[0])
    # value = (pixel + u - mean) / std with u in [0, 1): the intervals [k, k + 1) of different
    # pixel values do not overlap, so sorting a column by value sorts the raw pixels too. The
    # rows are the fixed split's (datasets.split with seed 0).
    raw_train = datasets.split(load_digits().data, 0.1, 0.1, seed=0)[0]
    for j in range(64):
        assert np.all(np.diff(raw_train[np.argsort(train[:, j], kind="stable"), j]) >= 0)


def test_fixed_sets_refuse_sizes_and_unknown_names():
    with pytest.raises(ValueError, match=r"n_train only apply to 'patches'; 'wine' has a fixed size"):
        datasets.load("wine", n_train=10)
    with pytest.raises(ValueError, match=r"unknown built-in real data set 'iris'.*patches.*digits.*breast-cancer.*wine"):
        datasets.load("iris")
    np.testing.assert_array_equal(datasets.load("breast_cancer")[2], datasets.load("Breast-Cancer")[2])
    np.testing.assert_array_equal(datasets.load("breastcancer")[2], datasets.load("breast-cancer")[2])


def test_patches_shape_dequantization_and_mean_removal():
    (train, val, test), corners = patches(300, 50, 80, seed=0, with_corners=True)
    assert (train.shape, val.shape, test.shape) == ((300, 63), (50, 63), (80, 63))
    grey = grey_images()
    # Put the dropped last pixel back (the patch mean is removed, so it is minus the sum); then the
    # difference of any two pixels, times 256, is their grey-level difference plus the difference
    # of two U[0, 1) draws: within 1 grey level of the picture at the recorded position.
    full = np.hstack([test, -test.sum(1, keepdims=True)]) * 256.0
    for x, (i, r, c) in zip(full, corners[2]):
        g = grey[i][r:r + PATCH, c:c + PATCH].ravel().astype(np.float64)
        diff = (x - x[0]) - (g - g[0])
        assert np.abs(diff).max() < 1.0
    assert np.all(np.abs(full) <= 256)  # mean-removed values of (grey + u) / 256 in [0, 1)
    # The seed decides positions and noise; a split's patches do not depend on the other counts.
    again = patches(10, 50, 80, seed=0)
    np.testing.assert_array_equal(again[2], test)
    assert not np.array_equal(patches(10, 50, 80, seed=1)[2], test)


def test_patches_are_cut_from_the_photographs_grey_as_pil_makes_it():
    # ITU-R 601 luma, rounded: PIL's convert("L") up to its fixed-point rounding (one level, rarely)
    image = pytest.importorskip("PIL.Image")
    from sklearn.datasets import load_sample_images

    for rgb, grey in zip(load_sample_images().images, grey_images()):
        pil = np.asarray(image.fromarray(rgb).convert("L")).astype(np.int64)
        diff = np.abs(pil - grey.astype(np.int64))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_patches_test_regions_never_touch_training_regions():
    (_, _, _), (tr, va, te) = patches(30_000, 5_000, 20_000, seed=3, with_corners=True)
    grey = grey_images()
    for corners in (tr, va, te):
        # Each patch lies inside one 32x32 tile, and no position repeats within a split.
        assert np.all(corners[:, 1] // TILE == (corners[:, 1] + PATCH - 1) // TILE)
        assert np.all(corners[:, 2] // TILE == (corners[:, 2] + PATCH - 1) // TILE)
        assert len(np.unique(corners, axis=0)) == len(corners)
    for i, image in enumerate(grey):
        # Pixels covered by any training or validation patch: a 2-D running sum of corner marks.
        covered = np.zeros(image.shape, dtype=np.int64)
        for corners in (tr, va):
            mine = corners[corners[:, 0] == i]
            np.add.at(covered, (mine[:, 1], mine[:, 2]), 1)
        # A pixel (y, x) is covered iff some corner lies in [y-7, y] x [x-7, x]: box sums via cumsum.
        padded = np.pad(covered, ((PATCH, 0), (PATCH, 0))).cumsum(0).cumsum(1)
        box = padded[PATCH:, PATCH:] - padded[:-PATCH, PATCH:] - padded[PATCH:, :-PATCH] + padded[:-PATCH, :-PATCH]
        in_use = box > 0
        mine = te[te[:, 0] == i]
        assert len(mine) > 1000
        for r, c in mine[:, 1:]:
            assert not in_use[r:r + PATCH, c:c + PATCH].any()
    with pytest.raises(ValueError, match=r"patches test: at most 32500 distinct patches fit in its 52 tiles"):
        patches(10, 10, 40_000, seed=0)


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    for name in ("wine", "patches"):
        with pytest.raises(ImportError, match=r"built-in data set '(wine|patches)' needs the optional package "
                                              r"scikit-learn.*pip install 'jkofast\[data\]'"):
            datasets.load(name)


def test_get_dispatches_real_sets_and_lists_every_name():
    for a, b in zip(datasets.get("wine", seed=3), datasets.load("wine", seed=3)):
        np.testing.assert_array_equal(a, b)
    train, val, test = datasets.get("patches", 200, 20, 30, seed=0)
    assert (train.shape, val.shape, test.shape) == ((200, 63), (20, 63), (30, 63))
    with pytest.raises(ValueError, match=r"unknown data set 'banana'.*rose.*fractal_tree.*patches.*wine.*power.*bsds300"):
        datasets.get("banana")


def test_training_on_wine_beats_a_standard_normal():
    train, val, test = (torch.as_tensor(a) for a in datasets.load("wine"))
    flow = jkofast.train(train, budget="quick", progress=False, seed=0)
    # Wine's test and validation splits are 17 rows each; together they make a steadier estimate.
    held_out = torch.cat([val, test])
    nll, se = jkofast.metrics.nll(flow, held_out)
    # The data are standardized by the training statistics, so N(0, I) is the natural baseline:
    # 0.5 |x|^2 + (d/2) log 2 pi per point (about 18.5 nats here). Wine's 13 features are strongly
    # correlated, which N(0, I) ignores; the quick run gains about 3 nats. Require 1.
    baseline = float((0.5 * held_out.double().square().sum(1)).mean() + 0.5 * held_out.shape[1] * math.log(2 * math.pi))
    assert math.isfinite(nll) and math.isfinite(se)
    assert nll < baseline - 1.0, (nll, baseline)


def test_cli_trains_on_maf_files_with_data_root(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "miniboone").mkdir(parents=True)
    np.save(tmp_path / "data" / "miniboone" / "data.npy", rng.normal(size=(600, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    assert main(["train", "--data", "miniboone", "--out", str(tmp_path / "run")]) == 2
    assert "--data miniboone reads your copy of the MAF files: add --data-root" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "--data", "MINIBOONE", "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--budget", "quick", "--iters", "10", "--blocks", "1", "--no-progress", "--samples", "50"]) == 0
    flow = jkofast.Flow.load(out)
    assert flow.info["data"]["name"] == "miniboone" and flow.info["data"]["root"] == str((tmp_path / "data").resolve())
    assert main(["eval", "--model", str(out)]) == 0  # finds the files again through the recorded root
    assert ", 60 points)" in capsys.readouterr().out  # the MAF split of 600 rows: the last 60 are the test set
