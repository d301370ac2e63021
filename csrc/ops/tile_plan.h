// How the CUDA kernels tile a batch: the limits they accept (the fit rule that
// jkofast/_backend.py mirrors), and the shared-memory plan of one thread block. Torch-free and
// CUDA-free, so the glue, the kernels and their CPU emulation (tests/test_cuda_emulation.py) all
// compute the same plan.
//
// A thread block owns a tile of `samples` samples and keeps two "stacks" in shared memory, each
// `rows` x `ld` values, row-major: row b * (1 + C) is sample b's primal row, rows b * (1 + C) + 1
// .. b * (1 + C) + C its C tangent rows (the directional derivatives along C seeds: unit vectors
// for the exact trace, the caller's probes for Hutchinson). Each layer is one block-wide matrix
// product from one stack into the other, the weights streamed through a double-buffered shared
// "stage" of stage_rows x stage_ld values. When the r = d (or k) tangent rows do not fit beside
// the primal rows, they go in `chunks` passes of C rows, each pass recomputing the (cheap)
// primal row: each tangent row only needs its sample's sigma' of every layer.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace jkofast::tile {

// ---------------------------------------------------------------------------------------- limits
// The CUDA ops take d <= kMaxDim, hidden width <= kMaxHidden and at most kMaxWeights weight
// matrices (hidden layers + 1), any batch and any number of Hutchinson probes. Within these the
// smallest plan fits kMinSmemBudget (the static_asserts below; tests/test_cuda_emulation.py checks
// many sizes), so every GPU of compute capability >= 8.0 runs every fitting call; beyond them
// jkofast falls back to the reference (backend="auto") or refuses (backend="compiled").
inline constexpr int64_t kMaxDim = 128;
inline constexpr int64_t kMaxHidden = 512;
inline constexpr int64_t kMaxWeights = 16;  // the weight pointers travel in the kernel parameters
// 99 KB: the smallest opt-in shared memory per block among the GPUs our sm_80 code runs on
// (sm_86, sm_87, sm_89 and sm_120 parts; sm_80 gives 163 KB, sm_90 227 KB).
inline constexpr int64_t kMinSmemBudget = 99 * 1024;

// ------------------------------------------------------------------------------- block constants
inline constexpr int kThreads = 256;   // 8 warps per block, every kernel
inline constexpr int kSkew = 4;        // padding per stack row: spreads banks, keeps 16-byte rows
inline constexpr int kWidthAlign = 32; // stack widths: whole 32-column tiles for every product
inline constexpr int kSampleSlots = 8; // per-sample scalars in smem (divergence sums, logdet, ...)
inline constexpr int kMaxRows = 128;

// Outputs of one pass of a block-wide product (rows x chunk_cols): 32 float accumulators per
// thread (a 4 x 8 register tile; or 8 warps x four 16 x 16 TF32 fragments), 16 for double.
JKO_HOST_DEVICE constexpr int out_area(int itemsize) { return itemsize == 8 ? 4096 : 8192; }
// Weight values staged per step: 16 float or 4 double registers per thread in flight.
JKO_HOST_DEVICE constexpr int stage_elems(int itemsize) { return itemsize == 8 ? 1024 : 4096; }
// Padding per stage row: 32 bytes (8 floats, 4 doubles), so that stage_ld is 8 words past a
// multiple of 32 and the 8 x 4 lanes of a TF32 B-fragment load (lane reads row lane % 4, column
// lane / 4: mma.m16n8k8's layout, csrc/cuda/mma_tf32.cuh: tf32_b_offset) hit 32
// distinct banks; the stack's 4-value skew would put rows k and k + 1 four banks apart, a 2-way
// conflict on every B load. (The stacks keep kSkew: A fragments read row lane / 4, column
// lane % 4, which that skew serves.)
JKO_HOST_DEVICE constexpr int stage_skew(int itemsize) { return 32 / itemsize; }
// Fewest stack rows: one 16-row tensor-core tile (float); 8 rows for double (SIMT only), which
// keeps width 512 within kMinSmemBudget.
JKO_HOST_DEVICE constexpr int min_rows(int itemsize) { return itemsize == 8 ? 8 : 16; }

JKO_HOST_DEVICE constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
JKO_HOST_DEVICE constexpr int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }
JKO_HOST_DEVICE constexpr int log2_exact(int64_t v) {
  int s = 0;
  while ((int64_t(1) << s) < v) ++s;
  return s;
}

