"""jkofast.datasets.load_tabular: the MAF benchmarks from small synthetic files in the archive's
formats. Each test re-derives the expected arrays from the recipe (docs/METHOD.md 5.1 and the
public loaders' seeds and draw order) and checks every preprocessing step: columns dropped,
noise, split sizes and order, normalization statistics."""
import sys
import warnings

import numpy as np
import pytest

from jkofast import datasets
from conftest import CodeRunningPickle


def _tail_split(a):
    n_test = len(a) // 10
    rest = a[:len(a) - n_test]
    n_val = len(rest) // 10
    return rest[:len(rest) - n_val], rest[len(rest) - n_val:], a[len(a) - n_test:]


def _write_csv(path, names, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, delimiter=",", header=",".join(names), comments="", fmt="%.17g")


# ----------------------------------------------------------------------------- POWER

def _power_file(root, n=1000):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(n, 8)) * np.arange(1, 9) + 10.0 * np.arange(8)
    raw[:, 7] = np.arange(n)  # the time column gets no noise: it names each row
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy", raw)
    return raw


def test_power_matches_the_recipe(tmp_path):
    raw = _power_file(tmp_path)
    train, val, test = datasets.load_tabular("power", tmp_path, dtype=np.float64)
    assert (train.shape, val.shape, test.shape) == ((810, 6), (90, 6), (100, 6))
    # RandomState(42) shuffles the rows (permutation() consumes the stream as shuffle() does),
    # columns 1 and 3 go, then noise U[0, a) is drawn voltage-first as the public loader does.
    rs = np.random.RandomState(42)
    order = rs.permutation(len(raw))
    kept = raw[order][:, [0, 2, 4, 5, 6, 7]]
    voltage, active = 0.01 * rs.rand(len(raw), 1), 0.001 * rs.rand(len(raw), 1)
    noisy = kept + np.hstack([active, voltage, rs.rand(len(raw), 3), np.zeros((len(raw), 1))])
    tr, va, te = _tail_split(noisy)
    ref = np.vstack([tr, va])
    mu, s = ref.mean(0), ref.std(0)  # train + validation, numpy's ddof 0
    for got, want in zip((train, val, test), (tr, va, te)):
        np.testing.assert_allclose(got, (want - mu) / s, rtol=0, atol=1e-12)
    # The statistics: train + validation standardized exactly, the test split only roughly.
    both = np.vstack([train, val])
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(both.std(0), 1.0, atol=1e-12)
    # The test split is the last 10% of the shuffled rows (time column: no noise, names the row).
    t_raw = test[:, 5] * s[5] + mu[5]
    np.testing.assert_allclose(t_raw, order[-100:], atol=1e-9)
    # float32 by default, the same numbers.
    train32 = datasets.load_tabular("POWER", tmp_path)[0]
    assert train32.dtype == np.float32
    np.testing.assert_array_equal(train32, train.astype(np.float32))


def test_power_wrong_columns_and_root_as_set_folder(tmp_path):
    raw = _power_file(tmp_path)
    via_folder = datasets.load_tabular("power", tmp_path / "power")  # root may be the set's folder
    np.testing.assert_array_equal(via_folder[2], datasets.load_tabular("power", tmp_path)[2])
    np.save(tmp_path / "power" / "data.npy", raw[:, :7])
    with pytest.raises(ValueError, match=r"POWER.*must have 8 columns, got shape \(1000, 7\)"):
        datasets.load_tabular("power", tmp_path)
    np.save(tmp_path / "power" / "data.npy", raw[:10])
    with pytest.raises(ValueError, match="10 rows, too few"):
        datasets.load_tabular("power", tmp_path)


# ----------------------------------------------------------------------------- MINIBOONE

def test_miniboone_split_and_train_val_statistics(tmp_path):
    raw = np.random.default_rng(1).gamma(2.0, size=(500, 5)) * [1, 10, 100, 0.1, 3]
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    train, val, test = datasets.load_tabular("miniboone", tmp_path, dtype=np.float64)
    assert (len(train), len(val), len(test)) == (405, 45, 50)  # no shuffle: file order
    mu, s = raw[:450].mean(0), raw[:450].std(0)
    np.testing.assert_allclose(np.vstack([train, val, test]), (raw - mu) / s, atol=1e-12)


# ----------------------------------------------------------------------------- GAS

