"""The fused training kernel (jko_block_loss) in float32 and TF32 at a training step's size, run on
the CPU through the emulation: d = 6, width 128, 3 hidden layers, 3 RK4 steps, the plan and grid an
H100 would take at batch 2000 (32 stack rows, 132 blocks). Not part of the test suite (about 5
minutes for float32 and 14 for TF32 on one core); run it after changing how the kernels sum.

Prints, per output (terms, grad x0, grads of the weights and biases), the error against the float64
reference next to torch float32's, and the float32 rule of tests/_op_cases.py (at most twice
torch's error plus 1e-6 of the output's scale); for TF32 the error in units of TF32's roundoff
2^-11 of the scale (torch's TF32 error needs a GPU: tests/test_cuda_ops.py compares with it).

    python tests/cuda_emulation/float32_at_scale.py [--batch 2000] [--dim 6] [--width 128] [--grid 132]
                                                    [--skip-tf32 | --bf16]

A block runs batch / (samples per tile x grid) tiles. At 32 rows and d = 6 a tile holds 4 samples
(1 + 6 rows each); an H100 takes 128 rows (18 samples) and 132 blocks, so ~55 tiles per block at
batch 128k. `--batch 16384 --width 32 --grid 74` runs that many per block (~15 minutes),
`--grid 4` 1024 per block, the stress case for the float sums.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from conftest import random_field  # noqa: E402
from driver import Emulator, build  # noqa: E402
from test_cuda_emulation import emulated_jko_loss, reference_jko_loss  # noqa: E402


def fields(dim, width):
    """The same field in float64 and float32."""
    torch.manual_seed(1)
    f64 = random_field(dim, width, 3, "softplus", time=True)
    with torch.no_grad():  # O(1-10) pre-activations, a moderate Lipschitz constant (tests/test_cuda_ops.py)
        for lin in f64.linears:
            lin.weight.mul_(0.5 * min(1.0, 4.0 / lin.in_features ** 0.5))
            lin.bias.mul_(0.5)
    f32 = random_field(dim, width, 3, "softplus", time=True, dtype=torch.float32)
    f32.load_state_dict({k: v.float() for k, v in f64.state_dict().items()})
    return f64, f32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--grid", type=int, default=132,
                        help="thread blocks: fewer blocks means more tiles summed into each block's float part")
    parser.add_argument("--skip-tf32", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="round the tensor-core operands to bfloat16 instead of TF32 (what a BF16 path would "
                             "compute; errors in units of 2^-8)")
    args = parser.parse_args()
    emu = Emulator(build(extra_flags=("-DJKOFAST_EMULATE_BF16_OPERANDS",) if args.bf16 else ()))
    name, unit_bits = ("BF16", 8) if args.bf16 else ("TF32", 11)
    emu.set_schedule(0)
    f64, f32 = fields(args.dim, args.width)
    x = torch.randn(args.batch, args.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    truth = reference_jko_loss(f64, x, 3, 0.5, 0.1, "exact", 1, "rk4")
    torch32 = reference_jko_loss(f32, x.float(), 3, 0.5, 0.1, "exact", 1, "rk4")
    modes = (True,) if args.bf16 else (False,) if args.skip_tf32 else (False, True)
    for tf32 in modes:
        start = time.perf_counter()
        got = emulated_jko_loss(emu, f32, x.float(), 3, 0.5, 0.1, "exact", 1, "rk4", rows=32, grid=args.grid, tf32=tf32)
        print(f"{name if tf32 else 'float32'} ({time.perf_counter() - start:.0f} s emulated)")
        for i, (t, p, k) in enumerate(zip(truth, torch32, got)):
            scale = max(t.abs().max().item(), 1.0)
            k_err, p_err = ((v.double() - t).abs().max().item() for v in (k, p))
            if tf32:
                print(f"  output {i:2d} {str(tuple(t.shape)):11s} scale {scale:7.3g}: error {k_err:.2e} "
                      f"= {k_err / scale / 2 ** -unit_bits:.2f} x 2^-{unit_bits} of the scale")
            else:
                verdict = "ok" if k_err <= 2 * p_err + 1e-6 * scale else "FAILS the float32 rule"
                print(f"  output {i:2d} {str(tuple(t.shape)):11s} scale {scale:7.3g}: kernel {k_err:.2e}, "
                      f"torch float32 {p_err:.2e}: {verdict}")


if __name__ == "__main__":
    main()
