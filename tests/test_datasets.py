"""jkofast.datasets: toy densities (shape, seeding, distribution checks), file loading, splits."""
import fractions
import math

import numpy as np
import pytest

from jkofast import datasets
from conftest import CodeRunningPickle

ALIASES = {
    "two_moons": "moons", "twomoons": "moons", "eight_gaussians": "8gaussians",
    "8_gaussians": "8gaussians", "swiss_roll": "swissroll", "two_spirals": "2spirals",
    "spirals": "2spirals", "MOONS": "moons", "Two-Moons": "moons",
    "fractal-tree": "fractal_tree", "fractal tree": "fractal_tree", "tree": "fractal_tree", "Rose": "rose",
}


# ----------------------------------------------------------------------------- toy: generic

def test_toy_names_are_the_eight_ffjord_sets_and_the_two_jko_iflow_pictures():
    assert set(datasets.TOY_NAMES) == {"moons", "8gaussians", "checkerboard", "pinwheel",
                                       "swissroll", "2spirals", "rings", "circles", "rose", "fractal_tree"}


@pytest.mark.parametrize("name", datasets.TOY_NAMES)
@pytest.mark.parametrize("n", [1, 2, 1001])  # odd n: every generator must still give exactly n rows
def test_toy_shape_dtype_finite(name, n):
    x = datasets.toy(name, n, seed=3)
    assert x.shape == (n, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()


@pytest.mark.parametrize("name", datasets.TOY_NAMES)
def test_toy_seeded(name):
    a = datasets.toy(name, 500, seed=7)
    np.testing.assert_array_equal(a, datasets.toy(name, 500, seed=7))
    assert not np.array_equal(a, datasets.toy(name, 500, seed=8))
    # The samples must vary within one draw too (no collapsed generator).
    assert a.std(axis=0).min() > 0.1


@pytest.mark.parametrize("name", datasets.TOY_NAMES)
def test_toy_float64_is_the_same_draw(name):
    x64 = datasets.toy(name, 200, seed=1, dtype=np.float64)
    assert x64.dtype == np.float64
    np.testing.assert_array_equal(x64.astype(np.float32), datasets.toy(name, 200, seed=1))


@pytest.mark.parametrize("alias,canonical", ALIASES.items())
def test_toy_aliases(alias, canonical):
    np.testing.assert_array_equal(datasets.toy(alias, 100, seed=0), datasets.toy(canonical, 100, seed=0))


def test_toy_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()
    for name in datasets.TOY_NAMES:
        datasets.toy(name, 10, seed=0)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_toy_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown toy data set 'banana'.*moons.*8gaussians.*circles"):
        datasets.toy("banana", 10)


@pytest.mark.parametrize("n", [0, -3, 2.5, "10", True, None])
def test_toy_bad_n(n):
    with pytest.raises(ValueError, match=r"n must be an integer >= 1"):
        datasets.toy("moons", n)


def test_toy_accepts_numpy_int_and_rejects_integer_dtype():
    assert datasets.toy("rings", np.int64(5)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"dtype must be a numpy floating dtype"):
        datasets.toy("rings", 5, dtype=np.int32)


# ----------------------------------------------------------------------------- toy: distributions

@pytest.mark.parametrize("name", datasets.TOY_NAMES)
def test_any_prefix_or_stride_of_a_toy_sample_is_a_fair_sample(name):
    # The rows are shuffled: the generators that deal points to moons, arms or rings in order
    # (the first half on one moon, every 4th point on one ring) must not show it in a prefix or
    # a stride. Measured at n = 4000, seed 0: fair parts are within 0.28 of the whole in mean x,
    # mean y and mean radius; in order they were 0.75 to 1.4 off.
    x = datasets.toy(name, 4000, seed=0, dtype=np.float64)

    def stats(part):
        return np.r_[part.mean(0), np.linalg.norm(part, axis=1).mean()]
    for part in (x[:2000], x[2000:], x[::2], x[::4], x[::5], x[:400]):
        assert np.abs(stats(part) - stats(x)).max() < 0.5


def test_checkerboard_parity_and_support():
    x = datasets.toy("checkerboard", 20_000, seed=0)
    assert np.abs(x).max() <= 4.0
    # Generator: x1 in [-2, 2), x2 in floor(x1) % 2 + ([0, 1) or [-2, -1)), then * 2; so in the
    # unscaled coordinates floor(x1) + floor(x2) is always even (the "black" squares).
    parity = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert (parity == 0).mean() >= 0.999
    # All 8 black squares are populated about equally (1/8 each).
    squares, counts = np.unique(np.floor(x / 2), axis=0, return_counts=True)
    assert len(squares) == 8 and np.all(np.abs(counts / len(x) - 1 / 8) < 0.02)


def test_moons_mean_and_variance():
    # Outer moon mean (0, 2/pi), inner (1, 0.5 - 2/pi): average (0.5, 0.25); * 2 + (-1, -0.2).
    x = datasets.toy("moons", 200_000, seed=0)
    np.testing.assert_allclose(x.mean(axis=0), [0.0, 0.3], atol=0.02)
    # Variances (the noise's 0.1^2 in): column 0, the arcs' cos a or 1 - cos a (variance 1/2 each,
    # means 0 and 1) give 1/2 + 1/4; column 1, sin a (variance 1/2 - 4/pi^2) about means 2/pi and
    # 0.5 - 2/pi. Times 4 for the * 2. Standard errors ~0.01 and ~0.003 at this n; noise 0.3 instead
    # of 0.1 would add 0.32 to both.
    want = 4 * (np.array([0.75, 0.5 - 4 / math.pi ** 2 + ((4 / math.pi - 0.5) / 2) ** 2]) + 0.01)
    np.testing.assert_allclose(x.var(axis=0), want, atol=0.04)


def test_rings_radii():
    x = datasets.toy("rings", 20_000, seed=0)
    r = np.linalg.norm(x, axis=1)
    radii = np.array([3.0, 2.25, 1.5, 0.75])
    dist = np.abs(r[:, None] - radii[None, :])
    assert (dist.min(axis=1) < 0.25).mean() >= 0.99  # noise std 0.08: 0.25 is ~3 sigma
    shares = np.bincount(dist.argmin(axis=1), minlength=4) / len(x)
    np.testing.assert_allclose(shares, 0.25, atol=0.02)


def test_eight_gaussians_centres():
    x = datasets.toy("8gaussians", 20_000, seed=0)
    angles = np.arange(8) * math.pi / 4
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / 1.414
    dist = np.linalg.norm(x[:, None, :] - centres[None], axis=2)
    sigma = 0.5 / 1.414
    # 2-D radius within 3 sigma has probability 1 - exp(-4.5) = 0.989 (2 sigma only 0.865).
    assert (dist.min(axis=1) < 3 * sigma).mean() >= 0.98
    shares = np.bincount(dist.argmin(axis=1), minlength=8) / len(x)
    np.testing.assert_allclose(shares, 1 / 8, atol=0.015)


def test_circles_radii():
    x = datasets.toy("circles", 20_000, seed=0)
    r = np.linalg.norm(x, axis=1)
    outer, inner = np.abs(r - 3.0) < 0.72, np.abs(r - 1.5) < 0.72  # noise 0.08 * 3: 3 sigma
    assert (outer | inner).mean() >= 0.99
    assert abs(outer.mean() - 0.5) < 0.02


def test_swissroll_and_spirals_geometry():
    # Swiss roll: |(x, z)| * 5 is the roll parameter t in [1.5 pi, 4.5 pi] plus N(0, 1) noise.
    r = 5 * np.linalg.norm(datasets.toy("swissroll", 20_000, seed=0), axis=1)
    assert np.quantile(r, 0.01) > 1.5 * math.pi - 3 and np.quantile(r, 0.99) < 4.5 * math.pi + 3
    assert abs(np.median(r) - 3 * math.pi) < 0.5   # t uniform over the whole range: its median 3 pi (9.52 here)
    # Two spirals: the second arm mirrors the first through the origin, so the mean is ~0 and
    # the radius reaches about 3 pi / 3 = pi.
    s = datasets.toy("2spirals", 20_000, seed=0)
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=0.05)
    assert 2.8 < np.linalg.norm(s, axis=1).max() < 4.0


