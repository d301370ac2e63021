// The CUDA engine under all three ops: the MLP field with its forward-mode tangent rows on a tile
// of samples that stays in shared memory through every layer, and the backward of one such
// evaluation. csrc/cpu/mlp_tile_cpu.h is the CPU counterpart; both call ops/activation_math.h.
//
// A pass works on n = plan.samples samples of R = 1 + C rows each (layout in ops/tile_plan.h):
// the rows of the two stacks hold, in turn, the layer-0 inputs [x, t] / [seed, 0], each hidden
// layer's pre-activations and activations, the output rows, and in the backward the gradients
// with respect to all of these. Rows past n * R and padding columns are kept finite (zero, or
// stale values of earlier finite computations); every product pairs them with zeros only, so
// they never reach a result.
//
// Backward of a pass (sum(grad_f * f) + sum(grad_div * div) on the pass's rows): the forward
// first runs with `save`, storing every hidden layer's pre-activation rows (z and the tangent
// rows' dz) in the block's global scratch (L2-resident: rows x hidden values per layer). Then
// the layers are walked back, one product per direction per layer:
//   output rows:  g_f on primal rows, scale * grad_div * seed_i on tangent row i;
//   layer l:      tangent rows  g_i <- sigma'(z) g_i,
//                 primal row    g_0 <- sigma'(z) g_0 + sigma''(z) sum_i dz_i g_i,
//                 bias += sum over primal rows of g_0,  W_l += G^T A_{l-1},  G <- G W_l.
// Passes over tangent chunks are independent terms of one sum: every pass differentiates its own
// tangent rows, and its primal rows carry only that pass's sigma'' terms (grad_f enters the
// first pass alone), so the gradients of the passes add up to the gradient of the whole field.
#pragma once

#include "cuda/block_gemm.cuh"
#include "cuda/mlp_params.h"

namespace jkofast::cuda {

template <typename T>
__device__ __forceinline__ ActivationValues<T> activate(Activation kind, T z, T beta) {
  // A warp-uniform branch per element; the elementwise passes are a small share of the work.
  switch (kind) {
    case Activation::Tanh: return activation<Activation::Tanh>(z, beta);
    case Activation::Silu: return activation<Activation::Silu>(z, beta);
    default: return activation<Activation::Softplus>(z, beta);
  }
}

// This block's share of a backward launch's buffers (mlp_params.h): its gradient part and, for
// float with several tiles per block, its double total, both zeroed here, and its scratch for one
// pass's pre-activations.
// Construct it before Tile::zero_stacks(), whose barrier publishes the zeroed part to the block.
//
// Why a total: a block's float part would otherwise sum every tile it runs, pass by pass (at batch
// 128k on an H100 about 55 tiles x 12 stage evaluations x 3 layers), and float sums that long lose
// more than torch's blocked reductions (tests/cuda_emulation/float32_at_scale.py measured bias
// gradients at 20x torch float32's error with 1024 tiles per block). end_tile() moves the part
// into the double total and zeroes it every few tiles (mlp_params.h: field_tiles_per_total,
// kRk4TilesPerTotal), so float sums stay short; csrc/cpu/mlp_tile_cpu.h (GradShare) does the same
// on the CPU.
// (The totals pointer and the size are read from the kernel's parameters, not kept here: members
// live in registers through the tile loop, and the float SIMT jko_block_loss kernel has none spare.)
template <typename T>
struct BlockBackward {
  T* part;
  T* save;
  __device__ BlockBackward(T* partials, double* totals, T* scratch, const GradLayout& layout,
                           const MlpView<T>& net, const tile::TilePlan& plan)
      : part(partials + blockIdx.x * layout.per_block),
        save(scratch + int64_t(blockIdx.x) * (net.layers - 1) * plan.rows * net.hidden) {
    for (int64_t e = thread_index(); e < layout.per_block; e += kThreads) part[e] = T(0);
    if (totals != nullptr) {
      double* total = totals + blockIdx.x * layout.per_block;
      for (int64_t e = thread_index(); e < layout.per_block; e += kThreads) total[e] = 0.0;
    }
  }