GAS_NAMES = ["Time", "Meth", "Eth", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"]


def _gas_table(n=400):
    rng = np.random.default_rng(2)
    a, b, c, d = rng.normal(size=(4, n))
    eps = lambda: 0.01 * rng.normal(size=n)  # noqa: E731 - correlation ~0.99995 with its base
    cols = [np.arange(n), rng.random(n), rng.random(n),
            a, a + eps(), b, c, c + eps(), -c + eps(), d, c + eps(), d + 0.3 * rng.normal(size=n)]
    return np.stack(cols, axis=1)


def _gas_expected(table):
    # Drop Meth, Eth, Time; then the first column correlated > 0.98 with another, repeatedly:
    # s1 (with s2), then s4 (with s5 and s8), then s5 (with s8). Kept: s6 (anti-correlated with
    # c: the rule is signed) and s9 (correlation 0.96 with s7: below the threshold).
    kept = table[:, [GAS_NAMES.index(c) for c in ("s2", "s3", "s6", "s7", "s8", "s9")]]
    return _tail_split((kept - kept.mean(0)) / kept.std(0, ddof=1))  # whole file, pandas' ddof 1


def test_gas_csv_drops_correlated_columns(tmp_path):
    table = _gas_table()
    _write_csv(tmp_path / "gas" / "ethylene_CO.csv", GAS_NAMES, table)
    got = datasets.load_tabular("gas", tmp_path, dtype=np.float64)
    assert [g.shape for g in got] == [(324, 6), (36, 6), (40, 6)]
    for g, want in zip(got, _gas_expected(table)):
        np.testing.assert_allclose(g, want, atol=1e-12)


def test_gas_pickle_needs_consent_and_never_unpickles_without_it(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "gas").mkdir()
    import pickle

    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(pickle.dumps(CodeRunningPickle(marker)))
    with pytest.raises(ValueError, match=r"(?s)allow_pickle=True.*to_csv\(.*ethylene_CO\.csv.*index=False"):
        datasets.load_tabular("gas", tmp_path)
    assert not marker.exists()


def test_gas_pickle_with_consent_and_its_csv_conversion_agree(tmp_path):
    import pandas as pd  # a test dependency (.ci/run installs it); jkofast needs it only for this path

    table = _gas_table()
    (tmp_path / "gas").mkdir()
    pd.DataFrame(table, columns=GAS_NAMES).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    from_pickle = datasets.load_tabular("gas", tmp_path, allow_pickle=True, dtype=np.float64)
    for g, want in zip(from_pickle, _gas_expected(table)):
        np.testing.assert_allclose(g, want, atol=1e-12)
    # The conversion the error message prints gives the same arrays, bit for bit, without pickle.
    pd.read_pickle(tmp_path / "gas" / "ethylene_CO.pickle").to_csv(tmp_path / "gas" / "ethylene_CO.csv", index=False)
    for a, b in zip(from_pickle, datasets.load_tabular("gas", tmp_path, dtype=np.float64)):
        np.testing.assert_array_equal(a, b)


def test_gas_needs_the_named_columns(tmp_path):
    _write_csv(tmp_path / "gas" / "ethylene_CO.csv", ["Time", "CO", "Eth", "s1", "s2"], np.ones((20, 5)))
    with pytest.raises(ValueError, match=r"no column\(s\) \['Meth'\]"):
        datasets.load_tabular("gas", tmp_path)


# ----------------------------------------------------------------------------- HEPMASS

HEP_NAMES = ["# label", "f0", "f1", "f2", "f3", "f4", "f5"]


def _hepmass_tables():
    rng = np.random.default_rng(3)

    def block(n, label):
        x = np.column_stack([np.full(n, label), rng.normal(size=n), rng.integers(0, 3, n), rng.normal(size=n),
                             rng.normal(size=n), np.full(n, 7.0), rng.normal(size=n)])
        return x

    train = block(300, 1.0)
    train[:5, 3] = -10.0           # f2: smallest value 5 times -> kept (the rule is "> 5")
    train[10:16, 4] = -10.0        # f3: smallest value 6 times -> dropped
    background = block(100, 0.0)
    background[:, 1] = 1e3         # would show up (and wreck the statistics) if not filtered out
    background[:, 3] = -50.0       # background ties on f2 must not count
    train = np.vstack([train[:150], background, train[150:]])
    test = np.column_stack([np.vstack([block(80, 1.0), block(40, 0.0)]), np.full(120, 1000.0)])  # extra column
    return train, test


def test_hepmass_signal_rows_discrete_features_and_statistics(tmp_path):
    train_raw, test_raw = _hepmass_tables()
    _write_csv(tmp_path / "hepmass" / "1000_train.csv", HEP_NAMES, train_raw)
    _write_csv(tmp_path / "hepmass" / "1000_test.csv", HEP_NAMES + ["mass"], test_raw)
    train, val, test = datasets.load_tabular("hepmass", tmp_path, dtype=np.float64)
    signal = train_raw[train_raw[:, 0] == 1, 1:]
    test_signal = test_raw[test_raw[:, 0] == 1, 1:-1]
    mu, s = signal.mean(0), signal.std(0, ddof=1)  # the whole training file, pandas' ddof 1
    keep = [0, 2, 5]  # f1 discrete, f3 smallest value 6 times, f4 constant: dropped
    s[4] = 1.0
    want = ((signal - mu) / s)[:, keep]
    assert (train.shape, val.shape, test.shape) == ((270, 3), (30, 3), (80, 3))
    np.testing.assert_allclose(np.vstack([train, val]), want, atol=1e-12)  # val = last 10%, file order
    np.testing.assert_allclose(test, ((test_signal - mu) / s)[:, keep], atol=1e-12)


def test_hepmass_column_names_must_line_up(tmp_path):
    train_raw, test_raw = _hepmass_tables()
    _write_csv(tmp_path / "hepmass" / "1000_train.csv", HEP_NAMES, train_raw)
    _write_csv(tmp_path / "hepmass" / "1000_test.csv", HEP_NAMES[:1] + ["g0", "g1", "g2", "g3", "g4", "g5", "mass"],
               test_raw)
    with pytest.raises(ValueError, match=r"test columns \['g0'.*differ from the training columns \['f0'"):
        datasets.load_tabular("hepmass", tmp_path)


# ----------------------------------------------------------------------------- BSDS300

def test_bsds300_reads_the_file_splits_unchanged(tmp_path):
    import h5py  # in the [data] extra; .ci/run installs it

    rng = np.random.default_rng(4)
    parts = {"train": rng.random((50, 63)), "validation": rng.random((10, 63)), "test": rng.random((20, 63))}
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in parts.items():
            f.create_dataset(k, data=v)
    got = datasets.load_tabular("bsds300", tmp_path, dtype=np.float64)
    for g, k in zip(got, ("train", "validation", "test")):
        np.testing.assert_array_equal(g, parts[k])
    assert datasets.load_tabular("BSDS300", tmp_path)[0].dtype == np.float32
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=parts["train"])
    with pytest.raises(ValueError, match=r"no dataset\(s\) \['validation', 'test'\]"):
        datasets.load_tabular("bsds300", tmp_path)


