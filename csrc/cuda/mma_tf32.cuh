// TF32 tensor-core products at the instruction level: mma.sync m16n8k8 (sm_80 and later) on
// registers the caller loads itself, for both TF32 products of block_gemm_tf32.cuh. wmma, used before,
// fixed both the load pattern and the meaning of every register; with mma.sync the caller
// chooses which stack element goes into which register, which is what makes the weight
// gradient's conflict-free 8-byte loads possible; its plain loads and stores become shared-memory
// instructions once block_stage.cuh's in_shared rebases the pointer.
//
// Fragments of mma.m16n8k8 with .tf32 inputs and .f32 accumulators (PTX ISA, "Matrix fragments
// for mma.m16n8k8"), lane = 4 g + t (group g < 8, member t < 4):
//   A (16 x 8, row):   a0 = A(g, t)    a1 = A(g + 8, t)    a2 = A(g, t + 4)    a3 = A(g + 8, t + 4)
//   B (8 x 8, col):    b0 = B(t, g)    b1 = B(t + 4, g)
//   C, D (16 x 8):     c0 = C(g, 2t)   c1 = C(g, 2t + 1)   c2 = C(g + 8, 2t)   c3 = C(g + 8, 2t + 1)
// The operand registers hold float bit patterns; the tensor cores read their top 19 bits, so
// values are rounded to TF32 first (cvt.rna, as wmma::__float_to_tf32 does), never truncated.
//
// JKOFAST_EMULATE_CUDA: tests/cuda_emulation/cuda_shim.h defines the same functions for the CPU,
// its mma exchanging the warp's registers and reading them in the layout above.
#pragma once

#if !defined(JKOFAST_EMULATE_CUDA)
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <cstdint>

#include "ops/tile_plan.h"

namespace jkofast::cuda {

// Where lane `lane` reads register `reg` of an A fragment (16 x 8, row-major at stride ld) and of a
// B fragment (8 x 8, its k rows at stride ld), in words from the fragment's first element: the
// layout above. tf32_block_product loads through these, and tests/test_cuda_emulation.py counts
// their banks on every float plan (A from a stack: conflict-free at the stacks' skew, B from the
// weight stage: at tile::stage_skew).
JKO_HOST_DEVICE constexpr int tf32_a_offset(int lane, int reg, int ld) {
  return (lane / 4 + 8 * (reg & 1)) * ld + lane % 4 + 4 * (reg >> 1);
}
JKO_HOST_DEVICE constexpr int tf32_b_offset(int lane, int reg, int ld) { return (lane % 4 + 4 * reg) * ld + lane / 4; }

// Where lane `lane` reads its 8-byte operand pair `half` (0 or 1) of one k step, in words from the
// step's first stack row and the tile's first column, on a stack of row stride ld: row 2t + half,
// columns 2g and 2g + 1. That is, fragment k = t (half 0) and t + 4 (half 1) are stack rows
// 2t and 2t + 1 of the step, and fragment row (or column) g of the pair's two products is stack
// column 2g of the first and 2g + 1 of the second (the caller maps results back the same way).
// A half-warp (one request for 8-byte loads) reads rows 2t (t < 4), 8 words each; rows two apart
// start 2 ld = 8 words apart mod 32 (ld = 4 mod 16, tile::kSkew), so it meets every bank once.
// tests/test_cuda_emulation.py counts the banks of this function for every float plan.
JKO_HOST_DEVICE constexpr int tf32_pair_offset(int lane, int half, int ld) {
  return (2 * (lane % 4) + half) * ld + 2 * (lane / 4);
}

// A float rounded to TF32 (cvt.rna.tf32.f32), as an operand register.
__device__ __forceinline__ uint32_t tf32_bits(float v) { return __float_as_uint(nvcuda::wmma::__float_to_tf32(v)); }

#if !defined(JKOFAST_EMULATE_CUDA)
// d += A B for one m16n8k8 product (registers in the layout above).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Vector accesses, p 8-byte (pair) or 16-byte (quad) aligned, as the callers' layouts guarantee.
__device__ __forceinline__ float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ void store_pair(float* p, float2 v) { *reinterpret_cast<float2*>(p) = v; }
__device__ __forceinline__ float4 load_quad(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store_quad(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
#endif

}  // namespace jkofast::cuda
