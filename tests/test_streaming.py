"""Data larger than memory: memory-mapped .npy files read in chunks, seeded splits and shards,
the one-pass scan, pushed samples kept on disk, and the peak memory of a run."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import jkofast
import jkofast._shuffled_write
from jkofast import shard as shard_module
from jkofast.datasets import streaming
from jkofast.datasets.scan import scan
from jkofast.datasets.streaming import Rows, as_rows, open_npy, split_rows
from jkofast.evaluate import evaluate, evaluate_sharded
from jkofast.metrics import fitted_gaussian, nll, sharded_nll
from jkofast.shard import DiskShard, MemoryShard, ShardStore


@pytest.fixture
def small_chunks(monkeypatch):
    # 4 KB chunks: the small arrays below span many chunks, as a real file would.
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 4096)


def _write_npy(path, arr):
    np.save(path, arr)
    return open_npy(path)


@pytest.mark.parametrize("arr,match", [
    (np.zeros(10, np.float32), "2-D float array"),
    (np.zeros((4, 2, 2), np.float32), "2-D float array"),
    (np.zeros((10, 2), np.int64), "dtype int64"),
    (np.zeros((0, 2), np.float32), "empty"),
])


def test_open_npy_refuses_what_is_not_a_2d_float_array(tmp_path, arr, match):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(ValueError, match=match):
        open_npy(tmp_path / "x.npy")


def test_open_npy_refuses_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((3, 2)))
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match="npz"):
        open_npy(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="x.txt' is not a .npy file"):
        open_npy(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        open_npy(tmp_path / "nope.npy")


def test_chunks_of_a_memory_map_are_the_rows(tmp_path, small_chunks):
    data = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    rows = as_rows(_write_npy(tmp_path / "x.npy", data), "x")
    assert rows.chunk_rows == 4096 // 12 and rows.num_chunks == 3
    assert np.array_equal(torch.cat([c for _, c in rows.chunks()]).numpy(), data)
    assert np.array_equal(rows.head(10), data[:10])


@pytest.mark.parametrize("world", [2, 3, 5])
def test_shards_are_disjoint_balanced_seeded_and_span_the_data(small_chunks, world):
    n = 1003
    rows = Rows(np.arange(n, dtype=np.float64)[:, None])
    shards = [torch.cat([c for _, c in rows.chunks(rank=r, world=world, seed=7)]).flatten().long()
              for r in range(world)]
    every = torch.sort(torch.cat(shards)).values
    assert torch.equal(every, torch.arange(n))                    # disjoint, and together all rows
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1                            # balanced
    for s in shards:
        assert len(torch.unique(s // world)) == len(s)             # at most one row of each group of `world`
        assert s.min() < world and s.max() >= n - 2 * world        # spans the whole file
    again = torch.cat([c for _, c in rows.chunks(rank=0, world=world, seed=7)]).flatten().long()
    other = torch.cat([c for _, c in rows.chunks(rank=0, world=world, seed=8)]).flatten().long()
    assert torch.equal(again, shards[0]) and not torch.equal(other, shards[0])


def test_split_rows_is_a_seeded_partition_without_copies(tmp_path, small_chunks):
    data = np.arange(20_000, dtype=np.float32)[:, None]
    mm = _write_npy(tmp_path / "x.npy", data)
    train, val, test = split_rows(mm, 0.1, 0.2, seed=3)
    parts = [torch.cat([c for _, c in p.chunks()]).flatten() for p in (train, val, test)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.from_numpy(data.flatten()))
    # Sizes are binomial around their fractions: 4 standard deviations.
    for part, frac in ((val, 0.1), (test, 0.2)):
        assert abs(len(part) - frac * 20_000) < 4 * (20_000 * frac * (1 - frac)) ** 0.5
    again = split_rows(mm, 0.1, 0.2, seed=3)[2]
    assert torch.equal(torch.cat([c for _, c in again.chunks()]).flatten(), parts[2])
    other = split_rows(mm, 0.1, 0.2, seed=4)[2]                   # another seed, another split
    assert not torch.equal(torch.cat([c for _, c in other.chunks()]).flatten()[:100], parts[2][:100])
    assert train.data is mm                                        # a view of the map, not a copy


def test_scan_is_the_same_for_any_container_and_exact(tmp_path, small_chunks):
    data = (np.random.default_rng(1).normal(size=(3000, 4)) * [1, 10, 0.1, 1e3] + [5, 0, -2, 1e4])
    original = data.copy()
    summaries = [scan(as_rows(x, "x")) for x in
                 (data, torch.from_numpy(data), _write_npy(tmp_path / "x.npy", data))]
    assert np.array_equal(data, original)     # the scan works on copies, never on the caller's rows
    assert len({s.fingerprint for s in summaries}) == 1
    for s in summaries:
        # Chunk-wise float64 merging against numpy's two-pass float64: rounding only.
        np.testing.assert_allclose(s.mean, data.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.std, data.std(0, ddof=1), rtol=1e-10)
    assert scan(as_rows(data[:-1], "x")).fingerprint != summaries[0].fingerprint


def test_scan_finds_the_first_bad_row_in_a_late_chunk(tmp_path, small_chunks):
    data = np.ones((2000, 2), np.float32)
    data[1500, 1] = np.nan
    data[1700, 0] = np.inf
    with pytest.raises(ValueError, match=r"x \(rows of '.*x.npy'\) has 2 row\(s\) with NaN or inf values "
                                         r"\(first: row 1500 of the file\)"):
        scan(as_rows(_write_npy(tmp_path / "x.npy", data), "x"))


def test_scan_names_the_first_bad_row_of_the_first_block_that_has_one(tmp_path, small_chunks, monkeypatch):
    # One chunk per block summary: the bad rows sit in blocks 1 and 3, and block order decides
    monkeypatch.setattr(importlib.import_module("jkofast.datasets.scan"), "_SCAN_BLOCK", 1)
    data = np.ones((2000, 2), np.float32)   # 512 rows a chunk
    data[700, 0] = np.nan
    data[1700, 1] = np.nan
    with pytest.raises(ValueError, match=r"has 2 row\(s\) with NaN or inf values \(first: row 700 of the file\)"):
        scan(as_rows(_write_npy(tmp_path / "x.npy", data), "x"))


def test_sharded_nll_is_nll(moons):
    flow = jkofast.Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([0.5, 0.2]), scale=torch.tensor([1.5, 0.8]))
    flow.add_block(flow.new_field(), 0.5)
    x = moons[2][:1000]
    mean, se = sharded_nll(flow, x.numpy())
    ref_mean, ref_se = nll(flow, x)
    # float32 log-likelihoods summed in float64 either way; only the summation order differs.
    assert mean == pytest.approx(ref_mean, rel=1e-9) and se == pytest.approx(ref_se, rel=1e-6)


def test_gaussian_fitted_to_a_streamed_split_is_the_one_fitted_in_memory(tmp_path, small_chunks):
    rng = np.random.default_rng(3)
    data = (rng.normal(size=(3000, 3)) @ np.array([[2.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.2]]) + 1e3)
    train, _, _ = split_rows(_write_npy(tmp_path / "x.npy", data.astype(np.float32)), seed=4)
    kept = np.concatenate([c.numpy() for _, c in train.chunks()])          # the split's rows, in memory
    assert train.num_chunks > 5 and 2000 < len(kept) < 2800
    streamed = fitted_gaussian(train)
    # Chunk-wise float64 moments merged by Chan's update against numpy's two-pass float64: rounding
    # only (a mean near 1e3, covariance entries 0.04-4: 1e-12 and 1e-10 relative leave ~100x).
    kept = kept.astype(np.float64)
    cov = np.cov(kept.T) + np.diag(1e-9 * np.diag(np.cov(kept.T)))         # the documented ridge
    assert torch.allclose(streamed.loc, torch.as_tensor(kept.mean(0)), rtol=1e-12, atol=0)
    assert torch.allclose(streamed.covariance_matrix, torch.as_tensor(cov), rtol=1e-10, atol=0)
    assert train.name == "x"                                                # the caller's split is not renamed
    with pytest.raises(ValueError, match="N >= 2 rows, got 1 row"):
        fitted_gaussian(data[:1])


class _ThreadRanks:
    """``world`` ranks as threads of this process, with the two collectives fitted_gaussian uses:
    ``gather`` (every rank's object, in rank order) and ``sum`` (added in rank order, so every
    rank gets the same bits, as an all-reduce gives them)."""

    def __init__(self, world: int) -> None:
        self.world, self.board, self.barrier = world, [None] * world, threading.Barrier(world)

    def dist(self, rank: int):
        ranks = self

        class _Dist:
            def __init__(self):
                self.rank, self.world = rank, ranks.world

            def gather(self, obj, what=""):
                ranks.board[rank] = obj
                ranks.barrier.wait()
                out = list(ranks.board)
                ranks.barrier.wait()   # all have read before anyone writes the next exchange
                return out

            def sum(self, values, what=""):
                return sum(self.gather(values.to(torch.float64)))

        return _Dist()

    def run(self, fn) -> list:
        """fn(dist) on every rank at once; each rank's result, in rank order."""
        results, errors = [None] * self.world, []

        def one(r):
            try:
                results[r] = fn(self.dist(r))
            except BaseException as exc:  # noqa: BLE001 - re-raised below, on the test's thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("n_rows", [2, 3, 500])
