"""Step sizes, the time reparametrization and the block split used by the refinement."""
import math

import pytest
import torch

from jkofast import rk4
from jkofast.schedule import reparametrized_step_sizes, split_block, step_sizes
from conftest import random_field


def test_official_schedule():
    want = [0.25, 0.35, 0.49, 0.686, 0.9604, 1.34456, 1.882384, 2.6353376]
    assert step_sizes(8, 0.25, 1.4) == pytest.approx(want)
    assert max(step_sizes(8, 0.25, 1.4, h_max=1.0)) == 1.0


def test_reparametrization_equalises_movement():
    h, movement = [1.0, 1.0, 1.0], [3.0, 1.0, 0.5]
    full = reparametrized_step_sizes(h, movement, eta=1.0)
    assert sum(full) == pytest.approx(3.0)                       # total time kept
    # W_k proportional to h_k: the new movements W_k * h'_k / h_k are all equal.
    moved = [w * hn / ho for w, hn, ho in zip(movement, full, h)]
    assert max(moved) == pytest.approx(min(moved))
    assert reparametrized_step_sizes(h, movement, eta=0.0) == h
    half = reparametrized_step_sizes(h, movement, eta=0.5)
    assert half == pytest.approx([(a + b) / 2 for a, b in zip(h, full)])
    # Already even: nothing changes. Free blocks keep h = inf and stay out of the total.
    assert reparametrized_step_sizes([0.5, 1.0], [1.0, 1.0]) == pytest.approx([0.5, 1.0])
    out = reparametrized_step_sizes([1.0, 1.0, math.inf], [2.0, 1.0, 5.0], eta=1.0)
    assert out[2] == math.inf and sum(out[:2]) == pytest.approx(2.0)
    # The formula itself, on a slow block (1/20 of the other's movement): scores 1 and 20 share T = 2.
    assert reparametrized_step_sizes([1.0, 1.0], [1.0, 0.05], eta=1.0) == pytest.approx([2 / 21, 40 / 21], rel=1e-12)
    # A block that did not move has its movement floored at 1e-12 + 1e-6 of the largest: a finite share.
    floor = 1e-12 + 1e-6
    assert reparametrized_step_sizes([1.0, 1.0], [1.0, 0.0], eta=1.0) == pytest.approx(
        [2 / (1 + 1 / floor), 2 / floor / (1 + 1 / floor)], rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        reparametrized_step_sizes([1.0], [1.0, 2.0])


@pytest.mark.parametrize("h0,growth,h_max", [(0.0, 1.4, 1.0), (0.25, 0.0, 1.0), (0.25, -1.4, 1.0), (0.25, 1.4, 0.0)])
def test_step_sizes_refuse_a_non_positive_setting(h0, growth, h_max):
    # growth = 0 gave [h0, 0, 0, ...]: blocks with h = 0, whose transport weight 1/(2h) is infinite.
    with pytest.raises(ValueError, match="must be positive"):
        step_sizes(4, h0, growth, h_max)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_reparametrization_refuses_a_damping_outside_0_1(eta):
    # eta > 1 overshoots the equalising steps: a slow block's h could turn negative.
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        reparametrized_step_sizes([1.0, 1.0], [3.0, 1.0], eta=eta)


@pytest.mark.parametrize("time", [True, False])
def test_split_block_reproduces_parent(time):
    # Two children with S steps each are the parent with 2S steps, stage for stage.
    parent = random_field(3, 16, 2, "softplus", time=time)
    first, second = split_block(parent)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    x_par, ld_par, ke_par = rk4(parent, x0, 0.0, 1.0, 6)
    x_mid, ld1, ke1 = rk4(first, x0, 0.0, 1.0, 3)
    x_end, ld2, ke2 = rk4(second, x_mid, 0.0, 1.0, 3)
    torch.testing.assert_close(x_end, x_par, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld1 + ld2, ld_par, rtol=1e-12, atol=1e-12)
    # Kinetic energy halves per child: int |f/2|^2 du over unit time = (1/2) int |f|^2 ds.
    torch.testing.assert_close(2 * (ke1 + ke2), ke_par, rtol=1e-12, atol=1e-12)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(parent.parameters(), first.parameters()))
