"""The compiled CPU ops split a batch into tiles over torch's intra-op threads (at::parallel_for).

The other op tests use batches of at most a few tiles, which one thread may take whole; here the
batch spans many tiles, so every op's forward and backward really runs on several threads. Each
thread accumulates its own share of the weight gradients, summed in a fixed order afterwards: the
result must not depend on the thread count beyond rounding (float64, 1e-12 relative: the same
sums in another grouping) and must repeat bit for bit at a fixed thread count.
"""
from __future__ import annotations

import sys

import pytest
import torch

from jkofast import _backend
from jkofast.divergence import divergence
from jkofast.integrate import rk4
from jkofast.jko_loss import block_loss
from _op_cases import field_case, leaf_copies

pytestmark = pytest.mark.skipif(not _backend.compiled_available(), reason="needs the compiled extension")

BATCH = 1500  # about a dozen tiles of at most 128 samples for the small field below


def _all_ops(field, x):
    """Every op's outputs and gradients (field, field + divergence, rk4 block, fused loss)."""
    params = list(field.parameters())
    out = []
    xs = leaf_copies([x])[0]
    v, div = divergence(field, xs, 0.3, method="exact", backend="compiled")
    out += [v, div, *torch.autograd.grad((v.sin().sum() + div.sum()), [xs, *params])]
    xs = leaf_copies([x])[0]
    x1, logdet, kinetic = rk4(field, xs, 0.0, 1.0, 3, backend="compiled")
    out += [x1, logdet, kinetic, *torch.autograd.grad(x1.square().sum() - logdet.sum() + kinetic.sum(),
                                                      [xs, *params])]
    xs = leaf_copies([x])[0]
    loss, _ = block_loss(field, xs, 0.5, 3, backend="compiled")
    out += [loss, *torch.autograd.grad(loss, [xs, *params])]
    return [o.detach() for o in out]


def _with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_linux_builds_use_openmp():
    """at::parallel_for's OpenMP pragma is compiled into our objects: without -fopenmp every op
    call silently runs on one thread (the build before this test existed did)."""
    build = _backend.EXTENSION.build_info or {}
    if sys.platform.startswith("linux"):
        assert build.get("cpu_threads") is True, build


def test_ops_agree_across_thread_counts_and_repeat_exactly():
    field, x, _, _ = field_case(dim=3, hidden=16, layers=2, activation="softplus", time=True, batch=BATCH)
    one = _with_threads(1, lambda: _all_ops(field, x))
    two = _with_threads(2, lambda: _all_ops(field, x))
    again = _with_threads(2, lambda: _all_ops(field, x))
    for i, (a, b, c) in enumerate(zip(one, two, again)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=f"output {i}: 2 threads vs 1")
        assert torch.equal(b, c), f"output {i}: two runs on 2 threads differ"
    # and the second thread really took tiles: the weight-gradient sums were grouped differently, so
    # some output moved in its last bits (an op that ignored the threads would repeat 1 thread's bits)
    assert any(not torch.equal(a, b) for a, b in zip(one, two)), "2 threads gave 1 thread's bits exactly"
