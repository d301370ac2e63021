"""Smoke test of an installed jkofast wheel, run by .ci/wheel_check in a fresh virtual
environment and from a scratch directory, so nothing of the checkout can be imported.

It checks that the wheel's own compiled ops load and run: `python -m jkofast.info` and
`jkofast info` report them; two JKO blocks train on two moons with backend="compiled" (a tiny
budget: this proves the install works, test_training.py judges the method); log_prob and sample
give finite results of the right shapes; a save/load round trip gives the same likelihood.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path


def main() -> None:
    start = time.perf_counter()
    import torch
    import jkofast
    from jkofast import _backend

    warnings.simplefilter("error", jkofast.CompiledExtensionWarning)  # no silent fallback to pure torch

    here = Path(jkofast.__file__).resolve()
    assert Path(sys.prefix).resolve() in here.parents, f"jkofast imported from {here}, not the test environment"
    assert _backend.compiled_available(), _backend.COMPILED_ERROR
    assert "cpu" in _backend.compiled_devices()

    for command in ([sys.executable, "-m", "jkofast.info"], [str(Path(sys.executable).with_name("jkofast")), "info"]):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        assert "compiled ops:    loaded; kernels for cpu" in out and f"running torch:   {torch.__version__}" in out, out
    print(out.rstrip())

    x_train, x_val, x_test = (torch.as_tensor(a) for a in jkofast.datasets.get("moons", 2000, 500, 1000, seed=0))
    flow = jkofast.train(x_train, val=x_val, blocks=2, hidden=16, layers=2, iters=30, batch=250,
                         stop_tol=0.0, progress=False, backend="compiled", out="run")
    assert flow.num_blocks == 2, flow.num_blocks
    logp = flow.log_prob(x_test, backend="compiled")
    assert logp.shape == (1000,) and torch.isfinite(logp).all()
    samples = flow.sample(500, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (500, 2) and torch.isfinite(samples).all()
    reloaded = jkofast.Flow.load("run")
    torch.testing.assert_close(reloaded.log_prob(x_test), logp)
    print(f"wheel_smoke: jkofast {jkofast.__version__} from {here.parent}: 2 blocks trained, test NLL "
          f"{-logp.mean():.3f} nats, 500 samples, save/load ok [{time.perf_counter() - start:.1f} s, "
          f"{os.cpu_count()} cpus]")


if __name__ == "__main__":
    main()