  // After a tile's backward (which ends with a barrier), when `move` (moves_part_after: uniform
  // across the block): the part into the block's total (totals and layout: the launch's), zeroed
  // for the next tiles. Ends with a barrier, as the next tile's products update the part from
  // other threads. Nothing to do without totals (double, or few tiles per block: needs_totals).
  __device__ void end_tile(double* totals, const GradLayout& layout, bool move) const {
    if (totals == nullptr || !move) return;
    double* total = totals + blockIdx.x * layout.per_block;
    for (int64_t e = thread_index(); e < layout.per_block; e += kThreads) {
      total[e] += double(part[e]);
      part[e] = T(0);
    }
    __syncthreads();
  }
};

template <typename T, bool kTF32>
class Tile {
 public:
  __device__ Tile(const MlpView<T>& net, const tile::TilePlan& plan, unsigned char* smem)
      : net_(net), plan_(plan) {
    stacks_[0] = reinterpret_cast<T*>(smem);
    stacks_[1] = reinterpret_cast<T*>(smem + plan.stack_bytes);
    stage_[0] = reinterpret_cast<T*>(smem + 2 * plan.stack_bytes);
    stage_[1] = reinterpret_cast<T*>(smem + 2 * plan.stack_bytes + plan.stage_bytes);
    slots_ = reinterpret_cast<T*>(smem + 2 * plan.stack_bytes + 2 * plan.stage_bytes);
  }

  __device__ const tile::TilePlan& plan() const { return plan_; }
  __device__ T* stack(int i) const { return stacks_[i]; }
  __device__ T* other(const T* s) const { return s == stacks_[0] ? stacks_[1] : stacks_[0]; }
  // Per-sample scalars: slot s of the tile's n samples (s < tile::kSampleSlots).
  __device__ T* slots(int s) const { return slots_ + s * plan_.samples; }

  // Shared memory starts as garbage, possibly NaN bit patterns: zero both stacks once.
  __device__ void zero_stacks() {
    const int count = plan_.rows * plan_.ld;
    for (int e = thread_index(); e < count; e += kThreads) {
      stacks_[0][e] = T(0);
      stacks_[1][e] = T(0);
    }
    __syncthreads();
  }

  // Layer-0 input rows into stack u for `valid` samples and passes of C tangent rows starting at
  // tangent `first` (of r): primal row b = [primal(b, j) for j < input_dim], tangent row (b, i) =
  // [seed(b, first + i - 1, j) for j < dim, 0]; zeros everywhere else.
  template <class Primal, class Seed>
  __device__ void build_input(T* u, int valid, int C, int first, int r, Primal&& primal, Seed&& seed) const {
    const int R = 1 + C, used = plan_.samples * R;
    const int cols = int(tile::round_up(net_.input_dim, 16));
    for (int e = thread_index(); e < plan_.rows * cols; e += kThreads) {
      const int row = e / cols, col = e - row * cols;
      T value = T(0);
      if (row < used && col < net_.input_dim) {
        const int b = row / R, i = row - b * R;
        if (b < valid) {
          if (i == 0) {
            value = primal(b, col);
          } else if (col < net_.dim && first + i - 1 < r) {
            value = seed(b, first + i - 1, col);
          }
        }
      }
      u[row * plan_.ld + col] = value;
    }
    __syncthreads();
  }

  // The hidden layers from the input stack u; returns the stack holding the last hidden layer's
  // activation rows (the other stack is free). save: scratch for the backward, or nullptr.
  __device__ T* hidden_layers(T* u, int C, T* save) const {
    T* in = u;
    T* out = other(u);
    const int active = rows_active(C);
    for (int l = 0; l + 1 < net_.layers; ++l) {
      const int q = l == 0 ? net_.input_dim : net_.hidden;
      block_product<T, kTF32>(in, out, net_.weights[l], Operand::Transposed, q, net_.hidden, active, stage_, plan_);
      activate_rows(out, l, C, save != nullptr ? save + layer_scratch(l) : nullptr);
      T* done = out;
      out = in;
      in = done;
    }
    return in;
  }

  // The output layer's rows (without its bias) into `out`: f on primal rows, J seed on tangent rows.
  __device__ void output_layer(const T* a, T* out, int C) const {
    const int last = net_.layers - 1;
    block_product<T, kTF32>(a, out, net_.weights[last], Operand::Transposed, net_.hidden, net_.dim, rows_active(C),
                            stage_, plan_);
  }

