"""train(method=...) for every method: option checks that name what is valid, what flow.info records,
evaluation (NLL in both spaces, MMD), the command line, and the CI-sized method comparison."""
import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import jkofast
from jkofast.cli import main
from jkofast.evaluate import evaluate
from jkofast.metrics import energy_distance, gaussian_nll, median_distance, mmd
from jkofast.resources import ResourceMeter
from jkofast.train import METHODS
from conftest import random_flow

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "nope"}, ValueError, r"must be one of \['jko-iflow', 'jko-flow', 'interpolant'\]"),
    ({"method": "jko-flow", "blocks": 3}, TypeError, r"unknown jko-flow option\(s\) \['blocks'\].*'blocks' is an "
                                                     r"option of jko-iflow"),
    ({"method": "interpolant", "rounds": 3}, TypeError, r"valid options are \[.*'interpolant'.*'rounds' is an option "
                                                        r"of jko-flow"),
    ({"method": "jko-iflow", "alpha": 3.0}, TypeError, "'alpha' is an option of jko-flow"),
    ({"method": "jko-flow", "colour": 1}, TypeError, r"valid options are \[.*'alpha', 'alpha_r'"),
    ({"method": "jko-flow", "alpha": "big"}, TypeError, "alpha must be a number"),
    ({"method": "jko-flow", "alpha": -1.0}, ValueError, "alpha must be > 0"),
    ({"method": "jko-flow", "layers": 1}, ValueError, "layers must be an integer >= 2"),
    ({"method": "jko-flow", "init": "zeros"}, ValueError, r"init 'zeros'; must be one of \['identity', 'ot-flow'\]"),
    ({"method": "interpolant", "interpolant": "cubic"}, ValueError, r"must be one of \['linear', 'trig'\]"),
    ({"method": "interpolant", "time_beta": 0.5}, TypeError, "time_beta must be None or a pair"),
    ({"method": "interpolant", "time_beta": (1.0, 0.0)}, ValueError, "time_beta must be > 0"),
    ({"method": "interpolant", "budget": "huge"}, ValueError, "budget"),
    ({"method": "interpolant", "iters": 0}, ValueError, "iters must be an integer >= 1"),
    ({"method": "jko-flow", "batch": 0}, ValueError, "batch must be an integer >= 1"),
    ({"method": "interpolant", "batch": 0}, ValueError, "batch must be an integer >= 1"),
    ({"method": "jko-flow", "standardize": "no"}, TypeError, "standardize must be True or False"),
    ({"method": "interpolant", "standardize": 1}, TypeError, "standardize must be True or False"),
    ({"method": "interpolant", "eval_steps": 0}, ValueError, "eval_steps must be an integer >= 1"),
    ({"method": "jko-flow", "dtype": "float16"}, ValueError, r"invalid dtype 'float16'"),
])


