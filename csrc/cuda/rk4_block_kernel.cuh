// Kernels of jkofast::rk4_block (forward and backward), templated on the element type and the
// TF32 switch; rk4_block_kernel_fp32.cu and _fp64.cu instantiate them.
//
// One launch runs all S steps and their 4 stages for every tile of samples: the field and its
// tangent rows stay in shared memory (mlp_tile.cuh), the per-sample sums (log-determinant,
// kinetic energy, the stages' divergences) in shared slots. The running x lives in x1 (the
// output, (B, d)) and the stage velocities in a (4, B, d) workspace ((S, 4, B, d) where every
// step keeps its own: velocity_step_stride), rows that only this block touches: O(d) values per sample and stage beside the O(H^2 (1 + r)) of the field's products.
//
// The arithmetic follows csrc/cpu/rk4_block_cpu.cpp term by term (ops/rk4_math.h): stage s of
// step n runs at T(t0 + n dt + c_s dt), its input is x + T(dt) sum_q T(a_sq) k_q, and
//   x += T(dt) sum_s T(b_s) k_s,  kinetic += T(|dt|) sum_s T(b_s) |k_s|^2,
//   logdet += T(dt) sum_s T(b_s) div_s.
// Backward (per tile, steps in reverse): recompute the step's 4 stage velocities (field alone),
// then for stage 3..0 form d loss/d k_s from the running gradient, the kinetic term and the later
// stages' input gradients, and differentiate that stage's field evaluation (with its tangent
// rows, in chunks) into d loss/d (stage input) and the weight gradients.
// rk4_tile_forward and rk4_tile_backward are the per-tile halves, shared with the fused training
// kernel of jko_block_loss_kernel.cuh.
#pragma once

#include <cmath>

#include "cuda/mlp_tile.cuh"

namespace jkofast::cuda {

template <typename T>
struct Rk4Inputs {
  const Rk4Params<T>& p;
  int64_t b0;

