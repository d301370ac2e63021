// The TF32 tensor-core paths of block_gemm.cuh's products, on mma.sync m16n8k8 (mma_tf32.cuh:
// float inputs rounded to TF32, float accumulators): tf32_block_product for block_product and
// tf32_weight_grad for block_weight_grad. Same contracts as those; float only.
#pragma once

#include "cuda/block_stage.cuh"
#include "cuda/mma_tf32.cuh"

namespace jkofast::cuda {

// The TF32 path of block_product (block_gemm.cuh): each warp accumulates FR x (4 / FR) tiles of 16 x 16
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

// The TF32 path of block_weight_grad (block_gemm.cuh), on mma.sync (mma_tf32.cuh): part[o][c] +=
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

}  // namespace jkofast::cuda