def test_pinwheel_five_arms():
    x = datasets.toy("pinwheel", 20_000, seed=0).astype(np.float64)
    r = np.linalg.norm(x, axis=1)
    assert 1.6 < np.median(r) < 2.4  # radial feature ~ N(1, 0.3^2), times 2
    # Arm k sits at angle -(2 pi k / 5 + 0.25 exp(r / 2)) (FFJORD's row-vector rotation), up to
    # the small tangential noise; undoing the twist and folding by 5 lines all arms up.
    phi = np.arctan2(x[:, 1], x[:, 0])
    untwisted = abs(np.exp(5j * (phi + 0.25 * np.exp(r / 2))).mean())
    assert untwisted > 0.8  # about 0.85; uniform angles would give ~0


def test_picture_sampler_places_pixels_and_jitters_by_half_a_pixel():
    from jkofast.datasets.drawn import sample_ink

    # One inked pixel at row 3, column 5 of a 10 x 20 picture: its centre on the [-4, 4]^2 grid,
    # and Gaussian jitter with std (4 / width, 4 / height) = (0.2, 0.4) (docs/METHOD.md 5.3).
    ink = np.zeros((10, 20), dtype=bool)
    ink[3, 5] = True
    x = sample_ink(ink, np.random.default_rng(0), 100_000)
    np.testing.assert_allclose(x.mean(0), [np.linspace(-4, 4, 20)[5], np.linspace(-4, 4, 10)[3]], atol=0.01)
    np.testing.assert_allclose(x.std(0), [0.2, 0.4], rtol=0.02)
    # Two pixels get equal mass (binary ink).
    ink[8, 15] = True
    x = sample_ink(ink, np.random.default_rng(1), 20_000)
    assert abs((x[:, 0] > 0).mean() - 0.5) < 0.02


