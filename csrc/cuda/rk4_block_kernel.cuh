// Kernels of jkofast::rk4_block (forward and backward), templated on the element type and the
// TF32 switch; rk4_block_kernel_fp32.cu and _fp64.cu instantiate them.
//
// One launch runs all S steps and their 4 stages for every tile of samples: the field and its
// tangent rows stay in shared memory (mlp_tile.cuh), the per-sample sums (log-determinant,
// kinetic energy, the stages' divergences) in shared slots. The running x lives in x1 (the
// output, (B, d)) and the stage velocities in a (4, B, d) workspace, rows that only this block
// touches: O(d) values per sample and stage beside the O(H^2 (1 + r)) of the field's products.
//
// The arithmetic follows csrc/cpu/rk4_block_cpu.cpp term by term (ops/rk4_math.h): stage s of
// step n runs at T(t0 + n dt + c_s dt), its input is x + T(dt) sum_q T(a_sq) k_q, and
//   x += T(dt) sum_s T(b_s) k_s,  kinetic += T(|dt|) sum_s T(b_s) |k_s|^2,
//   logdet += T(dt) sum_s T(b_s) div_s.
// Backward (per tile, steps in reverse): recompute the step's 4 stage velocities (field alone),
// then for stage 3..0 form d loss/d k_s from the running gradient, the kinetic term and the later
// stages' input gradients, and differentiate that stage's field evaluation (with its tangent
// rows, in chunks) into d loss/d (stage input) and the weight gradients.
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
  // Element (b, j) of stage s's input, x + dt sum_{q<s} a_sq k_q, with x from the (B, d) array xs.
  __device__ T stage_input_at(const T* xs, int s, int b, int j) const {
    const int64_t e = (b0 + b) * p.net.dim + j;
    return stage_input(p.tableau, s, xs[e], T(p.dt), p.stage_velocities + e, long(plane()));
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
  auto primal = [&](int b, int j) { return j < d ? in.stage_input_at(xs, s, b, j) : t; };
  auto seed = [&](int b, int i, int j) { return in.seed(step, b, i, j); };
  T* k = p.stage_velocities + int64_t(s) * in.plane() + in.b0 * d;
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

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) rk4_block_forward_kernel(const __grid_constant__ Rk4Params<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  tile.zero_stacks();
  const int n = plan.samples, d = p.net.dim;
  const bool with_div = p.divergence != Divergence::None;
  const int C = with_div ? plan.tangents : 0;
  const ButcherTableau& tab = p.tableau;
  const T dt = T(p.dt), abs_dt = T(fabs(p.dt));
  T* logdet = tile.slots(0);
  T* kinetic = tile.slots(1);
  T* divs = tile.slots(2);  // slots 2..5: div_s of the step's stages, stride n
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Rk4Inputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    const int64_t first = in.b0 * d, count = int64_t(valid) * d, plane = in.plane();
    for (int64_t e = thread_index(); e < count; e += kThreads) p.x1[first + e] = p.x0[first + e];
    for (int b = thread_index(); b < n; b += kThreads) logdet[b] = kinetic[b] = T(0);
    __syncthreads();
    for (int step = 0; step < p.steps; ++step) {
      for (int64_t e = thread_index(); e < count; e += kThreads) {
        p.states[step * plane + first + e] = p.x1[first + e];
      }
      for (int s = 0; s < kStages; ++s) {
        for (int b = thread_index(); b < n; b += kThreads) divs[s * n + b] = T(0);  // published by build_input
        stage_field(tile, in, p.x1, step, s, valid, C, divs + s * n);
      }
      // All four k_s are written (read_outputs ends with a barrier): advance the step.
      for (int64_t e = thread_index(); e < count; e += kThreads) {
        p.x1[first + e] += dt * weighted_stage_sum(tab, p.stage_velocities + first + e, long(plane));
      }
      const int lane = thread_index() % 32;
      for (int b = thread_index() / 32; b < valid; b += kWarps) {
        T speed2[kStages];
#pragma unroll
        for (int s = 0; s < kStages; ++s) {
          const T* k = p.stage_velocities + s * plane + first + int64_t(b) * d;
          T sum = T(0);
          for (int j = lane; j < d; j += 32) sum += k[j] * k[j];
          speed2[s] = warp_sum(sum);
        }
        if (lane == 0) {
          kinetic[b] += abs_dt * weighted_stage_sum(tab, speed2, 1);
          if (with_div) logdet[b] += dt * weighted_stage_sum(tab, divs + b, long(n));
        }
      }
      __syncthreads();
    }
    for (int b = thread_index(); b < valid; b += kThreads) {
      p.logdet[in.b0 + b] = logdet[b];
      p.kinetic[in.b0 + b] = kinetic[b];
    }
    __syncthreads();
  }
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) rk4_block_backward_kernel(const __grid_constant__ Rk4Params<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  const BlockBackward<T> block(p.partials, p.scratch, p.layout, p.net, plan);
  tile.zero_stacks();  // its barrier also publishes the zeroed part
  const int n = plan.samples, d = p.net.dim, ld = plan.ld;
  const bool with_div = p.divergence != Divergence::None;
  const int C = with_div ? plan.tangents : 0, R = 1 + C, r = with_div ? p.tangent_rows : 0;
  const int chunks = with_div ? plan.chunks : 1;
  const ButcherTableau& tab = p.tableau;
  const T dt = T(p.dt), abs_dt = T(fabs(p.dt)), scale = rk4_divergence_scale(p);
  T* grad_div = tile.slots(0);  // d loss / d div_s of the stage being differentiated
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Rk4Inputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    const int64_t first = in.b0 * d, count = int64_t(valid) * d, plane = in.plane();
    T* gx = p.grad_x;  // running d loss / d x (step start), rows [first, first + count)
    for (int64_t e = thread_index(); e < count; e += kThreads) gx[first + e] = p.grad_x1[first + e];
    __syncthreads();
    for (int step = p.steps - 1; step >= 0; --step) {
      const T* xs = p.saved_states + step * plane;
      for (int s = 0; s < kStages; ++s) stage_field(tile, in, xs, step, s, valid, 0, static_cast<T*>(nullptr));
      for (int s = kStages - 1; s >= 0; --s) {
        const T bs = T(tab.b[s]);
        // d loss / d k_s: through x_{n+1}, the kinetic energy and the later stages' inputs.
        for (int64_t e = thread_index(); e < count; e += kThreads) {
          const int64_t b = e / d;
          T g = dt * bs * gx[first + e] +
                T(2) * abs_dt * bs * p.grad_kinetic[in.b0 + b] * p.stage_velocities[s * plane + first + e];
          for (int q = s + 1; q < kStages; ++q) g += dt * T(tab.a[q][s]) * p.stage_input_grads[q * plane + first + e];
          p.stage_grads[first + e] = g;
        }
        for (int b = thread_index(); b < n; b += kThreads) {
          grad_div[b] = with_div && b < valid ? dt * bs * p.grad_logdet[in.b0 + b] : T(0);
        }
        __syncthreads();
        const T time = in.stage_time(step, s);
        auto primal = [&](int b, int j) { return j < d ? in.stage_input_at(xs, s, b, j) : time; };
        auto seed = [&](int b, int i, int j) { return in.seed(step, b, i, j); };
        auto grad_f = [&](int b, int j) { return p.stage_grads[first + int64_t(b) * d + j]; };
        auto grad_d = [&](int b) { return scale * grad_div[b]; };
        T* gy = p.stage_input_grads + s * plane + first;
        for (int c = 0; c < chunks; ++c) {
          const int first_tangent = c * C;
          auto rebuild = [&](T* u) { tile.build_input(u, valid, C, first_tangent, r, primal, seed); };
          T* u = tile.stack(0);
          rebuild(u);
          T* a = tile.hidden_layers(u, C, block.save);
          tile.build_output_grads(tile.other(a), valid, C, first_tangent, r, c == 0, grad_f, grad_d, seed);
          const T* grad_u = tile.backward_layers(a, C, block.save, block.part, p.layout, rebuild);
          for (int64_t e = thread_index(); e < count; e += kThreads) {
            const int b = int(e / d), j = int(e - int64_t(b) * d);
            const T v = grad_u[b * R * ld + j];
            gy[e] = c == 0 ? v : gy[e] + v;
          }
          __syncthreads();
        }
      }
      for (int64_t e = thread_index(); e < count; e += kThreads) {
        for (int s = 0; s < kStages; ++s) gx[first + e] += p.stage_input_grads[s * plane + first + e];
      }
      __syncthreads();
    }
  }
}

}  // namespace jkofast::cuda
