// float instantiations of the mlp_field kernels: SIMT and TF32 tensor-core products.
#include "cuda/launch.cuh"
#include "cuda/mlp_field_kernel.cuh"

namespace jkofast::cuda {
namespace {

using Kernel = void (*)(FieldParams<float>);

Kernel pick(bool backward, bool tf32) {
  if (backward) return tf32 ? mlp_field_backward_kernel<float, true> : mlp_field_backward_kernel<float, false>;
  return tf32 ? mlp_field_forward_kernel<float, true> : mlp_field_forward_kernel<float, false>;
}

}  // namespace

template <>
cudaError_t mlp_field_occupancy<float>(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(pick(backward, tf32), smem_bytes, blocks_per_sm);
}

template <>
void launch_mlp_field<float>(const FieldParams<float>& p, bool backward, bool tf32, int grid, cudaStream_t stream) {
  launch(pick(backward, tf32), p, grid, p.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