def test_rose_lies_on_the_rose_curve_with_eight_equal_petals():
    x = datasets.toy("rose", 4000, seed=0).astype(np.float64)
    theta = np.linspace(0.0, 2 * math.pi, 8000)  # curve length ~70: points ~0.01 apart
    curve = 3.6 * np.cos(4 * theta)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    dist = np.concatenate([np.sqrt(((xs[:, None, :] - curve[None]) ** 2).sum(-1)).min(1)
                           for xs in np.array_split(x, 20)])
    # Stroke half-width 0.08, plus half a pixel diagonal (0.022) and 3 jitter sigmas (3 * 4/256).
    assert (dist < 0.15).mean() > 0.995
    petal = np.rint(np.arctan2(x[:, 1], x[:, 0]) / (math.pi / 4)).astype(int) % 8
    np.testing.assert_allclose(np.bincount(petal, minlength=8) / len(x), 1 / 8, atol=0.02)


def test_fractal_tree_shape():
    x = datasets.toy("fractal_tree", 20_000, seed=0).astype(np.float64)
    assert np.abs(x).max() < 4.0
    assert abs(x[:, 0].mean()) < 0.05  # left-right symmetric
    # The trunk: a thick vertical stroke at x = 0 holding the lowest points.
    low = x[x[:, 1] < np.quantile(x[:, 1], 0.1)]
    assert np.abs(low[:, 0]).max() < 0.3
    # A tree spreads out upwards: the top third is much wider than the bottom third.
    top, bottom = x[x[:, 1] > 1.0], x[x[:, 1] < -1.5]
    assert top[:, 0].std() > 5 * bottom[:, 0].std()


def test_the_pictures_strokes_are_as_drawn():
    from jkofast.datasets import drawn

    # The rose's stroke: every inked pixel centre within the half-width 0.08 of the curve.
    ink = drawn.rose_ink()
    centres = np.linspace(-4, 4, ink.shape[0])
    rows, cols = np.nonzero(ink)
    pixels = np.stack([centres[cols], centres[rows]], axis=1)
    theta = np.linspace(0.0, 2 * math.pi, 4000)   # ~0.018 apart: distances overstated by < 0.001
    curve = 3.6 * np.cos(4 * theta)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    dist = np.concatenate([np.sqrt(((p[:, None, :] - curve[None]) ** 2).sum(-1)).min(1)
                           for p in np.array_split(pixels, 20)])
    assert dist.max() < 0.085 and len(pixels) > 5000
    # The tree: 10 levels of binary branching, 2^10 - 1 segments, scaled to span [-3.8, 3.8] across.
    segments = drawn._tree_segments()
    ends = np.array([p for start, end, _ in segments for p in (start, end)])
    assert len(segments) == 2 ** 10 - 1
    np.testing.assert_allclose([ends[:, 0].min(), ends[:, 0].max()], [-3.8, 3.8], rtol=1e-12)
    assert np.abs(ends[:, 1]).max() < 3.8


