// Launch of grad_reduce_kernel.cuh for float and double.
#include "cuda/grad_reduce_kernel.cuh"

namespace jkofast::cuda {

template <typename T>
void launch_grad_reduce(const ReduceParams<T>& p, cudaStream_t stream) {
  const int64_t blocks = tile::ceil_div(p.layout.per_block, kThreads);
  const int grid = int(blocks < 4096 ? blocks : 4096);
  grad_reduce_kernel<T><<<grid, kThreads, 0, stream>>>(p);
}

template void launch_grad_reduce<float>(const ReduceParams<float>&, cudaStream_t);
template void launch_grad_reduce<double>(const ReduceParams<double>&, cudaStream_t);

}  // namespace jkofast::cuda
