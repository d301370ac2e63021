// Torch-side helpers shared by the CUDA glue of every op (mlp_field_cuda.cpp, rk4_block_cuda.cpp):
// the fit check, the kernels' view of the weights, the tile plan for the current device, the
// persistent grid, the gradient-part layout and its reduction, and the TF32 switch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <functional>
#include <string_view>
#include <utility>
#include <vector>

#include "cuda/mlp_params.h"
#include "mlp_args.h"

namespace jkofast::cuda {

// The op's device guard, on x's device. The dispatcher runs the CUDA kernel when any argument is on
// CUDA, so x may be on the CPU: that is the caller's mix-up and gets the ValueError that
// check_same gives any other argument, not c10's "expected a CUDA device" from the guard.
inline c10::cuda::CUDAGuard device_guard(std::string_view op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x is on ", x.device(), " but other arguments are on CUDA");
  return c10::cuda::CUDAGuard(x.device());
}

// ValueError naming the limit when the field is beyond what the kernels tile (ops/tile_plan.h).
void check_fits(std::string_view op, const MlpSizes& sizes);

// The weights and biases as the kernels read them: pointers into the caller's tensors, or into
// contiguous copies appended to keep_alive when a tensor is not contiguous.
template <typename T>
MlpView<T> make_view(const MlpSizes& sizes, at::TensorList weights, at::TensorList biases, Activation activation,
                     double beta, std::vector<at::Tensor>& keep_alive);

// The tile plan and grid for a batch on the current device and stream. occupancy(smem_bytes)
// returns the kernel's resident blocks per multiprocessor (launch.cuh). Rule (ops/tile_plan.h:
// choose_launch): the most stack rows (fewest weight passes per sample) whose tiles still fill the
// GPU twice over (so the last wave of a persistent grid stays short), else the fewest rows that
// fit (the most tiles). The grid: every tile a block, up to the resident blocks (the kernels loop
// over their tiles). JKOFAST_CUDA_ROWS=<8|16|32|64|128> forces the stack rows (for tuning; it
// must fit the device); the kernel check's override (launch_override.h) forces rows and a grid
// cap on its own stream.
struct Launch {
  tile::TilePlan plan;
  int grid;
};
Launch plan_launch(std::string_view op, const MlpSizes& sizes, int64_t tangent_rows, at::ScalarType dtype,
                   int64_t batch, const std::function<int(int64_t)>& occupancy);

GradLayout grad_layout(const MlpSizes& sizes);

// The per-block buffers of a backward launch over `batch` samples: the gradient parts (the kernel
// zeroes each block's), their double totals (mlp_tile.cuh: BlockBackward) for float when some block
// runs more than `tiles_per_total` tiles (mlp_params.h: needs_totals; undefined otherwise), and the
// scratch for one pass's pre-activations, (layers - 1) x rows x hidden values per block.
struct BackwardBuffers {
  at::Tensor partials, totals, scratch;
  double* totals_or_null() const { return totals.defined() ? totals.mutable_data_ptr<double>() : nullptr; }
};
BackwardBuffers backward_buffers(const MlpSizes& sizes, const Launch& launch, const GradLayout& layout,
                                 int64_t batch, const at::TensorOptions& options, int tiles_per_total);

// float32 products on TF32 tensor cores when torch allows TF32 for float32 matmuls
// (torch.backends.cuda.matmul.fp32_precision = "tf32", or the legacy allow_tf32 = True or
// torch.set_float32_matmul_precision("high")), exactly as torch.mm decides (../tf32_switch.h);
// never for float64.
bool use_tf32(at::ScalarType dtype);

// Fresh gradients shaped like weights and biases: the sums of the `blocks` parts (or totals).
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> reduce_grads(const BackwardBuffers& buffers, int blocks,
                                                                         const GradLayout& layout,
                                                                         at::TensorList weights,
                                                                         at::TensorList biases);

// Zero gradients shaped like weights and biases (an empty batch).
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> zero_grads(at::TensorList weights, at::TensorList biases);

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace jkofast::cuda