# ----------------------------------------------------------------------------- load_array

def test_load_npy_roundtrip(tmp_path):
    a64 = np.random.default_rng(0).normal(size=(7, 3))
    np.save(tmp_path / "a.npy", a64)
    got = datasets.load_array(tmp_path / "a.npy")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a64)
    np.save(tmp_path / "b.npy", a64.astype(np.float32))
    assert datasets.load_array(str(tmp_path / "b.npy")).dtype == np.float32
    np.save(tmp_path / "c.npy", np.arange(6).reshape(3, 2))
    got = datasets.load_array(tmp_path / "c.npy")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[0, 1], [2, 3], [4, 5]])
    # Integers as float64, as a .csv is read: timestamps near 1.7e9 seven apart are 1,000 distinct
    # values, which float32 (a step of 128 there) collapsed onto 56.
    stamps = (1_700_000_000 + 7 * np.arange(1000)).reshape(-1, 1)
    np.save(tmp_path / "t.npy", stamps)
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "t.npy"), stamps)
    # A big-endian float64 ('>f8' is not == np.float64) is float64 too: it was cut to float32,
    # and 1e8 + N(0, 1) then became whole numbers.
    np.save(tmp_path / "be.npy", (a64 + 1e8).astype(">f8"))
    got = datasets.load_array(tmp_path / "be.npy")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a64 + 1e8)


@pytest.mark.parametrize("header", ["", "x,y,z\n"])
def test_load_csv_roundtrip(tmp_path, header):
    a = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, -7.0]])
    path = tmp_path / "a.csv"
    path.write_text(header + "\n".join(",".join(repr(v) for v in row) for row in a.tolist()) + "\n")
    got = datasets.load_array(path)
    assert got.dtype == np.float64 and got.shape == (2, 3)  # every digit kept (Flow.standardize)
    np.testing.assert_array_equal(got, a)


def test_a_csv_first_line_mixing_numbers_and_text_is_refused_not_dropped(tmp_path):
    # "1.5,,3" once read as a header: a data row lost without a word
    (tmp_path / "a.csv").write_text("1.5,,3\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="mixes numbers and other fields"):
        datasets.load_array(tmp_path / "a.csv")


def test_load_csv_single_column_is_two_d(tmp_path):
    (tmp_path / "a.csv").write_text("v\n1\n2\n3\n")
    assert datasets.load_array(tmp_path / "a.csv").shape == (3, 1)


def test_load_rejects_non_2d(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"must be a 2-D array \(rows, features\), got shape \(5,\)"):
        datasets.load_array(tmp_path / "one.npy")
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"must be a 2-D array .*got shape \(2, 3, 4\)"):
        datasets.load_array(tmp_path / "three.npy")