def test_bsds300_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(ImportError, match=r"optional package h5py.*pip install 'jkofast\[data\]'"):
        datasets.load_tabular("bsds300", tmp_path)


# ----------------------------------------------------------------------------- errors, get()

def test_missing_files_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MINIBOONE: no file miniboone/data\.npy.*power/data\.npy.*"
                                                r"hepmass/1000_train\.csv \+ 1000_test\.csv.*BSDS300/BSDS300\.hdf5"):
        datasets.load_tabular("miniboone", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"gas/ethylene_CO\.pickle"):
        datasets.load_tabular("gas", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is not a directory"):
        datasets.load_tabular("power", tmp_path / "nowhere")


def test_unknown_name_lists_the_sets(tmp_path):
    with pytest.raises(ValueError, match=r"unknown MAF tabular data set 'cifar'.*power.*gas.*hepmass.*miniboone.*bsds300"):
        datasets.load_tabular("cifar", tmp_path)


def test_get_dispatches_to_load_tabular(tmp_path):
    _power_file(tmp_path)
    for a, b in zip(datasets.get("power", root=tmp_path), datasets.load_tabular("power", tmp_path)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"'power' is read from your copy.*root="):
        datasets.get("power")


def test_cli_allow_pickle_reaches_the_loader(tmp_path):
    import pandas as pd

    from jkofast.cli import data_spec, parser

    table = _gas_table()
    (tmp_path / "gas").mkdir()
    pd.DataFrame(table, columns=GAS_NAMES).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    base = ["train", "--data", "gas", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]
    spec = data_spec._data_spec(parser.build_parser().parse_args(base))
    assert "allow_pickle" not in spec
    with pytest.raises(ValueError, match="allow_pickle=True"):
        data_spec._load_data(spec)
    spec = data_spec._data_spec(parser.build_parser().parse_args(base + ["--allow-pickle"]))
    assert spec["allow_pickle"] is True and spec["root"] == str(tmp_path.resolve())
    for got, want in zip(data_spec._load_data(spec), _gas_expected(table)):
        np.testing.assert_allclose(got, want, atol=1e-6)  # float32


def test_the_archive_readers_drop_an_index_column_and_refuse_empty_or_text_data(tmp_path):
    from jkofast.datasets.maf_files import read_hdf5_splits, read_matrix, read_named_csv

    # DataFrame.to_csv's default index: an unnamed first column, dropped; fields past the header ignored
    (tmp_path / "indexed.csv").write_text(",a,b\n0,1.5,2,9\n1,3,4,9\n")
    names, data = read_named_csv(tmp_path / "indexed.csv")
    assert names == ["a", "b"] and np.array_equal(data, [[1.5, 2.0], [3.0, 4.0]])
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="has a header but no data rows"), warnings.catch_warnings():
        warnings.simplefilter("error")   # the error says it: no numpy "input contained no data" before it
        read_named_csv(tmp_path / "header_only.csv")
    # a float32 or integer .npy is read as float64, a copy its caller may shuffle
    np.save(tmp_path / "m.npy", np.arange(6, dtype=np.int32).reshape(3, 2))
    m = read_matrix(tmp_path / "m.npy", columns=2, what="M")
    assert m.dtype == np.float64 and m.flags.writeable and np.array_equal(m, [[0, 1], [2, 3], [4, 5]])
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "t.hdf5", "w") as f:
        f.create_dataset("train", data=np.zeros((3, 2)))
        f.create_dataset("test", data=np.array([[b"a", b"b"]]))
    with pytest.raises(ValueError, match=r"dataset 'test' .* must be a 2-D numeric array, got shape \(1, 2\)"):
        read_hdf5_splits(tmp_path / "t.hdf5", ("train", "test"))