  // From the output rows: store_f(b, j, f_bj) for the valid samples (if with_f), and
  // div_sum[b] += scale * sum_i seed_i . (J seed_i) over this pass's tangent rows.
  template <class StoreF, class Seed>
  __device__ void read_outputs(const T* out, int valid, int C, int first, int r, bool exact, T scale, bool with_f,
                               StoreF&& store_f, Seed&& seed, T* div_sum) const {
    out = in_shared(out);  // (as in activate_rows)
    const int R = 1 + C, d = net_.dim, ld = plan_.ld;
    if (with_f) {
      const T* bias = net_.biases[net_.layers - 1];
      for (int e = thread_index(); e < valid * d; e += kThreads) {
        const int b = e / d, j = e - b * d;
        store_f(b, j, out[b * R * ld + j] + __ldg(bias + j));
      }
    }
    if (C > 0) {
      const int lane = thread_index() % 32;
      for (int b = thread_index() / 32; b < valid; b += kWarps) {  // a warp per sample
        const T* rows = out + (b * R + 1) * ld;
        T sum = T(0);
        if (exact) {  // seed_i = e_i: the diagonal of the Jacobian
          for (int i = lane; i < C; i += 32) {
            if (first + i < r) sum += rows[i * ld + first + i];
          }
        } else {
          for (int e = lane; e < C * d; e += 32) {
            const int i = e / d, j = e - i * d;
            if (first + i < r) sum += seed(b, first + i, j) * rows[i * ld + j];
          }
        }
        sum = warp_sum(sum);
        if (lane == 0) div_sum[b] += scale * sum;
      }
    }
    __syncthreads();
  }

  // Output-gradient rows into stack g: primal row b = grad_f(b, j) (first pass only: with_f),
  // tangent row (b, i) = grad_div(b) * seed_i, where grad_div(b) includes the divergence scale.
  template <class GradF, class GradDiv, class Seed>
  __device__ void build_output_grads(T* g, int valid, int C, int first, int r, bool with_f, GradF&& grad_f,
                                     GradDiv&& grad_div, Seed&& seed) const {
    const int R = 1 + C, used = plan_.samples * R, d = net_.dim;
    const int cols = int(tile::round_up(d, 16));
    for (int e = thread_index(); e < plan_.rows * cols; e += kThreads) {
      const int row = e / cols, col = e - row * cols;
      T value = T(0);
      if (row < used && col < d) {
        const int b = row / R, i = row - b * R;
        if (b < valid) {
          if (i == 0) {
            if (with_f) value = grad_f(b, col);
          } else if (first + i - 1 < r) {
            value = grad_div(b) * seed(b, first + i - 1, col);
          }
        }
      }
      g[row * plan_.ld + col] = value;
    }
    __syncthreads();
  }

  // The backward of a pass whose forward ran hidden_layers(u, C, save) and left the last hidden
  // activations in stack a, with the output-gradient rows in the other stack. Adds the weight and
  // bias gradients to `part` and returns the stack holding the gradients with respect to the
  // layer-0 input rows (primal row b: [d loss/d x_b, d loss/d t_b]). rebuild(stack) writes the
  // layer-0 input rows again (exactly as the forward's build_input did).
  template <class Rebuild>
  __device__ T* backward_layers(T* a, int C, const T* save, T* part, const GradLayout& layout,
                                Rebuild&& rebuild) const {
    const int last = net_.layers - 1, H = net_.hidden, R = 1 + C;
    const int active = rows_active(C);
    T* g = other(a);
    add_bias_grad(g, R, net_.dim, part + layout.bias_offset[last]);
    block_weight_grad<T, kTF32>(g, a, active, part + layout.weight_offset[last], layout.rows16[last],
                                layout.cols16[last], plan_);
    block_product<T, kTF32>(g, a, net_.weights[last], Operand::Direct, net_.dim, H, active, stage_, plan_);
    T* grad = a;      // d loss / d (last hidden activation rows)
    T* inputs = g;    // free: receives each layer's input rows in turn
    for (int l = last - 1; l >= 0; --l) {
      activation_backward(grad, l, R, save + layer_scratch(l));  // grad: d loss / d (layer l pre-activations)
      add_bias_grad(grad, R, H, part + layout.bias_offset[l]);
      if (l > 0) {
        recompute_activation(inputs, l - 1, R, save + layer_scratch(l - 1));
      } else {
        rebuild(inputs);
      }
      block_weight_grad<T, kTF32>(grad, inputs, active, part + layout.weight_offset[l], layout.rows16[l],
                                  layout.cols16[l], plan_);
      const int in_width = l == 0 ? net_.input_dim : H;
      block_product<T, kTF32>(grad, inputs, net_.weights[l], Operand::Direct, H, in_width, active, stage_, plan_);
      T* next = inputs;  // d loss / d (layer l's input rows)
      inputs = grad;
      grad = next;
    }
    return grad;
  }