def test_load_rejects_empty(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        datasets.load_array(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="empty"):
        datasets.load_array(tmp_path / "h.csv")
    np.save(tmp_path / "e.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match="empty"):
        datasets.load_array(tmp_path / "e.npy")
    (tmp_path / "z.npy").write_bytes(b"")   # numpy: EOFError, a traceback on the command line
    with pytest.raises(ValueError, match=r"not a \.npy file: .* \(the file is empty\)"):
        datasets.load_array(tmp_path / "z.npy")
    (tmp_path / "t.npy").write_text("1,2\n3,4\n")   # numpy's own error speaks of pickles
    with pytest.raises(ValueError, match="does not start with numpy's header"):
        datasets.load_array(tmp_path / "t.npy")


def test_load_rejects_nan_rows(tmp_path):
    (tmp_path / "n.csv").write_text("1,2\nnan,3\n4,inf\n5,6\n")
    with pytest.raises(ValueError, match=r"n\.csv.*2 row\(s\) with NaN or inf.*first: line 2 of the file"):
        datasets.load_array(tmp_path / "n.csv")
    np.save(tmp_path / "n.npy", np.array([[1.0, 2.0], [np.nan, 3.0]]))   # an array's rows count from 0
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or inf.*first: row 1\)"):
        datasets.load_array(tmp_path / "n.npy")


def test_csv_errors_name_the_line_an_editor_shows(tmp_path):
    # The header, blank lines and comments are not data rows; numpy's loadtxt counts rows after
    # them, from 0 for a bad number and from 1 for a ragged row: the file's line is the one to find.
    path = tmp_path / "e.csv"
    path.write_text("a,b\n1,2\n\n# a comment\n3,x\n5,6\n")
    with pytest.raises(ValueError, match=r"line 5 of the file holds 'x', not a number: '3,x'"):
        datasets.load_array(path)
    path.write_text("a,b\n1,2\n\n3,4,5\n")
    with pytest.raises(ValueError, match=r"line 4 of the file has 3 field\(s\), the first row 2"):
        datasets.load_array(path)
    path.write_text("1,2\n\n\n4,nan\n")
    with pytest.raises(ValueError, match=r"first: line 4 of the file"):
        datasets.load_array(path)
    # lines end at \n, \r\n or \r, as an editor counts them (str.splitlines also breaks at a form feed)
    path.write_bytes(b"a,b\r\n1,2\x0c\r\n\x0c\r\n4,nan\r\n")
    with pytest.raises(ValueError, match=r"first: line 4 of the file"):
        datasets.load_array(path)
    path.write_text("a,b\n1_000,2\n")   # float() reads it, numpy does not: still the line, not numpy's row
    with pytest.raises(ValueError, match=r"line 2 of the file holds '1_000', not a number"):
        datasets.load_array(path)
    path.write_text("# x,y\n")
    with pytest.raises(ValueError, match=r"is empty \(no rows: a comment line only\)"):
        datasets.load_array(path)


def test_load_rejects_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"suffix '\.txt'.*\.npy.*\.csv"):
        datasets.load_array(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        datasets.load_array(tmp_path / "nothere.npy")


def test_load_rejects_ragged_or_text_csv(tmp_path):
    (tmp_path / "r.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="could not parse"):
        datasets.load_array(tmp_path / "r.csv")


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "obj.npy", np.array([CodeRunningPickle(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="numeric .npy"):
        datasets.load_array(tmp_path / "obj.npy")
    assert not marker.exists()


# ----------------------------------------------------------------------------- split

def test_split_sizes_disjoint_reproducible():
    arr = np.arange(200.0).reshape(100, 2)
    train, val, test = datasets.split(arr, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    ids = np.concatenate([train[:, 0], val[:, 0], test[:, 0]])
    assert sorted(ids) == list(arr[:, 0])  # every row exactly once, so disjoint
    for a, b in zip((train, val, test), datasets.split(arr, 0.2, 0.1, seed=4)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(test, datasets.split(arr, 0.2, 0.1, seed=5)[2])
    assert not np.array_equal(train, arr[:70])  # shuffled, not a head/tail cut


def test_split_sizes_are_the_floor_of_the_fractions_as_written():
    # floor(fraction * N) of the decimal fraction the user wrote, not of its binary rounding:
    # 0.29 * 100 is 28.999999999999996 in floats, and the split must still get 29 rows.
    for val_fraction, test_fraction in ((0.29, 0.07), (0.07, 0.29), (0.57, 0.29), (0.1, 0.1)):
        for n in (100, 200, 300, 700):
            train, val, test = datasets.split(np.zeros((n, 1)), val_fraction, test_fraction)
            want = [math.floor(fractions.Fraction(str(f)) * n) for f in (val_fraction, test_fraction)]
            assert [len(val), len(test)] == want and len(train) == n - sum(want), (val_fraction, test_fraction, n)


def test_split_too_few_rows():
    with pytest.raises(ValueError, match=r"too few rows.*5 row\(s\).*test_fraction=0.1.*10 rows"):
        datasets.split(np.zeros((5, 2)))


def test_split_zero_fraction_and_bad_fractions():
    train, val, test = datasets.split(np.zeros((5, 2)), val_fraction=0.0, test_fraction=0.0)
    assert train.shape == (5, 2) and val.shape == (0, 2) and test.shape == (0, 2)
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\)"):
        datasets.split(np.zeros((5, 2)), val_fraction=1.0)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1"):
        datasets.split(np.zeros((50, 2)), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"2-D array"):
        datasets.split(np.zeros(10))


# ----------------------------------------------------------------------------- get

def test_get_toy_three_independent_draws():
    train, val, test = datasets.get("moons", n_train=300, n_val=200, n_test=100, seed=0)
    assert (train.shape, val.shape, test.shape) == ((300, 2), (200, 2), (100, 2))
    assert train.dtype == val.dtype == test.dtype == np.float32
    # Different streams: the first 100 rows of the three splits all differ.
    assert not np.array_equal(train[:100], val[:100]) and not np.array_equal(val[:100], test)
    assert not np.array_equal(train[:100], test)
    again = datasets.get("two_moons", n_train=300, n_val=200, n_test=100, seed=0)
    for a, b in zip((train, val, test), again):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="n_val must be an integer >= 1"):
        datasets.get("moons", n_val=0)


def test_get_file_splits(tmp_path):
    arr = np.arange(100.0).reshape(50, 2)
    np.save(tmp_path / "d.npy", arr)
    train, val, test = datasets.get(tmp_path / "d.npy", seed=1)
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert sorted(np.concatenate([train, val, test])[:, 0]) == list(arr[:, 0])
    for a, b in zip((train, val, test), datasets.split(arr, seed=1)):
        np.testing.assert_array_equal(a, b)


def test_get_unknown_lists_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'banana'.*moons.*circles"):
        datasets.get("banana")
    with pytest.raises(ValueError, match=r"not an existing file.*8gaussians"):
        datasets.get(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_load_csv_separators(tmp_path, sep):
    # Spreadsheets in many locales export semicolons; a semicolon file used to lose its first data
    # row as a "header" and then fail on the next line.
    path = tmp_path / "a.csv"
    path.write_text(sep.join(["x", "y"]) + "\n" + "\n".join(sep.join(r) for r in [["1.5", "-2"], ["3", "4e-3"]]) + "\n")
    np.testing.assert_array_equal(datasets.load_array(path), [[1.5, -2.0], [3.0, 4e-3]])
    path.write_text("1.5" + sep + "-2\n3" + sep + "4e-3\n")   # no header
    np.testing.assert_array_equal(datasets.load_array(path), [[1.5, -2.0], [3.0, 4e-3]])


def test_load_csv_written_by_savetxt_or_with_quoted_fields(tmp_path):
    # np.savetxt's defaults: runs of spaces, 18 digits, a header as a '#' comment line.
    x = np.random.default_rng(0).normal(size=(7, 3))
    np.savetxt(tmp_path / "s.csv", x)
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "s.csv"), x)
    np.savetxt(tmp_path / "h.csv", x, header="a b c")   # written as "# a b c": the header it is
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "h.csv"), x)
    assert datasets.column_names(tmp_path / "h.csv") == ["a", "b", "c"]
    np.savetxt(tmp_path / "c.csv", x, header="x,y,z", delimiter=",")
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "c.csv"), x)
    assert datasets.column_names(tmp_path / "c.csv") == ["x", "y", "z"]
    # A first comment that is not a list of the columns' names is a comment (so are the others)
    (tmp_path / "k.csv").write_text("# made by hand\n# 2024\nx,y\n1,2 # a, b\n# mid\n3,4\n")
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "k.csv"), [[1.0, 2.0], [3.0, 4.0]])
    assert datasets.column_names(tmp_path / "k.csv") == ["x", "y"]
    (tmp_path / "t.csv").write_text("1 2\n3 4 # a, b\n")   # a trailing comment's commas: not the separator
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "t.csv"), [[1.0, 2.0], [3.0, 4.0]])
    (tmp_path / "w.csv").write_text("x   y\n 1.5  -2 \n3 4e-3\n")
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "w.csv"), [[1.5, -2.0], [3.0, 4e-3]])
    assert datasets.column_names(tmp_path / "w.csv") == ["x", "y"]
    # Every field quoted (csv.QUOTE_ALL, some database exports): numbers, not a header.
    (tmp_path / "q.csv").write_text('"x","y, z"\n"1.5","-2"\n"3","4e-3"\n')
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "q.csv"), [[1.5, -2.0], [3.0, 4e-3]])
    assert datasets.column_names(tmp_path / "q.csv") == ["x", "y, z"]
    (tmp_path / "n.csv").write_text('"1.5";"-2"\n"3,5";"4"\n')   # quoted decimal commas
    np.testing.assert_array_equal(datasets.load_array(tmp_path / "n.csv"), [[1.5, -2.0], [3.5, 4.0]])


