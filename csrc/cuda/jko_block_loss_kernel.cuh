// The kernel of jkofast::jko_block_loss: one JKO-iFlow block's training loss and its gradients,
// every tile in one launch, templated on the element type and the TF32 switch;
// jko_block_loss_kernel_fp32.cu and _fp64.cu instantiate it. csrc/cpu/jko_block_loss_cpu.cpp is
// the CPU counterpart (and says why the op exists).
//
// Per tile: integrate x0 over the S steps with the field alone (one stack row per sample instead
// of 1 + d: the loss's gradient with respect to x1 is known as soon as x1 is), keeping every
// step's stage velocities; then the backward of rk4_block_kernel.cuh without its velocity
// recompute, whose tangent passes give the stage divergences (hence logdet) through one more
// product, the output layer's. Against rk4_block + rk4_block_backward this drops the forward's
// tangent rows and the backward's recompute (about a quarter of a training step at d = 6,
// H = 128) and every launch between them: the step is this kernel and the gradient reduction.
//
// The loss, per sample: |x1|^2 / 2 - logdet + ew |x1 - x0|^2 + pw kinetic, averaged over the
// batch B; so d loss/d x1 = (x1 + 2 ew (x1 - x0)) / B, d loss/d logdet = -1/B, d loss/d kinetic
// = pw / B, and x0 also meets the endpoint term directly: -2 ew (x1 - x0) / B.
#pragma once

#include "cuda/rk4_block_kernel.cuh"

namespace jkofast::cuda {

template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads, JKOFAST_CUDA_MIN_BLOCKS) jko_block_loss_kernel(const __grid_constant__ JkoLossParams<T> lp) {
  const Rk4Params<T>& p = lp.rk4;
  const tile::TilePlan& plan = p.plan;
  Tile<T, kTF32> tile(p.net, plan, dynamic_smem());
  const BlockBackward<T> block(p.partials, p.totals, p.scratch, p.layout, p.net, plan);
  tile.zero_stacks();  // its barrier also publishes the zeroed part
  const Rk4Slots<T> slots(tile);
  const int n = plan.samples, d = p.net.dim;
  const T inv_b = T(1) / T(p.batch), ew = lp.endpoint_weight;
  const T grad_kinetic_value = lp.path_weight * inv_b, grad_logdet_value = -inv_b;
  auto grad_kinetic = [&](int64_t) { return grad_kinetic_value; };
  auto grad_logdet = [&](int64_t) { return grad_logdet_value; };
  const int64_t tiles = tile::ceil_div(p.batch, n);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Rk4Inputs<T> in{p, t * n};
    const int valid = int(p.batch - in.b0 < n ? p.batch - in.b0 : n);
    const int64_t first = in.b0 * d, count = int64_t(valid) * d;
    rk4_tile_forward(tile, in, valid, /*C=*/0, slots);  // zeroes slots.logdet for the backward
    for (int64_t e = thread_index(); e < count; e += kThreads) {
      const T x1 = p.x1[first + e], x0 = p.x0[first + e];
      p.grad_x[first + e] = inv_b * (x1 + T(2) * ew * (x1 - x0));
    }
    __syncthreads();
    rk4_tile_backward(tile, block, in, valid, /*recompute=*/false, /*with_logdet=*/true, slots, grad_kinetic,
                      grad_logdet);
    // The per-sample terms, and the endpoint term's direct share of d loss/d x0: a warp per sample.
    const int lane = thread_index() % 32;
    for (int b = thread_index() / 32; b < valid; b += kWarps) {
      T potential = T(0), endpoint = T(0);
      for (int j = lane; j < d; j += 32) {
        const int64_t e = first + int64_t(b) * d + j;
        const T x1 = p.x1[e], step = x1 - p.x0[e];
        potential += x1 * x1;
        endpoint += step * step;
        p.grad_x[e] -= T(2) * ew * inv_b * step;
      }
      potential = warp_sum(potential);
      endpoint = warp_sum(endpoint);
      if (lane == 0) {
        T* row = lp.terms + (in.b0 + b) * 4;
        row[0] = T(0.5) * potential;
        row[1] = slots.logdet[b];
        row[2] = endpoint;
        row[3] = slots.kinetic[b];
      }
    }
    __syncthreads();
    block.end_tile(p.totals, p.layout, moves_part_after(t, tiles, blockIdx.x, gridDim.x, kRk4TilesPerTotal));
  }
}

}  // namespace jkofast::cuda