def test_gaussian_fitted_over_ranks_is_the_one_pass_fit(n_rows, monkeypatch):
    # Three ranks, one row per chunk, whole chunks dealt to the ranks in turn (as gaussian_fit
    # reads them): with 2 rows one rank reads none, with 3 each reads one, with 500 each reads
    # rows of its own mean. The ranks' moments are merged (means gathered, the d x d
    # cross-products, between-rank term included, all-reduced): every rank gets the same
    # Gaussian, the one-pass fit's to rounding (float64; entries 1e-2-1e1 near a mean of 5).
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 4 * 8)
    rng = np.random.default_rng(11)
    data = rng.normal(size=(n_rows, 4)) @ rng.normal(size=(4, 4)) + 5.0
    rows = as_rows(data, "train")
    read = [sum(len(rows.read_chunk(c)) for c in range(r, rows.num_chunks, 3)) for r in range(3)]
    assert sum(read) == n_rows and (0 in read) == (n_rows == 2), read
    fits = _ThreadRanks(3).run(lambda dist: fitted_gaussian(rows, dist))
    one = fitted_gaussian(rows)
    for fit in fits:
        assert torch.equal(fit.loc, fits[0].loc) and torch.equal(fit.covariance_matrix, fits[0].covariance_matrix)
    assert torch.allclose(fits[0].loc, one.loc, rtol=1e-12, atol=1e-13)
    assert torch.allclose(fits[0].covariance_matrix, one.covariance_matrix, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("constant", [0.1, 1.7e12 + 0.123, 1e20])
def test_gaussian_fit_of_a_constant_column_does_not_depend_on_the_chunking(monkeypatch, constant):
    # A constant column's merged variance and mean carry rounding noise that follows the chunking
    # (7.7e-34 in one chunk, 1.9e-34 in 8, for 0.1; a mean one rounding step off at 1e20), which
    # the ridge would magnify into hundreds of nats: min == max marks it constant, exactly.
    rng = np.random.default_rng(5)
    data = np.stack([np.full(4000, constant), rng.normal(size=4000)], 1)
    values = []
    for chunk_bytes in (1 << 20, 4096, 256):
        monkeypatch.setattr(streaming, "CHUNK_BYTES", chunk_bytes)
        values.append(jkofast.metrics.gaussian_nll_values(data, data[:50]))
    for v in values[1:]:
        assert torch.allclose(v, values[0], rtol=0, atol=1e-9), (v - values[0]).abs().max()
    # the varying column's Gaussian, plus the constant's ridge term: no offset from the mean
    want = -torch.distributions.Normal(data[:, 1].mean(), data[:, 1].std(ddof=1)).log_prob(torch.as_tensor(data[:50, 1]))
    ridge = 0.5 * np.log(2 * np.pi * 1e-9 * data[:, 1].var(ddof=1) / 2)
    assert torch.allclose(values[0], want + ridge, atol=1e-7)  # the varying column carries its 1e-9 ridge too


def test_gaussian_fit_of_all_constant_columns_is_refused():
    # Every column constant: no variance to scale the ridge by (it came out 0: every NLL infinite).
    data = np.full((30, 2), 1.5)
    with pytest.raises(ValueError, match=r"every column of baseline_train is constant \(30 copies of one point\)"):
        jkofast.evaluate(jkofast.Flow(2).double(), torch.zeros(5, 2, dtype=torch.float64),
                         baseline_train=data)


def test_gaussian_fit_keeps_a_column_of_tiny_spread():
    # 45 rounding steps wide: not constant (min < max), so its own variance, not the ridge
    rng = np.random.default_rng(7)
    data = np.stack([1 + 1e-14 * rng.normal(size=3000), rng.normal(size=3000)], 1)
    fitted = jkofast.metrics.fitted_gaussian(data).covariance_matrix[0, 0]
    assert float(fitted) == pytest.approx(data[:, 0].var(ddof=1), rel=1e-3)
    with pytest.raises(ValueError, match="^train holds NaN"):          # a tensor is called "train"
        jkofast.metrics.fitted_gaussian(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]]))


