// Block-wide matrix products on the shared-memory stacks of csrc/ops/tile_plan.h, the only
// arithmetic-heavy code of the kernels. Two implementations of the same contract:
//   SIMT:  every thread accumulates a kRows x kCols register tile with FMAs (float and double);
//   TF32:  every warp accumulates four 16 x 16 tiles, 2 x 2 (1 x 4 on 16-row stacks and narrow
//          products), each two tensor-core products mma.sync m16n8k8 (mma_tf32.cuh: float
//          inputs rounded to TF32, float accumulators), for float when the caller allows TF32.
// Weights come from global memory (they are small and shared by all blocks, so L2 serves them)
// through a double-buffered stage: each thread loads the next chunk into registers while the
// block multiplies with the current one, so one barrier per chunk suffices.
//
// JKOFAST_EMULATE_CUDA: tests/cuda_emulation/ compiles these headers with a host compiler, its
// cuda_shim.h standing in for the CUDA built-ins, to run the kernels on the CPU.
#pragma once

#if !defined(JKOFAST_EMULATE_CUDA)
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <type_traits>

#include "cuda/mma_tf32.cuh"
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

// Blocks per multiprocessor that the kernels' __launch_bounds__ promise: 1 lets a thread use up
// to 255 registers, which the register tiles of the products take (ptxas: 150 to 255 registers,
// no spills); 2 caps them at 128, which spilled 136 to 492 bytes when tried. Shared memory allows
// 1 or 2 blocks anyway. A tuning knob: -DJKOFAST_CUDA_MIN_BLOCKS=2.
#ifndef JKOFAST_CUDA_MIN_BLOCKS
#define JKOFAST_CUDA_MIN_BLOCKS 1
#endif

using tile::kSkew;
using tile::kThreads;
constexpr int kWarps = kThreads / 32;

template <typename T>
struct RegisterTile;
template <>
struct RegisterTile<float> {
  static constexpr int kRows = 4, kCols = 8;
};
template <>
struct RegisterTile<double> {
  static constexpr int kRows = 4, kCols = 4;
};
static_assert(kThreads * RegisterTile<float>::kRows * RegisterTile<float>::kCols == tile::out_area(4));
static_assert(kThreads * RegisterTile<double>::kRows * RegisterTile<double>::kCols == tile::out_area(8));
// TF32: 8 warps x 4 fragments x 256 values cover one pass as well.
static_assert(kWarps * 4 * 256 == tile::out_area(4));

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

// The TF32 path of block_product (below): each warp accumulates FR x (4 / FR) tiles of 16 x 16
// of every pass of chunk_cols output columns, each tile two m16n8k8 products (mma_tf32.cuh: float
// inputs rounded to TF32, float accumulators). Per k step a warp loads FR A fragments (16 x 8 of
// In) and 4 / FR B pairs (8 x 16 of the stage) for 8 products, so 2 x 2 (stacks of 32 rows or
// more) loads 16 values per lane where 1 x 4 loads 20. Loads are single values in the
// fragments' own layout, free of bank conflicts as they are: A lanes read row g and column t (the
// stack's row stride is 4 words past a multiple of 32), B lanes row t and column g (the stage's is
// 8 past, tile::stage_skew). The stage holds values already rounded to TF32 (StageChunk::store).
// (This was wmma m16n16k8, which loads in the same layout; its intrinsics' loads and stores stay
// generic, where plain ones become LDS / STS through in_shared's pointers.)
template <int FR>
__device__ __forceinline__ void tf32_block_product(const float* __restrict__ in, float* __restrict__ out,
                                                   const float* __restrict__ w, Operand mode, int Q, int P,
                                                   int rows_active, int p_end, float* const stage[2],
                                                   const tile::TilePlan& plan) {
  constexpr int FC = 4 / FR;
  const int ld = plan.ld, sld = plan.stage_ld;
  const int warp = thread_index() / 32, lane = thread_index() % 32, g = lane / 4, t = lane % 4;
  const int row_groups = plan.rows / (16 * FR);  // row_groups * (chunk_cols / (16 * FC)) == kWarps
  const int row0 = (warp % row_groups) * 16 * FR, col0 = (warp / row_groups) * 16 * FC;
  bool row_on[FR];  // warp-uniform: this warp's tile rows below rows_active
#pragma unroll
  for (int i = 0; i < FR; ++i) row_on[i] = row0 + 16 * i < rows_active;
  for (int p0 = 0; p0 < p_end; p0 += plan.chunk_cols) {
    float acc[FR][FC][2][4];  // tile rows i, tile columns j, n8 product n
#pragma unroll
    for (int i = 0; i < FR; ++i) {
#pragma unroll
      for (int j = 0; j < FC; ++j) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][n][e] = 0.0f;
        }
      }
    }
    staged_reduction<float, true>(w, mode, Q, P, p0, stage, plan, [&](const float* bs, int q0, int qn) {
      if (!row_on[0] || p0 + col0 >= p_end) return;  // warp-uniform
      for (int k = 0; k < qn; k += 8) {
        uint32_t a[FR][4];
#pragma unroll
        for (int i = 0; i < FR; ++i) {
          if (row_on[i]) {
            const float* at = in + (row0 + 16 * i) * ld + q0 + k;
#pragma unroll
            for (int r = 0; r < 4; ++r) a[i][r] = tf32_bits(at[tf32_a_offset(lane, r, ld)]);
          }
        }
#pragma unroll
        for (int j = 0; j < FC; ++j) {
          if (p0 + col0 + 16 * j < p_end) {
#pragma unroll
            for (int n = 0; n < 2; ++n) {
              const float* bt = bs + k * sld + col0 + 16 * j + 8 * n;  // rounded when staged
              const uint32_t b[2] = {__float_as_uint(bt[tf32_b_offset(lane, 0, sld)]),
                                     __float_as_uint(bt[tf32_b_offset(lane, 1, sld)])};
#pragma unroll
              for (int i = 0; i < FR; ++i) {
                if (row_on[i]) mma_m16n8k8_tf32(acc[i][j][n], a[i], b);
              }
            }
          }
        }
      }
    });
    // D(g, 2t), D(g, 2t + 1) and the same of row g + 8: pairs of adjacent columns.
