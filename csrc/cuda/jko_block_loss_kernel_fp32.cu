// float instantiations of the jko_block_loss kernel: SIMT and TF32 tensor-core products.
#include "cuda/jko_block_loss_kernel.cuh"
#include "cuda/launch.cuh"

namespace jkofast::cuda {
namespace {

using Kernel = void (*)(JkoLossParams<float>);

Kernel pick(bool tf32) { return tf32 ? jko_block_loss_kernel<float, true> : jko_block_loss_kernel<float, false>; }

}  // namespace

template <>
cudaError_t jko_block_loss_occupancy<float>(bool tf32, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(pick(tf32), smem_bytes, blocks_per_sm);
}

template <>
void launch_jko_block_loss<float>(const JkoLossParams<float>& p, bool tf32, int grid, cudaStream_t stream) {
  launch(pick(tf32), p, grid, p.rk4.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
