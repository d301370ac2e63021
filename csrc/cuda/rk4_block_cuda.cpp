// CUDA implementation of jkofast::rk4_block and its backward: checks, device guard, stream,
// workspaces, parameters; the kernels are in rk4_block_kernel.cuh. The same contract as
// csrc/cpu/rk4_block_cpu.cpp, plus the fit check (ops/tile_plan.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"

namespace jkofast::cuda {
namespace {

struct Rk4Call {
  at::Tensor x, probes;  // probes (S, B, k, d) or undefined
  MlpSizes sizes;
  Activation activation;
  Rk4Options options;
  Divergence divergence;
  int64_t tangent_rows, steps;
  double t0;
};

Rk4Call prepare(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                c10::string_view tableau, c10::string_view divergence, bool time, c10::string_view activation) {
  Rk4Call call;
  call.sizes = check_mlp(op, x, weights, biases, time);
  call.activation = parse_activation(op, activation);
  call.options = check_rk4_options(op, t0, t1, steps, tableau, divergence, probes.has_value());
  check_fits(op, call.sizes);
  TORCH_CHECK_VALUE(steps <= (int64_t(1) << 30), op, ": steps must be < 2^30, got ", steps);
  call.x = x.contiguous();
  call.divergence = !call.options.with_divergence ? Divergence::None
                    : call.options.exact          ? Divergence::Exact
                                                  : Divergence::Hutchinson;
  call.tangent_rows = call.options.exact ? call.sizes.dim : 0;
  if (probes.has_value()) {
    call.tangent_rows = check_probes(op, x, *probes, steps);
    call.probes = probes->contiguous();
  }
  call.steps = steps;
  call.t0 = t0;
  return call;
}

template <typename T>
Rk4Params<T> make_params(const char* op, const Rk4Call& call, at::TensorList weights, at::TensorList biases,
                         double beta, std::vector<at::Tensor>& keep_alive) {
  Rk4Params<T> p{};
  p.net = make_view<T>(call.sizes, weights, biases, call.activation, beta, keep_alive);
  p.batch = call.x.size(0);
  p.steps = int(call.steps);
  p.time = call.sizes.time;
  p.tableau = call.options.tableau;
  p.t0 = call.t0;
  p.dt = call.options.dt;
  p.divergence = call.divergence;
  p.probes = data_or_null<T>(call.probes);
  p.tangent_rows = int(call.tangent_rows);
  p.x0 = call.x.const_data_ptr<T>();
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rk4_block(
    const at::Tensor& x, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block";
  const c10::cuda::CUDAGuard guard(x.device());
  const Rk4Call call = prepare(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  const int64_t batch = x.size(0);
  at::Tensor x1 = at::empty_like(call.x);
  at::Tensor logdet = at::empty({batch}, call.x.options());
  at::Tensor kinetic = at::empty({batch}, call.x.options());
  at::Tensor states = at::empty({steps, batch, x.size(1)}, call.x.options());
  if (batch == 0) return {x1, logdet, kinetic, states};
  at::Tensor stage_velocities = at::empty({4, batch, x.size(1)}, call.x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] {
    std::vector<at::Tensor> keep_alive;
    Rk4Params<scalar_t> p = make_params<scalar_t>(op, call, weights, biases, beta, keep_alive);
    p.x1 = x1.mutable_data_ptr<scalar_t>();
    p.logdet = logdet.mutable_data_ptr<scalar_t>();  // the kernel writes zeros without divergence
    p.kinetic = kinetic.mutable_data_ptr<scalar_t>();
    p.states = states.mutable_data_ptr<scalar_t>();
    p.stage_velocities = stage_velocities.mutable_data_ptr<scalar_t>();
    const bool tf32 = use_tf32(x.scalar_type());
    const Launch launch = plan_launch(op, call.sizes, call.tangent_rows, call.x.scalar_type(), batch,
                                      [&](int64_t smem) {
                                        int per_sm = 0;
                                        C10_CUDA_CHECK(rk4_block_occupancy<scalar_t>(/*backward=*/false, tf32, smem, &per_sm));
                                        return per_sm;
                                      });
    p.plan = launch.plan;
    const int grid = launch.grid;
    launch_rk4_block<scalar_t>(p, /*backward=*/false, tf32, grid, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {x1, logdet, kinetic, states};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rk4_block_backward(
    const at::Tensor& grad_x1, const at::Tensor& grad_logdet, const at::Tensor& grad_kinetic, const at::Tensor& states,
    const at::Tensor& x, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const Rk4Call call = prepare(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  check_like(op, "grad_x1", x, grad_x1, x.sizes());
  check_like(op, "grad_logdet", x, grad_logdet, {x.size(0)});
  check_like(op, "grad_kinetic", x, grad_kinetic, {x.size(0)});
  check_like(op, "states", x, states, {steps, x.size(0), x.size(1)});
  const int64_t batch = x.size(0);
  at::Tensor grad_x = at::empty_like(call.x);
  if (batch == 0) {
    auto [gw, gb] = zero_grads(weights, biases);
    return {grad_x, gw, gb};
  }
  const at::Tensor gx1 = grad_x1.contiguous(), gld = grad_logdet.contiguous(), gkin = grad_kinetic.contiguous();
  const at::Tensor saved = states.contiguous();
  std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] {
    std::vector<at::Tensor> keep_alive;
    Rk4Params<scalar_t> p = make_params<scalar_t>(op, call, weights, biases, beta, keep_alive);
    at::Tensor stage_velocities = at::empty({4, batch, x.size(1)}, call.x.options());
    at::Tensor stage_input_grads = at::empty({4, batch, x.size(1)}, call.x.options());
    at::Tensor stage_grads = at::empty({batch, x.size(1)}, call.x.options());
    p.stage_velocities = stage_velocities.mutable_data_ptr<scalar_t>();
    p.grad_x1 = gx1.const_data_ptr<scalar_t>();
    p.grad_logdet = gld.const_data_ptr<scalar_t>();
    p.grad_kinetic = gkin.const_data_ptr<scalar_t>();
    p.saved_states = saved.const_data_ptr<scalar_t>();
    p.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    p.stage_input_grads = stage_input_grads.mutable_data_ptr<scalar_t>();
    p.stage_grads = stage_grads.mutable_data_ptr<scalar_t>();
    p.layout = grad_layout(call.sizes);
    const bool tf32 = use_tf32(x.scalar_type());
    const Launch launch = plan_launch(op, call.sizes, call.tangent_rows, call.x.scalar_type(), batch,
                                      [&](int64_t smem) {
                                        int per_sm = 0;
                                        C10_CUDA_CHECK(rk4_block_occupancy<scalar_t>(/*backward=*/true, tf32, smem, &per_sm));
                                        return per_sm;
                                      });
    p.plan = launch.plan;
    const int grid = launch.grid;
    at::Tensor partials = at::empty({grid * p.layout.per_block}, call.x.options());
    at::Tensor scratch = at::empty({int64_t(grid) * call.sizes.hidden_layers * p.plan.rows * call.sizes.hidden},
                                   call.x.options());
    p.partials = partials.mutable_data_ptr<scalar_t>();
    p.scratch = scratch.mutable_data_ptr<scalar_t>();
    launch_rk4_block<scalar_t>(p, /*backward=*/true, tf32, grid, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto [gw, gb] = reduce_grads(partials, grid, p.layout, weights, biases);
    out = {grad_x, gw, gb};
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CUDA, m) {
  m.impl("rk4_block", &rk4_block);
  m.impl("rk4_block_backward", &rk4_block_backward);
}

}  // namespace jkofast::cuda
