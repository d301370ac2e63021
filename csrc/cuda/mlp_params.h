// The bridge between the torch glue (*_cuda.cpp, compiled by the host compiler with ATen) and the
// kernels (*_kernel.cu, compiled by nvcc without ATen): plain parameter structs, passed to the
// kernels by value, and the launch functions the .cu files define.
//
// Layouts (row-major, B = batch, d = data dimension, k = probes, S = RK4 steps):
//   x, f, grad_x (B, d); t, div (B,) read through t_stride; probes (B, k, d) or (S, B, k, d);
//   weights[l] (out, in) as nn.Linear, contiguous; biases[l] (out,).
#pragma once

#if defined(JKOFAST_EMULATE_CUDA)  // the CPU emulation of tests/cuda_emulation/
using cudaStream_t = void*;
using cudaError_t = int;
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

#include "ops/activation_math.h"
#include "ops/rk4_math.h"
#include "ops/tile_plan.h"

namespace jkofast::cuda {

using tile::kMaxWeights;

template <typename T>
struct MlpView {
  const T* weights[kMaxWeights];  // the caller's tensors (made contiguous by the glue)
  const T* biases[kMaxWeights];
  int layers;                     // weight matrices: hidden layers + 1
  int dim, input_dim, hidden;     // d, d (+ 1 with a time input), H
  Activation activation;
  T beta;
};

// Where each block's weight-gradient partials live. Block g owns partials[g * per_block ...]:
// layer l's weight gradient as a (rows16[l], cols16[l]) row-major tile (its (out, in) shape
// rounded up to 16 so that tensor-core tiles never leave it) at weight_offset[l], its bias
// gradient (rows16[l] values) at bias_offset[l]. Nothing but the block writes its part; the
// reduction kernel sums the parts afterwards in a fixed order (deterministic, no atomics).
struct GradLayout {
  int64_t weight_offset[kMaxWeights];
  int64_t bias_offset[kMaxWeights];
  int rows16[kMaxWeights];
  int cols16[kMaxWeights];
  int64_t per_block;  // a multiple of 64 values, so every block's part is 256-byte aligned
};

// The layout of one block's part for a field with `layers` weight matrices.
inline GradLayout make_grad_layout(int64_t dim, int64_t input_dim, int64_t hidden, int64_t layers) {
  GradLayout layout{};
  int64_t offset = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t out = l == layers - 1 ? dim : hidden;
    const int64_t in = l == 0 ? input_dim : hidden;
    layout.rows16[l] = int(tile::round_up(out, 16));
    layout.cols16[l] = int(tile::round_up(in, 16));
    layout.weight_offset[l] = offset;  // a multiple of 256 values: 16 x 16 tiles stay aligned
    offset += int64_t(layout.rows16[l]) * layout.cols16[l];
  }
  for (int64_t l = 0; l < layers; ++l) {
    layout.bias_offset[l] = offset;
    offset += layout.rows16[l];
  }
  layout.per_block = tile::round_up(offset, 64);
  return layout;
}

// How many of its tiles a block's float part sums before BlockBackward::end_tile moves it into the
// block's double total. A move reads and writes 24 bytes per parameter (in L2, where the parts
// and totals of all blocks may not fit), against 8 per pass for the products' own updates of the
// part, so a move should follow several passes. The field's backward runs `chunks` passes per
// tile: it moves once about 8 passes have been summed (every 8 / chunks tiles, at least every
// tile). rk4_block and jko_block_loss run 4 x steps x chunks passes per tile (12 or more): they
// move after every tile. A part thus sums at most one tile, or the field's 8 passes; a tile of
// many steps and chunks is the long case (3 steps, 1 chunk: 12 passes), and float sums of ~660
// passes met the float32 rule only through its floor (tests/cuda_emulation/float32_at_scale.py).
inline constexpr int kFieldPassesPerTotal = 8;
inline constexpr int kRk4TilesPerTotal = 1;
JKO_HOST_DEVICE int field_tiles_per_total(const tile::TilePlan& plan) {
  return plan.chunks < kFieldPassesPerTotal ? kFieldPassesPerTotal / plan.chunks : 1;
}

// Whether the block `block` of `grid` (its tiles: block, block + grid, ...) moves its part after
// tile t: after every `every`-th of its tiles, and after its last.
JKO_HOST_DEVICE bool moves_part_after(int64_t t, int64_t tiles, int64_t block, int64_t grid, int every) {
  return ((t - block) / grid + 1) % every == 0 || t + grid >= tiles;
}

// Whether a float launch of `tiles` tiles on `grid` blocks needs totals: some block runs more than
// `every` tiles (otherwise each part sums at most `every` tiles anyway, and totals would double
// the parts' memory for nothing).
inline bool needs_totals(int64_t tiles, int64_t grid, int every) { return tile::ceil_div(tiles, grid) > every; }

enum class Divergence : int { None = 0, Exact = 1, Hutchinson = 2 };