struct TilePlan {
  int rows;         // stack rows M: 8 (double only), 16, 32, 64 or 128
  int width;        // logical width: max(hidden, input_dim, dim) rounded up to kWidthAlign
  int ld;           // stack row stride, width + kSkew
  int chunk_cols;   // output columns per pass of a product: out_area / rows (a power of two)
  int stage_rows;   // reduction rows staged per step: stage_elems / chunk_cols (a power of two)
  int stage_ld;     // stage row stride, chunk_cols + stage_skew
  int chunk_cols_log2, stage_rows_log2;
  int tangents;     // C: tangent rows per sample per pass (0: the field alone)
  int chunks;       // passes over the tangent rows (1 without tangents)
  int samples;      // n: samples per tile, rows / (1 + C)
  int64_t stack_bytes, stage_bytes, slots_bytes, smem_bytes;
};

// The plan with `rows` stack rows for a field of data dimension `dim`, first-layer input
// `input_dim` (dim + 1 with a time input), width `hidden`, and `tangent_rows` tangent rows per
// sample (0: field alone; dim: exact trace; k: Hutchinson probes).
JKO_HOST_DEVICE constexpr TilePlan make_plan(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows,
                                             int itemsize, int rows) {
  TilePlan p{};
  p.rows = rows;
  int64_t widest = hidden > input_dim ? hidden : input_dim;
  widest = widest > dim ? widest : dim;
  p.width = int(round_up(widest, kWidthAlign));
  p.ld = p.width + kSkew;
  p.chunk_cols = out_area(itemsize) / rows;
  p.stage_rows = stage_elems(itemsize) / p.chunk_cols;
  p.stage_ld = p.chunk_cols + stage_skew(itemsize);
  p.chunk_cols_log2 = log2_exact(p.chunk_cols);
  p.stage_rows_log2 = log2_exact(p.stage_rows);
  if (tangent_rows > 0) {
    // As few passes as the rows allow, then the tangent rows spread evenly over them.
    p.chunks = int(ceil_div(tangent_rows, rows - 1));
    p.tangents = int(ceil_div(tangent_rows, p.chunks));
  } else {
    p.chunks = 1;
    p.tangents = 0;
  }
  p.samples = rows / (1 + p.tangents);
  p.stack_bytes = round_up(int64_t(rows) * p.ld * itemsize, 128);
  p.stage_bytes = round_up(int64_t(p.stage_rows) * p.stage_ld * itemsize, 128);
  p.slots_bytes = round_up(int64_t(kSampleSlots) * p.samples * itemsize, 128);
  p.smem_bytes = 2 * p.stack_bytes + 2 * p.stage_bytes + p.slots_bytes;
  return p;
}

// Where element e (0 <= e < stage_elems) of a staged weight chunk lives: stage row q (reduction
// index) and stage column p (output column), at stage[q * stage_ld + p]. Each thread reads its
// elements from global memory and stores them to the stage in this order, and consecutive e are
// the lanes of a warp, so the order decides both the global reads' sectors and the stores' banks.
//   Direct (B = W[q][p], contiguous in p): p fastest, 32 consecutive values per warp.
//   Transposed (B = W[p][q], contiguous in q): 4 consecutive q, then 32 bytes of consecutive p
//   (8 floats or 4 doubles), then the rest of q, then of p. stage_ld is 32 bytes past a multiple
//   of 128 (stage_skew), so the 4 rows start 8 banks apart and the columns fill the banks between:
//   every store of a warp (of a half-warp for double, which the hardware serves separately) hits
//   each bank once. The reads take 16-byte (float) or 32-byte (double) runs of a weight row:
//   the weights come from L2, and shared memory is the resource the products run short of.
// Checked by tests/test_cuda_emulation.py (a bijection, and the banks of every store).
JKO_HOST_DEVICE constexpr void stage_position(int e, bool transposed, const TilePlan& plan, int itemsize, int& q,
                                              int& p) {
  if (!transposed) {
    p = e & (plan.chunk_cols - 1);
    q = e >> plan.chunk_cols_log2;
    return;
  }
  const int q_lo_bits = plan.stage_rows_log2 < 2 ? plan.stage_rows_log2 : 2;
  const int p_lo_bits = itemsize == 8 ? 2 : 3;  // chunk_cols >= 32: these columns always exist
  const int q_hi_bits = plan.stage_rows_log2 - q_lo_bits;
  const int q_lo = e & ((1 << q_lo_bits) - 1);
  const int p_lo = (e >> q_lo_bits) & ((1 << p_lo_bits) - 1);
  const int rest = e >> (q_lo_bits + p_lo_bits);
  q = ((rest & ((1 << q_hi_bits) - 1)) << q_lo_bits) | q_lo;
  p = ((rest >> q_hi_bits) << p_lo_bits) | p_lo;
}

