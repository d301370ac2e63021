// CUDA implementations of jkofast::mlp_field and jkofast::mlp_field_div (forward and backward):
// checks, device guard, stream, parameters; the kernels are in mlp_field_kernel.cuh. The same
// contract as csrc/cpu/mlp_field_cpu.cpp, plus the fit check (ops/tile_plan.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"

namespace jkofast::cuda {
namespace {

using GradTuple = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

FieldArgs prepare(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& t,
                  const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
                  c10::string_view activation, bool with_divergence) {
  FieldArgs args = check_field_args(op, x, t, probes, weights, biases, activation, with_divergence);
  check_fits(op, args.sizes);
  return args;
}

template <typename T>
FieldParams<T> make_params(const FieldArgs& args, at::TensorList weights, at::TensorList biases, double beta,
                           std::vector<at::Tensor>& keep_alive) {
  FieldParams<T> p{};
  p.net = make_view<T>(args.sizes, weights, biases, args.activation, beta, keep_alive);
  p.batch = args.x.size(0);
  p.x = args.x.const_data_ptr<T>();
  p.t = data_or_null<T>(args.t);
  p.t_stride = args.t.defined() ? args.t.stride(0) : 0;
  p.divergence = args.probes.defined() ? Divergence::Hutchinson
                 : args.tangent_rows > 0 ? Divergence::Exact
                                         : Divergence::None;
  p.probes = data_or_null<T>(args.probes);
  p.tangent_rows = int(args.tangent_rows);
  return p;
}

// The tiles and grid of a field kernel on the current device.
template <typename T>
Launch plan(const char* op, const FieldArgs& args, bool backward, bool tf32) {
  return plan_launch(op, args.sizes, args.tangent_rows, args.x.scalar_type(), args.x.size(0), [&](int64_t smem) {
    int per_sm = 0;
    C10_CUDA_CHECK(mlp_field_occupancy<T>(backward, tf32, smem, &per_sm));
    return per_sm;
  });
}

template <typename T>
void forward(const char* op, const FieldArgs& args, at::TensorList weights, at::TensorList biases, double beta,
             at::Tensor& f, at::Tensor* div) {
  if (args.x.size(0) == 0) return;
  std::vector<at::Tensor> keep_alive;
  FieldParams<T> p = make_params<T>(args, weights, biases, beta, keep_alive);
  p.f = f.mutable_data_ptr<T>();
  p.div = div != nullptr ? div->mutable_data_ptr<T>() : nullptr;
  const bool tf32 = use_tf32(args.x.scalar_type());
  const Launch launch = plan<T>(op, args, /*backward=*/false, tf32);
  p.plan = launch.plan;
  launch_mlp_field<T>(p, /*backward=*/false, tf32, launch.grid, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
GradTuple backward(const char* op, const FieldArgs& args, const at::Tensor& grad_f, const at::Tensor& grad_div,
                   at::TensorList weights, at::TensorList biases, double beta) {
  const int64_t batch = args.x.size(0);
  at::Tensor grad_x = at::empty_like(args.x);
  at::Tensor grad_t = at::empty({args.t.defined() ? batch : 0}, args.x.options());
  if (batch == 0) {
    auto [gw, gb] = zero_grads(weights, biases);
    return {grad_x, grad_t, gw, gb};
  }
  std::vector<at::Tensor> keep_alive;
  FieldParams<T> p = make_params<T>(args, weights, biases, beta, keep_alive);
  p.grad_f = grad_f.const_data_ptr<T>();
  p.grad_div = data_or_null<T>(grad_div);
  p.grad_x = grad_x.mutable_data_ptr<T>();
  p.grad_t = args.t.defined() ? grad_t.mutable_data_ptr<T>() : nullptr;
  p.layout = grad_layout(args.sizes);
  const bool tf32 = use_tf32(args.x.scalar_type());
  const Launch launch = plan<T>(op, args, /*backward=*/true, tf32);
  p.plan = launch.plan;
  const BackwardBuffers buffers =
      backward_buffers(args.sizes, launch, p.layout, args.x.size(0), args.x.options(),
                       field_tiles_per_total(launch.plan));
  p.partials = buffers.partials.mutable_data_ptr<T>();
  p.totals = buffers.totals_or_null();
  p.scratch = buffers.scratch.mutable_data_ptr<T>();
  launch_mlp_field<T>(p, /*backward=*/true, tf32, launch.grid, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto [gw, gb] = reduce_grads(buffers, launch.grid, p.layout, weights, biases);
  return {grad_x, grad_t, gw, gb};
}

at::Tensor mlp_field(const at::Tensor& x, const std::optional<at::Tensor>& t, at::TensorList weights,
                     at::TensorList biases, c10::string_view activation, double beta) {
  const char* op = "jkofast::mlp_field";
  const auto guard = device_guard(op, x);
  const FieldArgs args = prepare(op, x, t, std::nullopt, weights, biases, activation, false);
  at::Tensor f = at::empty_like(args.x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] { forward<scalar_t>(op, args, weights, biases, beta, f, nullptr); });
  return f;
}

GradTuple mlp_field_backward(const at::Tensor& grad_f, const at::Tensor& x, const std::optional<at::Tensor>& t,
                             at::TensorList weights, at::TensorList biases, c10::string_view activation,
                             double beta) {
  const char* op = "jkofast::mlp_field_backward";
  const auto guard = device_guard(op, x);
  const FieldArgs args = prepare(op, x, t, std::nullopt, weights, biases, activation, false);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  const at::Tensor gf = grad_f.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(op, args, gf, at::Tensor(), weights, biases, beta); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mlp_field_div(const at::Tensor& x, const std::optional<at::Tensor>& t,
                                                 const std::optional<at::Tensor>& probes, at::TensorList weights,
                                                 at::TensorList biases, c10::string_view activation, double beta) {
  const char* op = "jkofast::mlp_field_div";
  const auto guard = device_guard(op, x);
  const FieldArgs args = prepare(op, x, t, probes, weights, biases, activation, true);
  at::Tensor f = at::empty_like(args.x);
  at::Tensor div = at::empty({x.size(0)}, args.x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] { forward<scalar_t>(op, args, weights, biases, beta, f, &div); });
  return {f, div};
}

GradTuple mlp_field_div_backward(const at::Tensor& grad_f, const at::Tensor& grad_div, const at::Tensor& x,
                                 const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& probes,
                                 at::TensorList weights, at::TensorList biases, c10::string_view activation,
                                 double beta) {
  const char* op = "jkofast::mlp_field_div_backward";
  const auto guard = device_guard(op, x);
  const FieldArgs args = prepare(op, x, t, probes, weights, biases, activation, true);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  check_like(op, "grad_div", x, grad_div, {x.size(0)});
  const at::Tensor gf = grad_f.contiguous(), gdiv = grad_div.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(op, args, gf, gdiv, weights, biases, beta); });
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