#pragma unroll
    for (int i = 0; i < FR; ++i) {
#pragma unroll
      for (int j = 0; j < FC; ++j) {
        const int p = p0 + col0 + 16 * j;
        if (row_on[i] && p < p_end) {
#pragma unroll
          for (int n = 0; n < 2; ++n) {
            float* dt = out + (row0 + 16 * i + g) * ld + p + 8 * n + 2 * t;
            store_pair(dt, float2{acc[i][j][n][0], acc[i][j][n][1]});
            store_pair(dt + 8 * ld, float2{acc[i][j][n][2], acc[i][j][n][3]});
          }
        }
      }
    }
  }
}

// Out[m][p] = sum_{q < Q} In[m][q] B(q, p) for the stack rows m below rows_active (whole 16-row
// tiles; the SIMT path writes zeros to the other rows, the TF32 path leaves them) and
// p < round_up(P, 16). In and Out are
// distinct stacks (row stride plan.ld). In's columns [Q, round_up(Q, 8)) must be finite: they
// meet B's zeros. Columns [P, round_up(P, 16)) of Out come out zero. Ends with a barrier.
template <typename T, bool kTF32>
__device__ void block_product(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w, Operand mode,
                              int Q, int P, int rows_active, T* const stage[2], const tile::TilePlan& plan) {
  in = in_shared(in);
  out = in_shared(out);
  const int p_end = int(tile::round_up(P, 16));
  const int ld = plan.ld;
  if constexpr (kTF32) {
    static_assert(sizeof(T) == 4, "TF32 products are for float");
    // 2 x 2 fragments per warp where the stack has 32 rows or more and the product more than 32
    // columns; else 1 x 4, which keeps all warps busy on narrow products (the output layer, the
    // first layer's backward). Uniform across the block.
    if (plan.rows >= 32 && p_end > 32) {
      tf32_block_product<2>(in, out, w, mode, Q, P, rows_active, p_end, stage, plan);
    } else {
      tf32_block_product<1>(in, out, w, mode, Q, P, rows_active, p_end, stage, plan);
    }
  } else {
    constexpr int TM = RegisterTile<T>::kRows, TN = RegisterTile<T>::kCols;
    // Thread (ty, tx) owns rows ty + i * Ty and columns tx + j * Tx of a pass: a warp reads one
    // or a few rows of In (broadcast) and consecutive columns of the stage.
    const int Ty = plan.rows / TM, Tx = kThreads / Ty;
    const int ty = thread_index() / Tx, tx = thread_index() % Tx;
    // Its row groups i below rows_active: a pass with fewer rows than the stack (the field alone
    // on a plan made for tangent rows: RK4 velocities) costs what its rows need. The count is
    // uniform across a warp (rows_active is a multiple of 16), and a compile-time bound in the
    // FMA loop keeps the accumulators in registers.
    const int live = min(TM, max(0, int(tile::ceil_div(rows_active - ty, Ty))));
    for (int p0 = 0; p0 < p_end; p0 += plan.chunk_cols) {
      T acc[TM][TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
      }
      staged_reduction<T, kTF32>(w, mode, Q, P, p0, stage, plan, [&](const T* bs, int q0, int qn) {
        const T* a_rows = in + ty * ld + q0;
        const T* b_cols = bs + tx;
        auto fma_rows = [&](auto live_rows) {
          constexpr int L = decltype(live_rows)::value;
#pragma unroll 4
          for (int q = 0; q < qn; ++q) {
            T a[L], b[TN];
#pragma unroll
            for (int i = 0; i < L; ++i) a[i] = a_rows[i * Ty * ld + q];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = b_cols[q * plan.stage_ld + j * Tx];
#pragma unroll
            for (int i = 0; i < L; ++i) {
#pragma unroll
              for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
            }
          }
        };
        static_assert(TM == 4, "the dispatch below covers 1..4 live row groups");
        switch (live) {
          case 4: fma_rows(std::integral_constant<int, 4>{}); break;
          case 3: fma_rows(std::integral_constant<int, 3>{}); break;
          case 2: fma_rows(std::integral_constant<int, 2>{}); break;
          case 1: fma_rows(std::integral_constant<int, 1>{}); break;
          default: break;
        }
      });
      // Rows past rows_active store their zero accumulators: finite, as the contract asks.
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int p = p0 + tx + j * Tx;
          if (p < p_end) out[(ty + i * Ty) * ld + p] = acc[i][j];
        }
      }
    }
  }
  __syncthreads();
}

