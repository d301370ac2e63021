// double instantiations of the rk4_block kernels (SIMT products; TF32 never applies to double).
#include "cuda/rk4_block_kernel.cuh"

namespace jkofast::cuda {

template <>
cudaError_t rk4_block_occupancy<double>(bool backward, bool, int64_t smem_bytes, int* blocks_per_sm) {
  return rk4_block_occupancy_impl<double, false>(backward, smem_bytes, blocks_per_sm);
}

template <>
void launch_rk4_block<double>(const Rk4Params<double>& p, bool backward, bool, int grid, cudaStream_t stream) {
  rk4_block_launch_impl<double, false>(p, backward, grid, stream);
}

}  // namespace jkofast::cuda
