// double instantiations of the rk4_block kernels (SIMT products; TF32 never applies to double).
#include "cuda/launch.cuh"
#include "cuda/rk4_block_kernel.cuh"

namespace jkofast::cuda {
namespace {

using Kernel = void (*)(Rk4Params<double>);

Kernel pick(bool backward) {
  return backward ? rk4_block_backward_kernel<double, false> : rk4_block_forward_kernel<double, false>;
}

}  // namespace

template <>
cudaError_t rk4_block_occupancy<double>(bool backward, bool, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(pick(backward), smem_bytes, blocks_per_sm);
}

template <>
void launch_rk4_block<double>(const Rk4Params<double>& p, bool backward, bool, int grid, cudaStream_t stream) {
  launch(pick(backward), p, grid, p.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
