// float instantiations of the mlp_field kernels: SIMT and TF32 tensor-core products.
#include "cuda/mlp_field_kernel.cuh"

namespace jkofast::cuda {

template <>
cudaError_t mlp_field_occupancy<float>(bool backward, bool tf32, int64_t smem_bytes, int* blocks_per_sm) {
  return tf32 ? mlp_field_occupancy_impl<float, true>(backward, smem_bytes, blocks_per_sm)
              : mlp_field_occupancy_impl<float, false>(backward, smem_bytes, blocks_per_sm);
}

template <>
void launch_mlp_field<float>(const FieldParams<float>& p, bool backward, bool tf32, int grid, cudaStream_t stream) {
  if (tf32) {
    mlp_field_launch_impl<float, true>(p, backward, grid, stream);
  } else {
    mlp_field_launch_impl<float, false>(p, backward, grid, stream);
  }
}

}  // namespace jkofast::cuda
