// The thread block's shared memory as the products (block_gemm.cuh) use it: pointers that nvcc
// can see point into it (in_shared), the block's thread constants, and the double-buffered stage
// that streams a weight matrix from global memory (they are small and shared by all blocks, so
// L2 serves them): each thread loads the next chunk into registers while the block multiplies
// with the current one, so one barrier per chunk suffices.
//
// JKOFAST_EMULATE_CUDA: tests/cuda_emulation/ compiles these headers with a host compiler, its
// cuda_shim.h standing in for the CUDA built-ins, to run the kernels on the CPU.
#pragma once

#if !defined(JKOFAST_EMULATE_CUDA)
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include "ops/tile_plan.h"

namespace jkofast::cuda {

#if !defined(JKOFAST_EMULATE_CUDA)
// The block's dynamic shared memory (plan.smem_bytes, set at launch).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}
#endif

// p, which points into the block's dynamic shared memory, as a pointer that nvcc can see is one:
// derived from the extern __shared__ array itself. The stacks and stages reach the products as
// plain pointers (members, the stage-pointer array, arguments), through which nvcc does not see
// shared memory: it emitted generic loads and stores (LD.E / ST.E, 64-bit addresses) for every
// operand access (SASS, 2026-12-04); through the result they are LDS / STS with 32-bit addresses.
// cvta.to.shared is opaque to the optimizer, so the result is not folded back into p. (Telling
// nvcc instead with __builtin_assume(__isShared(p)) made nvcc 13 delete the hidden-layer loops'
// bodies: csrc/cuda/README.md.) Valid only while the pointer stays in registers: stored to
// memory and read back, it is generic again.
template <typename T>
__device__ __forceinline__ T* in_shared(T* p) {
  const unsigned offset = unsigned(__cvta_generic_to_shared(p) - __cvta_generic_to_shared(dynamic_smem()));
  return reinterpret_cast<T*>(dynamic_smem() + offset);
}

using tile::kSkew;
using tile::kThreads;
constexpr int kWarps = kThreads / 32;

// The product's right operand B(q, p), read from a weight matrix W of shape (out, in), row-major:
//   Transposed: B(q, p) = W[p][q]: the forward pass, Out = In W^T (q runs over in, p over out);
//   Direct:     B(q, p) = W[q][p]: the backward pass, Out = G W (q runs over out, p over in).
enum class Operand { Transposed, Direct };

__device__ __forceinline__ int thread_index() { return int(threadIdx.x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One chunk of B (stage_rows x chunk_cols values, zero outside q < Q, p < P) on its way from
// global memory to a stage: kPer values per thread. TF32 rounds them once, when stored.
template <typename T, bool kTF32>
struct StageChunk {
  static constexpr int kPer = tile::stage_elems(sizeof(T)) / kThreads;
  static_assert(kPer * kThreads == tile::stage_elems(sizeof(T)));
  T v[kPer];

  // Element e of the chunk sits at (q, p): tile::stage_position, which keeps the global reads whole
  // sectors and the shared-memory stores free of bank conflicts.
  __device__ __forceinline__ static void position(int e, Operand mode, const tile::TilePlan& plan, int& q, int& p) {
    tile::stage_position(e, mode == Operand::Transposed, plan, int(sizeof(T)), q, p);
  }

  __device__ __forceinline__ void load(const T* __restrict__ w, Operand mode, int Q, int P, int q0, int p0,
                                       const tile::TilePlan& plan_ref) {
    const tile::TilePlan plan = plan_ref;  // (registers: see store)
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int q, p;
      position(thread_index() + j * kThreads, mode, plan, q, p);
      const int gq = q0 + q, gp = p0 + p;
      T value = T(0);
      if (gq < Q && gp < P) {
        value = __ldg(w + (mode == Operand::Transposed ? int64_t(gp) * Q + gq : int64_t(gq) * P + gp));
      }
      v[j] = value;
    }
  }

  __device__ __forceinline__ void store(T* stage, Operand mode, const tile::TilePlan& plan_ref) const {
    // The plan reaches here by reference to the kernel's parameter, a generic address to nvcc that
    // may alias the stage: read through it, the fields that place each value were loaded again
    // after every store (LD.E: 700-900 per float backward kernel, sm_90 SASS). A local copy is read
    // once (bench/gpu_notes.md: Generic loads).
    const tile::TilePlan plan = plan_ref;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int q, p;
      position(thread_index() + j * kThreads, mode, plan, q, p);
      T value = v[j];
      if constexpr (kTF32) value = nvcuda::wmma::__float_to_tf32(value);
      stage[q * plan.stage_ld + p] = value;
    }
  }
};

// Runs compute(stage, q0, qn) for consecutive chunks of the reduction [0, round_up(Q, 8)) of the
// output columns [p0, p0 + chunk_cols): qn <= stage_rows rows of B, staged at stage[0..qn) with
// row stride stage_ld, B's column p0 + c at stage column c. Every call ends with a barrier, and
// none reads a stage before the barrier that published it.
template <typename T, bool kTF32, typename Compute>
__device__ __forceinline__ void staged_reduction(const T* __restrict__ w, Operand mode, int Q, int P, int p0,
                                                 T* const stage[2], const tile::TilePlan& plan, Compute&& compute) {
  const int q_end = int(tile::round_up(Q, 8));
  const int chunks = int(tile::ceil_div(q_end, plan.stage_rows));
  StageChunk<T, kTF32> next;
  next.load(w, mode, Q, P, 0, p0, plan);
  next.store(in_shared(stage[0]), mode, plan);
  __syncthreads();
  for (int c = 0; c < chunks; ++c) {
    const bool more = c + 1 < chunks;
    if (more) next.load(w, mode, Q, P, (c + 1) * plan.stage_rows, p0, plan);  // in flight meanwhile
    const int q0 = c * plan.stage_rows;
    compute(in_shared(stage[c & 1]), q0, min(plan.stage_rows, q_end - q0));
    // The other stage was last read in iteration c - 1, which ended with a barrier.
    if (more) next.store(in_shared(stage[(c + 1) & 1]), mode, plan);
    __syncthreads();
  }
}

}  // namespace jkofast::cuda
