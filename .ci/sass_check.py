"""CI, CUDA half: every kernel's machine code still holds the work it is written to do.

A kernel that compiles and links can still have lost code: nvcc deletes what it proves
unreachable, and an assumption it believes (2026-12-04: __builtin_assume(__isShared(p)) on the
stacks) made it delete the hidden-layer loops' bodies of every kernel, with no error, no warning
and lower register counts that looked like a gain. No GPU runs in CI, and the CPU emulation
(tests/cuda_emulation/) compiles the sources with a host compiler, so neither would notice.

This check reads the SASS of each kernel (nvdisasm -g, on the library built with -lineinfo) and
requires instructions attributed to marker source lines: the hidden-layer activation, the products'
inner loops (FMA for SIMT, mma.sync and its TF32 operand loads for TF32), and in the backward
kernels the recomputed activations, the activation backward and the weight-gradient products.
A marker is a piece of a source line's text (file name and text, not line numbers, so edits
elsewhere do not break it; a marker line that is rewritten must be updated here).

    python .ci/sass_check.py --so jkofast/_C....so --cuobjdump PATH --nvdisasm PATH [--archs sm_80 sm_90]

Tried on a build with the __builtin_assume change put back: it reports the deleted bodies.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

# (file name, text that its line contains). Instructions are attributed to the line of the
# innermost inlined call: an FMA to the fma() of <cmath>, an asm statement to its last line, so the
# markers are the lines of the operand loads and of the asm's operand list.
ACTIVATE = ("mlp_tile.cuh", "const T pre = column[0] + __ldg(bias + h);")              # activate_rows
RECOMPUTE = ("mlp_tile.cuh", "column[i * ld] = v.d1 * zs[i * H];")                     # recompute_activation
ACT_BACKWARD = ("mlp_tile.cuh", "cross += zs[i * H] * gi;")                             # activation_backward
SIMT_PRODUCT = ("block_gemm.cuh", "b[j] = b_cols[q * plan.stage_ld + j * Tx];")        # block_product, SIMT
SIMT_WGRAD = ("block_gemm.cuh", "av[j] = c_ok[j] ? a[m * ld + c[j]] : T(0);")          # block_weight_grad, SIMT
TF32_MMA = ("mma_tf32.cuh", '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1])')  # mma.sync
TF32_PRODUCT = ("block_gemm_tf32.cuh", "a[i][r] = tf32_bits(at[tf32_a_offset(lane, r, ld)]);")  # tf32_block_product
TF32_WGRAD = ("block_gemm_tf32.cuh", "const float2 k0 = load_pair(base + at0)")               # tf32_weight_grad

KERNELS = ("mlp_field_forward_kernel", "mlp_field_backward_kernel", "rk4_block_forward_kernel",
           "rk4_block_backward_kernel", "jko_block_loss_kernel")
VARIANTS = {"IfLb0E": "float SIMT", "IfLb1E": "float TF32", "IdLb0E": "double"}


def required(kernel: str, variant: str) -> list[tuple[str, str]]:
    backward = "backward" in kernel or kernel.startswith("jko_block_loss")
    tf32 = variant == "IfLb1E"
    need = [ACTIVATE]
    need += [TF32_MMA, TF32_PRODUCT] if tf32 else [SIMT_PRODUCT]
    if backward:
        need += [RECOMPUTE, ACT_BACKWARD]
        need += [TF32_WGRAD] if tf32 else [SIMT_WGRAD]
    return need


def source_lines(path: str, cache: dict) -> list[str]:
    if path not in cache:
        p = Path(path)
        cache[path] = p.read_text().split("\n") if p.exists() else None
    return cache[path]


def kernel_lines(cubin: Path, nvdisasm: str) -> dict[str, set[tuple[str, int, str]]]:
    """Kernel (mangled name) -> the (file name, line, file path) its instructions are attributed to."""
    text = subprocess.run([nvdisasm, "-g", "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    found: dict[str, set] = defaultdict(set)
    current = None
    for line in text.split("\n"):
        m = re.match(r"\s*\.section\s+\.text\.(\w+),", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if m and current is not None:
            found[current].add((Path(m.group(1)).name, int(m.group(2)), m.group(1)))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--so", required=True, nargs="+", help="the library (or object files) holding the kernels")
    ap.add_argument("--cuobjdump", required=True)
    ap.add_argument("--nvdisasm", required=True)
    ap.add_argument("--archs", nargs="+", default=["sm_80", "sm_90"])
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), help="check these kernels only")
    args = ap.parse_args()
    cache: dict = {}
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for so in args.so:
            subprocess.run([args.cuobjdump, "-xelf", "all", str(Path(so).resolve())], cwd=tmp, check=True,
                           capture_output=True)
        for arch in args.archs:
            cubins = sorted(Path(tmp).glob(f"*.{arch}.cubin"))
            if not cubins:
                failures.append(f"{arch}: no cubin in {args.so}")
                continue
            per_kernel: dict[str, set] = defaultdict(set)
            for cubin in cubins:
                for name, lines in kernel_lines(cubin, args.nvdisasm).items():
                    per_kernel[name] |= lines
            if not any(per_kernel.values()):
                failures.append(f"{arch}: no line information (built without -lineinfo?)")
                continue
            for kernel in args.kernels:
                for variant, label in VARIANTS.items():
                    names = [n for n in per_kernel if f"{kernel}{variant}" in n]
                    if len(names) != 1:
                        failures.append(f"{arch} {kernel} ({label}): {len(names)} functions found")
                        continue
                    texts = set()
                    for fname, number, path in per_kernel[names[0]]:
                        src = source_lines(path, cache)
                        if src is None:
                            failures.append(f"{arch}: source {path} not found (run from the tree that was built)")
                            return report(failures, checked)
                        if 0 < number <= len(src):
                            texts.add((fname, src[number - 1]))
                    for fname, marker in required(kernel, variant):
                        checked += 1
                        if not any(f == fname and marker in t for f, t in texts):
                            failures.append(f"{arch} {kernel} ({label}): no code from {fname}: {marker}")
    return report(failures, checked)


def report(failures: list[str], checked: int) -> int:
    for f in failures:
        print(f"sass_check: MISSING {f}", file=sys.stderr)
    if failures:
        print(f"sass_check: {len(failures)} of {checked} markers missing: code the kernels need is not in the "
              "machine code (deleted by the compiler, or a marker line rewritten: see .ci/sass_check.py)",
              file=sys.stderr)
        return 1
    print(f"sass_check: {checked} markers present in the SASS of every kernel", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