def test_evaluate_sharded_with_empty_chunks_and_bad_rows(tmp_path, small_chunks, monkeypatch):
    # 64 float64 columns: 8 rows per 4 KB chunk, so about 4 in 10 chunks keep no test row.
    rng = np.random.default_rng(8)
    data = rng.normal(size=(2000, 64)) @ rng.normal(size=(64, 64)) / 8
    train, _, test = split_rows(_write_npy(tmp_path / "x.npy", data), seed=1)
    empty = sum(len(x) == 0 for _, x in test.chunks())
    assert empty > 50, empty
    flow = jkofast.Flow(64, dict(hidden=8, layers=1)).double()
    flow.add_block(flow.new_field(), 0.5)
    streamed = evaluate_sharded(flow, test, steps=2, baseline_train=train)
    held = np.concatenate([x.numpy() for _, x in test.chunks()])
    whole = evaluate(flow, held, steps=2, mmd_points=0, baseline_train=np.concatenate([x.numpy() for _, x in train.chunks()]))
    for key in ("mean", "se"):
        assert streamed["nll_steps2"][key] == pytest.approx(whole["nll_steps2"][key], rel=1e-9)
        assert streamed["gaussian_nll"][key] == pytest.approx(whole["gaussian_nll"][key], rel=1e-9)
    bad = data.copy()
    bad[[int(test.base_index(c, 0)) for c, x in test.chunks() if len(x)][:2], 3] = np.nan
    _, _, bad_test = split_rows(_write_npy(tmp_path / "bad.npy", bad), seed=1)
    with pytest.raises(ValueError, match="test \\(its split of '.*bad.npy'\\) has 2 row\\(s\\) with NaN or inf values"):
        evaluate_sharded(flow, bad_test, steps=2, baseline_train=train)


