"""Flow: inversion, change of variables, normalisation, persistence, input checks."""
import copy

import numpy as np
import pytest
import torch
from torch.func import jacrev

import jkofast
from jkofast import Flow
from jkofast.plotting import density_grid
from conftest import random_flow


def test_inverse_of_transform_float32(trained_moons, moons):
    flow, _ = trained_moons
    x = moons[2][:2000]
    with torch.no_grad():
        z, _ = flow.transform(x)
        assert float((flow.inverse(z) - x).abs().max()) < 1e-4


def test_inverse_with_finer_steps_inverts_the_finer_transform():
    # The blocks' RK4 maps at 3 steps invert each other only up to O(h^4) (~1e-4 here); at 64 steps
    # the round trip falls by (64/3)^4 ~ 2e5. steps= must reach both directions.
    flow = random_flow(dim=3, blocks=2, steps=3)
    x = torch.randn(40, 3, dtype=torch.float64)
    with torch.no_grad():
        coarse = float((flow.inverse(flow.transform(x)[0]) - x).abs().max())
        fine = float((flow.inverse(flow.transform(x, steps=64)[0], steps=64) - x).abs().max())
        mixed = float((flow.inverse(flow.transform(x, steps=64)[0]) - x).abs().max())
    assert fine < 1e-8 and coarse > 1e3 * fine and mixed > 1e3 * fine, (coarse, fine, mixed)


