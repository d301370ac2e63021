// The second half of every backward: the weight and bias gradients are the sums of the
// per-block parts that the backward kernels wrote (mlp_params.h: GradLayout), or of the blocks'
// double totals where there are (mlp_tile.cuh: BlockBackward), summed in double. One thread per
// gradient value sums the parts in block order, so the result is deterministic; consecutive
// threads read consecutive values of each part.
#pragma once

#include "cuda/block_stage.cuh"
#include "cuda/mlp_params.h"

namespace jkofast::cuda {

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_reduce_kernel(const __grid_constant__ ReduceParams<T> p) {
  const int64_t total = p.layout.per_block;
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < total; j += int64_t(gridDim.x) * kThreads) {
    T* dst = nullptr;  // the output value that part position j holds, if any (not padding)
    for (int l = 0; l < p.layers; ++l) {
      const int64_t w = j - p.layout.weight_offset[l];
      if (w >= 0 && w < int64_t(p.layout.rows16[l]) * p.layout.cols16[l]) {
        const int64_t row = w / p.layout.cols16[l], col = w - row * p.layout.cols16[l];
        if (row < p.out_rows[l] && col < p.out_cols[l]) dst = p.grad_weights[l] + row * p.out_cols[l] + col;
      }
      const int64_t b = j - p.layout.bias_offset[l];
      if (b >= 0 && b < p.out_rows[l]) dst = p.grad_biases[l] + b;
    }
    if (dst == nullptr) continue;
    double sum = 0.0;  // float parts too: up to a few hundred blocks, added in double for free
    for (int g = 0; g < p.blocks; ++g) {
      const int64_t at = int64_t(g) * total + j;
      sum += p.totals != nullptr ? p.totals[at] : double(p.partials[at]);
    }
    *dst = T(sum);
  }
}

}  // namespace jkofast::cuda
