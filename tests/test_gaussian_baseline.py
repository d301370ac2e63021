"""The Gaussian baseline's fit that train() keeps with the model (jkofast/gaussian_baseline.py):
it is the fit of the training data, survives save and load, and scores exactly as fitting the
rows again would, so `jkofast eval` needs neither the training data nor another pass over it."""
import importlib
import json

import numpy as np
import pytest
import torch

import jkofast
from jkofast.evaluate import evaluate, evaluate_sharded
from jkofast.gaussian_baseline import GaussianFit, gaussian_fit

QUICK = dict(budget="quick", blocks=1, iters=5, batch=128, hidden=8, layers=1, progress=False)
OPTIONS = {"jko-iflow": QUICK, "interpolant": dict(budget="quick", iters=5, batch=128, hidden=8, layers=1,
                                                   progress=False)}


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) @ np.array([[1.0, 0.4, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.5]]) + 3.0


def _same_fit(a: GaussianFit, b: GaussianFit) -> bool:
    return a.n_train == b.n_train and torch.equal(a.mean, b.mean) and torch.equal(a.covariance, b.covariance)


@pytest.mark.parametrize("method", ["jko-iflow", "interpolant"])
def test_train_keeps_the_fit_of_its_training_data(method, tmp_path):
    # jko-iflow reads its data through the sharded path (training_data.py), the interpolant in
    # memory: both keep gaussian_fit of the raw rows (data space, not standardized), bit for bit
    # for float64 rows (float32 rows, widened first, are read in other chunks: equal to rounding).
    x = _data()
    flow = jkofast.train(x, method, out=tmp_path / "run", **OPTIONS[method])
    kept = GaussianFit.recorded(flow)
    assert kept is not None and _same_fit(kept, gaussian_fit(x))
    assert kept.n_train == 600 and kept.dim == 3
    # saved with the model and loaded back (Flow.load reads with weights_only: plain tensors only)
    assert _same_fit(GaussianFit.recorded(jkofast.Flow.load(tmp_path / "run")), kept)


def test_a_memory_mapped_file_keeps_the_same_fit(tmp_path):
    x = _data()
    np.save(tmp_path / "x.npy", x)
    from_file = jkofast.train(str(tmp_path / "x.npy"), **QUICK)
    assert _same_fit(GaussianFit.recorded(from_file), gaussian_fit(x))


def test_no_fit_kept_for_wide_data(monkeypatch):
    # Above RECORDED_FIT_MAX_DIM columns the d x d covariance would outweigh the model: left out,
    # and an evaluation fits the rows again.
    # (jkofast.train is the function; the module of the same name holds the limit)
    monkeypatch.setattr(importlib.import_module("jkofast.train"), "RECORDED_FIT_MAX_DIM", 2)
    flow = jkofast.train(_data(), **QUICK)
    assert "gaussian_baseline" not in flow.info and GaussianFit.recorded(flow) is None


def test_evaluating_against_the_kept_fit_is_fitting_again():
    x, test = _data(), _data(200, seed=1)
    flow = jkofast.train(x, **QUICK)
    kept = GaussianFit.recorded(flow)
    a = evaluate(flow, test, mmd_points=0, baseline_train=x)["gaussian_nll"]
    b = evaluate(flow, test, mmd_points=0, baseline_train=kept)["gaussian_nll"]
    assert a == b and a["n_train"] == 600 and a["dim"] == 3
    c = evaluate_sharded(flow, test, baseline_train=x)["gaussian_nll"]
    d = evaluate_sharded(flow, test, baseline_train=kept)["gaussian_nll"]
    assert c == d and c["mean"] == pytest.approx(a["mean"], rel=1e-12)
    wrong = GaussianFit(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="a Gaussian over 2 columns; the flow has 3"):
        evaluate(flow, test, baseline_train=wrong)


def test_a_kept_fit_of_other_columns_is_refused():
    flow = jkofast.train(_data(), **QUICK)
    flow.info["gaussian_baseline"] = gaussian_fit(_data()[:, :2]).state()
    with pytest.raises(ValueError, match="the kept fit has 2 columns, the flow 3"):
        GaussianFit.recorded(flow)


def test_a_fit_from_a_bad_state_is_refused():
    with pytest.raises(ValueError, match=r"a mean \(d,\) and a covariance \(d, d\), got \(3,\) and \(2, 2\)"):
        GaussianFit.from_state({"mean": torch.zeros(3), "covariance": torch.eye(2), "n_train": 5})
    state = gaussian_fit(_data()).state()
    assert _same_fit(GaussianFit.from_state(state), gaussian_fit(_data()))  # lists of floats: exact
    assert GaussianFit.from_state(state) != GaussianFit.from_state(state)  # == is identity: it never raises
    assert json.loads(json.dumps(state)) == state
