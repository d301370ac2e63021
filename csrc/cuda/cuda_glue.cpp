#include "cuda/cuda_glue.h"
#include "launch_override.h"
#include "tf32_switch.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <mutex>
#include <string>

namespace jkofast::cuda {
namespace {

struct DeviceInfo {
  int multiprocessors = 0;
  int64_t smem_per_block = 0;  // opt-in maximum of dynamic shared memory per block
  int64_t smem_per_sm = 0;
};

DeviceInfo device_info(int device) {  // by value: the cache may grow under another thread
  static std::mutex mutex;
  static std::vector<DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (int(cache.size()) <= device) cache.resize(device + 1);
  DeviceInfo& info = cache[device];
  if (info.multiprocessors == 0) {
    int value = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device));
    info.multiprocessors = value;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    info.smem_per_block = value;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    info.smem_per_sm = value;
  }
  return info;
}

}  // namespace

void check_fits(std::string_view op, const MlpSizes& sizes) {
  const int64_t weights = sizes.hidden_layers + 1;
  TORCH_CHECK_VALUE(tile::within_limits(sizes.dim, sizes.hidden, weights), op,
                    ": the CUDA kernels take d <= ", tile::kMaxDim, ", width <= ", tile::kMaxHidden, " and at most ",
                    tile::kMaxWeights, " weight matrices; got d = ", sizes.dim, ", width ", sizes.hidden, ", ",
                    weights, " weight matrices. Use backend='torch' (backend='auto' does so by itself)");
}

template <typename T>
MlpView<T> make_view(const MlpSizes& sizes, at::TensorList weights, at::TensorList biases, Activation activation,
                     double beta, std::vector<at::Tensor>& keep_alive) {
  MlpView<T> view{};
  view.layers = int(weights.size());
  view.dim = int(sizes.dim);
  view.input_dim = int(sizes.input_dim);
  view.hidden = int(sizes.hidden);
  view.activation = activation;
  view.beta = T(beta);
  for (size_t l = 0; l < weights.size(); ++l) {
    keep_alive.push_back(weights[l].contiguous());  // no copy when already contiguous
    view.weights[l] = keep_alive.back().const_data_ptr<T>();
    keep_alive.push_back(biases[l].contiguous());
    view.biases[l] = keep_alive.back().const_data_ptr<T>();
  }
  return view;
}

template MlpView<float> make_view<float>(const MlpSizes&, at::TensorList, at::TensorList, Activation, double,
                                         std::vector<at::Tensor>&);
template MlpView<double> make_view<double>(const MlpSizes&, at::TensorList, at::TensorList, Activation, double,
                                           std::vector<at::Tensor>&);

Launch plan_launch(std::string_view op, const MlpSizes& sizes, int64_t tangent_rows, at::ScalarType dtype,
                   int64_t batch, const std::function<int(int64_t)>& occupancy) {
  const int itemsize = dtype == at::kDouble ? 8 : 4;
  const DeviceInfo info = device_info(c10::cuda::current_device());
  // The kernel check's override, on its own stream only (launch_override.h); else JKOFAST_CUDA_ROWS.
  const LaunchOverride forced =
      launch_override_on(reinterpret_cast<uint64_t>(c10::cuda::getCurrentCUDAStream().stream()));
  int rows = forced.rows;
  bool exact_rows = false;
  if (rows == 0) {
    if (const char* env = std::getenv("JKOFAST_CUDA_ROWS"); env != nullptr && *env != '\0') {
      rows = std::atoi(env);
      exact_rows = true;
      TORCH_CHECK_VALUE(rows >= tile::min_rows(itemsize) && rows <= tile::kMaxRows && (rows & (rows - 1)) == 0, op,
                        ": JKOFAST_CUDA_ROWS must be a power of two in [", tile::min_rows(itemsize), ", ",
                        tile::kMaxRows, "], got '", env, "'");
    }
  }
  const tile::LaunchChoice c =
      tile::choose_launch(sizes.dim, sizes.input_dim, sizes.hidden, tangent_rows, itemsize, batch,
                          info.smem_per_block, info.multiprocessors, occupancy, rows, exact_rows, forced.grid);
  TORCH_CHECK(c.found, op, ": a tile of this field needs ",
              c.plan.smem_bytes > 0 ? c.plan.smem_bytes
                                    : tile::make_plan(sizes.dim, sizes.input_dim, sizes.hidden, tangent_rows, itemsize,
                                                      tile::min_rows(itemsize)).smem_bytes,
              " bytes of shared memory per block, this GPU gives ", info.smem_per_block,
              " (compute capability 8.0 or newer gives at least ", tile::kMinSmemBudget, ")");
  TORCH_CHECK(c.grid > 0, op, ": the kernel does not fit on this GPU (no resident block)");
  return {c.plan, int(c.grid)};
}

GradLayout grad_layout(const MlpSizes& sizes) {
  return make_grad_layout(sizes.dim, sizes.input_dim, sizes.hidden, sizes.hidden_layers + 1);
}

BackwardBuffers backward_buffers(const MlpSizes& sizes, const Launch& launch, const GradLayout& layout,
                                 int64_t batch, const at::TensorOptions& options, int tiles_per_total) {
  const int64_t part_values = launch.grid * layout.per_block;
  const bool totals = options.dtype().toScalarType() == at::kFloat &&
                      needs_totals(tile::ceil_div(batch, launch.plan.samples), launch.grid, tiles_per_total);
  return {at::empty({part_values}, options),
          totals ? at::empty({part_values}, options.dtype(at::kDouble)) : at::Tensor(),
          at::empty({int64_t(launch.grid) * sizes.hidden_layers * launch.plan.rows * sizes.hidden}, options)};
}

bool use_tf32(at::ScalarType dtype) {
  return dtype == at::kFloat && tf32_matmul_allowed();
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> reduce_grads(const BackwardBuffers& buffers, int blocks,
                                                                         const GradLayout& layout,
                                                                         at::TensorList weights,
                                                                         at::TensorList biases) {
  const at::Tensor& partials = buffers.partials;
  std::vector<at::Tensor> grad_w, grad_b;
  for (size_t l = 0; l < weights.size(); ++l) {
    grad_w.push_back(at::empty(weights[l].sizes(), partials.options()));
    grad_b.push_back(at::empty(biases[l].sizes(), partials.options()));
  }
  AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "jkofast::reduce_grads", [&] {
    ReduceParams<scalar_t> p{};
    p.partials = partials.const_data_ptr<scalar_t>();
    p.totals = buffers.totals_or_null();
    p.blocks = blocks;
    p.layout = layout;
    p.layers = int(weights.size());
    for (size_t l = 0; l < weights.size(); ++l) {
      p.out_rows[l] = int(weights[l].size(0));
      p.out_cols[l] = int(weights[l].size(1));
      p.grad_weights[l] = grad_w[l].mutable_data_ptr<scalar_t>();
      p.grad_biases[l] = grad_b[l].mutable_data_ptr<scalar_t>();
    }
    launch_grad_reduce<scalar_t>(p, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_w, grad_b};
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> zero_grads(at::TensorList weights, at::TensorList biases) {
  std::vector<at::Tensor> grad_w, grad_b;
  for (size_t l = 0; l < weights.size(); ++l) {
    grad_w.push_back(at::zeros(weights[l].sizes(), weights[l].options()));
    grad_b.push_back(at::zeros(biases[l].sizes(), biases[l].options()));
  }
  return {grad_w, grad_b};
}

}  // namespace jkofast::cuda