// The TF32 path of block_weight_grad (below), on mma.sync (mma_tf32.cuh): part[o][c] +=
// sum_m G[m][o] A[m][c] is a product with M = o, N = c and K = m (samples), both operands read
// from stacks along their rows. wmma could only load them with lanes stepping rows by lane % 4 and
// columns by lane / 4, a 2-way bank conflict at the stack's skew (which the forward's A fragments
// need). Here the sum's order and the assignment of part rows and columns to fragment rows and
// columns are free, and tf32_pair_offset chooses them so that every operand register pair is one
// 8-byte, conflict-free load: per k step of 8 samples, fragment k = t, t + 4 are stack rows
// m + 2t, m + 2t + 1; fragment row g, g + 8 of an o tile are part rows o + 2g, o + 2g + 1; and
// fragment column g of a c tile's two n8 products (j = 0, 1) is part column c + 2g + j. A lane's
// accumulators then are part rows o + 2g (c0, c1 of both products) and o + 2g + 1 (c2, c3),
// columns c + 4t .. c + 4t + 3: one 16-byte access each. A warp takes GR x GR tiles of 16 x 16 at
// a time and per k step loads 2 GR pairs of G and 2 GR of A for 2 GR^2 products.
template <int GR>
__device__ __forceinline__ void tf32_weight_grad(const float* __restrict__ g, const float* __restrict__ a, int rows,
                                                 float* __restrict__ part, int rows16, int cols16, int ld) {
  const int warp = thread_index() / 32, lane = thread_index() % 32;
  const int lane_row = 2 * (lane / 4), lane_col = 4 * (lane % 4);  // the lane's part row pair, column quad
  const int col_groups = int(tile::ceil_div(cols16, 16 * GR)), groups = int(tile::ceil_div(rows16, 16 * GR)) * col_groups;
  for (int grp = warp; grp < groups; grp += kWarps) {
    const int o0 = (grp / col_groups) * 16 * GR, c0 = (grp % col_groups) * 16 * GR;
    // This lane's quad of part row pair r of tile (i, j), read before the k steps, written after.
    auto quad = [&](int i, int j, int r) {
      return part + int64_t(o0 + 16 * i + lane_row + r) * cols16 + c0 + 16 * j + lane_col;
    };
    bool o_on[GR], c_on[GR];  // warp-uniform: the group's tiles inside the part
#pragma unroll
    for (int i = 0; i < GR; ++i) {
      o_on[i] = o0 + 16 * i < rows16;
      c_on[i] = c0 + 16 * i < cols16;
    }
    // acc[i][j][n]: o tile i, c tile j, n8 product n.
    float acc[GR][GR][2][4];
#pragma unroll
    for (int i = 0; i < GR; ++i) {
#pragma unroll
      for (int j = 0; j < GR; ++j) {
        if (o_on[i] && c_on[j]) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float4 q = load_quad(quad(i, j, r));
            acc[i][j][0][2 * r] = q.x;
            acc[i][j][1][2 * r] = q.y;
            acc[i][j][0][2 * r + 1] = q.z;
            acc[i][j][1][2 * r + 1] = q.w;
          }
        }
      }
    }
    const int at0 = tf32_pair_offset(lane, 0, ld), at1 = tf32_pair_offset(lane, 1, ld);
    for (int m = 0; m < rows; m += 8) {
      uint32_t fg[GR][4], fa[GR][2][2];  // fa[j][n]: B registers of c tile j's product n
#pragma unroll
      for (int i = 0; i < GR; ++i) {
        if (o_on[i]) {
          const float* base = g + m * ld + o0 + 16 * i;
          const float2 k0 = load_pair(base + at0), k1 = load_pair(base + at1);
          fg[i][0] = tf32_bits(k0.x);  // A(g, t): part row o + 2g, sample m + 2t
          fg[i][1] = tf32_bits(k0.y);  // A(g + 8, t): part row o + 2g + 1
          fg[i][2] = tf32_bits(k1.x);  // A(g, t + 4): sample m + 2t + 1
          fg[i][3] = tf32_bits(k1.y);
        }
        if (c_on[i]) {
          const float* base = a + m * ld + c0 + 16 * i;
          const float2 k0 = load_pair(base + at0), k1 = load_pair(base + at1);
          fa[i][0][0] = tf32_bits(k0.x);  // B(t, g) of product 0: part column c + 2g
          fa[i][0][1] = tf32_bits(k1.x);  // B(t + 4, g)
          fa[i][1][0] = tf32_bits(k0.y);  // product 1: part column c + 2g + 1
          fa[i][1][1] = tf32_bits(k1.y);
        }
      }
#pragma unroll
      for (int i = 0; i < GR; ++i) {
#pragma unroll
        for (int j = 0; j < GR; ++j) {
          if (o_on[i] && c_on[j]) {
            mma_m16n8k8_tf32(acc[i][j][0], fg[i], fa[j][0]);
            mma_m16n8k8_tf32(acc[i][j][1], fg[i], fa[j][1]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < GR; ++i) {
#pragma unroll
      for (int j = 0; j < GR; ++j) {
        if (o_on[i] && c_on[j]) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            store_quad(quad(i, j, r), float4{acc[i][j][0][2 * r], acc[i][j][1][2 * r], acc[i][j][0][2 * r + 1],
                                             acc[i][j][1][2 * r + 1]});
          }
        }
      }
    }
  }
}

