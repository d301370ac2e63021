"""Shared test setup: the `cuda` marker skips without a GPU; nothing else skips."""
from __future__ import annotations

import pytest
import torch

from jkofast import Field


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    # Every test starts from the same global RNG state, so a failure reproduces when run alone.
    torch.manual_seed(1234)
    yield


def random_field(dim, hidden=16, layers=3, activation="softplus", time=True, beta=1.0, dtype=torch.float64):
    """A VelocityField with weights large enough that every layer is far from linear."""
    from jkofast import VelocityField

    field = VelocityField(dim, hidden, layers, activation, time=time, beta=beta).to(dtype)
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0.0, 0.7)
    return field


def random_flow(dim=2, blocks=2, steps=3, dtype=torch.float64, hidden=16, layers=2, scale_weights=0.3):
    """A Flow with random (mild) blocks and a non-trivial standardization."""
    from jkofast import Flow

    flow = Flow(dim, dict(hidden=hidden, layers=layers), steps=steps,
                loc=torch.linspace(-1, 1, dim), scale=torch.linspace(0.5, 2.0, dim))
    for k in range(blocks):
        field = flow.new_field()
        with torch.no_grad():
            for p in field.parameters():
                p.normal_(0.0, scale_weights)
        flow.add_block(field, 0.5 * (k + 1))
    return flow.to(dtype)


@pytest.fixture(scope="session")
def moons():
    """Two moons: (train, val, test) tensors, float32."""
    import jkofast

    return tuple(torch.as_tensor(a) for a in jkofast.datasets.get("moons", 4000, 1000, 4000, seed=0))


@pytest.fixture(scope="session")
def trained_moons(moons, tmp_path_factory):
    """A flow trained briefly on two moons (a few seconds), shared by the tests that need one."""
    import jkofast

    out = tmp_path_factory.mktemp("moons_run")
    flow = jkofast.train(moons[0], val=moons[1], out=out, progress=False, **SHORT_RUN)
    return flow, out


# The short CPU run the training tests share: small enough for CI (seconds), long enough to
# learn the two moons' shape (see test_training.py for the thresholds this must meet).
SHORT_RUN = dict(blocks=4, hidden=32, layers=2, iters=150, batch=500, lr=5e-3, eval_steps=None, seed=0, stop_tol=0.0)


class CodeRunningPickle:
    """Unpickling this creates the file ``marker``: proof that a loader would have run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class LinearField(Field):
    """f(x, t) = A x: x(t) = expm(A t) x0 and log det = t tr(A) exactly; not the MLP, so the
    compiled ops cannot run it."""

    def __init__(self, a):
        super().__init__()
        self.dim, self.a = a.shape[0], a

    def forward(self, x, t):
        return x @ self.a.t()


def train_killed(monkeypatch, kill_at_call: int, *args, **kwargs) -> None:
    """jkofast.train(*args, **kwargs) killed (KeyboardInterrupt) on the kill_at_call-th block it
    trains, counting from 1 over every round: what a process killed there leaves behind."""
    import jkofast
    from jkofast import jko_iflow

    real = jko_iflow.JKOIFlowTrainer.train_block
    calls = {"n": 0}

    def dies(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == kill_at_call:
            raise KeyboardInterrupt("killed")
        return real(self, *a, **kw)

    monkeypatch.setattr(jko_iflow.JKOIFlowTrainer, "train_block", dies)
    try:
        with pytest.raises(KeyboardInterrupt):
            jkofast.train(*args, **kwargs)
    finally:
        monkeypatch.setattr(jko_iflow.JKOIFlowTrainer, "train_block", real)


def assert_same_flow(a, b, context=None) -> None:
    """Two trained flows are the same flow, bit for bit: the same step sizes h and the same
    tensors under the same keys (what "a resumed run equals the uninterrupted one" means)."""
    assert a.h == b.h, (context, a.h, b.h)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), context
    for key, p in sa.items():
        assert torch.equal(p, sb[key]), (context, key)


def backward_through(backward):
    """A wrapper of an op whose x first passes an identity with the gradient ``backward(g)``:
    a kernel whose backward alone is wrong (or fails, or sees something)."""
    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return backward(g)

    def wrap(op):
        def wrong(x, *args, **kwargs):
            return op(Identity.apply(x), *args, **kwargs)
        return wrong
    return wrap