// The most stack rows whose plan fits `budget` bytes of shared memory, or 0 if none does.
JKO_HOST_DEVICE constexpr int choose_rows(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows,
                                          int itemsize, int64_t budget) {
  for (int rows = kMaxRows; rows >= min_rows(itemsize); rows /= 2) {
    if (make_plan(dim, input_dim, hidden, tangent_rows, itemsize, rows).smem_bytes <= budget) return rows;
  }
  return 0;
}

// The tile plan and grid of a launch over `batch` samples on a GPU with `multiprocessors` SMs
// and `smem_per_block` bytes of shared memory per block (cuda/cuda_glue.cpp: plan_launch; here,
// free of torch and CUDA, for the emulation tests). occupancy(smem_bytes): the kernel's resident
// blocks per multiprocessor at that shared memory (0: none). The rows:
// - forced_rows > 0, exact_rows (JKOFAST_CUDA_ROWS): those rows, if their plan fits;
// - forced_rows > 0, not exact_rows (the kernel check's override, launch_override.h): the most
//   rows <= forced_rows that fit, forced_rows clamped to [min_rows, kMaxRows];
// - else the most rows whose tiles still fill the GPU twice over (the last wave of a persistent
//   grid stays short), else the fewest rows that fit (the most tiles).
// The grid: every tile a block, up to the resident blocks (the kernels loop over their tiles),
// at most grid_cap where > 0; 0 when the chosen plan has no resident block. found: some plan fit.
struct LaunchChoice {
  TilePlan plan;
  int64_t grid;
  bool found;
};

template <typename Occupancy>
LaunchChoice choose_launch(int64_t dim, int64_t input_dim, int64_t hidden, int64_t tangent_rows, int itemsize,
                           int64_t batch, int64_t smem_per_block, int multiprocessors, Occupancy&& occupancy,
                           int forced_rows, bool exact_rows, int grid_cap) {
  LaunchChoice c{};
  int per_sm = 0;  // the chosen plan's resident blocks per multiprocessor
  if (forced_rows > 0 && exact_rows) {
    c.plan = make_plan(dim, input_dim, hidden, tangent_rows, itemsize, forced_rows);
    c.found = c.plan.smem_bytes <= smem_per_block;
    per_sm = c.found ? occupancy(c.plan.smem_bytes) : 0;
  } else {
    const int most = forced_rows <= 0 ? kMaxRows : forced_rows < min_rows(itemsize) ? min_rows(itemsize) : forced_rows;
    for (int rows = kMaxRows; rows >= min_rows(itemsize); rows /= 2) {
      if (rows > most) continue;
      const TilePlan plan = make_plan(dim, input_dim, hidden, tangent_rows, itemsize, rows);
      if (plan.smem_bytes > smem_per_block) continue;
      const int blocks = occupancy(plan.smem_bytes);
      if (blocks == 0) continue;
      c.plan = plan;
      c.found = true;
      per_sm = blocks;
      // forced: the most rows <= forced_rows; else the most whose tiles fill the GPU twice over
      if (forced_rows > 0 || ceil_div(batch, plan.samples) >= 2 * int64_t(blocks) * multiprocessors) break;
    }
  }
  if (!c.found) return c;
  const int64_t tiles = ceil_div(batch, c.plan.samples);
  const int64_t resident = int64_t(per_sm) * multiprocessors;
  c.grid = tiles < resident ? tiles : resident;
  if (grid_cap > 0 && c.grid > grid_cap) c.grid = grid_cap;
  return c;
}

// Whether the sizes are within the limits above (the fit rule).
JKO_HOST_DEVICE constexpr bool within_limits(int64_t dim, int64_t hidden, int64_t weights) {
  return dim >= 1 && dim <= kMaxDim && hidden >= 1 && hidden <= kMaxHidden && weights >= 2 && weights <= kMaxWeights;
}

// The widest case, with tangent rows (exact trace, d = 128) and without: the smallest plan must
// fit the smallest budget, or the limits above would promise what the kernels cannot do.
static_assert(choose_rows(kMaxDim, kMaxDim + 1, kMaxHidden, kMaxDim, 4, kMinSmemBudget) > 0);
static_assert(choose_rows(kMaxDim, kMaxDim + 1, kMaxHidden, kMaxDim, 8, kMinSmemBudget) > 0);
static_assert(choose_rows(kMaxDim, kMaxDim + 1, kMaxHidden, 0, 4, kMinSmemBudget) > 0);
static_assert(choose_rows(kMaxDim, kMaxDim + 1, kMaxHidden, 0, 8, kMinSmemBudget) > 0);

}  // namespace jkofast::tile
