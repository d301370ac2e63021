// double instantiation of the jko_block_loss kernel (SIMT products; TF32 never applies to double).
#include "cuda/jko_block_loss_kernel.cuh"
#include "cuda/launch.cuh"

namespace jkofast::cuda {

template <>
cudaError_t jko_block_loss_occupancy<double>(bool, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(jko_block_loss_kernel<double, false>, smem_bytes, blocks_per_sm);
}

template <>
void launch_jko_block_loss<double>(const JkoLossParams<double>& p, bool, int grid, cudaStream_t stream) {
  launch(jko_block_loss_kernel<double, false>, p, grid, p.rk4.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