def test_a_baseline_from_no_more_rows_than_columns_is_refused():
    # A 3-row fit in 3 dimensions is degenerate (the ridge keeps it finite): its NLL would be
    # some 1e13 nats, a number that means nothing beside the flow's.
    flow = jkofast.Flow(3, dict(hidden=8, layers=1))
    test, few = torch.randn(50, 3), np.random.default_rng(0).normal(size=(3, 3))
    for run in (evaluate, evaluate_sharded):
        with pytest.raises(ValueError, match="baseline_train has 3 rows for 3 columns"):
            run(flow, test, steps=2, baseline_train=few)
    assert "gaussian_nll" in evaluate(flow, test, steps=2, mmd_points=0, baseline_train=np.vstack([few, few[:1] + 1]))


def test_a_random_subset_of_rows_is_uniform_seeded_and_streamed(tmp_path, small_chunks):
    data = np.arange(30_000, dtype=np.float64)[:, None] * np.ones((1, 2))        # sorted: row i holds i
    rows = as_rows(_write_npy(tmp_path / "x.npy", data), "x")
    picked = rows.sample(3000, seed=4)
    values = picked[:, 0]
    assert picked.shape == (3000, 2) and len(np.unique(values)) == 3000 and np.all(np.diff(values) > 0)
    assert np.array_equal(picked, rows.sample(3000, seed=4)) and not np.array_equal(picked, rows.sample(3000, seed=5))
    # uniform over the file, not its first rows: each tenth of it holds about 300 picks (binomial
    # s.d. 16; 6 s.d. is a bound no uniform draw crosses in practice)
    assert np.all(np.abs(np.bincount((values // 3000).astype(int), minlength=10) - 300) < 100)
    assert rows.sample(10**6, seed=0).shape == (30_000, 2)                       # at most every row
    _, _, test = split_rows(rows.data, seed=1)                                     # a split: its kept rows only
    kept = np.concatenate([x.numpy() for _, x in test.chunks()])
    assert np.isin(test.sample(500, seed=0)[:, 0], kept[:, 0]).all()


def test_evaluate_sharded_computes_the_mmd_on_a_random_subset(tmp_path, small_chunks):
    flow = jkofast.Flow(2, dict(hidden=8, layers=1))
    flow.add_block(flow.new_field(), 0.5)
    test = as_rows(_write_npy(tmp_path / "t.npy", np.random.default_rng(3).normal(size=(5000, 2)).astype(np.float32)),
                   "test")
    assert "mmd" not in evaluate_sharded(flow, test, steps=2)                     # off by default
    report = evaluate_sharded(flow, test, steps=2, mmd_points=400, seed=7)
    reference = torch.from_numpy(test.sample(400, 7))
    expected = importlib.import_module("jkofast.evaluate")._mmd_entry(flow, reference, torch.Generator().manual_seed(7), "auto")
    assert report["mmd"] == expected and report["mmd"]["n"] == 400 and report["mmd"]["mmd_m"] > 0
    assert list(report) == ["n_test", "nll_steps2", "nll_standardized_steps2", "mmd", "training"]


def test_memory_mapped_data_errors_name_the_file(tmp_path, capsys):
    from jkofast.cli import main

    np.savetxt(tmp_path / "x.csv", np.ones((5, 2)), delimiter=",")
    with pytest.raises(ValueError, match=r"x.csv' is not a .npy file.*for a .csv, pass the path itself"):
        open_npy(tmp_path / "x.csv")                # numpy's own message was about pickled data
    bad = np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32)
    bad[5, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "wide.npy", np.zeros((3, 3000), np.float32))    # 3000 points saved as columns
    args = ["--mmap", "--budget", "quick", "--no-progress", "--no-plot"]
    assert main(["train", "--data", str(tmp_path / "nan.npy"), "--out", str(tmp_path / "o"), *args]) == 2
    said = f"x (its split of {str(tmp_path / 'nan.npy')!r}) has 1 row(s) with NaN or inf values (first: row 5 of the file)"
    assert said in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert f"(its split of {str(tmp_path / 'wide.npy')!r}) is empty" in err and "is it transposed" in err, err


def test_scan_of_huge_values_stays_finite(small_chunks):
    # |mean| ~ 1e200: the first merge's cross term (mean^2 x 0) would be inf x 0 = NaN.
    data = 1e200 + 1e150 * np.random.default_rng(6).normal(size=(1000, 2))
    s = scan(as_rows(data, "x"))
    np.testing.assert_allclose(s.std, data.std(0, ddof=1), rtol=1e-6)


def test_evaluate_sharded_reports_what_evaluate_does(tmp_path, small_chunks, moons, monkeypatch):
    flow = jkofast.Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([0.5, 0.2]), scale=torch.tensor([1.5, 0.8]))
    flow.add_block(flow.new_field(), 0.5)
    train, test = moons[0][:2000].numpy(), moons[2][:1500].numpy()
    whole = evaluate(flow, test, steps=[2, 3], mmd_points=0, baseline_train=train)
    reads = []  # (rows' name, chunk read): each file is read once, whatever the number of grids
    read_chunk = Rows.read_chunk

    def counted(self, c):
        reads.append((self.name, c))
        return read_chunk(self, c)

    test_file, train_file = _write_npy(tmp_path / "test.npy", test), _write_npy(tmp_path / "train.npy", train)
    monkeypatch.setattr(Rows, "read_chunk", counted)
    streamed = evaluate_sharded(flow, test_file, steps=[2, 3], baseline_train=train_file)
    monkeypatch.setattr(Rows, "read_chunk", read_chunk)
    for name, path in (("test", test_file), ("baseline_train", train_file)):
        chunks = as_rows(path, name).num_chunks
        assert chunks > 1 and sorted(c for n, c in reads if n == name) == list(range(chunks)), reads
    assert list(streamed) == list(whole) and streamed["n_test"] == 1500   # the same keys, in the same order
    g, h = streamed["gaussian_nll"], whole["gaussian_nll"]
    assert g.keys() == h.keys() and (g["n_train"], g["dim"]) == (2000, 2)
    # float32 flow values summed in float64, the Gaussian's in float64: only the order of the
    # sums differs (chunked and merged against whole), so agreement to rounding of the sums.
    for key in ("nll_steps2", "nll_standardized_steps3"):
        assert streamed[key]["mean"] == pytest.approx(whole[key]["mean"], rel=1e-9)
        assert streamed[key]["se"] == pytest.approx(whole[key]["se"], rel=1e-6)
    for key in ("mean", "se"):
        assert g[key] == pytest.approx(h[key], rel=1e-9)
        for s in (2, 3):
            assert g[f"minus_flow_steps{s}"][key] == pytest.approx(h[f"minus_flow_steps{s}"][key], rel=1e-6)


def _store(where, tmp_path):
    return ShardStore(where, 0, dtype=torch.float32, device=torch.device("cpu"), scratch=tmp_path / "scratch")


def test_disk_and_memory_shards_hold_the_same_rows(tmp_path, small_chunks, monkeypatch):
    monkeypatch.setattr(shard_module, "_WINDOW_BYTES", 1024)
    x = np.random.default_rng(2).normal(size=(1000, 3)).astype(np.float32)
    loc, scale = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([2.0, 1.0, 0.5])
    shards = {w: _store(w, tmp_path).from_rows(Rows(x), loc, scale, rank=0, world=1, seed=0, with_logdet=True)
              for w in ("memory", "disk")}
    assert isinstance(shards["memory"], MemoryShard) and isinstance(shards["disk"], DiskShard)
    mem, disk = ([torch.cat(list(t)) for t in zip(*s.chunks())] for s in shards.values())
    assert torch.equal(mem[0], disk[0]) and torch.equal(mem[1], disk[1])
    assert torch.allclose(mem[0], (torch.from_numpy(x) - loc) / scale) and not mem[1].any()
    # One epoch of disk batches (batch divides n) is a permutation of the shard's rows.
    batches = shards["disk"].batches(100, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(batches) for _ in range(10)])
    assert torch.equal(torch.sort(epoch[:, 0]).values, torch.sort(mem[0][:, 0]).values)
    assert not torch.equal(epoch[:100], mem[0][:100])              # shuffled across windows
    # and so is one epoch of memory batches: no full batch is dropped at the epoch's end
    batches = shards["memory"].batches(100, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(batches) for _ in range(10)])
    assert torch.equal(torch.sort(epoch[:, 0]).values, torch.sort(mem[0][:, 0]).values)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_block_movements_are_each_blocks_rms_distance(tmp_path, where):
    # The reparametrization's input: sqrt(E|T_k(x) - x|^2) over the data pushed through blocks
    # 1..k-1, block by block; the data shard itself is kept (the next round trains on it).
    from conftest import random_flow
    from jkofast.distributed import Dist
    from jkofast.jko_iflow_pushed import PushedData

    flow = random_flow(dim=2, blocks=3, dtype=torch.float32)
    u = torch.randn(500, 2)
    store = _store(where, tmp_path)
    train = store.from_rows(Rows(u.numpy()), torch.zeros(2), torch.ones(2), rank=0, world=1, seed=0)
    got = PushedData(flow, train, None, store=store, dist=Dist()).movements()
    want, x = [], u
    with torch.no_grad():
        for k in range(3):
            y = flow.push(x, blocks=slice(k, k + 1))[0]
            want.append(float((y - x).square().sum(1).mean().sqrt()))
            x = y
    assert got == pytest.approx(want, rel=1e-5) and min(want) > 0.05
    assert torch.equal(torch.cat([p for p, _ in train.chunks()]).sort(0).values, u.sort(0).values)
    store.close()


