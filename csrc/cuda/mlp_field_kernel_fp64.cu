// double instantiations of the mlp_field kernels (SIMT products; TF32 never applies to double).
#include "cuda/launch.cuh"
#include "cuda/mlp_field_kernel.cuh"

namespace jkofast::cuda {
namespace {

using Kernel = void (*)(FieldParams<double>);

Kernel pick(bool backward) {
  return backward ? mlp_field_backward_kernel<double, false> : mlp_field_forward_kernel<double, false>;
}

}  // namespace

template <>
cudaError_t mlp_field_occupancy<double>(bool backward, bool, int64_t smem_bytes, int* blocks_per_sm) {
  return occupancy(pick(backward), smem_bytes, blocks_per_sm);
}

template <>
void launch_mlp_field<double>(const FieldParams<double>& p, bool backward, bool, int grid, cudaStream_t stream) {
  launch(pick(backward), p, grid, p.plan.smem_bytes, stream);
}

}  // namespace jkofast::cuda
