// float instantiations of the rk4_block kernels: SIMT and TF32 tensor-core products.
#include "cuda/launch.cuh"
#include "cuda/rk4_block_kernel.cuh"

namespace jkofast::cuda {
namespace {

using Kernel = void (*)(Rk4Params<float>);

Kernel pick(bool backward, bool tf32) {
  if (backward) return tf32 ? rk4_block_backward_kernel<float, true> : rk4_block_backward_kernel<float, false>;
  return tf32 ? rk4_block_forward_kernel<float, true> : rk4_block_forward_kernel<float, false>;
}

}  // namespace

template <>
cudaError_t rk4_block_occupancy<float>(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(pick(backward, tf32), smem_bytes, blocks_per_sm);
}

template <>
void launch_rk4_block<float>(const Rk4Params<float>& p, bool backward, bool tf32, int grid, cudaStream_t stream) {
  launch(pick(backward, tf32), p, grid, p.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