  // Rows of a pass with C tangent rows per sample that the products must compute (whole 16-row
  // tiles: the tensor-core granularity).
  __device__ int rows_active(int C) const {
    const int rows = int(tile::round_up(plan_.samples * (1 + C), 16));
    return rows < plan_.rows ? rows : plan_.rows;  // 8-row double plans: all 8
  }

 private:
  __device__ int64_t layer_scratch(int l) const { return int64_t(l) * plan_.rows * net_.hidden; }

  // z += bias on primal rows; a = sigma(z) there, tangent rows scaled by sigma'(z) of their sample.
  __device__ void activate_rows(T* z, int l, int C, T* save) const {
    z = in_shared(z);  // (the tangent rows' loads and stores: LDS / STS, not generic: block_stage.cuh)
    const int R = 1 + C, H = net_.hidden, ld = plan_.ld;
    const T* bias = net_.biases[l];
    for (int e = thread_index(); e < plan_.samples * H; e += kThreads) {
      const int b = e / H, h = e - b * H;
      T* column = z + b * R * ld + h;
      const T pre = column[0] + __ldg(bias + h);
      const auto v = activate(net_.activation, pre, net_.beta);
      column[0] = v.value;
      if (save != nullptr) save[(b * R) * H + h] = pre;
      for (int i = 1; i < R; ++i) {
        const T dz = column[i * ld];
        if (save != nullptr) save[(b * R + i) * H + h] = dz;
        column[i * ld] = v.d1 * dz;
      }
    }
    __syncthreads();
  }

  // The layer-l activation rows again, from the saved pre-activations.
  __device__ void recompute_activation(T* dst, int l, int R, const T* saved) const {
    dst = in_shared(dst);  // (as in activate_rows)
    const int H = net_.hidden, ld = plan_.ld;
    for (int e = thread_index(); e < plan_.samples * H; e += kThreads) {
      const int b = e / H, h = e - b * H;
      const T* zs = saved + (b * R) * H + h;
      T* column = dst + b * R * ld + h;
      const auto v = activate(net_.activation, zs[0], net_.beta);
      column[0] = v.value;
      for (int i = 1; i < R; ++i) column[i * ld] = v.d1 * zs[i * H];
    }
    __syncthreads();
  }

  // In place, d loss/d a -> d loss/d z for layer l (see the header comment).
  __device__ void activation_backward(T* g, int l, int R, const T* saved) const {
    g = in_shared(g);  // (as in activate_rows)
    const int H = net_.hidden, ld = plan_.ld;
    for (int e = thread_index(); e < plan_.samples * H; e += kThreads) {
      const int b = e / H, h = e - b * H;
      const T* zs = saved + (b * R) * H + h;
      T* column = g + b * R * ld + h;
      const auto v = activate(net_.activation, zs[0], net_.beta);
      T cross = T(0);
      for (int i = 1; i < R; ++i) {
        const T gi = column[i * ld];
        cross += zs[i * H] * gi;
        column[i * ld] = v.d1 * gi;
      }
      column[0] = v.d1 * column[0] + v.d2 * cross;
    }
    __syncthreads();
  }

  // bias gradient += sum over the tile's primal rows (zero for invalid samples) of g[., 0..N).
  __device__ void add_bias_grad(const T* g, int R, int N, T* part_bias) const {
    g = in_shared(g);  // (as in activate_rows)
    for (int h = thread_index(); h < N; h += kThreads) {
      T sum = T(0);
      for (int b = 0; b < plan_.samples; ++b) sum += g[b * R * plan_.ld + h];
      part_bias[h] += sum;
    }
    // No barrier: g is only read until the next barrier-ended step.
  }

  const MlpView<T>& net_;
  const tile::TilePlan& plan_;
  T* stacks_[2];
  T* stage_[2];
  T* slots_;
};

}  // namespace jkofast::cuda
