// double instantiations of the mlp_field kernels (SIMT products; TF32 never applies to double).
#include "cuda/mlp_field_kernel.cuh"

namespace jkofast::cuda {

template <>
cudaError_t mlp_field_occupancy<double>(bool backward, bool, int64_t smem_bytes, int* blocks_per_sm) {
  return mlp_field_occupancy_impl<double, false>(backward, smem_bytes, blocks_per_sm);
}

template <>
void launch_mlp_field<double>(const FieldParams<double>& p, bool backward, bool, int grid, cudaStream_t stream) {
  mlp_field_launch_impl<double, false>(p, backward, grid, stream);
}

}  // namespace jkofast::cuda