def _sorted_disk_shard(tmp_path, seed=0, rank=0, n=6000):
    """A disk training shard of rows sorted by their first column (0..n-1), in 4 buckets."""
    x = np.stack([np.arange(n), np.zeros(n), np.ones(n)], 1).astype(np.float32)
    store = ShardStore("disk", 4 * 4096, dtype=torch.float32, device=torch.device("cpu"),
                       scratch=tmp_path / f"scratch{seed}-{rank}")
    return store.from_rows(Rows(x), torch.zeros(3), torch.ones(3), rank=rank, world=1, seed=seed)


def test_disk_training_shard_is_a_seeded_shuffle_of_a_sorted_file(tmp_path, monkeypatch):
    # Disk batches are read as contiguous windows, so the shard's rows must be in random order
    # (a sorted file once gave batches from 8 narrow slices: test NLL 3.61 against 3.41 in memory).
    monkeypatch.setattr(shard_module, "_WINDOW_BYTES", 1024)           # 85 rows of 12 bytes
    monkeypatch.setattr(jkofast._shuffled_write, "_BUCKET_BYTES", 4096)
    first = _sorted_disk_shard(tmp_path)
    rows = torch.cat([p for p, _ in first.chunks()])[:, 0]
    assert torch.equal(rows.sort().values, torch.arange(6000.0))       # a permutation: no row lost
    assert not list(first.path.parent.glob("*.bucket*"))               # the bucket files removed
    assert torch.equal(rows, torch.cat([p for p, _ in _sorted_disk_shard(tmp_path).chunks()])[:, 0])
    for other in (_sorted_disk_shard(tmp_path, seed=1), _sorted_disk_shard(tmp_path, rank=1)):
        assert not torch.equal(rows, torch.cat([p for p, _ in other.chunks()])[:, 0])
    # Each of the first windows spans the data: all ten deciles present in its 85 rows (for a
    # uniform random order a decile is missed with probability 10 * 0.9**85 = 1.3e-3 per window).
    assert all(len(set((rows[a:a + 85] // 600).tolist())) == 10 for a in range(0, 850, 85))
    # And so does every batch of 200 (a decile missed with probability 7e-9 per batch); in file
    # order 8 windows of 85 rows could cover 8 deciles at most.
    batches = first.batches(200, torch.Generator().manual_seed(0))
    assert all(len(set((next(batches)[:, 0] // 600).tolist())) == 10 for _ in range(60))
    # The batches are the generator's: the same seed gives the same ones, and a generator used
    # again goes on to others (as a memory shard's randperm does), never the same sequence anew.
    def head(generator):
        return next(first.batches(200, generator))[:, 0]
    assert torch.equal(head(torch.Generator().manual_seed(0)), head(torch.Generator().manual_seed(0)))
    generator = torch.Generator().manual_seed(0)
    assert not torch.equal(head(generator), head(generator))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_readings_are_in_bytes():
    """The peak resident set and the free host memory (the rule of pushed_storage='auto') in
    bytes: /proc and getrusage give kilobytes."""
    from jkofast.memory import available_bytes, peak_memory, peak_memory_of_run

    def kib(path, key):
        return next(int(line.split()[1]) for line in open(path) if line.startswith(key + ":")) * 1024

    # (the kernel updates the high-water marks lazily: the current RSS may read a little above them)
    rss = kib("/proc/self/status", "VmRSS")
    assert rss / 2 < peak_memory()["rss_bytes"] < 2 * kib("/proc/self/status", "VmHWM")
    free = kib("/proc/meminfo", "MemAvailable")
    assert free / 2 < available_bytes("cpu") < free * 2

    class TwoRanks:   # a run of two processes, rank 1's peak the larger
        device = "cpu"

        def gather(self, mine, what):
            return [mine, {"rss_bytes": mine["rss_bytes"] * 3}]

    run = peak_memory_of_run(TwoRanks())
    assert run["rss_bytes_max"] == 3 * run["rss_bytes"] == run["per_rank"][1]["rss_bytes"]


def test_auto_storage_rule(tmp_path, monkeypatch):
    small = ShardStore("auto", 1 << 20, dtype=torch.float32, device=torch.device("cpu"))
    huge = ShardStore("auto", 1 << 50, dtype=torch.float32, device=torch.device("cpu"))
    assert small.where == "memory" and huge.where == "disk"
    # half the free memory is shared by the processes of the host: a shard whose three copies fit
    # in half of it alone goes to disk when four processes hold one each
    monkeypatch.setattr(shard_module, "available_bytes", lambda device: 8 << 20)
    for local_world, where in ((1, "memory"), (4, "disk")):
        store = ShardStore("auto", 1 << 20, dtype=torch.float32, device=torch.device("cpu"), local_world=local_world)
        assert store.where == where, local_world
    with pytest.raises(ValueError, match="pushed_storage"):
        ShardStore("ssd", 0, dtype=torch.float32, device=torch.device("cpu"))


def test_training_with_pushed_samples_on_disk(tmp_path, moons):
    x, val = moons[0][:1200].numpy(), moons[1][:300].numpy()
    opts = dict(budget="quick", blocks=2, iters=20, batch=200, hidden=16, layers=2, stop_tol=0.0, seed=0,
                progress=False, scratch_dir=str(tmp_path / "scratch"))
    disk = jkofast.train(x, val=val, out=tmp_path / "disk", pushed_storage="disk", **opts)
    memory = jkofast.train(x, val=val, pushed_storage="memory", **opts)
    log = json.loads((tmp_path / "disk" / "log.json").read_text())
    assert log["pushed_storage"] == "disk" and list((tmp_path / "scratch").iterdir()) == []  # files removed
    # Block 1 sees the same standardized data either way; only the batch order differs.
    val_nll = [f.info["val_nll"]["steps3"] for f in (disk, memory)]
    assert abs(val_nll[0]["mean"] - val_nll[1]["mean"]) < 3 * val_nll[0]["se"], val_nll
    assert disk.info["peak_memory"]["rss_bytes"] > 0


def test_cli_trains_on_a_memory_mapped_file(tmp_path, capsys):
    from jkofast.cli import main

    np.save(tmp_path / "d.npy", jkofast.datasets.toy("8gaussians", 3000, seed=1))
    args = ["--budget", "quick", "--iters", "15", "--blocks", "1", "--no-progress", "--no-plot", "--samples", "50"]
    assert main(["train", "--data", str(tmp_path / "d.npy"), "--mmap", "--out", str(tmp_path / "run"), *args]) == 0
    flow = jkofast.Flow.load(tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert flow.info["data"]["mmap"] is True and 200 < metrics["n_test"] < 400   # ~10% of 3000, by seeded draws
    assert flow.info["n_train"] + metrics["n_test"] < 3000 and metrics["peak_memory"]["rss_bytes"] > 0
    # both spaces and the training line, as for data in memory
    step3 = metrics["nll_steps3"]["mean"] - metrics["nll_standardized_steps3"]["mean"]
    assert abs(step3 - float(torch.log(flow.scale).sum())) < 1e-9 and metrics["training"]["train_batches"] == 15
    # the Gaussian baseline, fitted to the training split in one more streamed pass
    g = metrics["gaussian_nll"]
    assert g["n_train"] == flow.info["n_train"] and np.isfinite(g["minus_flow_steps3"]["mean"])
    assert main(["eval", "--model", str(tmp_path / "run")]) == 0                  # the same lazy split again
    out = capsys.readouterr().out
    assert f"{metrics['n_test']} points" in out and "(standardized)" in out and "training (jko-iflow)" in out
    assert f"scores {g['mean']:.4f} +/- {g['se']:.4f} nats on the same test points" in out
    assert f"MMD^2 ({min(10_000, metrics['n_test'])} samples vs" in out            # on a random subset of the split
    # The same command with --no-mmap splits the file otherwise: refused, naming the flag
    assert main(["train", "--data", str(tmp_path / "d.npy"), "--no-mmap", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert "different training data" in err and "read whole here, which splits it otherwise than --mmap does: was the run started with --mmap" in err
    np.save(tmp_path / "ints.npy", np.arange(10).reshape(5, 2))
    assert main(["train", "--data", str(tmp_path / "ints.npy"), "--mmap", "--out", str(tmp_path / "bad"), *args]) == 2
    assert "must hold a 2-D float array" in capsys.readouterr().err


def test_a_memory_mapped_file_streams_without_loading_it_whole(tmp_path):
    # A 320 MB float32 file, written in chunks (the test never holds it either).
    n, d = 1_600_000, 50
    path = tmp_path / "big.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        rng = np.random.default_rng(0)
        for _ in range(n // 100_000):
            rng.normal(size=(100_000, d)).astype(np.float32).tofile(fh)
    size = path.stat().st_size
    script = textwrap.dedent(f"""
        import json, resource, torch, jkofast
        torch.set_num_threads(1)
        def status(key):  # bytes, from /proc/self/status
            line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
            return int(line.split()[1]) * 1024
        opts = dict(budget="quick", blocks=1, iters=3, batch=256, hidden=2, layers=1, steps=1, progress=False,
                    pushed_storage="disk", scratch_dir={str(tmp_path / "scratch")!r})
        # Warm up on a small array first: the first training imports modules lazily (torch._dynamo
        # through Adam, ~90 MB), a one-time cost that has nothing to do with the data's size.
        jkofast.train(torch.randn(5000, {d}), **opts)
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        x = jkofast.datasets.streaming.open_npy({str(path)!r})
        before = status("VmRSS")
        flow = jkofast.train(x, **opts)
        print(json.dumps(dict(before=before, peak=status("VmHWM"), info=flow.info["peak_memory"],
                              n=flow.info["n_train"], storage=flow.info.get("pushed_storage"))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == n and result["storage"] == "disk"
    # Training read the whole file three times (scan, standardized copy, push for Ter), but the
    # resident set grew by a few 1 MB chunks and what the allocator keeps of them (measured:
    # 20-30 MB), not by the 305 MB file.
    grown = result["peak"] - result["before"]
    assert grown < size / 6, (grown / 2**20, size / 2**20)
    assert result["info"]["rss_bytes"] >= result["peak"]     # the run's report: the process's peak since start


def test_the_automatic_memory_map_choice_depends_on_the_file_alone(tmp_path, monkeypatch):
    # The choice decides the split, so it must not depend on the machine's free memory.
    from jkofast.cli import data_spec

    np.save(tmp_path / "d.npy", np.zeros((100, 2)))
    np.savetxt(tmp_path / "d.csv", np.zeros((100, 2)), delimiter=",")
    import jkofast.memory

    monkeypatch.setattr(jkofast.memory, "_host_available_bytes", lambda: 1)  # a near-full machine: no effect
    assert data_spec._memory_map(tmp_path / "d.npy", None) is False
    monkeypatch.setattr(data_spec, "MMAP_BYTES", (tmp_path / "d.npy").stat().st_size)
    assert data_spec._memory_map(tmp_path / "d.npy", None) is True
    assert data_spec._memory_map(tmp_path / "d.npy", False) is False
    assert data_spec._memory_map(tmp_path / "d.csv", None) is False
    with pytest.raises(SystemExit, match="reads .npy files"):
        data_spec._memory_map(tmp_path / "d.csv", True)