// mlp_field / mlp_field_div and their backward.
template <typename T>
struct FieldParams {
  MlpView<T> net;
  tile::TilePlan plan;
  int64_t batch;
  const T* x;
  const T* t;          // nullptr: autonomous field
  int64_t t_stride;    // 0 for a scalar t expanded over the batch
  Divergence divergence;
  const T* probes;     // Hutchinson only
  int tangent_rows;    // r: 0, d (exact) or k (Hutchinson)
  // forward
  T* f;
  T* div;              // nullptr without divergence
  // backward
  const T* grad_f;
  const T* grad_div;   // nullptr without divergence
  T* grad_x;
  T* grad_t;           // nullptr without a time input
  T* scratch;          // per block: (layers - 1) stacks of rows x hidden pre-activations
  T* partials;         // per block: GradLayout::per_block values, the current tile's gradient
  double* totals;      // per block, the sum in double of its tiles' parts (needs_totals); or nullptr
  GradLayout layout;
};

// rk4_block and its backward.
template <typename T>
struct Rk4Params {
  MlpView<T> net;
  tile::TilePlan plan;
  int64_t batch;
  int steps;
  bool time;
  ButcherTableau tableau;
  double t0, dt;       // stage s of step n runs at t0 + n dt + c_s dt (computed in double)
  Divergence divergence;
  const T* probes;     // (S, B, k, d), Hutchinson only
  int tangent_rows;
  const T* x0;
  // forward outputs (x1 doubles as the running state)
  T* x1;
  T* logdet;
  T* kinetic;
  T* states;           // (S, B, d): x at each step's start
  T* stage_velocities; // workspace (4, B, d): k_s of the current step; (S, 4, B, d) when kept
  int64_t velocity_step_stride;  // 0, or 4 B d: every step keeps its own k's (jko_block_loss)
  // backward
  const T* grad_x1;
  const T* grad_logdet;
  const T* grad_kinetic;
  const T* saved_states;
  T* grad_x;           // doubles as the running gradient with respect to the step's x
  T* stage_input_grads;// workspace (4, B, d): d loss / d (stage s input)
  T* stage_grads;      // workspace (B, d): d loss / d k_s of the stage being differentiated
  T* scratch;
  T* partials;
  double* totals;
  GradLayout layout;
};

// jko_block_loss: one JKO-iFlow block's training loss and its gradients in one launch (plus the
// gradient reduction). rk4 holds the integration and its backward: x1 is a (B, d) workspace,
// stage_velocities (S, 4, B, d) with velocity_step_stride = 4 B d, grad_x the output d loss/d x0;
// grad_x1, grad_logdet, grad_kinetic are unused (the loss fixes them).
template <typename T>
struct JkoLossParams {
  Rk4Params<T> rk4;
  T endpoint_weight, path_weight;  // the loss: mean(|x1|^2/2 - logdet + ew |x1 - x0|^2 + pw kinetic)
  T* terms;                        // (B, 4): |x1|^2 / 2, logdet, |x1 - x0|^2, kinetic
};

// The gradient reduction: grad_weights[l] = sum over blocks of their parts (of their double
// totals where there are), cut to (out, in).
template <typename T>
struct ReduceParams {
  const T* partials;
  const double* totals;  // nullptr: sum the partials
  int blocks;
  GradLayout layout;
  int layers;
  int out_rows[kMaxWeights], out_cols[kMaxWeights];
  T* grad_weights[kMaxWeights];
  T* grad_biases[kMaxWeights];
};

// Each kernel family (mlp_field_kernel_fp*.cu, rk4_block_kernel_fp*.cu,
// jko_block_loss_kernel_fp*.cu) provides, per element type: *_occupancy, which reports how many
// of its blocks with smem_bytes of dynamic shared memory fit on one multiprocessor of the current
// device (0: none; launch.cuh), and launch_*, which launches `grid` blocks on `stream` (every
// kernel loops over its tiles; the caller checks the launch with C10_CUDA_KERNEL_LAUNCH_CHECK).
// tf32 selects the tensor-core products (float only).
template <typename T>
cudaError_t mlp_field_occupancy(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm);
template <typename T>
void launch_mlp_field(const FieldParams<T>& p, bool backward, bool tf32, int grid, cudaStream_t stream);
template <typename T>
cudaError_t rk4_block_occupancy(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm);
template <typename T>
void launch_rk4_block(const Rk4Params<T>& p, bool backward, bool tf32, int grid, cudaStream_t stream);
template <typename T>
cudaError_t jko_block_loss_occupancy(bool tf32, int64_t smem_bytes, int* blocks_per_sm);
template <typename T>
void launch_jko_block_loss(const JkoLossParams<T>& p, bool tf32, int grid, cudaStream_t stream);
template <typename T>
void launch_grad_reduce(const ReduceParams<T>& p, cudaStream_t stream);

}  // namespace jkofast::cuda
