"""JKO-Flow: OT-Flow's potential and its closed-form derivatives, the four-channel integrator, and
training in rounds (the KL term goes down, the result is a Flow that inverts and round-trips)."""
import json

import pytest
import torch
from torch.func import grad, hessian, jacrev, vmap

import jkofast
from conftest import assert_same_flow
from jkofast import Flow, rk4
from jkofast.ot_flow_loss import ot_flow_integrate, ot_flow_loss
from jkofast.ot_flow_model import OTFlowPotential

# A short run on two moons shared by several tests: 3 rounds of 60 steps (a few seconds). A
# small JKO step (alpha = 1) leaves each round work to do; with alpha = 10 the first round does
# nearly all of it (measured: KL terms 2.45, 2.32, 2.31).
ROUNDS = dict(rounds=3, alpha=1.0, hidden=16, iters=60, batch=256, steps=4, eval_steps=None, kl_points=1000,
              lr=2e-2, seed=0)


def random_potential(dim=3, hidden=7, layers=2, dtype=torch.float64):
    """An OT-Flow potential with weights large enough that every unit is far from linear."""
    phi = OTFlowPotential(dim, hidden=hidden, layers=layers).to(dtype)
    with torch.no_grad():
        for p in phi.parameters():
            p.normal_(0.0, 0.8)
    return phi


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_closed_form_derivatives_match_torch_func(layers):
    # Both sides are exact in exact arithmetic; in float64 they differ by rounding of a few
    # hundred operations on values of order 10 (measured: 4e-15), far below the 1e-10 tolerance,
    # while a wrong term (e.g. a missing residual step h or the quadratic part's trace) is O(1).
    phi = random_potential(layers=layers)
    x, t = torch.randn(8, 3, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    gx, dt, lap = phi.terms(x, t)
    f = lambda xi, ti: phi.potential(xi[None], ti[None])[0]  # noqa: E731
    hess = vmap(hessian(f))(x, t)
    torch.testing.assert_close(lap, hess.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, vmap(grad(f))(x, t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dt, vmap(grad(f, argnums=1))(x, t), rtol=1e-10, atol=1e-10)
    assert float(lap.detach().abs().min()) > 1e-2  # the comparison is not between zeros


def test_the_potential_is_ot_flows_resnet_with_its_initialisation():
    # Phi(s) = w^T u_M + |A s|^2 / 2 + b^T s + c with the residual step h = 1 / (M - 1), written
    # out for M = 3; a new potential starts as OT-Flow's does (w = 1, b = c = 0, A Xavier-uniform,
    # rank min(10, d + 1)): init="ot-flow" is this one.
    phi = random_potential(dim=2, hidden=5, layers=3)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    s = torch.cat([x, t.expand(4, 1)], 1)
    sigma = lambda z: torch.log(torch.exp(z) + torch.exp(-z))  # noqa: E731
    u = sigma(s @ phi.opening.weight.t() + phi.opening.bias)
    for layer in phi.residual:
        u = u + 0.5 * sigma(u @ layer.weight.t() + layer.bias)
    want = u @ phi.w + 0.5 * (s @ phi.A.t()).square().sum(1) + s @ phi.b + phi.c
    torch.testing.assert_close(phi.potential(x, t), want, rtol=1e-13, atol=1e-13)
    for dim, rank in ((2, 3), (20, 10)):
        new = OTFlowPotential(dim, hidden=6)
        assert new.rank == rank and new.A.shape == (rank, dim + 1)
        assert bool((new.w == 1).all()) and not new.b.any() and float(new.c.detach()) == 0.0
        assert float(new.A.detach().abs().max()) <= (6 / (rank + dim + 1)) ** 0.5
    assert OTFlowPotential(**OTFlowPotential(3, rank=2).config()).A.shape == (2, 4)   # config() rebuilds it


def test_field_is_minus_gradient_and_its_divergence():
    phi = random_potential()
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    v, div = phi.velocity_and_divergence(x, t)
    torch.testing.assert_close(v, -phi.terms(x, t)[0])
    # Autograd's trace of dv/dx (Field's default, via probes sqrt(d) e_j whose Hutchinson mean
    # is exactly the trace) agrees with the closed form.
    probes = (3 ** 0.5 * torch.eye(3, dtype=torch.float64)).expand(5, 3, 3)
    _, div_autograd = phi.velocity_and_divergence(x, t, probes)
    torch.testing.assert_close(div, div_autograd, rtol=1e-10, atol=1e-10)


def test_training_integrator_agrees_with_rk4():
    # x, log-det and transport cost of OT-Flow's integrator are what jkofast.rk4 computes
    # (its kinetic energy is twice the transport cost): same tableau, same stages.
    phi = random_potential(hidden=5)
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(0.5)
    x = torch.randn(6, 3, dtype=torch.float64)
    x1, logdet, cost, hjb = ot_flow_integrate(phi, x, steps=5)
    y1, ld, kinetic = rk4(phi, x, 0.0, 1.0, 5)
    torch.testing.assert_close(x1, y1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, ld, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(2 * cost, kinetic, rtol=1e-12, atol=1e-12)
    assert bool((hjb >= 0).all()) and float(hjb.detach().max()) > 0
    loss, parts = ot_flow_loss(phi, x, alpha=7.0, alpha_r=0.5, steps=5)
    torch.testing.assert_close(loss, parts["L"] + 7.0 * parts["C"] + 0.5 * parts["R"])


@pytest.mark.parametrize("b_t,want", [(1.0, 0.0), (3.0, 2.0), (0.0, 1.0)])
def test_hjb_residual_of_a_linear_potential(b_t, want):
    # Phi = x_1 + x_2 + b_t t (w = 0, A = 0): grad_x Phi = (1, 1), so |grad Phi|^2 / 2 = 1, and
    # d/dt Phi = b_t; R = int_0^1 |b_t - 1| dt exactly, at any number of steps. rk4 carries no R,
    # so only a closed form checks its terms (a sign or a factor on either is O(1) here).
    phi = OTFlowPotential(2, hidden=4).double()
    with torch.no_grad():
        phi.w.zero_()
        phi.A.zero_()
        phi.b.copy_(torch.tensor([1.0, 1.0, b_t], dtype=torch.float64))
    x = torch.randn(5, 2, dtype=torch.float64)
    for steps in (1, 3):
        x1, logdet, cost, hjb = ot_flow_integrate(phi, x, steps)
        torch.testing.assert_close(hjb, torch.full((5,), want, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(cost, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(x1, x - 1.0, rtol=0, atol=1e-12)
        torch.testing.assert_close(logdet, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def jko_flow_run(tmp_path_factory):
    train, val, test = (torch.as_tensor(a) for a in jkofast.datasets.get("moons", 2000, 1000, 2000, seed=0))
    out = tmp_path_factory.mktemp("jko_flow")
    flow = jkofast.train(train, "jko-flow", val=val, out=out, progress=False, **ROUNDS)
    return flow, out, test


def test_kl_term_decreases_over_rounds(jko_flow_run):
    flow, out, _ = jko_flow_run
    log = json.loads((out / "log.json").read_text())
    kl = [b["kl_term"] for b in log["blocks"]]
    val = [b["val_nll_standardized"] for b in log["blocks"]]
    # Each round is a JKO step: KL(p_k || q) <= KL(p_(k-1) || q) at the optimum, since the
    # identity map is a feasible step. Measured on this run: 2.52, 2.38, 2.32 (train; 2.52, 2.37,
    # 2.29 on validation; seed 1: 2.34, 2.30, 2.28); the standardized data under N(0, I) itself
    # scores 2.84. Strictly decreasing, 0.05 over the rounds, and round 1 below the identity.
    assert all(a > b for a, b in zip(kl, kl[1:])), kl
    assert kl[-1] < kl[0] - 0.05 and val[-1] < val[0] - 0.05 and kl[0] < 2.84 - 0.1, (kl, val)
    assert flow.num_blocks == 3 and flow.h == [1.0] * 3 and flow.block_kind == "ot-potential"
    assert flow.info["train_batches"] == 3 * ROUNDS["iters"]


def test_inverse_and_change_of_variables(jko_flow_run):
    flow, _, test = jko_flow_run
    x = test[:500]
    with torch.no_grad():
        z, _ = flow.transform(x, steps=32)
        # RK4 backwards is the inverse up to the scheme's O(h^4) error: small on a 32-step grid.
        assert float((flow.inverse(z, steps=32) - x).abs().max()) < 1e-4
    # log_prob is the change of variables of the map it integrates: compare with the exact
    # Jacobian determinant (torch.func) in float64 on a fine grid.
    # 32 steps: the integrated divergence equals the discrete map's log-det up to O(h^4) ~ 1e-8.
    flow64 = Flow.from_payload(flow.payload()).double()
    xs = x[:3].double()
    logp = flow64.log_prob(xs, steps=32)
    fwd = lambda xi: flow64.transform(xi[None], steps=32)[0][0]  # noqa: E731
    for i in range(3):
        want = -0.5 * fwd(xs[i]).square().sum() - torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64)) \
            + torch.linalg.slogdet(jacrev(fwd)(xs[i]))[1]
        torch.testing.assert_close(logp[i], want, rtol=0, atol=1e-7)


def test_save_load_round_trip(jko_flow_run, tmp_path):
    flow, _, test = jko_flow_run
    loaded = Flow.load(flow.save(tmp_path))
    assert loaded.block_kind == "ot-potential" and isinstance(loaded.blocks[0], OTFlowPotential)
    assert torch.equal(loaded.log_prob(test[:50]), flow.log_prob(test[:50]))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(loaded.sample(20, generator=g1), flow.sample(20, generator=g2))
    assert loaded.h == flow.h and loaded.info == flow.info


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, monkeypatch):
    from jkofast import jko_flow

    x = torch.as_tensor(jkofast.datasets.get("moons", 500, 10, 10, seed=1)[0])
    opts = dict(ROUNDS, iters=8)
    full = jkofast.train(x, "jko-flow", out=tmp_path / "full", progress=False, **opts)
    real, calls = jko_flow.JKOFlowTrainer.train_round, {"n": 0}

    def dies_in_round_3(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(jko_flow.JKOFlowTrainer, "train_round", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        jkofast.train(x, "jko-flow", out=tmp_path / "killed", progress=False, **opts)
    # log.json is refreshed with every checkpoint: it holds the two finished rounds
    assert len(json.loads((tmp_path / "killed" / "log.json").read_text())["blocks"]) == 2
    monkeypatch.setattr(jko_flow.JKOFlowTrainer, "train_round", real)
    resumed = jkofast.train(x, "jko-flow", out=tmp_path / "killed", progress=False, **opts)
    # The Adam state and the generator carried through the checkpoint: bit-identical weights.
    assert_same_flow(resumed, full)
    with pytest.raises(ValueError, match="alpha"):
        jkofast.train(x, "jko-flow", out=tmp_path / "killed", progress=False, **dict(opts, alpha=3.0))


def test_each_round_starts_from_the_last_potential_and_adams_state(tmp_path, monkeypatch):
    """Warm start (the default, as the paper's code does): round k starts from Phi_(k-1) as it was
    trained, and one Adam goes on over the rounds (its step count is the run's total)."""
    from jkofast import jko_flow

    x = torch.as_tensor(jkofast.datasets.get("moons", 500, 10, 10, seed=1)[0])
    opts = dict(ROUNDS, iters=5)
    real, starts = jko_flow.JKOFlowTrainer._start_potential, {}

    def recorded(self, k):
        potential = real(self, k)
        starts[k] = {name: v.clone() for name, v in potential.state_dict().items()}
        return potential

    monkeypatch.setattr(jko_flow.JKOFlowTrainer, "_start_potential", recorded)
    flow = jkofast.train(x, "jko-flow", out=tmp_path, progress=False, **opts)
    assert sorted(starts) == [0, 1, 2]
    for k in (1, 2):
        trained = flow.blocks[k - 1].state_dict()
        assert all(torch.equal(v, trained[name]) for name, v in starts[k].items()), k
        assert not all(torch.equal(v, flow.blocks[k].state_dict()[name]) for name, v in starts[k].items())
    adam = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert adam and all(int(s["step"]) == opts["rounds"] * opts["iters"] for s in adam.values())


def test_more_rounds_on_resume_give_the_longer_run(tmp_path, caplog):
    """A finished run resumed with more ``rounds`` goes on and equals a run with that many from
    the start, bit for bit (the generator and Adam's state carry over); fewer are refused."""
    import logging

    x = torch.as_tensor(jkofast.datasets.get("moons", 500, 10, 10, seed=1)[0])
    opts = dict(ROUNDS, rounds=2, iters=8)
    longer = jkofast.train(x, "jko-flow", out=tmp_path / "longer", progress=False, **dict(opts, rounds=3))
    jkofast.train(x, "jko-flow", out=tmp_path / "grown", progress=False, **opts)
    caplog.set_level(logging.INFO, logger="jkofast")
    grown = jkofast.train(x, "jko-flow", out=tmp_path / "grown", progress=False, **dict(opts, rounds=3))
    assert grown.num_blocks == 3
    assert_same_flow(grown, longer)
    assert "rounds=3 on resuming a run of rounds=2: the run goes on after round 2, up to round 3" in caplog.text
    log = json.loads((tmp_path / "grown" / "log.json").read_text())
    assert {"grown": {"rounds": [2, 3]}} in log["events"] and len(log["blocks"]) == 3
    with pytest.raises(ValueError, match=r"rounds can grow when a run resumes, not shrink \(1 here\)"):
        jkofast.train(x, "jko-flow", out=tmp_path / "grown", progress=False, **dict(opts, rounds=1))


def test_compiled_backend_is_refused_with_the_reason():
    x = torch.randn(50, 2)
    with pytest.raises(ValueError, match="OT-Flow potential runs on the torch engine"):
        jkofast.train(x, "jko-flow", budget="quick", backend="compiled", progress=False)