  __device__ int64_t plane() const { return p.batch * p.net.dim; }  // values per (B, d) array
  __device__ T stage_time(int step, int s) const {
    return T(p.t0 + double(step) * p.dt + p.tableau.c[s] * p.dt);
  }
  // The k_s of a step: 4 (B, d) arrays, a plane apart (the same workspace for every step, unless
  // the caller keeps every step's: velocity_step_stride = 4 B d).
  __device__ T* velocities(int step) const { return p.stage_velocities + int64_t(step) * p.velocity_step_stride; }
  // Element (b, j) of stage s's input, x + dt sum_{q<s} a_sq k_q, with x from the (B, d) array xs.
  __device__ T stage_input_at(const T* xs, int step, int s, int b, int j) const {
    const int64_t e = (b0 + b) * p.net.dim + j;
    return stage_input(p.tableau, s, xs[e], T(p.dt), velocities(step) + e, long(plane()));
  }
  __device__ T seed(int step, int b, int i, int j) const {
    if (p.divergence == Divergence::Exact) return i == j ? T(1) : T(0);
    return p.probes[((int64_t(step) * p.batch + b0 + b) * p.tangent_rows + i) * p.net.dim + j];
  }
};

template <typename T>
__device__ __forceinline__ T rk4_divergence_scale(const Rk4Params<T>& p) {
  return p.divergence == Divergence::Hutchinson ? T(1) / T(p.tangent_rows) : T(1);
}

// k_s (and, with tangent rows, div_s added to div_sum) of stage s for the tile's valid samples;
// the stage input is built from xs (B, d). C = 0 evaluates the field alone.
template <typename T, bool kTF32>
__device__ void stage_field(const Tile<T, kTF32>& tile, const Rk4Inputs<T>& in, const T* xs, int step, int s,
                            int valid, int C, T* div_sum) {
  const Rk4Params<T>& p = in.p;
  const int d = p.net.dim;
  const T t = in.stage_time(step, s);
  const bool exact = p.divergence == Divergence::Exact;
  const int r = C > 0 ? p.tangent_rows : 0;
  auto primal = [&](int b, int j) { return j < d ? in.stage_input_at(xs, step, s, b, j) : t; };
  auto seed = [&](int b, int i, int j) { return in.seed(step, b, i, j); };
  T* k = in.velocities(step) + int64_t(s) * in.plane() + in.b0 * d;
  auto store_k = [&](int b, int j, T v) { k[b * d + j] = v; };
  const int chunks = C > 0 ? tile.plan().chunks : 1;
  for (int c = 0; c < chunks; ++c) {
    T* u = tile.stack(0);
    tile.build_input(u, valid, C, c * C, r, primal, seed);
    T* a = tile.hidden_layers(u, C, nullptr);
    T* out = tile.other(a);
    tile.output_layer(a, out, C);
    tile.read_outputs(out, valid, C, c * C, r, exact, rk4_divergence_scale(p), c == 0, store_k, seed, div_sum);
  }
}

// Shared per-sample slots of a tile (Tile::slots), named.
template <typename T>
struct Rk4Slots {
  T* logdet;    // sum over the steps of dt sum_s b_s div_s
  T* kinetic;   // sum over the steps of |dt| sum_s b_s |k_s|^2
  T* divs;      // 4 slots: div_s of the step's stages, stride n
  T* grad_div;  // backward: d loss / d div_s of the stage being differentiated
  template <bool kTF32>
  __device__ explicit Rk4Slots(const Tile<T, kTF32>& tile)
      : logdet(tile.slots(0)), kinetic(tile.slots(1)), divs(tile.slots(2)), grad_div(tile.slots(6)) {}
};
static_assert(tile::kSampleSlots >= 7, "Rk4Slots uses 7 slots");

// The forward of one tile: x1 rows <- x0 rows integrated over the S steps, each step's start into
// p.states and its k's into in.velocities(step); slots.kinetic, and with C tangent rows per pass
// (C > 0) slots.logdet, for the tile's samples. Ends with a barrier.
template <typename T, bool kTF32>
__device__ void rk4_tile_forward(const Tile<T, kTF32>& tile, const Rk4Inputs<T>& in, int valid, int C,
                                 const Rk4Slots<T>& slots) {
  const Rk4Params<T>& p = in.p;
  const int n = tile.plan().samples, d = p.net.dim;
  const ButcherTableau& tab = p.tableau;
  const T dt = T(p.dt), abs_dt = T(fabs(p.dt));
  // A tile's values (valid * d <= tile::kMaxRows * tile::kMaxDim) count in int: the index loops
  // below divide by d, and a 64-bit division is a call to a slow routine in SASS, a 32-bit one a
  // few instructions.
  const int64_t first = in.b0 * d, plane = in.plane();
  const int count = valid * d;
  for (int e = thread_index(); e < count; e += kThreads) p.x1[first + e] = p.x0[first + e];
  for (int b = thread_index(); b < n; b += kThreads) slots.logdet[b] = slots.kinetic[b] = T(0);
  __syncthreads();
  for (int step = 0; step < p.steps; ++step) {
    for (int e = thread_index(); e < count; e += kThreads) {
      p.states[step * plane + first + e] = p.x1[first + e];
    }
    for (int s = 0; s < kStages; ++s) {
      for (int b = thread_index(); b < n; b += kThreads) slots.divs[s * n + b] = T(0);  // published by build_input
      stage_field(tile, in, p.x1, step, s, valid, C, slots.divs + s * n);
    }
    // All four k_s are written (read_outputs ends with a barrier): advance the step.
    const T* ks = in.velocities(step);
    for (int e = thread_index(); e < count; e += kThreads) {
      p.x1[first + e] += dt * weighted_stage_sum(tab, ks + first + e, long(plane));
    }
    const int lane = thread_index() % 32;
    for (int b = thread_index() / 32; b < valid; b += kWarps) {
      T speed2[kStages];
#pragma unroll
      for (int s = 0; s < kStages; ++s) {
        const T* k = ks + s * plane + first + int64_t(b) * d;
        T sum = T(0);
        for (int j = lane; j < d; j += 32) sum += k[j] * k[j];
        speed2[s] = warp_sum(sum);
      }
      if (lane == 0) {
        slots.kinetic[b] += abs_dt * weighted_stage_sum(tab, speed2, 1);
        if (C > 0) slots.logdet[b] += dt * weighted_stage_sum(tab, slots.divs + b, long(n));
      }
    }
    __syncthreads();
  }
}

// The backward of one tile, steps in reverse: from d loss/d x1 in the p.grad_x rows (the caller
// writes them) to d loss/d x0 there, the weight gradients into block.part, for a loss with
// per-sample weights grad_kinetic(b) on the kinetic energy and grad_logdet(b) on the logdet.
// recompute: the step's stage velocities are recomputed from p.saved_states (rk4_block's forward
// kept only its last step's); otherwise they are read from in.velocities(step). with_logdet: the
// tangent passes also yield the stage divergences, summed into slots.logdet (zeroed by the
// caller): the log-determinant at no more than the output layer's product. Ends with a barrier.
template <typename T, bool kTF32, class GradKinetic, class GradLogdet>
__device__ void rk4_tile_backward(const Tile<T, kTF32>& tile, const BlockBackward<T>& block, const Rk4Inputs<T>& in,
                                  int valid, bool recompute, bool with_logdet, const Rk4Slots<T>& slots,
                                  GradKinetic&& grad_kinetic, GradLogdet&& grad_logdet) {
  const Rk4Params<T>& p = in.p;
  const tile::TilePlan& plan = tile.plan();
  const int n = plan.samples, d = p.net.dim, ld = plan.ld;
  const bool with_div = p.divergence != Divergence::None, exact = p.divergence == Divergence::Exact;
  const int C = with_div ? plan.tangents : 0, R = 1 + C, r = with_div ? p.tangent_rows : 0;
  const int chunks = with_div ? plan.chunks : 1;
  const ButcherTableau& tab = p.tableau;
  const T dt = T(p.dt), abs_dt = T(fabs(p.dt)), scale = rk4_divergence_scale(p);
  const int64_t first = in.b0 * d, plane = in.plane();
  const int count = valid * d;  // (int: as in rk4_tile_forward)
  T* gx = p.grad_x;  // running d loss / d x (step start), rows [first, first + count)
  auto no_store = [](int, int, T) {};
  for (int step = p.steps - 1; step >= 0; --step) {
    const T* xs = p.saved_states + step * plane;
    const T* ks = in.velocities(step);
    if (recompute) {
      for (int s = 0; s < kStages; ++s) stage_field(tile, in, xs, step, s, valid, 0, static_cast<T*>(nullptr));
    }
    for (int b = thread_index(); b < kStages * n; b += kThreads) slots.divs[b] = T(0);  // published by build_input
    for (int s = kStages - 1; s >= 0; --s) {
      const T bs = T(tab.b[s]);
      // d loss / d k_s: through x_{n+1}, the kinetic energy and the later stages' inputs.
      for (int e = thread_index(); e < count; e += kThreads) {
        const int b = e / d;
        T g = dt * bs * gx[first + e] + T(2) * abs_dt * bs * grad_kinetic(in.b0 + b) * ks[s * plane + first + e];
        for (int q = s + 1; q < kStages; ++q) g += dt * T(tab.a[q][s]) * p.stage_input_grads[q * plane + first + e];
        p.stage_grads[first + e] = g;
      }
      for (int b = thread_index(); b < n; b += kThreads) {
        slots.grad_div[b] = with_div && b < valid ? dt * bs * grad_logdet(in.b0 + b) : T(0);
      }
      __syncthreads();
      const T time = in.stage_time(step, s);
      auto primal = [&](int b, int j) { return j < d ? in.stage_input_at(xs, step, s, b, j) : time; };
      auto seed = [&](int b, int i, int j) { return in.seed(step, b, i, j); };
      auto grad_f = [&](int b, int j) { return p.stage_grads[first + int64_t(b) * d + j]; };
      auto grad_d = [&](int b) { return scale * slots.grad_div[b]; };
      T* gy = p.stage_input_grads + s * plane + first;
      for (int c = 0; c < chunks; ++c) {
        const int first_tangent = c * C;
        auto rebuild = [&](T* u) { tile.build_input(u, valid, C, first_tangent, r, primal, seed); };
        T* u = tile.stack(0);
        rebuild(u);
        T* a = tile.hidden_layers(u, C, block.save);
        T* out = tile.other(a);
        if (with_logdet && C > 0) {  // the tangent rows' outputs: this pass's share of div_s
          tile.output_layer(a, out, C);
          tile.read_outputs(out, valid, C, first_tangent, r, exact, scale, false, no_store, seed,
                            slots.divs + s * n);
        }
        tile.build_output_grads(out, valid, C, first_tangent, r, c == 0, grad_f, grad_d, seed);
        const T* grad_u = tile.backward_layers(a, C, block.save, block.part, p.layout, rebuild);
        for (int e = thread_index(); e < count; e += kThreads) {
          const int b = e / d, j = e - b * d;
          const T v = grad_u[b * R * ld + j];
          gy[e] = c == 0 ? v : gy[e] + v;
        }
        __syncthreads();
      }
    }
    for (int e = thread_index(); e < count; e += kThreads) {
      for (int s = 0; s < kStages; ++s) gx[first + e] += p.stage_input_grads[s * plane + first + e];
    }
    if (with_logdet && with_div) {
      for (int b = thread_index(); b < valid; b += kThreads) {
        slots.logdet[b] += dt * weighted_stage_sum(tab, slots.divs + b, long(n));
      }
    }
    __syncthreads();
  }
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) rk4_block_forward_kernel(const __grid_constant__ Rk4Params<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  tile.zero_stacks();
  const Rk4Slots<T> slots(tile);
  const int n = plan.samples;
  const int C = p.divergence != Divergence::None ? plan.tangents : 0;
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Rk4Inputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    rk4_tile_forward(tile, in, valid, C, slots);
    for (int b = thread_index(); b < valid; b += kThreads) {
      p.logdet[in.b0 + b] = slots.logdet[b];
      p.kinetic[in.b0 + b] = slots.kinetic[b];
    }
    __syncthreads();
  }
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) rk4_block_backward_kernel(const __grid_constant__ Rk4Params<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  const BlockBackward<T> block(p.partials, p.totals, p.scratch, p.layout, p.net, plan);
  tile.zero_stacks();  // its barrier also publishes the zeroed part
  const Rk4Slots<T> slots(tile);
  const int n = plan.samples, d = p.net.dim;
  auto grad_kinetic = [&](int64_t b) { return p.grad_kinetic[b]; };
  auto grad_logdet = [&](int64_t b) { return p.grad_logdet[b]; };
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Rk4Inputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    const int64_t first = in.b0 * d, count = int64_t(valid) * d;
    for (int64_t e = thread_index(); e < count; e += kThreads) p.grad_x[first + e] = p.grad_x1[first + e];
    __syncthreads();
    rk4_tile_backward(tile, block, in, valid, /*recompute=*/true, /*with_logdet=*/false, slots, grad_kinetic,
                      grad_logdet);
    block.end_tile(p.totals, p.layout, moves_part_after(t, tiles, blockIdx.x, gridDim.x, kRk4TilesPerTotal));
  }
}

}  // namespace jkofast::cuda
