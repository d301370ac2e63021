// float instantiations of the rk4_block kernels: SIMT and TF32 tensor-core products.
#include "cuda/rk4_block_kernel.cuh"

namespace jkofast::cuda {

template <>
cudaError_t rk4_block_occupancy<float>(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm) {
  return tf32 ? rk4_block_occupancy_impl<float, true>(backward, smem_bytes, blocks_per_sm)
              : rk4_block_occupancy_impl<float, false>(backward, smem_bytes, blocks_per_sm);
}

template <>
void launch_rk4_block<float>(const Rk4Params<float>& p, bool backward, bool tf32, int grid, cudaStream_t stream) {
  if (tf32) {
    rk4_block_launch_impl<float, true>(p, backward, grid, stream);
  } else {
    rk4_block_launch_impl<float, false>(p, backward, grid, stream);
  }
}

}  // namespace jkofast::cuda
