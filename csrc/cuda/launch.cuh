// Launching the persistent kernels: the shared-memory attribute, occupancy and the launch itself,
// for the per-element-type .cu files (mlp_field_kernel_fp*.cu, rk4_block_kernel_fp*.cu).
#pragma once

#include <cuda_runtime.h>

#include "ops/tile_plan.h"

namespace jkofast::cuda {

// Raises the kernel's dynamic shared-memory limit to smem_bytes (needed above 48 KB) and reports
// how many of its blocks fit on one multiprocessor.
template <typename Params>
cudaError_t occupancy(void (*kernel)(Params), int64_t smem_bytes, int* blocks_per_sm) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, tile::kThreads, size_t(smem_bytes));
}

template <typename Params>
void launch(void (*kernel)(Params), const Params& p, int grid, int64_t smem_bytes, cudaStream_t stream) {
  kernel<<<grid, tile::kThreads, size_t(smem_bytes), stream>>>(p);
}

}  // namespace jkofast::cuda
