// CUDA implementations of jkofast::mlp_field and jkofast::mlp_field_div (forward and backward):
// checks, device guard, stream, parameters; the kernels are in mlp_field_kernel.cuh. The same
// contract as csrc/cpu/mlp_field_cpu.cpp, plus the fit check (ops/tile_plan.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"

namespace jkofast::cuda {
namespace {

using GradTuple = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

struct FieldCall {
  at::Tensor x, t, probes;  // t, probes may be undefined (autonomous field, exact trace)
  MlpSizes sizes;
  Divergence divergence;
  int64_t tangent_rows;     // 0: the field alone; d: exact trace; k: Hutchinson probes
  Activation activation;
};

FieldCall prepare(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& t,
                  const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
                  c10::string_view activation, bool with_divergence) {
  FieldCall call;
  call.sizes = check_mlp(op, x, weights, biases, t.has_value());
  call.activation = parse_activation(op, activation);
  check_fits(op, call.sizes);
  call.x = x.contiguous();
  if (t.has_value()) {
    check_time(op, x, *t);
    call.t = *t;  // read through its stride: an expanded scalar t costs no copy
  }
  call.divergence = Divergence::None;
  call.tangent_rows = 0;
  if (with_divergence) {
    if (probes.has_value()) {
      call.tangent_rows = check_probes(op, x, *probes, 0);
      call.probes = probes->contiguous();
      call.divergence = Divergence::Hutchinson;
    } else {
      call.tangent_rows = call.sizes.dim;
      call.divergence = Divergence::Exact;
    }
  }
  return call;
}

template <typename T>
FieldParams<T> make_params(const char* op, const FieldCall& call, at::TensorList weights, at::TensorList biases,
                           double beta, std::vector<at::Tensor>& keep_alive) {
  FieldParams<T> p{};
  p.net = make_view<T>(call.sizes, weights, biases, call.activation, beta, keep_alive);
  p.batch = call.x.size(0);
  p.x = call.x.const_data_ptr<T>();
  p.t = data_or_null<T>(call.t);
  p.t_stride = call.t.defined() ? call.t.stride(0) : 0;
  p.divergence = call.divergence;
  p.probes = data_or_null<T>(call.probes);
  p.tangent_rows = int(call.tangent_rows);
  return p;
}

template <typename T>
void forward(const char* op, const FieldCall& call, at::TensorList weights, at::TensorList biases, double beta,
             at::Tensor& f, at::Tensor* div) {
  if (call.x.size(0) == 0) return;
  std::vector<at::Tensor> keep_alive;
  FieldParams<T> p = make_params<T>(op, call, weights, biases, beta, keep_alive);
  p.f = f.mutable_data_ptr<T>();
  p.div = div != nullptr ? div->mutable_data_ptr<T>() : nullptr;
  const bool tf32 = use_tf32(call.x.scalar_type());
  const Launch launch = plan_launch(op, call.sizes, call.tangent_rows, call.x.scalar_type(), p.batch,
                                    [&](int64_t smem) {
                                      int per_sm = 0;
                                      C10_CUDA_CHECK(mlp_field_occupancy<T>(/*backward=*/false, tf32, smem, &per_sm));
                                      return per_sm;
                                    });
  p.plan = launch.plan;
  const int grid = launch.grid;
  launch_mlp_field<T>(p, /*backward=*/false, tf32, grid, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
GradTuple backward(const char* op, const FieldCall& call, const at::Tensor& grad_f, const at::Tensor& grad_div,
                   at::TensorList weights, at::TensorList biases, double beta) {
  const int64_t batch = call.x.size(0);
  at::Tensor grad_x = at::empty_like(call.x);
  at::Tensor grad_t = at::empty({call.t.defined() ? batch : 0}, call.x.options());
  if (batch == 0) {
    auto [gw, gb] = zero_grads(weights, biases);
    return {grad_x, grad_t, gw, gb};
  }
  std::vector<at::Tensor> keep_alive;
  FieldParams<T> p = make_params<T>(op, call, weights, biases, beta, keep_alive);
  p.grad_f = grad_f.const_data_ptr<T>();
  p.grad_div = data_or_null<T>(grad_div);
  p.grad_x = grad_x.mutable_data_ptr<T>();
  p.grad_t = call.t.defined() ? grad_t.mutable_data_ptr<T>() : nullptr;
  p.layout = grad_layout(call.sizes);
  const bool tf32 = use_tf32(call.x.scalar_type());
  const Launch launch = plan_launch(op, call.sizes, call.tangent_rows, call.x.scalar_type(), batch,
                                    [&](int64_t smem) {
                                      int per_sm = 0;
                                      C10_CUDA_CHECK(mlp_field_occupancy<T>(/*backward=*/true, tf32, smem, &per_sm));
                                      return per_sm;
                                    });
  p.plan = launch.plan;
  const int grid = launch.grid;
  // Per block: its gradient part (zeroed by the kernel) and the pre-activations of one pass.
  at::Tensor partials = at::empty({grid * p.layout.per_block}, call.x.options());
  at::Tensor scratch = at::empty({int64_t(grid) * call.sizes.hidden_layers * p.plan.rows * call.sizes.hidden},
                                 call.x.options());
  p.partials = partials.mutable_data_ptr<T>();
  p.scratch = scratch.mutable_data_ptr<T>();
  launch_mlp_field<T>(p, /*backward=*/true, tf32, grid, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto [gw, gb] = reduce_grads(partials, grid, p.layout, weights, biases);
  return {grad_x, grad_t, gw, gb};
}

at::Tensor mlp_field(const at::Tensor& x, const std::optional<at::Tensor>& t, at::TensorList weights,
                     at::TensorList biases, c10::string_view activation, double beta) {
  const char* op = "jkofast::mlp_field";
  const c10::cuda::CUDAGuard guard(x.device());
  const FieldCall call = prepare(op, x, t, std::nullopt, weights, biases, activation, false);
  at::Tensor f = at::empty_like(call.x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] { forward<scalar_t>(op, call, weights, biases, beta, f, nullptr); });
  return f;
}

GradTuple mlp_field_backward(const at::Tensor& grad_f, const at::Tensor& x, const std::optional<at::Tensor>& t,
                             at::TensorList weights, at::TensorList biases, c10::string_view activation,
                             double beta) {
  const char* op = "jkofast::mlp_field_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const FieldCall call = prepare(op, x, t, std::nullopt, weights, biases, activation, false);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  const at::Tensor gf = grad_f.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(op, call, gf, at::Tensor(), weights, biases, beta); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mlp_field_div(const at::Tensor& x, const std::optional<at::Tensor>& t,
                                                 const std::optional<at::Tensor>& probes, at::TensorList weights,
                                                 at::TensorList biases, c10::string_view activation, double beta) {
  const char* op = "jkofast::mlp_field_div";
  const c10::cuda::CUDAGuard guard(x.device());
  const FieldCall call = prepare(op, x, t, probes, weights, biases, activation, true);
  at::Tensor f = at::empty_like(call.x);
  at::Tensor div = at::empty({x.size(0)}, call.x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] { forward<scalar_t>(op, call, weights, biases, beta, f, &div); });
  return {f, div};
}

GradTuple mlp_field_div_backward(const at::Tensor& grad_f, const at::Tensor& grad_div, const at::Tensor& x,
                                 const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& probes,
                                 at::TensorList weights, at::TensorList biases, c10::string_view activation,
                                 double beta) {
  const char* op = "jkofast::mlp_field_div_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const FieldCall call = prepare(op, x, t, probes, weights, biases, activation, true);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  check_like(op, "grad_div", x, grad_div, {x.size(0)});
  const at::Tensor gf = grad_f.contiguous(), gdiv = grad_div.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(op, call, gf, gdiv, weights, biases, beta); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CUDA, m) {
  m.impl("mlp_field", &mlp_field);
  m.impl("mlp_field_backward", &mlp_field_backward);
  m.impl("mlp_field_div", &mlp_field_div);
  m.impl("mlp_field_div_backward", &mlp_field_div_backward);
}

}  // namespace jkofast::cuda
