// Kernels of jkofast::mlp_field and jkofast::mlp_field_div (forward and backward), templated on
// the element type and the TF32 switch; mlp_field_kernel_fp32.cu and _fp64.cu instantiate them.
// The field alone is the divergence kernel with no tangent rows (r = 0).
//
// Grid: persistent blocks (at most as many as fit on the GPU at once), each looping over tiles
// of plan.samples samples. The backward's weight gradients go to per-block parts, summed by
// grad_reduce_kernel.cu afterwards.
#pragma once

#include "cuda/mlp_tile.cuh"

namespace jkofast::cuda {

template <typename T>
struct FieldInputs {
  const FieldParams<T>& p;
  int64_t b0;  // first sample of the tile

  __device__ T primal(int b, int j) const {  // [x_b, t_b]
    return j < p.net.dim ? p.x[(b0 + b) * p.net.dim + j] : p.t[(b0 + b) * p.t_stride];
  }
  __device__ T seed(int b, int i, int j) const {  // e_i (exact) or probe i of sample b
    if (p.divergence == Divergence::Exact) return i == j ? T(1) : T(0);
    return p.probes[((b0 + b) * p.tangent_rows + i) * p.net.dim + j];
  }
};

template <typename T>
__device__ __forceinline__ T divergence_scale(Divergence divergence, int tangent_rows) {
  return divergence == Divergence::Hutchinson ? T(1) / T(tangent_rows) : T(1);
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) mlp_field_forward_kernel(const __grid_constant__ FieldParams<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  tile.zero_stacks();
  const int n = plan.samples, C = plan.tangents, d = p.net.dim;
  const bool exact = p.divergence == Divergence::Exact;
  const T scale = divergence_scale<T>(p.divergence, p.tangent_rows);
  T* div_sum = tile.slots(0);
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const FieldInputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    for (int b = thread_index(); b < n; b += kThreads) div_sum[b] = T(0);  // published by build_input
    auto primal = [&](int b, int j) { return in.primal(b, j); };
    auto seed = [&](int b, int i, int j) { return in.seed(b, i, j); };
    auto store_f = [&](int b, int j, T v) { p.f[(in.b0 + b) * d + j] = v; };
    for (int c = 0; c < plan.chunks; ++c) {
      T* u = tile.stack(0);
      tile.build_input(u, valid, C, c * C, p.tangent_rows, primal, seed);
      T* a = tile.hidden_layers(u, C, nullptr);
      T* out = tile.other(a);
      tile.output_layer(a, out, C);
      tile.read_outputs(out, valid, C, c * C, p.tangent_rows, exact, scale, c == 0, store_f, seed, div_sum);
    }
    if (p.div != nullptr) {
      for (int b = thread_index(); b < valid; b += kThreads) p.div[in.b0 + b] = div_sum[b];
    }
    __syncthreads();
  }
}

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) mlp_field_backward_kernel(const __grid_constant__ FieldParams<T> p) {
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  const BlockBackward<T> block(p.partials, p.totals, p.scratch, p.layout, p.net, plan);
  tile.zero_stacks();  // its barrier also publishes the zeroed part
  const int n = plan.samples, C = plan.tangents, R = 1 + C, d = p.net.dim, ld = plan.ld;
  const T scale = divergence_scale<T>(p.divergence, p.tangent_rows);
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const FieldInputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    auto primal = [&](int b, int j) { return in.primal(b, j); };
    auto seed = [&](int b, int i, int j) { return in.seed(b, i, j); };
    auto grad_f = [&](int b, int j) { return p.grad_f[(in.b0 + b) * d + j]; };
    auto grad_div = [&](int b) { return p.grad_div != nullptr ? scale * p.grad_div[in.b0 + b] : T(0); };
    for (int c = 0; c < plan.chunks; ++c) {
      const int first = c * C;
      auto rebuild = [&](T* u) { tile.build_input(u, valid, C, first, p.tangent_rows, primal, seed); };
      T* u = tile.stack(0);
      rebuild(u);
      T* a = tile.hidden_layers(u, C, block.save);
      tile.build_output_grads(tile.other(a), valid, C, first, p.tangent_rows, c == 0, grad_f, grad_div, seed);
      const T* grad_u = tile.backward_layers(a, C, block.save, block.part, p.layout, rebuild);
      for (int e = thread_index(); e < valid * d; e += kThreads) {
        const int b = e / d, j = e - b * d;
        T* dst = p.grad_x + (in.b0 + b) * d + j;
        const T v = grad_u[b * R * ld + j];
        *dst = c == 0 ? v : *dst + v;
      }
      if (p.grad_t != nullptr) {
        for (int b = thread_index(); b < valid; b += kThreads) {
          T* dst = p.grad_t + in.b0 + b;
          const T v = grad_u[b * R * ld + d];
          *dst = c == 0 ? v : *dst + v;
        }
      }
      __syncthreads();
    }
    block.end_tile(p.totals, p.layout, moves_part_after(t, tiles, blockIdx.x, gridDim.x, field_tiles_per_total(plan)));
  }
}

}  // namespace jkofast::cuda