def test_load_csv_semicolons_with_decimal_commas_and_mixed_separators(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x;y\n1,5;-2\n3;0,004\n")
    np.testing.assert_array_equal(datasets.load_array(path), [[1.5, -2.0], [3.0, 0.004]])
    path.write_text("1\t2\n3,4\n5,6\n")   # not a header: a data row with another separator
    with pytest.raises(ValueError, match="separated by tabs, the next by commas"):
        datasets.load_array(path)


def test_load_csv_warns_of_a_pandas_index_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(",a,b\n0,1.5,2\n1,3,4\n")
    with pytest.warns(UserWarning, match=r"to_csv\(index=False\)"):
        assert datasets.load_array(path).shape == (2, 3)


def test_a_csv_header_names_as_many_columns_as_the_rows_have(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("a,b,c\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="has 3 name.* but its rows have 2 comma-separated fields"):
        datasets.load_array(path)
    # one column written with decimal commas (no semicolon to tell them) split into two
    path.write_text("Temperatur\n10,38\n9,60\n")
    with pytest.raises(ValueError, match="1 name.* 2 comma-separated fields .*decimal commas"):
        datasets.load_array(path)
    # counted as column_names reads them: quoted names may hold the separator, spaces may follow
    # it, and a trailing separator adds no name
    for text, names in (('x, "y, z"\n1.5, 2\n3, 4\n', ["x", "y, z"]), ("a;b;\n1,5;2\n3;4,25\n", ["a", "b"]),
                        ("a\tb\t\n1\t2\n3\t4\n", ["a", "b"])):
        path.write_text(text)
        assert datasets.load_array(path).shape == (2, 2) and datasets.column_names(path) == names, text


def test_a_csv_whose_rows_all_end_in_a_separator_has_no_empty_last_column(tmp_path):
    # Spreadsheet exports often end every row with the separator: an empty column, not a field
    # that is "not a number"; with and without a header, in each separator.
    path = tmp_path / "t.csv"
    for text, names in (("1.5,2,\n3,4,\n", None), ("x,y,\n1.5,2,\n3,4,\n", ["x", "y"]), ("# x,y\n1.5,2,\n3,4,\n", ["x", "y"]),
                        ("x,y\n1.5,2,\n3,4, \n", ["x", "y"]), ("1,5;2;\n3;4;\n", None), ("1.5\t2\t\n3\t4\t\n", None)):
        path.write_text(text)
        np.testing.assert_array_equal(datasets.load_array(path), [[1.5, 2], [3, 4]], err_msg=text)
        assert datasets.column_names(path) == names, text
    path.write_text("1.5,2,\n3,4\n")   # one row only: its empty field is refused, the line quoted
    with pytest.raises(ValueError, match="first line .*'1.5,2,'"):
        datasets.load_array(path)


def test_load_csv_reads_pandas_default_column_names_as_a_header(tmp_path):
    """pd.DataFrame(array).to_csv(index=False) writes 0,1,...,d-1 as its header: not a data row."""
    pd = pytest.importorskip("pandas")
    x = np.random.default_rng(0).normal(size=(5, 3))
    pd.DataFrame(x).to_csv(tmp_path / "a.csv", index=False)
    with pytest.warns(UserWarning, match=r"'0,1,2', is read as a header: pandas' names .* put a header line above"):
        np.testing.assert_allclose(datasets.load_array(tmp_path / "a.csv"), x, rtol=1e-15)
    assert datasets.column_names(tmp_path / "a.csv") == ["0", "1", "2"]
    pd.DataFrame(x).to_csv(tmp_path / "i.csv")   # the index kept: read as data, with the warning
    with pytest.warns(UserWarning, match=r"to_csv\(index=False\)"):
        np.testing.assert_allclose(datasets.load_array(tmp_path / "i.csv")[:, 1:], x, rtol=1e-15)
    (tmp_path / "d.csv").write_text("0,1\n1,0\n1,1\n")   # over whole numbers (0/1 data): a data row
    assert datasets.load_array(tmp_path / "d.csv").shape == (3, 2)


def test_load_csv_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "u.csv").write_text("a,b\n1,2\n3,4\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"'.*u\.csv' is not UTF-8 text .*save it as UTF-8"):
        datasets.load_array(tmp_path / "u.csv")
    (tmp_path / "l.csv").write_bytes("température,b\n1,2\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        datasets.column_names(tmp_path / "l.csv")