def test_bad_method_or_option_names_what_is_valid(kwargs, error, match):
    with pytest.raises(error, match=match):
        jkofast.train(np.random.randn(20, 2), progress=False, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_the_settings_take_a_torch_dtype_and_list_each_evaluation_grid_once(method):
    from jkofast.train import settings

    cfg = settings(method, "quick", dtype=torch.float64, steps=4, eval_steps=4)
    assert cfg.dtype == "float64" and cfg.to_dict()["dtype"] == "float64"
    assert cfg.eval_grids() == [4]
    assert settings(method, "quick", steps=4, eval_steps=9).eval_grids() == [4, 9]
    assert settings(method, "quick", steps=4, eval_steps=None).eval_grids() == [4]


@pytest.mark.parametrize("method, option, value, error, match", [
    ("interpolant", "lr_final", 2.0, ValueError, r"lr_final must be in \(0, 1\], got 2.0"),
    ("jko-flow", "lr_final", 0.0, ValueError, "lr_final must be > 0"),
    ("interpolant", "val_every", 0, ValueError, "val_every must be an integer >= 1"),
    ("interpolant", "checkpoint_every", 0, ValueError, "checkpoint_every must be an integer >= 1"),
    ("interpolant", "clip", -1.0, ValueError, "clip must be > 0"),
    ("jko-flow", "clip", 0.0, ValueError, "clip must be > 0"),
    ("interpolant", "activation", "relu", ValueError, "activation 'relu'; must be one of"),
    ("interpolant", "beta", 0.0, ValueError, "beta must be > 0"),
    ("jko-flow", "kl_points", 0, ValueError, "kl_points must be an integer >= 1"),
    ("jko-flow", "alpha_r", -0.5, ValueError, "alpha_r must be >= 0"),
    ("jko-flow", "rank", 0, ValueError, "rank must be an integer >= 1"),
    ("jko-flow", "warm_start", "yes", TypeError, "warm_start must be True or False"),
    ("jko-flow", "rounds", 0, ValueError, "rounds must be an integer >= 1"),
])
def test_each_setting_of_jko_flow_and_the_interpolant_refuses_a_bad_value(method, option, value, error, match):
    from jkofast.train import settings

    with pytest.raises(error, match=match):
        settings(method, "quick", **{option: value})


def test_the_presets_and_the_network_settings_reach_the_trained_blocks():
    from jkofast.train import settings

    # the papers' settings (docs/METHOD.md 3.2 and 4)
    paper = settings("jko-flow", "paper")
    assert (paper.rounds, paper.hidden, paper.init, paper.steps, paper.alpha, paper.alpha_r, paper.lr, paper.lr_final,
            paper.iters, paper.batch, paper.dtype) == (5, 16, "ot-flow", 8, 10.0, 0.5, 1e-2, 1.0, 3000, 2000, "float64")
    assert settings("interpolant", "paper").time_beta == (1.0, 0.5)
    assert settings("interpolant").activation == "silu"   # (softplus learned slower: the docstring's measurement)
    x = np.random.default_rng(0).normal(size=(200, 3))
    flow = jkofast.train(x, "interpolant", budget="quick", iters=1, beta=3.0, progress=False)
    assert flow.blocks[0].beta == 3.0
    flow = jkofast.train(x, "jko-flow", budget="quick", rounds=1, iters=1, rank=2, progress=False)
    again = jkofast.Flow.from_payload(flow.payload())   # (a saved model keeps its rank)
    assert flow.blocks[0].rank == again.blocks[0].rank == 2
    assert torch.equal(again.log_prob(torch.as_tensor(x[:5])), flow.log_prob(torch.as_tensor(x[:5])))


@pytest.mark.parametrize("method", ["jko-flow", "interpolant"])
def test_gradients_are_clipped_and_nan_weights_stop_the_run(method, moons, tmp_path):
    """``clip`` bounds the norm of the gradient Adam steps with, and a NaN gradient in the last
    step (of round 1, of the run) stops the run before the bad weights are checkpointed."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from jkofast.jko_iflow import TrainingDivergedError

    iters, clip, norms = 4, 1e-3, []
    extra = dict(rounds=2) if method == "jko-flow" else {}

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        if poison and len(norms) == iters:
            for g in grads:
                g.fill_(float("nan"))

    handle = register_optimizer_step_pre_hook(record)
    try:
        poison = False
        jkofast.train(moons[0][:300], method, budget="quick", iters=iters, clip=clip, progress=False, **extra)
        assert len(norms) == iters * extra.get("rounds", 1) and max(norms) <= clip * (1 + 1e-5), norms
        poison, norms[:] = True, []
        with pytest.raises(TrainingDivergedError, match=f"weights became NaN or inf .*at iteration {iters}"):
            jkofast.train(moons[0][:300], method, out=tmp_path, budget="quick", iters=iters, progress=False, **extra)
    finally:
        handle.remove()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["cursor"] in ({"round": 0}, {"iteration": 0})


@pytest.mark.parametrize("method", METHODS)
def test_quick_budget_gives_a_flow_with_its_training_record(method, moons):
    flow = jkofast.train(moons[0][:1000], method, val=moons[1][:300], budget="quick", progress=False)
    info = flow.info
    assert info["method"] == method and info["train_batches"] >= 1 and info["batch_size"] == 256
    assert info["train_seconds"] > 0 and info["resources"]["wall_seconds"] >= info["train_seconds"] * 0.5
    assert info["resources"]["peak_mb"] > 50 and set(info["val_nll"]) == {f"steps{s}" for s in info["eval_grids"]}
    # the report's "training" entry: how it was trained, from flow.info
    keys = ("method", "train_batches", "batch_size", "train_seconds", "resources", "resumed")
    assert evaluate(flow, moons[2][:50], mmd_points=0)["training"] == {k: info[k] for k in keys}
    assert torch.isfinite(flow.log_prob(moons[2][:100])).all()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_standardizes_by_the_sample_std_and_records_the_batch_it_drew(method):
    # The in-memory path (jko-flow, interpolant) and the scanned one (jko-iflow) must agree on the
    # standardization: mean and the (n - 1) std; a batch larger than the data is the data's size.
    x = torch.as_tensor(jkofast.datasets.toy("moons", 300, seed=0), dtype=torch.float64)
    flow = jkofast.train(x, method, budget="quick", progress=False, iters=2, batch=500, dtype="float64")
    torch.testing.assert_close(flow.loc, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.scale, x.std(0), rtol=1e-12, atol=0)
    assert flow.info["batch_size"] == 300


@pytest.mark.parametrize("method", METHODS)
def test_the_validation_nll_is_recorded_on_every_evaluation_grid(method):
    x = torch.as_tensor(jkofast.datasets.toy("moons", 400, seed=0), dtype=torch.float64)
    flow = jkofast.train(x[:300], method, val=x[300:], budget="quick", progress=False, iters=2, steps=3,
                         eval_steps=7, dtype="float64")
    assert flow.info["eval_grids"] == [3, 7] and set(flow.info["val_nll"]) == {"steps3", "steps7"}
    for steps in (3, 7):
        mean, se = jkofast.metrics.nll(flow, x[300:], steps=steps)
        assert flow.info["val_nll"][f"steps{steps}"] == {"mean": pytest.approx(mean, rel=1e-9),
                                                         "se": pytest.approx(se, rel=1e-6)}


def test_a_non_finite_log_likelihood_is_an_error_not_a_mean():
    # Finite float32 points at 1e30 have an infinite |z|^2: the mean would be inf, or NaN with -inf.
    from jkofast.metrics import nll, sharded_nll

    flow = jkofast.Flow(2, dict(hidden=8, layers=1))
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e30, 0.0], [0.5, 0.5]])
    with pytest.raises(FloatingPointError, match=r"non-finite log-likelihood on 1 of 4 points \(first: row 2\)"):
        nll(flow, x)
    with pytest.raises(FloatingPointError, match=r"non-finite log-likelihood on 1 of 4 points at 3 RK4 steps"):
        sharded_nll(flow, x, steps=3)


def test_scores_at_a_grid_given_twice_count_each_row_once():
    from jkofast.metrics import sharded_nll, sharded_scores_by_grid

    flow = random_flow(dim=2, blocks=1)
    x = torch.randn(50, 2, dtype=torch.float64)
    once = sharded_nll(flow, x, steps=4)
    twice = sharded_scores_by_grid(flow, x, grids=[4, 4], chunk=16)
    assert list(twice) == [4] and twice[4]["flow"] == pytest.approx(once, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_training_leaves_the_global_random_state_alone(method):
    # The seed draws the initialisation and batches from its own generators: the caller's
    # torch.manual_seed stream is neither reset to the seed nor advanced.
    x = torch.as_tensor(jkofast.datasets.toy("moons", 400, seed=0))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    jkofast.train(x, method, budget="quick", progress=False, iters=3, **({"blocks": 2} if method == "jko-iflow" else {}))
    assert torch.equal(torch.get_rng_state(), state)


def test_mmd_is_the_v_statistic_and_standardized_nll_the_shifted_one():
    x, y = torch.randn(300, 3, dtype=torch.float64), torch.randn(200, 3, dtype=torch.float64) + 0.3
    gamma = 0.1 * median_distance(x)
    k = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * gamma ** 2)).mean()  # noqa: E731
    assert mmd(x, y) == pytest.approx(float(k(x, x) + k(y, y) - 2 * k(x, y)), rel=1e-9, abs=1e-12)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    full = torch.cdist(x, x).flatten()  # n^2 distances, the n zeros of the diagonal included
    assert median_distance(x) == pytest.approx(float(full.sort().values[(full.numel() - 1) // 2]), rel=1e-9)
    flow = jkofast.Flow(3, dict(hidden=4, layers=1), scale=torch.tensor([2.0, 0.5, 3.0])).double()
    scores = evaluate(flow, x, mmd_points=100)
    shift = math.log(2.0 * 0.5 * 3.0)
    assert scores["nll_standardized_steps3"]["mean"] == pytest.approx(scores["nll_steps3"]["mean"] - shift)
    assert scores["mmd"]["n"] == 100 and scores["mmd"]["mmd_m"] >= 0


def test_energy_distance_is_its_definition():
    # Exact identities of 2E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistics, the diagonal's zeros in):
    # zero on one sample; 2|a - b| between two points; 2.5 for {0, 1} against {2} (3 - 0.5 - 0).
    x = torch.randn(50, 3, dtype=torch.float64)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    a, b = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 1.0]])
    assert energy_distance(a, b) == pytest.approx(2 * float((a - b).norm()), rel=1e-12)
    assert energy_distance(torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0]])) == pytest.approx(2.5, rel=1e-12)


def test_evaluates_mmd_is_the_metric_on_its_seeded_draws():
    # evaluate(seed=s) draws its test rows with randperm, then the samples, from one generator
    # seeded with s; MMD-c and MMD-m are the metric at 0.1 x and 1 x the rows' median distance.
    flow = random_flow(dim=2, blocks=1)
    x = torch.randn(300, 2, dtype=torch.float64)
    report = evaluate(flow, x, mmd_points=80, seed=5)["mmd"]
    g = torch.Generator().manual_seed(5)
    rows = x[torch.randperm(300, generator=g)[:80]]
    samples = flow.sample(80, generator=g)
    median = median_distance(rows)
    assert report["median_distance"] == pytest.approx(median, rel=1e-12)
    assert report["mmd_c"] == pytest.approx(mmd(rows, samples, bandwidth=0.1 * median), rel=1e-9)
    assert report["mmd_m"] == pytest.approx(mmd(rows, samples, bandwidth=median), rel=1e-9)
    assert evaluate(flow, x, mmd_points=80, seed=6)["mmd"]["mmd_c"] != report["mmd_c"]


def test_whole_number_test_data_is_scored_as_the_numbers_it_holds_by_a_float32_flow():
    # Integers near 1e8 (counts, timestamps): float32 steps by 8 there, so they are standardized
    # in float64 first, as float64 data is; the float32 flow scores both alike.
    flow = jkofast.Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([1e8, 0.0], dtype=torch.float64),
                        scale=torch.tensor([2.0, 1.0], dtype=torch.float64)).float()
    flow.add_block(flow.new_field(), 0.5)
    x = np.random.default_rng(0).integers(-3, 4, (200, 2)) + np.array([10 ** 8, 0])
    whole, wide = (jkofast.evaluate(flow, v, mmd_points=0) for v in (x, x.astype(np.float64)))
    assert whole["nll_steps3"] == wide["nll_steps3"]   # (rounded to float32 first: ~0.6 nats off)


def test_mmd_u_is_the_metric_on_the_standardized_draws_at_the_test_rows_median():
    # MMD-u compares the same rows and samples as MMD-m, both standardized, at the median distance
    # of the standardized test rows (not of the samples, whose spread is the model's).
    flow = jkofast.Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([1.0, -2.0]), scale=torch.tensor([3.0, 0.5]))
    flow.add_block(flow.new_field(), 0.5)
    x = torch.randn(300, 2) * 4.0
    report = evaluate(flow, x, mmd_points=80, seed=5)["mmd"]
    g = torch.Generator().manual_seed(5)
    rows = x[torch.randperm(300, generator=g)[:80]]
    u_rows, u_samples = flow.standardize(rows).double(), flow.standardize(flow.sample(80, generator=g)).double()
    median_u = median_distance(u_rows)
    assert report["median_distance_u"] == pytest.approx(median_u, rel=1e-12)
    assert report["mmd_u"] == pytest.approx(mmd(u_rows, u_samples, bandwidth=median_u), rel=1e-9)


def test_the_mmd_needs_two_test_rows_and_takes_two():
    flow = jkofast.Flow(2, dict(hidden=8, layers=1))
    one, two = torch.randn(1, 2), torch.randn(2, 2)
    for scorer in (jkofast.evaluate, jkofast.evaluate_sharded):
        assert "mmd" not in scorer(flow, one, mmd_points=10)    # one row has no median distance
        assert scorer(flow, two, mmd_points=10)["mmd"]["n"] == 2


def test_evaluate_reports_the_flows_own_grids_by_default_and_refuses_an_empty_list():
    flow = jkofast.Flow(2, dict(hidden=8, layers=1))
    flow.info["eval_grids"] = [2, 5]   # what train() records: its evaluation grids
    x = torch.randn(30, 2)
    for scorer in (jkofast.evaluate, jkofast.evaluate_sharded):
        assert [k for k in scorer(flow, x, mmd_points=0) if k.startswith("nll_steps")] == ["nll_steps2", "nll_steps5"]
        with pytest.raises(TypeError, match="non-empty list"):
            scorer(flow, x, steps=[], mmd_points=0)


def test_mmd_u_does_not_depend_on_the_columns_units():
    # The same data and model in other units (column 2 in thousandths, column 0 x 31): the data-space
    # MMD-m changes, being decided by the largest column; MMD-u, in the standardized space, does not.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(600, 1))
    x = torch.as_tensor(np.c_[a, 0.8 * a + 0.6 * rng.normal(size=(600, 1)), rng.lognormal(size=(600, 1))])
    units = torch.tensor([31.0, 1.0, 1e-3], dtype=torch.float64)
    reports = []
    for c in (torch.ones(3, dtype=torch.float64), units):
        flow = jkofast.Flow(3, dict(hidden=4, layers=1), loc=x.mean(0) * c, scale=x.std(0) * c).double()
        reports.append(evaluate(flow, x * c, mmd_points=400, seed=5)["mmd"])
    assert reports[0]["mmd_u"] == pytest.approx(reports[1]["mmd_u"], rel=1e-9)
    assert reports[0]["mmd_u"] > 1e-3   # the independent Gaussian misses the correlation and the skew
    assert reports[0]["mmd_m"] != pytest.approx(reports[1]["mmd_m"], rel=1e-2)


def test_gaussian_baseline_is_the_maximum_likelihood_gaussian():
    # Against the closed form in numpy: mean, unbiased covariance (torch.cov's), log-density.
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.1]]) + 5.0
    test = rng.normal(size=(50, 3)) * 1.5 + 5.0
    mu, cov = train.mean(0), np.cov(train.T)
    cov += np.diag(1e-9 * np.diag(cov))  # the documented ridge, each column's own
    r = test - mu
    want = 0.5 * np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r) + 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    mean, se = gaussian_nll(train, torch.as_tensor(test))  # arrays and tensors alike
    # float64 throughout (values near 190 nats): 1e-9 relative is a few hundred ulps of the sums
    assert mean == pytest.approx(want.mean(), rel=1e-9) and se == pytest.approx(want.std(ddof=1) / np.sqrt(50), rel=1e-9)
    # more columns than rows: the covariance is singular, the ridge keeps the value finite
    assert math.isfinite(gaussian_nll(rng.normal(size=(3, 5)), rng.normal(size=(4, 5)))[0])
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_nll(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="test has 2 columns, the training data 3"):
        gaussian_nll(train, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="train holds NaN or inf values"):
        gaussian_nll(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        gaussian_nll([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], np.zeros((3, 2)))
    # the ridge follows each column's scale: columns 1e5 apart in spread lose nothing against the
    # exact fit (a ridge from the mean variance would drown the small column: +5 nats here)
    wide = rng.normal(size=(2000, 2)) * np.array([1e5, 1e-2])
    exact = torch.distributions.MultivariateNormal(torch.as_tensor(wide.mean(0)), torch.as_tensor(np.cov(wide.T)))
    want_wide = -float(exact.log_prob(torch.as_tensor(wide[:100])).mean())
    assert gaussian_nll(wide, wide[:100])[0] == pytest.approx(want_wide, abs=1e-6)


def test_resource_meter_sees_a_large_allocation():
    # The CPU peak is the process's RSS high-water mark above its RSS at the start. Earlier tests
    # leave freed heap memory that the process still holds; the 64 MB would reuse it unseen if the
    # meter did not return it first (malloc_trim: it failed 2 of 4 full runs before). Garbage is
    # collected before and not inside, where freeing it would lower the RSS under the peak.
    heap_top = [torch.ones(200_000) for _ in range(600)][-1:]  # 480 MB freed below a live tensor
    gc.collect()
    gc.disable()
    try:
        with ResourceMeter("cpu") as meter:
            big = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
            big += 1
    finally:
        gc.enable()
    r = meter.result()
    assert r["peak_mb"] - r["start_mb"] > 50 and r["wall_seconds"] >= 0, r
    del heap_top


@pytest.mark.parametrize("method", ["jko-flow", "interpolant"])
def test_cli_trains_and_evaluates_every_method(method, tmp_path, capsys):
    out = tmp_path / method
    args = ["train", "--data", "moons", "--out", str(out), "--method", method, "--budget", "quick",
            "--n-train", "1000", "--n-val", "200", "--n-test", "500", "--samples", "300", "--no-progress", "--no-plot"]
    # values that differ from the quick preset's (rounds 2, alpha 10; interpolant "trig"), so a flag the
    # command line dropped fails here
    extra = ["--rounds", "1", "--alpha", "5"] if method == "jko-flow" else ["--interpolant", "linear"]
    assert main([*args, *extra]) == 0
    flow = jkofast.Flow.load(out)
    assert flow.info["method"] == method
    if method == "jko-flow":
        assert flow.info["config"]["rounds"] == 1 and flow.info["config"]["alpha"] == 5.0
    else:
        assert flow.info["config"]["interpolant"] == "linear"
    assert main(["eval", "--model", str(out), "--mmd-points", "300", "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "(standardized)" in text and "MMD-c" in text and "batches of 256" in text and "peak memory" in text
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["mmd"]["n"] == 300 and metrics["training"]["method"] == method
    assert main([*args, "--blocks", "2"]) == 2      # an option of another method: a message, not a traceback
    assert "--blocks does not apply to --method " in capsys.readouterr().err   # (flags, as the user wrote them)


def test_quick_method_comparison_beats_a_fitted_gaussian(tmp_path):
    # The CI-sized run of bench/bench_methods.py: the same 240 batches of 256 for every method on
    # two moons (4,000 points). Measured: Gaussian 3.30 nats; jko-iflow 3.04, jko-flow 2.81,
    # interpolant 2.97 (test NLL, standard errors 0.01).
    out = tmp_path / "quick.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "bench_methods.py"), "--quick", "--no-progress",
                    "--json", str(out)], check=True, cwd=tmp_path, capture_output=True, text=True)
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    gauss = rows.pop("gaussian (fitted)")
    assert set(rows) == set(METHODS)
    for method, row in rows.items():
        assert row["nll"] < gauss["nll"] - 3 * row["se"], (method, row["nll"], gauss["nll"])
        # the paired gain is the difference of the two means; its s.e. is the differences' own
        assert row["gain_over_gaussian"] == pytest.approx(gauss["nll"] - row["nll"], abs=1e-9)
        assert row["gain_over_gaussian"] > 3 * row["gain_se"] > 0
        assert row["batches"] == 240 and row["batch_size"] == 256


def test_evaluate_takes_one_grid_or_several_and_refuses_bad_test_sets():
    flow = jkofast.Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([2.0, 0.5]))
    x = torch.randn(40, 2)
    one = jkofast.evaluate(flow, x, steps=3, mmd_points=0)
    two = jkofast.evaluate(flow, x.numpy(), steps=[3, 6], mmd_points=0)
    assert one["nll_steps3"] == two["nll_steps3"] and "nll_steps6" in two
    for bad, match in ((torch.zeros(0, 2), "empty"), (torch.randn(5, 3), "2 columns"),
                       (torch.tensor([[float("nan"), 1.0]]), "NaN"),
                       (torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 0.0], [2.0, float("-inf")]]),
                        r"test has 2 row\(s\) with NaN or inf values \(first: row 1\)")):
        with pytest.raises(ValueError, match=match):
            jkofast.evaluate(flow, bad, mmd_points=0)
    assert [k for k in jkofast.evaluate(flow, x, steps=[3, 3], mmd_points=0) if k.startswith("nll_steps")] == \
        ["nll_steps3"]   # each grid once
    # the arguments used after the NLL passes are checked before them (they failed after)
    for kwargs, match in ((dict(steps=2.5), "steps must be an integer >= 1 or a non-empty list"),
                          (dict(steps=True), "steps must be an integer >= 1"), (dict(seed=None), "seed"),
                          (dict(seed=2 ** 70), r"seed must be an integer in \[0, 2\*\*62\)"),
                          (dict(mmd_points=-1), "mmd_points must be an integer >= 0")):
        for scorer in (jkofast.evaluate, jkofast.evaluate_sharded):
            with pytest.raises((TypeError, ValueError), match=match):
                scorer(flow, x, **kwargs)


def test_the_cpu_peak_starts_afresh_and_its_kind_says_when_it_cannot(tmp_path, monkeypatch):
    import jkofast.resources as resources

    big = torch.ones(50_000_000)   # 200 MB, touched and freed before the work: not the work's peak
    big += 1
    del big
    with ResourceMeter("cpu") as meter:
        pass
    r = meter.result()
    if r["kind"] == "process peak RSS (VmHWM, reset at the start)":
        assert r["peak_mb"] - r["start_mb"] < 100, r
    # /proc/self/status in kB, reported in MB of 2**20 bytes
    (tmp_path / "status").write_text("Name:\tpython\nVmHWM:\t  3072 kB\nVmRSS:\t  1024 kB\n")
    monkeypatch.setattr(resources, "_STATUS", tmp_path / "status")
    monkeypatch.setattr(resources, "_CLEAR", tmp_path / "missing" / "clear_refs")   # a reset not allowed
    with ResourceMeter("cpu") as meter:
        pass
    assert meter.result() | {"wall_seconds": 0} == {"wall_seconds": 0, "peak_mb": 3.0, "start_mb": 1.0,
                                                  "kind": "process peak RSS since the process started "
                                                          "(reset not available)"}


def test_a_folder_of_another_method_is_refused_by_name(tmp_path, moons):
    from jkofast.checkpoint import CheckpointError

    x = moons[0][:300]
    jkofast.train(x, "jko-iflow", out=tmp_path, budget="quick", progress=False, iters=3)
    with pytest.raises(CheckpointError, match="holds a jko-iflow run's state, where a jko-flow or interpolant"):
        jkofast.train(x, "interpolant", out=tmp_path, budget="quick", progress=False, iters=3)
