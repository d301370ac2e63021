// Block-wide matrix products on the shared-memory stacks of csrc/ops/tile_plan.h, the only
// arithmetic-heavy code of the kernels. Two implementations of the same contract:
//   SIMT:  every thread accumulates a kRows x kCols register tile with FMAs (float and double);
//   TF32:  every warp accumulates four 16 x 16 tiles, 2 x 2 (1 x 4 on 16-row stacks and narrow
//          products), each two tensor-core products mma.sync m16n8k8 (block_gemm_tf32.cuh), for
//          float when the caller allows TF32.
// The weights reach both through the stage of block_stage.cuh.
#pragma once

#include <type_traits>

#include "cuda/block_gemm_tf32.cuh"
#include "cuda/block_stage.cuh"
#include "ops/tile_plan.h"

namespace jkofast::cuda {

// Blocks per multiprocessor that the kernels' __launch_bounds__ promise: 1 lets a thread use up
// to 255 registers, which the register tiles of the products take (ptxas: 150 to 255 registers,
// no spills); 2 caps them at 128, which spilled 136 to 492 bytes when tried. Shared memory allows
// 1 or 2 blocks anyway. A tuning knob: -DJKOFAST_CUDA_MIN_BLOCKS=2.
#ifndef JKOFAST_CUDA_MIN_BLOCKS
#define JKOFAST_CUDA_MIN_BLOCKS 1
#endif

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