def test_log_prob_is_change_of_variables():
    # Independent computation: log N(F(x)) + log|det dF/dx| with the Jacobian from torch.func.
    # A fine grid (64 steps) makes the integrated divergence equal the discrete map's log-det
    # up to O(h^4) ~ 1e-9 here. torch.func cannot see through the compiled ops (custom autograd),
    # so the Jacobian is taken through the reference, and log_prob runs on the default engine.
    flow = random_flow(dim=3, blocks=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    logp = flow.log_prob(x, steps=64)
    fwd = lambda xi: flow.transform(xi[None], steps=64, backend="torch")[0][0]  # noqa: E731
    for i in range(6):
        z = fwd(x[i])
        logdet = torch.linalg.slogdet(jacrev(fwd)(x[i]))[1]
        want = -0.5 * z.square().sum() - 1.5 * np.log(2 * np.pi) + logdet
        torch.testing.assert_close(logp[i], want, rtol=0, atol=1e-7)


def test_density_integrates_to_one(trained_moons):
    # Riemann sum of p over a square of +-6 standard deviations around the data's centre. Measured
    # (2026-12-04): 1 + 2.86e-7 at resolutions 150, 300 and 600 alike, so the grid's error is far
    # below that; what is left is the mass outside the square and the O(h^4) gap between the RK4
    # log-determinant and the log|det| of the discrete RK4 map. 1e-5 allows 35x that; a density
    # off by 0.001 nats anywhere fails.
    flow = copy.deepcopy(trained_moons[0]).double()
    (cx, cy), w = flow.loc.tolist(), 6.0 * float(flow.scale.max())
    _, _, dens = density_grid(flow, (cx - w, cx + w, cy - w, cy + w), resolution=300)
    total = float(dens.sum() * (2 * w / 300) ** 2)
    assert abs(total - 1.0) < 1e-5, total


def test_density_grid_is_the_density_at_the_cell_centres():
    # An empty flow is N(loc, diag(scale^2)); the grid's x runs along rows' columns, y down them
    loc, scale = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    flow = Flow(2, loc=loc, scale=scale)
    gx, gy, dens = density_grid(flow, (0.0, 4.0, -1.0, 1.0), resolution=4)
    np.testing.assert_array_equal(gx[0], [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(gy[:, 0], [-0.75, -0.25, 0.25, 0.75])
    want = np.exp(-0.5 * (((gx - 1.0) / 2.0) ** 2 + ((gy + 0.5) / 0.5) ** 2)) / (2 * np.pi * 2.0 * 0.5)
    np.testing.assert_allclose(dens, want, rtol=1e-12)
    with pytest.raises(ValueError, match="density_grid needs a 2-D flow, got dim 3"):
        density_grid(Flow(3), (0.0, 1.0, 0.0, 1.0))


def test_save_load_round_trip(tmp_path):
    flow = random_flow(dim=3, blocks=3)
    flow.tableau = "rk4-3/8"   # not the default: the file must say which
    flow.info = {"method": "jko-iflow", "note": "round trip"}
    path = flow.save(tmp_path)
    assert path == tmp_path / "model.pt"
    loaded = Flow.load(tmp_path)
    x = torch.randn(10, 3, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(loaded.sample(7, generator=g1), flow.sample(7, generator=g2))
    assert loaded.h == flow.h and loaded.info == flow.info and loaded.steps == flow.steps and loaded.tableau == "rk4-3/8"
    assert next(loaded.parameters()).dtype == torch.float64


def test_a_payload_missing_or_adding_a_tensor_is_refused():
    # A weight left out would stay an uninitialised meta tensor of the rebuilt flow.
    from jkofast.checkpoint import CheckpointError

    payload = random_flow(dim=2, blocks=2).payload()
    gone = "blocks.1.linears.0.weight"
    missing = {**payload, "state_dict": {k: v for k, v in payload["state_dict"].items() if k != gone}}
    with pytest.raises(CheckpointError, match=r"(?s)does not describe a valid flow.*Missing key.*blocks\.1\.linears\.0\."):
        Flow.from_payload(missing, "model.pt")
    extra = {**payload, "state_dict": {**payload["state_dict"], "blocks.2.linears.0.weight": torch.zeros(3)}}
    with pytest.raises(CheckpointError, match="does not describe a valid flow"):
        Flow.from_payload(extra, "model.pt")


def test_load_honours_map_location_and_leaves_the_rng_alone(tmp_path):
    random_flow(dim=2, blocks=2).save(tmp_path)
    for device_map in ({"cpu": "cpu"}, lambda storage, location: storage):  # torch.load's other forms
        assert Flow.load(tmp_path, map_location=device_map).num_blocks == 2
    state = torch.random.get_rng_state()
    loaded = Flow.load(tmp_path, map_location="meta")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(t.device.type == "meta" for t in [*loaded.parameters(), *loaded.buffers()])


def test_sample_and_trajectory_shapes():
    flow = random_flow(dim=2, blocks=3)
    assert flow.sample(0).shape == (0, 2)
    s = flow.sample(25, generator=torch.Generator().manual_seed(0))
    assert s.shape == (25, 2) and torch.isfinite(s).all()
    x = torch.randn(5, 2, dtype=torch.float64)
    traj = flow.trajectory(x)
    assert len(traj) == 4 and all(t.shape == (5, 2) for t in traj)
    # it starts at the standardized points, ends where transform ends, and every block moves them
    torch.testing.assert_close(traj[0], (x - flow.loc) / flow.scale, rtol=0, atol=0)
    torch.testing.assert_close(traj[-1], flow.transform(x)[0], rtol=1e-12, atol=1e-12)
    assert all((b - a).abs().max() > 1e-3 for a, b in zip(traj, traj[1:]))


def test_trajectory_runs_on_the_grid_it_is_given():
    flow = random_flow(dim=2, blocks=2)
    x = torch.randn(5, 2, dtype=torch.float64)
    fine = flow.trajectory(x, steps=flow.steps + 4)
    torch.testing.assert_close(fine[-1], flow.transform(x, steps=flow.steps + 4)[0], rtol=1e-12, atol=1e-12)
    assert (fine[-1] - flow.trajectory(x)[-1]).abs().max() > 1e-9   # not the training grid's points


def test_add_block_refuses_a_field_of_another_dim_or_kind():
    from jkofast.ot_flow_model import OTFlowPotential

    flow = random_flow(dim=2, blocks=1)
    with pytest.raises(ValueError, match="block field has dim 3, the flow has dim 2"):
        flow.add_block(jkofast.VelocityField(3, **flow.field_config).double(), h=1.0)
    with pytest.raises(TypeError, match=r"blocks are VelocityField \(block='velocity'\), got a OTFlowPotential"):
        flow.add_block(OTFlowPotential(2).double(), h=1.0)
    assert flow.num_blocks == 1 and flow.h == [flow.h[0]]   # nothing was appended


def test_sample_has_no_graph_and_rsample_differentiates_through_the_blocks():
    flow = random_flow(dim=2, blocks=2)
    s = flow.sample(8, generator=torch.Generator().manual_seed(0))
    assert not s.requires_grad and s.grad_fn is None
    r = flow.rsample(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.detach(), s, rtol=0, atol=0)  # the same draw, with its graph
    # the draw is z ~ N(0, I) in the model's dtype (float64 here), pushed through the inverse
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(s, flow.inverse(z), rtol=0, atol=0)
    r.square().sum().backward()
    # every block's weights are reached (a block left out of the graph would keep grad None)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in flow.blocks.parameters())


def test_empty_flow_is_the_standardized_gaussian():
    flow = Flow(2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([2.0, 0.5])).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    want = torch.distributions.Normal(flow.loc, flow.scale).log_prob(x).sum(1)
    torch.testing.assert_close(flow.log_prob(x), want)


def test_input_errors_name_the_problem():
    flow = random_flow(dim=2)
    with pytest.raises(ValueError, match="2 columns"):
        flow.log_prob(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        flow.log_prob(torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="on meta"):
        flow.log_prob(torch.randn(3, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="n must be"):
        flow.sample(-1)
    with pytest.raises(TypeError, match=r"got ndarray \(convert it with torch.as_tensor\(x\)\)"):
        flow.log_prob(np.zeros((3, 2)))   # float64, the model's: as it is
    with pytest.raises(TypeError, match=r"got ndarray \(convert it with torch.as_tensor\(x\)\)"):
        flow.log_prob(np.zeros((3, 2), np.float32))   # narrower than the model: taken as it is
    with pytest.raises(TypeError, match=r"got ndarray \(convert it with torch.as_tensor\(x, dtype=torch.float64\)\)"):
        flow.log_prob(np.zeros((3, 2), np.int64))     # integers: the model's dtype
    with pytest.raises(TypeError, match=r"got ndarray \(convert it with torch.as_tensor\(x\)\)"):
        flow.float().log_prob(np.zeros((3, 2)))   # float64 data for a float32 model: kept, not rounded
    with pytest.raises(ValueError, match="scale"):
        Flow(2, scale=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale must be positive and finite"):
        Flow(2, scale=torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="and loc finite"):
        Flow(2, loc=torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="invalid divergence None"):
        flow.transform(torch.randn(3, 2, dtype=torch.float64), divergence=None)
    with pytest.raises(TypeError, match="dtype must be a floating-point"):   # (samples were cut to integers)
        flow.sample(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"e\.g\. z\.to\(torch\.float32\)"):   # the argument's own name
        flow.inverse(torch.randn(3, 2, dtype=torch.float64))   # (flow.float() above: a float32 model now)


def test_a_float32_flow_takes_wider_data_and_standardizes_it_first():
    flow = random_flow(dim=2, blocks=2, dtype=torch.float32)
    x = torch.randn(20, 2, dtype=torch.float64)
    wide, narrow = flow.log_prob(x), flow.log_prob(x.float())
    assert wide.dtype == torch.float32
    torch.testing.assert_close(wide, narrow, rtol=1e-5, atol=1e-5)  # float32's rounding of x, no more
    # the de-standardization can run wide too: a float32 flow's samples at an offset of 1e8
    shifted = Flow(2, dict(hidden=8, layers=1), loc=torch.tensor([1e8, 0.0], dtype=torch.float64),
                   scale=torch.tensor([1.0, 1.0], dtype=torch.float64)).float()
    s = shifted.sample(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64).detach()
    assert s.dtype == torch.float64 and 0.8 < float((s[:, 0] - 1e8).std()) < 1.2
    rounded = shifted.sample(500, generator=torch.Generator().manual_seed(0)).detach().double()
    assert set((rounded[:, 0] - 1e8).tolist()) <= {-16.0, -8.0, 0.0, 8.0, 16.0}  # what float32 would give


@pytest.mark.parametrize("model, narrow", [(torch.float64, torch.float32), (torch.float32, torch.float16),
                                           (torch.float32, torch.bfloat16)])


def test_narrower_data_and_latent_points_are_widened_exactly(model, narrow):
    # The built-in sets are float32 arrays; a float64 model takes them (and torch.randn's float32
    # z) as the same numbers widened: the results equal those of the widened input, bit for bit.
    flow = random_flow(dim=2, blocks=2, dtype=model)
    x, z = torch.randn(20, 2).to(narrow), torch.randn(20, 2).to(narrow)
    for fn in (flow.log_prob, lambda v: flow.transform(v)[0], lambda v: flow.transform(v)[1]):
        got, want = fn(x), fn(x.to(model))
        assert got.dtype == model and torch.equal(got, want)
    assert torch.equal(flow.inverse(z), flow.inverse(z.to(model)))
    assert all(torch.equal(a, b) for a, b in zip(flow.push(z), flow.push(z.to(model))))  # (standardized points)
    assert torch.equal(flow.trajectory(x)[-1], flow.trajectory(x.to(model))[-1])


def test_log_prob_compiles_whole_with_the_compiled_ops():
    # torch.compile(fullgraph=True) over the default engine: the choice of engine must not need the
    # dispatcher at trace time (it once broke every entry point's graph), and the ops trace as ops.
    flow = random_flow(dim=2, blocks=2, dtype=torch.float32)
    x = torch.randn(50, 2)
    compiled = torch.compile(lambda v: flow.log_prob(v), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), flow.log_prob(x), rtol=0, atol=0)
