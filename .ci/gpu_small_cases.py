"""Every CUDA kernel once on small inputs, forward and backward, float64, float32 and TF32: the
workload that .ci/gpu_session.sh runs under compute-sanitizer (memcheck, racecheck, synccheck,
initcheck), where every kernel launch is slow. Sizes reach the paths that matter for memory and
races: a last tile that is not full, tangent rows in several passes (JKOFAST_CUDA_ROWS=16 below
forces small stacks), widths off the 16-column grid, and blocks that run several tiles, where
float backwards move their gradient part into the block's double total (BlockBackward::end_tile):
rk4_block and jko_block_loss after every tile, at batch 1000 (200 tiles of 5 samples, more than an
H100's 132 resident blocks: two in some blocks); mlp_field after every 8th tile and its last, at
batch 6000 (1200 tiles, 9 or 10 per block). Those cases run last and in float only (double has no
totals): they are the slowest under the sanitizer. Each result is also compared with the float64
reference (loose tolerance: this is not the accuracy test)."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JKOFAST_CUDA_ROWS", "16")  # small stacks: chunked tangent rows, many tiles

import torch  # noqa: E402

import jkofast  # noqa: E402
from jkofast import reference as R  # noqa: E402
from jkofast._backend import compiled_ops as O  # noqa: E402

DEVICE = os.environ.get("JKOFAST_TEST_DEVICE", "cuda")  # "cpu": a check of this script without a GPU
torch.manual_seed(0)
failures = []


def check(name, got, want, tol):
    err = max((g.double() - w.double()).abs().max().item() / max(w.abs().max().item(), 1.0)
              for g, w in zip(got, want))
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: relative error {err:.2e}", flush=True)
    if not ok:
        failures.append(name)


def field_case(dim, hidden, batch, dtype, probes, allow_tf32):
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    sizes = [dim + 1, hidden, hidden, dim]
    ws = [(torch.randn(o, i, device=DEVICE, dtype=torch.float64) * 0.5 / i ** 0.5 * 2).requires_grad_(True)
          for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [(torch.randn(o, device=DEVICE, dtype=torch.float64) * 0.3).requires_grad_(True) for o in sizes[1:]]
    x = torch.randn(batch, dim, device=DEVICE, dtype=torch.float64, requires_grad=True)
    t = torch.rand(batch, device=DEVICE, dtype=torch.float64)
    v = torch.randn(batch, probes, dim, device=DEVICE, dtype=torch.float64) if probes else None
    outs = {}
    for engine, cast in (("compiled", dtype), ("reference", torch.float64)):
        leaves = [a.detach().to(cast).requires_grad_(True) for a in [x, *ws, *bs]]
        xs, W, B = leaves[0], leaves[1:4], leaves[4:]
        vv = None if v is None else v.to(cast)
        fn = O.mlp_field_div if engine == "compiled" else R.mlp_velocity_and_divergence
        f, div = fn(xs, t.to(cast), W, B, "softplus", 1.0, vv)
        loss = f.square().sum() + div.sum()
        outs[engine] = [f.detach(), div.detach(), *torch.autograd.grad(loss, leaves)]
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}[dtype] if not allow_tf32 else 2e-2
    check(f"field d={dim} width {hidden} batch {batch} {dtype} probes={probes} tf32={allow_tf32}",
          outs["compiled"], outs["reference"], tol)


def field_pair_case(name, dim, hidden, batch, dtype, allow_tf32, outputs):
    """outputs(field, x, generator, backend) -> tensors, on one random field and batch: the compiled
    engine in `dtype` against the reference in float64."""
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    field = jkofast.VelocityField(dim, hidden, 2).to(device=DEVICE, dtype=torch.float64)
    x = torch.randn(batch, dim, device=DEVICE, dtype=torch.float64)
    outs = {}
    for backend, cast in (("compiled", dtype), ("torch", torch.float64)):
        f = jkofast.VelocityField(dim, hidden, 2).to(device=DEVICE, dtype=cast)
        f.load_state_dict({k: p.to(cast) for k, p in field.state_dict().items()})
        xs = x.to(cast).requires_grad_(True)
        outs[backend] = outputs(f, xs, torch.Generator(device=DEVICE).manual_seed(1), backend)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}[dtype] if not allow_tf32 else 2e-2
    check(f"{name} d={dim} width {hidden} batch {batch} {dtype} tf32={allow_tf32}", outs["compiled"], outs["torch"],
          tol)


def rk4_case(dim, hidden, batch, dtype, divergence, allow_tf32):
    def outputs(f, xs, gen, backend):
        x1, logdet, kinetic = jkofast.rk4(f, xs, 0.0, 1.0, 2, divergence=divergence, probes=2, generator=gen,
                                          backend=backend)
        loss = x1.square().sum() + kinetic.sum() + (logdet.sum() if logdet is not None else 0)
        return [x1.detach(), kinetic.detach(), *torch.autograd.grad(loss, [xs, *f.parameters()])]
    field_pair_case(f"rk4 {divergence}", dim, hidden, batch, dtype, allow_tf32, outputs)


def loss_case(dim, hidden, batch, dtype, divergence, allow_tf32):
    """block_loss with a gradient: the fused jko_block_loss kernel on the compiled side."""
    from jkofast.jko_loss import block_loss

    def outputs(f, xs, gen, backend):
        loss, parts = block_loss(f, xs, 0.5, 2, divergence=divergence, probes=2, generator=gen, backend=backend)
        return [loss.detach(), parts["div"], *torch.autograd.grad(loss, [xs, *f.parameters()])]
    field_pair_case(f"jko_block_loss {divergence}", dim, hidden, batch, dtype, allow_tf32, outputs)


for dtype, allow in ((torch.float64, False), (torch.float32, False), (torch.float32, True)):
    field_case(3, 20, 37, dtype, None, allow)      # exact trace
    field_case(12, 37, 21, dtype, 19, allow)       # 19 probes: several passes
    rk4_case(3, 20, 37, dtype, "exact", allow)
    rk4_case(2, 16, 9, dtype, "hutchinson", allow)
    rk4_case(2, 16, 9, dtype, None, allow)
    loss_case(3, 20, 37, dtype, "exact", allow)
    loss_case(2, 16, 9, dtype, "hutchinson", allow)
for allow in (False, True):  # float32: several tiles per block, and their double totals
    field_case(2, 16, 6000, torch.float32, None, allow)
    rk4_case(2, 16, 1000, torch.float32, "exact", allow)
    loss_case(2, 16, 1000, torch.float32, "exact", allow)
torch.cuda.synchronize() if DEVICE == "cuda" else None
print(f"{len(failures)} failures" + (f": {failures}" if failures else ""))
sys.exit(1 if failures else 0)