// Weight gradient of one layer, added to this block's part (global memory, nobody else's):
//   part[o][c] += sum_{m < rows} G[m][o] A[m][c]   for o < rows16, c < cols16,
// part row stride cols16 (see GradLayout). G (output-side gradients) and A (the layer's inputs)
// are stacks; `rows` is a multiple of 16, and G's rows from the last valid one up to `rows` are
// zero. Columns of G and A beyond the layer's true sizes only reach the part's padding. Ends with
// a barrier (the caller overwrites A next).
template <typename T, bool kTF32>
__device__ void block_weight_grad(const T* __restrict__ g, const T* __restrict__ a, int rows, T* __restrict__ part,
                                  int rows16, int cols16, const tile::TilePlan& plan) {
  g = in_shared(g);
  a = in_shared(a);
  const int ld = plan.ld;
  if constexpr (kTF32) {
    // 2 x 2 tiles per warp everywhere. On narrow layers (the output layer's 16 rows, the first
    // layer's 16 columns) that leaves half the warps idle, where single tiles would not; choosing
    // <1> there made the TF32 jko_block_loss kernel spill 20 bytes (ptxas, sm_80 and sm_90), and
    // those layers are a small share of the work.
    static_assert(sizeof(T) == 4, "TF32 products are for float");
    tf32_weight_grad<2>(g, a, rows, part, rows16, cols16, ld);
  } else {
    constexpr int TM = RegisterTile<T>::kRows, TN = RegisterTile<T>::kCols;
    int Tx = 32;  // as few column threads as cover cols16, so that narrow layers keep all busy
    while (Tx > 1 && (Tx / 2) * TN >= cols16) Tx /= 2;
    const int Ty = kThreads / Tx;
    const int ty = thread_index() / Tx, tx = thread_index() % Tx;
    for (int o0 = 0; o0 < rows16; o0 += Ty * TM) {
      for (int c0 = 0; c0 < cols16; c0 += Tx * TN) {
        int o[TM], c[TN];
        bool o_ok[TM], c_ok[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          o[i] = o0 + ty + i * Ty;
          o_ok[i] = o[i] < rows16;
        }
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          c[j] = c0 + tx + j * Tx;
          c_ok[j] = c[j] < cols16;
        }
        T acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
        }
        for (int m = 0; m < rows; ++m) {
          T gv[TM], av[TN];
#pragma unroll
          for (int i = 0; i < TM; ++i) gv[i] = o_ok[i] ? g[m * ld + o[i]] : T(0);
#pragma unroll
          for (int j = 0; j < TN; ++j) av[j] = c_ok[j] ? a[m * ld + c[j]] : T(0);
#pragma unroll
          for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fma(gv[i], av[j], acc[i][j]);
          }
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) {
            if (o_ok[i] && c_ok[j]) part[int64_t(o[i]) * cols16 + c[j]] += acc[i][j];
          }
        }
      }
    }
  }
  __syncthreads();
}

}  // namespace jkofast::cuda
