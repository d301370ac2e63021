"""The jkofast command line, run in-process as a user would (and once as a subprocess)."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import jkofast
from jkofast.cli import main

SMALL = ["--budget", "quick", "--n-train", "1500", "--n-val", "300", "--n-test", "800", "--samples", "400",
         "--no-progress", "--iters", "20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "moons"
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_everything(run_dir, capsys):
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.pt", "checkpoint.pt", "log.json", "metrics.json", "samples.npy", "plot.png"} <= names
    flow = jkofast.Flow.load(run_dir)
    assert flow.info["data"]["name"] == "moons" and flow.num_blocks >= 1
    assert flow.info["config"]["iters"] == 20  # the flag beat the quick preset's 40
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["nll_steps3"]["mean"]) and metrics["n_test"] == 800
    # the samples are the model's draw from --seed (0): the same on every rerun
    want = flow.sample(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    np.testing.assert_array_equal(np.load(run_dir / "samples.npy"), want)
    assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_sets_the_flow_beside_a_fitted_gaussian(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    x_train, _, x_test = jkofast.datasets.get("moons", 1500, 300, 800, seed=0)
    want = jkofast.metrics.gaussian_nll_values(x_train, x_test)
    flow_nll = jkofast.metrics.nll_values(jkofast.Flow.load(run_dir), torch.as_tensor(x_test))
    g = metrics["gaussian_nll"]
    assert (g["n_train"], g["dim"]) == (1500, 2)
    assert g["mean"] == pytest.approx(float(want.mean()), abs=1e-12)
    # the paired gap is the mean of the per-point differences, and its s.e. theirs
    gap, diff = g["minus_flow_steps3"], want - flow_nll
    assert gap["mean"] == pytest.approx(float(diff.mean()), abs=1e-9)
    assert gap["se"] == pytest.approx(float(diff.std() / np.sqrt(800)), rel=1e-6)
    assert gap["mean"] == pytest.approx(g["mean"] - metrics["nll_steps3"]["mean"], abs=1e-9)
    from jkofast.cli.report import _print_evaluation
    # a note where the gap is under 2 s.e.; its likely cause follows the rows per dimension
    # (clearly worse on held-out points, the note adds that they may not be like the training data)
    for n_train, gap_mean, said in ((1500, -0.5, "more training may help"), (1500, 0.15, "more training may help"),
                                    (1500, 0.25, None), (100, -0.5, "50 training rows per dimension"),
                                    (1500, -0.15, "more training may help")):
        held_out = n_train == 1500
        _print_evaluation({"n_test": 9, "nll_steps3": {"mean": 2.5 - gap_mean, "se": 0.1},
                           "gaussian_nll": {"mean": 2.5, "se": 0.1, "n_train": n_train, "dim": 2,
                                            "minus_flow_steps3": {"mean": gap_mean, "se": 0.1}}}, [3], held_out)
        out = capsys.readouterr().out
        assert "a Gaussian fitted to the training data (full covariance) scores 2.5000 +/- 0.1000" in out
        sign = "worse" if gap_mean < 0 else "better"
        assert f"the flow is {abs(gap_mean):.4f} +/- 0.1000 nats {sign} (paired, 3 steps)" in out
        assert (said in out and "does not clearly beat it" in out) if said else "does not clearly beat" not in out
        assert ("do not come from the training data's distribution" in out) == (held_out and gap_mean <= -0.2)
    # several grids, in any order: the gap shown is the finest grid's; a resumed run's cost says whose it is
    _print_evaluation({"n_test": 9, "nll_steps3": {"mean": 2.6, "se": 0.1}, "nll_steps6": {"mean": 2.4, "se": 0.1},
                       "gaussian_nll": {"mean": 2.5, "se": 0.1, "n_train": 1500, "dim": 2,
                                        "minus_flow_steps3": {"mean": -0.1, "se": 0.01},
                                        "minus_flow_steps6": {"mean": 0.1, "se": 0.01}},
                       "training": {"method": "jko-iflow", "train_batches": 30, "batch_size": 200,
                                    "train_seconds": 2.0, "resumed": True, "resources": {}}}, [3, 6])
    out = capsys.readouterr().out
    assert "the flow is 0.1000 +/- 0.0100 nats better (paired, 6 steps)" in out
    assert "30 batches of 200, 2.0 s training (over every process that trained it; wall and memory: the last one)" in out
    # the fit train() kept with the model is used as it is: no pass over the training rows
    from jkofast.cli.report import _baseline_train, _recorded_or
    from jkofast.gaussian_baseline import GaussianFit

    flow = jkofast.Flow.load(run_dir)
    kept = _recorded_or(flow, lambda: pytest.fail("refitted a kept Gaussian"))
    assert kept is not None and kept.state() == GaussianFit.recorded(flow).state()
    # and where none is kept, no more training rows than columns fix no covariance: no baseline
    assert _baseline_train(np.zeros((2, 2))) is None and _baseline_train(np.zeros((3, 2))) is not None


def test_a_pipe_error_that_is_not_stdouts_is_raised(monkeypatch):
    def broken(args):
        raise BrokenPipeError("a worker's pipe")
    monkeypatch.setattr(jkofast.cli.parser, "cmd_info", broken)
    with pytest.raises(BrokenPipeError, match="worker"):
        main(["info"])


@pytest.mark.parametrize("buffered", [True, False])
def test_a_closed_pipe_ends_quietly(buffered):
    # buffered: the usual shell case, where the output only leaves at the end (PYTHONUNBUFFERED unset)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "jkofast", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line (as `jkofast info | head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err


def test_rerun_resumes_instead_of_retraining(run_dir, capsys):
    before = (run_dir / "model.pt").read_bytes()
    trained = jkofast.Flow.load(run_dir).info
    assert main(["train", "--data", "moons", "--out", str(run_dir), *SMALL]) == 0
    assert json.loads((run_dir / "log.json").read_text())["resumed"] is True
    said = capsys.readouterr()
    assert "resuming from" in said.err
    assert ", this process " in said.out and ", total " not in said.out   # training seconds span processes
    # nothing was trained again: the wall time and memory stay those of the process that trained
    again = jkofast.Flow.load(run_dir).info
    assert again["resources"] == trained["resources"] and again["resources"]["wall_seconds"] > 0
    import torch
    a = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(__import__("io").BytesIO(before), weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_with_more_blocks_adds_them(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", "moons", "--out", out, *SMALL, "--blocks", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", "moons", "--out", out, *SMALL, "--blocks", "2"]) == 0
    err = capsys.readouterr().err
    assert "blocks=2 on resuming a run of blocks=1: the first pass goes on after block 1, up to block 2" in err
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [b["block"] for b in log["blocks"]] == [1, 2] and log["config"]["blocks"] == 2
    assert main(["train", "--data", "moons", "--out", out, *SMALL, "--blocks", "1"]) == 2   # a refusal
    assert "blocks can grow when a run resumes, not shrink" in capsys.readouterr().err


def test_eval_sample_plot(run_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(run_dir), "--steps", "6", "3", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "test NLL (3 RK4 steps" in out and "+/-" in out
    assert re.search(r"nats (better|worse) \(paired, 6 steps\)", out)  # the finest grid's gap, in whatever order given
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert abs(metrics["nll_steps3"]["mean"] - metrics["nll_steps6"]["mean"]) < 0.05
    # eval rebuilds the training run's test split from the recorded data set and seed: the same
    # model on the same points gives train's number, up to the order of the sum
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_test"] == trained["n_test"]
    assert abs(metrics["nll_steps3"]["mean"] - trained["nll_steps3"]["mean"]) < 1e-9
    assert main(["sample", "--model", str(run_dir), "--n", "50", "--out", str(tmp_path / "s.csv")]) == 0
    csv = np.loadtxt(tmp_path / "s.csv", delimiter=",")
    assert csv.shape == (50, 2)
    for seed, name in ((0, "a.npy"), (0, "b.npy"), (1, "c.npy")):
        assert main(["sample", "--model", str(run_dir), "--n", "50", "--seed", str(seed),
                     "--out", str(tmp_path / name)]) == 0
    a, b, c = (np.load(tmp_path / name) for name in ("a.npy", "b.npy", "c.npy"))
    assert a.shape == (50, 2) and np.array_equal(a, b) and not np.allclose(a, c)
    np.testing.assert_allclose(csv, a, rtol=1e-6, atol=1e-6)  # the default seed is 0; CSV keeps ~8 digits
    # --data naming the model's own built-in set is that set's run: the same split, with its baseline
    assert main(["eval", "--model", str(run_dir), "--data", "moons", "--steps", "3", "--mmd-points", "0",
                 "--json", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["nll_steps3"] == metrics["nll_steps3"] and same["gaussian_nll"]["n_train"] == 1500
    # --n-test sizes the built-in set's test draw
    assert main(["eval", "--model", str(run_dir), "--n-test", "100", "--steps", "3", "--mmd-points", "0",
                 "--json", str(tmp_path / "fewer.json")]) == 0
    assert json.loads((tmp_path / "fewer.json").read_text())["n_test"] == 100
    # a model whose recorded data names no set is asked for --data, not failed with a traceback
    nameless = jkofast.Flow.load(run_dir)
    nameless.info["data"] = {"seed": 0}
    nameless.save(tmp_path / "nameless.pt")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "nameless.pt")]) == 2
    assert "this model does not record its data set; pass --data" in capsys.readouterr().err
    assert main(["plot", "--model", str(run_dir), "--out", str(tmp_path / "p.png"), "--n-test", "300"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_train_on_a_file(tmp_path, capsys, monkeypatch):
    data = jkofast.datasets.toy("8gaussians", 1200, seed=1).astype(np.float64)
    np.save(tmp_path / "d.npy", data)
    assert main(["train", "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "run"), *SMALL,
                 "--no-plot", "--eval-steps", "7"]) == 0
    # SMALL's sizes do not apply to a file: said, not silently dropped
    assert "--n-train/--n-val/--n-test ignored" in capsys.readouterr().err
    assert not (tmp_path / "run" / "plot.png").exists()   # --no-plot
    assert main(["eval", "--model", str(tmp_path / "run"), "--json", str(tmp_path / "split.json")]) == 0
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["n_test"] == 120 and split["gaussian_nll"]["n_train"] == 960   # 10% test, 80% train
    # eval's grids, by default, are the ones train reported (flow.info's eval_grids)
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    grids = {key for key in trained if key.startswith("nll_steps")}
    assert len(grids) >= 2 and {key for key in split if key.startswith("nll_steps")} == grids
    assert main(["eval", "--model", str(tmp_path / "run"), "--n-test", "50"]) == 2  # not silently ignored
    assert "whose test split is fixed" in capsys.readouterr().err
    # Held-out data in another file is scored whole, against the Gaussian of the model's own
    # training split (not one fitted to 80% of the held-out file, as eval used to).
    held = jkofast.datasets.toy("8gaussians", 300, seed=7).astype(np.float64)
    np.save(tmp_path / "held.npy", held)
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "held.npy"),
                 "--json", str(tmp_path / "held.json")]) == 0
    scored = json.loads((tmp_path / "held.json").read_text())
    assert scored["n_test"] == 300 and scored["gaussian_nll"]["n_train"] == 960
    flow = jkofast.Flow.load(tmp_path / "run")
    assert scored["nll_steps3"]["mean"] == pytest.approx(jkofast.metrics.nll(flow, torch.as_tensor(held))[0], rel=1e-9)
    # A model without the kept fit (saved by jkofast before it kept one) fits the training split
    # again: the kept fit's numbers, to rounding of the float64 sums.
    del flow.info["gaussian_baseline"]
    flow.save(tmp_path / "old.pt")
    assert main(["eval", "--model", str(tmp_path / "old.pt"), "--data", str(tmp_path / "held.npy"),
                 "--json", str(tmp_path / "refit.json")]) == 0
    refit = json.loads((tmp_path / "refit.json").read_text())["gaussian_nll"]
    assert refit["n_train"] == 960 and refit["mean"] == pytest.approx(scored["gaussian_nll"]["mean"], rel=1e-12)
    # A kept fit that does not read (a damaged file): noted, and fitted again
    broken = jkofast.Flow.load(tmp_path / "run")
    broken.info["gaussian_baseline"]["covariance"] = [[1.0]]
    broken.save(tmp_path / "broken.pt")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "broken.pt"), "--data", str(tmp_path / "held.npy"),
                 "--json", str(tmp_path / "broken.json")]) == 0
    assert "kept Gaussian baseline is unreadable (ValueError" in capsys.readouterr().err
    assert json.loads((tmp_path / "broken.json").read_text())["gaussian_nll"] == refit
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "held.npy"), "--n-test", "50"]) == 2
    assert "a held-out file is scored whole" in capsys.readouterr().err
    # The model's own file named by a relative path is its own data: the recorded test split, not held-out data
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "run", "--data", "d.npy", "--mmd-points", "0", "--json", "own.json"]) == 0
    assert json.loads((tmp_path / "own.json").read_text())["n_test"] == 120
    # Touched, same size: noted once, and scored.
    capsys.readouterr()
    os.utime(tmp_path / "d.npy", ns=(1, 1))
    assert main(["eval", "--model", str(tmp_path / "run"), "--mmd-points", "0"]) == 0
    assert capsys.readouterr().err.count("was modified after the model was trained") == 1
    # The training file grown after training: its test split, drawn again, would hold training rows.
    np.save(tmp_path / "d.npy", np.concatenate([data, held[:10]]))
    assert main(["eval", "--model", str(tmp_path / "run")]) == 2
    assert "has changed since the model was trained" in capsys.readouterr().err
    # Gone: its split cannot be scored; held-out data still can, and with the baseline, which
    # the model keeps (the Gaussian train() fitted, not the file read again).
    (tmp_path / "d.npy").unlink()
    assert main(["eval", "--model", str(tmp_path / "run")]) == 2
    assert "no longer there" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "held.npy"),
                 "--json", str(tmp_path / "gone.json")]) == 0
    assert "no Gaussian baseline" not in capsys.readouterr().err
    assert json.loads((tmp_path / "gone.json").read_text())["gaussian_nll"] == scored["gaussian_nll"]
    # A model without the kept fit needs the file: a note says why there is no baseline.
    assert main(["eval", "--model", str(tmp_path / "old.pt"), "--data", str(tmp_path / "held.npy"),
                 "--json", str(tmp_path / "old.json")]) == 0
    assert "no Gaussian baseline" in capsys.readouterr().err
    assert "gaussian_nll" not in json.loads((tmp_path / "old.json").read_text())


def test_samples_of_a_csv_model_carry_its_header(tmp_path, capsys):
    data = jkofast.datasets.toy("8gaussians", 1000, seed=1)
    (tmp_path / "d.csv").write_text('price,"size, m2"\n' + "\n".join(f"{a},{b}" for a, b in data))
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run"), "--budget", "quick",
                 "--iters", "5", "--blocks", "1", "--no-progress", "--no-plot"]) == 0
    assert jkofast.Flow.load(tmp_path / "run").info["columns"] == ["price", "size, m2"]
    assert main(["sample", "--model", str(tmp_path / "run"), "--n", "7", "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == 'price,"size, m2"'
    assert jkofast.datasets.load_array(tmp_path / "s.csv").shape == (7, 2)   # read back: a header, 7 rows
    # a DataFrame's names too, through the library
    pd = pytest.importorskip("pandas")
    flow = jkofast.train(pd.DataFrame(data, columns=["a", "b"]), budget="quick", iters=2, blocks=1, progress=False)
    assert flow.info["columns"] == ["a", "b"]
    for unnamed in (None, ["x", 2]):  # default labels 0, 1 (and a number among names) would read as data
        flow = jkofast.train(pd.DataFrame(data, columns=unnamed), budget="quick", iters=2, blocks=1, progress=False)
        assert "columns" not in flow.info
    # a header-less file records none, and its samples have no header line
    np.savetxt(tmp_path / "bare.csv", data, delimiter=",")
    assert jkofast.datasets.column_names(tmp_path / "bare.csv") is None
    assert jkofast.datasets.column_names(tmp_path / "x.npy") is None


def test_errors_are_messages_not_tracebacks(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["train", "--data", "no-such-set", "--out", str(tmp_path / "x")]) == 2
    assert "neither a built-in data set" in capsys.readouterr().err
    for garbage in (b"garbage", b"hello"):  # b"hello" made torch's loader raise a bare KeyError
        (tmp_path / "bad.pt").write_bytes(garbage)
        assert main(["eval", "--model", str(tmp_path / "bad.pt")]) == 2
        assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["sample", "--model", str(run_dir), "--n", "5", "--out", str(tmp_path / "s.txt")]) == 2
    assert "as .npy or .csv" in capsys.readouterr().err and not list(tmp_path.glob("s.txt*"))
    assert main(["sample", "--model", str(run_dir), "--n", "5", "--out", str(tmp_path / "s.NPY")]) == 0
    assert np.load(tmp_path / "s.NPY").shape == (5, 2) and not (tmp_path / "s.NPY.npy").exists()
    bad_devices = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad_devices:
        assert main(["train", "--data", "moons", "--out", str(tmp_path / "d"), *SMALL, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --device={device!r}") and "Traceback" not in err, err
        assert main(["eval", "--model", str(run_dir), "--device", device]) == 2
        assert "not a readable checkpoint" not in capsys.readouterr().err
    # a file too small for the 80/10/10 split: the advice is one the command line can follow
    np.savetxt(tmp_path / "tiny.csv", np.ones((5, 2)), delimiter=",")
    assert main(["train", "--data", str(tmp_path / "tiny.csv"), "--out", str(tmp_path / "t"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has 5 row(s)" in err and "needs at least 10 rows" in err and "test_fraction" not in err, err
    # an output file that cannot be written is refused before the evaluation runs
    assert main(["eval", "--model", str(run_dir), "--json", str(tmp_path), "--mmd-points", "0"]) == 2
    out, err = capsys.readouterr()
    assert "is a folder; pass a file name" in err and "test NLL" not in out, (out, err)
    # an operating system's refusal while writing (a full disk) is a message too
    import errno
    from jkofast.cli import commands

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.json"))

    monkeypatch.setattr(commands, "write_json", full_disk)
    assert main(["eval", "--model", str(run_dir), "--json", str(tmp_path / "m.json"), "--mmd-points", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 28] No space left on device") and "Traceback" not in err, err


def test_a_mistyped_option_is_refused_before_the_data_is_read(tmp_path, capsys):
    # The data file does not exist: read first, it would end the command with its own error.
    absent = str(tmp_path / "absent.csv")
    assert main(["train", "--data", absent, "--out", str(tmp_path / "o"), "--blocks", "0"]) == 2
    assert capsys.readouterr().err == "error: --blocks must be an integer >= 1, got 0\n"
    out = str(tmp_path / "o")
    assert main(["train", "--data", absent, "--out", out, "--method", "interpolant", "--rounds", "2"]) == 2
    assert capsys.readouterr().err == ("error: --rounds does not apply to --method interpolant (the methods that "
                                       "take it: --rounds: jko-flow)\n")
    assert main(["train", "--data", absent, "--out", out, "--method", "jko-flow", "--probes", "2", "--time-beta", "1",
                 "2"]) == 2
    assert capsys.readouterr().err == ("error: --probes, --time-beta do not apply to --method jko-flow (the methods "
                                       "that take them: --probes: jko-iflow; --time-beta: interpolant)\n")
    assert not (tmp_path / "o").exists()


def test_under_torchrun_an_error_of_every_rank_is_printed_once(tmp_path, monkeypatch, capsys):
    from jkofast import distributed
    from jkofast.cli import parser, process
    from jkofast.distributed import DistributedError

    waits = []

    def stopped_while_waiting():  # what torchrun does to the other ranks once rank 0 has printed and exited
        waits.append(1)
        return False

    monkeypatch.setattr(process, "_rank0_had_time_to_print", stopped_while_waiting)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    shared = distributed.raised_on_every_rank(ValueError("the same on every rank"))
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        process._print_error(shared)
        process._print_error(ValueError("this rank's own"))
        process._print_error(DistributedError(f"rank {rank} of 2: a reduction failed"))  # named once, not twice
    assert capsys.readouterr().err == ("error: the same on every rank\nerror (rank 0 of 2): this rank's own\n"
                                       "error: rank 0 of 2: a reduction failed\n"
                                       "error (rank 1 of 2): this rank's own\nerror: rank 1 of 2: a reduction failed\n")
    assert len(waits) == 1  # rank 1 waited for rank 0 to print the shared one
    monkeypatch.setattr(process, "_rank0_had_time_to_print", lambda: True)  # rank 0 did not end the run in time:
    process._print_error(shared)                                            # rank 1 says it, named
    assert capsys.readouterr().err == "error (rank 1 of 2): the same on every rank\n"
    # The command line's option check is marked where one torchrun started every rank (it runs
    # before the process group is joined, so these variables alone make a rank here).
    monkeypatch.setattr(process, "_rank0_had_time_to_print", stopped_while_waiting)
    bad = ["train", "--data", "moons", "--out", str(tmp_path / "o"), "--blocks", "0"]
    assert main(bad) == 2 and capsys.readouterr().err == "" and len(waits) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # another host's torchrun: its own command line, its own error
    assert main(bad) == 2
    assert capsys.readouterr().err == "error (rank 1 of 2): --blocks must be an integer >= 1, got 0\n"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(bad) == 2 and capsys.readouterr().err == "error: --blocks must be an integer >= 1, got 0\n"
    # a method that trains in one process is refused before the data is read (here there is none)
    absent = str(tmp_path / "absent.csv")
    assert main(["train", "--data", absent, "--out", str(tmp_path / "o"), "--method", "interpolant"]) == 2
    assert "method 'interpolant' trains in one process" in capsys.readouterr().err
    # our refusals that end the command (SystemExit "error: ..."): named by rank under torchrun
    def refused(args):
        raise SystemExit("error: --data power reads your copy of the MAF files")

    monkeypatch.setattr(parser, "cmd_train", refused)
    monkeypatch.setenv("RANK", "1")
    assert main(bad) == 2
    assert capsys.readouterr().err == "error (rank 1 of 2): --data power reads your copy of the MAF files\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(bad) == 2   # status 2, as every refusal of the command as given
    assert capsys.readouterr().err == "error: --data power reads your copy of the MAF files\n"


def test_a_rank_waiting_for_rank_0_leaves_quietly_when_stopped(monkeypatch):
    import signal
    import time

    from jkofast.cli import process

    monkeypatch.setattr(process, "RANK0_PRINTS_WITHIN_S", 0.0)
    start = time.monotonic()
    assert process._rank0_had_time_to_print() and time.monotonic() - start < 5  # (the constant is what it waits)
    monkeypatch.setattr(process, "RANK0_PRINTS_WITHIN_S", 60.0)

    def interrupted(signum, frame):  # Ctrl-C (or torchrun's SIGTERM under _sigterm_raises) mid-wait
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGALRM, interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        start = time.monotonic()
        assert not process._rank0_had_time_to_print() and time.monotonic() - start < 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_out_of_memory_is_a_message(tmp_path, monkeypatch, capsys):
    from jkofast.cli import train_command

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_command, "train", out_of_memory)
    assert main(["train", "--data", "moons", "--out", str(tmp_path / "o"), *SMALL]) == 1
    assert capsys.readouterr().err == ("error: CUDA out of memory. Tried to allocate 2.00 GiB\n"
                                       "(a smaller --batch or --hidden needs less memory)\n")


def test_no_earlier_output_sits_beside_a_run_that_replaces_it(run_dir, tmp_path, monkeypatch):
    from jkofast.cli import train_command

    report = {"samples.npy", "plot.png", "metrics.json"}
    # A finished run done again: once train() has saved its model, the earlier report goes, so
    # an interrupted report leaves no metrics.json that reads as this model's.
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "evaluate", interrupted)
    assert main(["train", "--data", "moons", "--out", str(again), *SMALL]) == 130
    names = {p.name for p in again.iterdir()}
    assert not names & report and {"model.pt", "log.json", "checkpoint.pt"} <= names
    # --restart: the earlier run's model, log, checkpoint and report go before training starts
    restarted = tmp_path / "restarted"
    shutil.copytree(run_dir, restarted)
    nan_rows = np.full((50, 2), np.nan)
    with pytest.raises(ValueError, match="NaN"):  # a failure after the start: nothing old is left
        jkofast.train(nan_rows, out=restarted, resume=False, budget="quick", progress=False)
    assert not {p.name for p in restarted.iterdir()} & {"model.pt", "log.json", "checkpoint.pt"}
    shutil.rmtree(restarted)
    shutil.copytree(run_dir, restarted)
    monkeypatch.setattr(train_command, "train", interrupted)
    assert main(["train", "--data", "moons", "--out", str(restarted), *SMALL, "--restart"]) == 130
    assert not {p.name for p in restarted.iterdir()} & report


def test_interrupted_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from jkofast.cli import process, train_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "train", interrupted)
    out = tmp_path / "r"
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 130
    assert "holds no checkpoint yet" in capsys.readouterr().err
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 130
    assert "the same command resumes from it" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL, "--restart"]) == 130
    assert "the same command without --restart resumes" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # torchrun stops every rank: rank 0 alone says so
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 130
    assert "interrupted" not in capsys.readouterr().err
    process._note("said by rank 0 only")             # notes likewise (eval's, under torchrun)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("RANK")
    process._note("said by rank 0 only")
    assert capsys.readouterr().err == "jkofast: note: said by rank 0 only\n"
    # the command line's notes handler is gone afterwards: a host process's logging is its own
    import logging
    log = logging.getLogger("jkofast")
    log.setLevel(logging.WARNING)
    assert main(["train", "--data", "moons", "--out", str(out), *SMALL]) == 130
    assert log.propagate and log.level == logging.WARNING and not log.handlers
    log.setLevel(logging.NOTSET)


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "jkofast", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"jkofast {jkofast.__version__}"


def test_restart_ignores_the_checkpoint(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "moons"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--data", "moons", "--out", str(copy), *SMALL, "--no-plot", "--restart"]) == 0
    log = json.loads((copy / "log.json").read_text())
    assert log["resumed"] is False and len(log["blocks"]) >= 1


def test_a_run_resumed_with_another_data_file_names_the_file_it_was_trained_on(tmp_path, capsys):
    for name, seed in (("first.npy", 1), ("second.npy", 2)):
        np.save(tmp_path / name, jkofast.datasets.toy("moons", 400, seed=seed).astype(np.float64))
    run = str(tmp_path / "run")
    assert main(["train", "--data", str(tmp_path / "first.npy"), "--out", run, *SMALL, "--no-plot"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "second.npy"), "--out", run, *SMALL, "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "different training data" in err
    assert f"the run in {run} was trained on {tmp_path / 'first.npy'}, this command names {tmp_path / 'second.npy'}" in err


@pytest.mark.parametrize("method", ["jko-iflow", "interpolant"])   # (sharded and in-memory data paths)
def test_a_data_warning_names_the_file(method, tmp_path):
    data = np.random.default_rng(0).integers(0, 10, size=(400, 2)).astype(np.float64)   # whole numbers
    np.save(tmp_path / "counts.npy", data)
    with pytest.warns(jkofast.JkofastWarning) as warned:
        assert main(["train", "--data", str(tmp_path / "counts.npy"), "--out", str(tmp_path / "run"), "--method",
                     method, "--budget", "quick", "--iters", "2", "--no-progress", "--no-plot", "--samples", "10"]) == 0
    said = f"x ({tmp_path / 'counts.npy'}) column(s) [0, 1] hold whole numbers only"
    assert any(str(w.message).startswith(said) for w in warned), [str(w.message) for w in warned]


def test_train_into_a_folder_of_ones_own_files_is_refused_before_the_data_is_read(tmp_path, capsys):
    # A plot.png of one's own beside no checkpoint: refused, untouched; --restart replaces it.
    (tmp_path / "plot.png").write_text("mine")
    missing = str(tmp_path / "no-such-data.npy")
    assert main(["train", "--data", missing, "--out", str(tmp_path), *SMALL]) == 2
    assert "holds plot.png but no checkpoint.pt" in capsys.readouterr().err
    assert (tmp_path / "plot.png").read_text() == "mine"
    assert main(["train", "--data", "moons", "--out", str(tmp_path), *SMALL, "--no-plot", "--restart"]) == 0
    assert not (tmp_path / "plot.png").exists()   # (--no-plot: the earlier report's plot is gone)


def test_train_help_says_what_each_option_does(capsys):
    from jkofast.cli import options

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in [*options._TRAIN_OPTIONS, *options._METHOD_OPTIONS]:
        assert flag in options._HELP, f"--{flag} has no description"
        assert " ".join(options._HELP[flag].split()) in text
    # Options the error messages name (clip, standardize, h_max, reparam_eta, val_every) have flags.
    assert all(f"--{f}" in text for f in ("clip", "no-standardize", "h-max", "reparam-eta", "val-every"))
    with pytest.raises(SystemExit) as exc:   # a misspelt choice fails at once, listing the valid ones
        main(["train", "--data", "moons", "--out", "x", "--divergence", "hutch"])
    err = capsys.readouterr().err   # (the quoting of the choices varies with the Python version)
    assert exc.value.code == 2 and "invalid choice: 'hutch'" in err and "hutchinson" in err


def test_plot_draws_a_random_subset_of_the_data(tmp_path, monkeypatch):
    from jkofast.plotting import plot_flow

    flow = jkofast.Flow(2, dict(hidden=4, layers=1))
    data = np.sort(np.random.default_rng(0).normal(size=(20_000, 2)), axis=0)   # a sorted file
    seen = {}
    real = flow.trajectory

    def spy(x, **kw):
        seen["x"] = x
        return real(x, **kw)

    monkeypatch.setattr(flow, "trajectory", spy)
    plot_flow(flow, data, tmp_path / "p.png", n_points=500)
    x = seen["x"][:, 0].numpy()
    assert len(x) == 500 and x.min() < -2 and x.max() > 2   # spans the data, not its first 500 rows


def test_plot_flow_refuses_other_formats_seeds_its_samples_and_replaces_the_file_whole(tmp_path, monkeypatch):
    import matplotlib.figure

    from jkofast.plotting import plot_flow

    flow = jkofast.Flow(2, dict(hidden=4, layers=1))
    data = np.random.default_rng(0).normal(size=(200, 2))
    with pytest.raises(ValueError, match=r"end the name in one of \['.png', '.pdf', '.svg'\]"):
        plot_flow(flow, data, tmp_path / "p.jpg", resolution=10)
    seeds, real_sample = [], flow.sample
    monkeypatch.setattr(flow, "sample", lambda n, generator=None, **kw: (seeds.append(generator.initial_seed()),
                                                                         real_sample(n, generator=generator, **kw))[1])
    plot_flow(flow, data, tmp_path / "p.png", resolution=10, seed=7)
    assert seeds == [7]
    good = (tmp_path / "p.png").read_bytes()

    def stopped(self, fname, **kwargs):   # a SIGTERM halfway through writing the picture
        with open(fname, "wb") as f:
            f.write(good[:100])
        raise KeyboardInterrupt
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", stopped)
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    with pytest.raises(KeyboardInterrupt):
        plot_flow(flow, data, tmp_path / "p.png", resolution=10)
    assert (tmp_path / "p.png").read_bytes() == good and sorted(os.listdir(tmp_path)) == ["p.png"]
    assert plt.get_fignums() == before   # the failed save's figure is closed, not left open in pyplot


@pytest.mark.parametrize("blocks, shown", [(6, [0, 1, 2, 3, 4, 5, 6]), (9, [0, 2, 3, 4, 6, 8, 9])])
def test_the_plot_shows_every_block_of_the_default_six(blocks, shown, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from conftest import random_flow
    from jkofast.plotting import plot_flow

    titles = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (titles.extend(a.get_title() for a in fig.axes), real_close(fig)))
    plot_flow(random_flow(dim=2, blocks=blocks), np.random.default_rng(0).normal(size=(300, 2)), tmp_path / "p.png",
              resolution=20)
    want = ["data", "samples", "density", "standardized data", *(f"after block {k}" for k in shown[1:])]
    assert titles == want


def test_counts_and_outputs_are_checked_before_any_work(run_dir, tmp_path, capsys):
    """Refused as the command line is read, or before the data and the model are: a count
    below its least value (--samples -1 met its check after training, and the earlier report
    was deleted by then), an empty --out (Path("") is the current folder), an option given as a
    prefix (--restar started over), an output file that cannot be written (a folder, an
    unknown ending)."""
    absent = str(tmp_path / "absent.csv")   # read first, it would end the command with its own error
    for flag, value in (("--samples", "-1"), ("--n-test", "0"), ("--n-train", "0")):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--data", absent, "--out", str(tmp_path / "o"), flag, value])
        assert stop.value.code == 2 and f"{flag}: must be an integer >= 1, got {value}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", absent, "--out", str(tmp_path / "o"), "--restar"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --restar" in err and err.startswith("usage: jkofast train ")  # train's usage
    with pytest.raises(SystemExit):
        main(["--restar", "eval", "--model", str(run_dir)])
    err = capsys.readouterr().err   # given before the command: the top level's usage
    assert "unrecognized arguments: --restar" in err and err.startswith("usage: jkofast [-h]")
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(run_dir), "--mmd-points", "-5"])
    assert "--mmd-points: must be an integer >= 0" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--out", "", "--budget", "quick"]) == 2
    assert "error: --out is empty; pass a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["plot", "--model", str(run_dir), "--out", str(tmp_path / "p.txt")]) == 2
    assert "plots are written as .png, .pdf or .svg" in capsys.readouterr().err
    assert main(["sample", "--model", str(run_dir), "--out", ""]) == 2
    assert "--out is empty; pass a file name" in capsys.readouterr().err
    assert main(["sample", "--model", str(run_dir), "--n", "5", "--out", str(tmp_path / "S.NPY")]) == 0  # any case
    assert np.load(tmp_path / "S.NPY").shape == (5, 2)


def test_outputs_go_into_folders_made_for_them(run_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(run_dir), "--n", "5", "--out", str(tmp_path / "new" / "s.npy")]) == 0
    assert np.load(tmp_path / "new" / "s.npy").shape == (5, 2)
    assert main(["plot", "--model", str(run_dir), "--n-test", "200", "--out", str(tmp_path / "fig" / "p.svg")]) == 0
    assert (tmp_path / "fig" / "p.svg").read_text().lstrip().startswith("<?xml")


def test_one_test_point_gives_the_note_and_strict_json(run_dir, tmp_path, capsys):
    """With one test point the paired gap has no standard error (NaN): the flow is not shown
    to beat the Gaussian, and the JSON report holds null there (RFC 8259 has no NaN)."""
    np.save(tmp_path / "one.npy", np.array([[0.5, 0.25]]))
    assert main(["eval", "--model", str(run_dir), "--data", str(tmp_path / "one.npy"), "--mmd-points", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert "the flow does not clearly beat it" in capsys.readouterr().out

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    metrics = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert metrics["nll_steps3"]["se"] is None and metrics["gaussian_nll"]["minus_flow_steps3"]["se"] is None
    assert np.isfinite(metrics["nll_steps3"]["mean"])


def test_an_unfinished_run_folder_says_how_to_finish_it(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "checkpoint.pt", unfinished / "checkpoint.pt")
    assert main(["eval", "--model", str(unfinished)]) != 0
    err = capsys.readouterr().err
    assert "holds no model.pt yet: its training has not finished" in err and "resume and finish it" in err


def test_held_out_data_of_another_width_is_named(run_dir, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((20, 3)))
    assert main(["eval", "--model", str(run_dir), "--data", str(tmp_path / "wide.npy")]) == 2
    assert f"--data {str(tmp_path / 'wide.npy')!r} has 3 column(s); the model was trained on 2" in capsys.readouterr().err


def test_jkofast_warnings_are_notes_on_the_command_line(run_dir, tmp_path, capsys):
    """jkofast's own warnings print as 'jkofast: warning:' lines (not a source location and
    line of jkofast's code), and stay warnings for whoever records them (pytest.warns)."""
    rows = np.random.default_rng(0).normal(size=(20, 2))
    (tmp_path / "held.csv").write_text("0,1\n" + "\n".join(f"{a!r},{b!r}" for a, b in rows.tolist()) + "\n")
    command = ["eval", "--model", str(run_dir), "--data", str(tmp_path / "held.csv"), "--mmd-points", "0"]
    shown = subprocess.run([sys.executable, "-m", "jkofast", *command], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "jkofast: warning: the first line of" in shown.stderr, shown.stderr
    assert "UserWarning" not in shown.stderr and "warnings.warn" not in shown.stderr, shown.stderr
    with pytest.warns(UserWarning, match="is read as a header"):   # in-process, recorded as ever
        assert main(command) == 0


def test_a_warning_from_jkofasts_files_is_a_note_whatever_its_category():
    """Warnings raised in jkofast's own files (a plain UserWarning from numpy's or torch's call
    into ours included) are notes; those from anywhere else keep Python's format."""
    import warnings

    import jkofast.flow
    from jkofast.cli import process

    with process._notes_on_stderr():
        ours = warnings.formatwarning("careful", UserWarning, jkofast.flow.__file__, 7)
        theirs = warnings.formatwarning("careful", UserWarning, np.__file__, 7)
    assert ours == "jkofast: warning: careful\n"
    assert theirs.startswith(np.__file__) and "UserWarning: careful" in theirs, theirs
    assert warnings.formatwarning("careful", UserWarning, jkofast.flow.__file__, 7) != ours  # restored


def test_a_quoted_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """--out '~/runs/m' (quoted: the shell left the ~) writes under the home folder, every file of
    the run, not into a folder named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "moons", "--out", "~/runs/m", *SMALL, "--no-plot", "--blocks", "1"]) == 0
    assert {"model.pt", "metrics.json", "samples.npy"} <= {p.name for p in (tmp_path / "home" / "runs" / "m").iterdir()}
    assert not (tmp_path / "~").exists()


def test_the_refusal_of_other_data_says_what_else_chooses_the_rows(tmp_path):
    from jkofast.cli.data_spec import _what_sets_the_rows

    run = tmp_path / "run"
    run.mkdir()
    npy, csv = str(tmp_path / "d.npy"), str(tmp_path / "d.csv")
    file = {"file_bytes": 10, "file_mtime_ns": 1}
    assert "chosen by --n-train/--n-val/--n-test" in _what_sets_the_rows({"name": "moons", "seed": 0}, run)
    assert "is read whole here" in _what_sets_the_rows({"name": npy, **file}, run)
    assert "is memory-mapped here" in _what_sets_the_rows({"name": npy, "mmap": True, **file}, run)
    assert _what_sets_the_rows({"name": csv, **file}, run) == f"has {csv} changed since the run started?"
    (run / "log.json").write_text(json.dumps({"data": {"name": npy}}))   # the run names its own data first
    assert _what_sets_the_rows({"name": csv, **file}, run) == \
        f"the run in {run} was trained on {npy}, this command names {csv}"
    assert "is read whole here" in _what_sets_the_rows({"name": npy, **file}, run)   # the same data: what else


def test_sizes_given_for_a_set_with_fixed_splits_are_said_to_be_ignored(tmp_path):
    import argparse

    from jkofast.cli.data_spec import _ignored_sizes

    given = argparse.Namespace(n_train=100, n_val=None, n_test=50)
    assert _ignored_sizes(given, {"name": "moons"}) is None               # a 2-D set: they size its draw
    assert _ignored_sizes(argparse.Namespace(n_train=None, n_val=None, n_test=None), {"name": "power"}) is None
    said = _ignored_sizes(given, {"name": str(tmp_path / "d.npy")})
    assert said == f"--n-train/--n-test ignored: they size the draws of the 2-D sets and patches; {tmp_path / 'd.npy'} " \
                   "is split 80/10/10 by --seed"
    assert _ignored_sizes(given, {"name": "power"}).endswith("power has fixed splits")


def test_a_checkpoint_that_does_not_read_says_how_to_go_on(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_text("not a checkpoint")
    assert main(["train", "--data", "moons", "--out", str(tmp_path / "run"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and err.rstrip().endswith("(pass --restart to start over, or choose another --out)")
