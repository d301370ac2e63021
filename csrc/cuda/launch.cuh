// Launching the persistent kernels: the shared-memory attribute, occupancy and the launch itself,
// for the per-element-type .cu files (mlp_field_kernel_fp*.cu, rk4_block_kernel_fp*.cu,
// jko_block_loss_kernel_fp*.cu).
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <tuple>

#include "ops/tile_plan.h"

namespace jkofast::cuda {

// How many blocks of `kernel` with smem_bytes of dynamic shared memory fit on one multiprocessor
// of the current device. The first call per device and kernel raises the kernel's dynamic
// shared-memory limit to the device's maximum (needed above 48 KB; any plan up to it may launch
// then). Both are cached: they never change, each runtime call costs microseconds on every op
// call, and a CUDA graph capture of the ops then sees nothing but launches.
template <typename Params>
cudaError_t occupancy(void (*kernel)(Params), int64_t smem_bytes, int* blocks_per_sm) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int64_t>, int> cache;  // (device, kernel, bytes) -> blocks
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const void* fn = reinterpret_cast<const void*>(kernel);
  std::lock_guard<std::mutex> lock(mutex);
  if (auto hit = cache.find({device, fn, smem_bytes}); hit != cache.end()) {
    *blocks_per_sm = hit->second;
    return cudaSuccess;
  }
  if (cache.find({device, fn, -1}) == cache.end()) {  // -1: the attribute is set
    int max_bytes = 0;
    err = cudaDeviceGetAttribute(&max_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, max_bytes);
    if (err != cudaSuccess) return err;
    cache[{device, fn, -1}] = 0;
  }
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, fn, tile::kThreads, size_t(smem_bytes));
  if (err == cudaSuccess) cache[{device, fn, smem_bytes}] = *blocks_per_sm;
  return err;
}

template <typename Params>
void launch(void (*kernel)(Params), const Params& p, int grid, int64_t smem_bytes, cudaStream_t stream) {
  kernel<<<grid, tile::kThreads, size_t(smem_bytes), stream>>>(p);
}

}  // namespace jkofast::cuda
