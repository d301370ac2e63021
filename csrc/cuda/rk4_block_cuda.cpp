// CUDA implementation of jkofast::rk4_block and its backward: checks, device guard, stream,
// workspaces, parameters; the kernels are in rk4_block_kernel.cuh. The same contract as
// csrc/cpu/rk4_block_cpu.cpp, plus the fit check (ops/tile_plan.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/rk4_glue.h"

namespace jkofast::cuda {
namespace {

using GradTuple = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The tiles and grid of an rk4_block kernel on the current device.
template <typename T>
Launch plan(const char* op, const Rk4Args& args, bool backward, bool tf32) {
  return plan_launch(op, args.sizes, args.tangent_rows, args.x.scalar_type(), args.x.size(0), [&](int64_t smem) {
    int per_sm = 0;
    C10_CUDA_CHECK(rk4_block_occupancy<T>(backward, tf32, smem, &per_sm));
    return per_sm;
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rk4_block(
    const at::Tensor& x, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block";
  const auto guard = device_guard(op, x);
  const Rk4Args args = prepare_rk4(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  const int64_t batch = x.size(0);
  at::Tensor x1 = at::empty_like(args.x);
  at::Tensor logdet = at::empty({batch}, args.x.options());  // the kernel writes zeros without divergence
  at::Tensor kinetic = at::empty({batch}, args.x.options());
  at::Tensor states = at::empty({steps, batch, x.size(1)}, args.x.options());
  if (batch == 0) return {x1, logdet, kinetic, states};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] {
    std::vector<at::Tensor> keep_alive;
    at::Tensor stage_velocities;
    Rk4Params<scalar_t> p =
        make_rk4_params<scalar_t>(args, weights, biases, beta, /*keep_every_step=*/false, stage_velocities, keep_alive);
    p.x1 = x1.mutable_data_ptr<scalar_t>();
    p.logdet = logdet.mutable_data_ptr<scalar_t>();
    p.kinetic = kinetic.mutable_data_ptr<scalar_t>();
    p.states = states.mutable_data_ptr<scalar_t>();
    const bool tf32 = use_tf32(x.scalar_type());
    const Launch launch = plan<scalar_t>(op, args, /*backward=*/false, tf32);
    p.plan = launch.plan;
    launch_rk4_block<scalar_t>(p, /*backward=*/false, tf32, launch.grid, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {x1, logdet, kinetic, states};
}

GradTuple rk4_block_backward(const at::Tensor& grad_x1, const at::Tensor& grad_logdet, const at::Tensor& grad_kinetic,
                             const at::Tensor& states, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                             at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                             c10::string_view tableau, c10::string_view divergence, bool time,
                             c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block_backward";
  const auto guard = device_guard(op, x);
  const Rk4Args args = prepare_rk4(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  check_like(op, "grad_x1", x, grad_x1, x.sizes());
  check_like(op, "grad_logdet", x, grad_logdet, {x.size(0)});
  check_like(op, "grad_kinetic", x, grad_kinetic, {x.size(0)});
  check_like(op, "states", x, states, {steps, x.size(0), x.size(1)});
  const int64_t batch = x.size(0);
  at::Tensor grad_x = at::empty_like(args.x);
  if (batch == 0) {
    auto [gw, gb] = zero_grads(weights, biases);
    return {grad_x, gw, gb};
  }
  const at::Tensor gx1 = grad_x1.contiguous(), gld = grad_logdet.contiguous(), gkin = grad_kinetic.contiguous();
  const at::Tensor saved = states.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] {
    std::vector<at::Tensor> keep_alive;
    at::Tensor stage_velocities;
    Rk4Params<scalar_t> p =
        make_rk4_params<scalar_t>(args, weights, biases, beta, /*keep_every_step=*/false, stage_velocities, keep_alive);
    at::Tensor stage_input_grads = at::empty({4, batch, x.size(1)}, args.x.options());
    at::Tensor stage_grads = at::empty({batch, x.size(1)}, args.x.options());
    p.grad_x1 = gx1.const_data_ptr<scalar_t>();
    p.grad_logdet = gld.const_data_ptr<scalar_t>();
    p.grad_kinetic = gkin.const_data_ptr<scalar_t>();
    p.saved_states = saved.const_data_ptr<scalar_t>();
    p.grad_x = grad_x.mutable_data_ptr<scalar_t>();
    p.stage_input_grads = stage_input_grads.mutable_data_ptr<scalar_t>();
    p.stage_grads = stage_grads.mutable_data_ptr<scalar_t>();
    p.layout = grad_layout(args.sizes);
    const bool tf32 = use_tf32(x.scalar_type());
    const Launch launch = plan<scalar_t>(op, args, /*backward=*/true, tf32);
    p.plan = launch.plan;
    const BackwardBuffers buffers =
        backward_buffers(args.sizes, launch, p.layout, args.x.size(0), args.x.options(), kRk4TilesPerTotal);
    p.partials = buffers.partials.mutable_data_ptr<scalar_t>();
    p.totals = buffers.totals_or_null();
    p.scratch = buffers.scratch.mutable_data_ptr<scalar_t>();
    launch_rk4_block<scalar_t>(p, /*backward=*/true, tf32, launch.grid, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto [gw, gb] = reduce_grads(buffers, launch.grid, p.layout, weights, biases);
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
