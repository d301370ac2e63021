// CUDA implementation of jkofast::jko_block_loss: checks, device guard, stream, workspaces,
// parameters; the kernel is in jko_block_loss_kernel.cuh. The same contract as
// csrc/cpu/jko_block_loss_cpu.cpp, plus the fit check (ops/tile_plan.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "cuda/rk4_glue.h"

namespace jkofast::cuda {
namespace {

constexpr int64_t kTerms = 4;  // |x1|^2 / 2, logdet, |x1 - x0|^2, kinetic (jkofast/_ops/jko_block_loss.py)

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> jko_block_loss(
    const at::Tensor& x0, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta, double endpoint_weight, double path_weight) {
  const char* op = "jkofast::jko_block_loss";
  const auto guard = device_guard(op, x0);
  const Rk4Args args =
      prepare_rk4(op, x0, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  TORCH_CHECK_VALUE(std::isfinite(endpoint_weight) && std::isfinite(path_weight), op,
                    ": endpoint_weight and path_weight must be finite, got ", endpoint_weight, " and ", path_weight);
  TORCH_CHECK_VALUE(x0.size(0) >= 1, op, ": the loss is a mean over the batch, which is empty");
  const int64_t batch = x0.size(0), dim = x0.size(1);
  at::Tensor terms = at::empty({batch, kTerms}, args.x.options());
  at::Tensor grad_x0 = at::empty_like(args.x);
  std::vector<at::Tensor> grad_w, grad_b;
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "jkofast", [&] {
    std::vector<at::Tensor> keep_alive;
    at::Tensor stage_velocities;
    JkoLossParams<scalar_t> lp{};
    Rk4Params<scalar_t>& p = lp.rk4;
    p = make_rk4_params<scalar_t>(args, weights, biases, beta, /*keep_every_step=*/true, stage_velocities, keep_alive);
    // Workspaces, O(B d S): x1, each step's start, the stage-input and stage gradients.
    at::Tensor x1 = at::empty_like(args.x);
    at::Tensor states = at::empty({steps, batch, dim}, args.x.options());
    at::Tensor stage_input_grads = at::empty({4, batch, dim}, args.x.options());
    at::Tensor stage_grads = at::empty({batch, dim}, args.x.options());
    p.x1 = x1.mutable_data_ptr<scalar_t>();
    p.states = states.mutable_data_ptr<scalar_t>();
    p.saved_states = p.states;
    p.grad_x = grad_x0.mutable_data_ptr<scalar_t>();
    p.stage_input_grads = stage_input_grads.mutable_data_ptr<scalar_t>();
    p.stage_grads = stage_grads.mutable_data_ptr<scalar_t>();
    p.layout = grad_layout(args.sizes);
    lp.endpoint_weight = scalar_t(endpoint_weight);
    lp.path_weight = scalar_t(path_weight);
    lp.terms = terms.mutable_data_ptr<scalar_t>();
    const bool tf32 = use_tf32(x0.scalar_type());
    const Launch launch =
        plan_launch(op, args.sizes, args.tangent_rows, args.x.scalar_type(), batch, [&](int64_t smem) {
          int per_sm = 0;
          C10_CUDA_CHECK(jko_block_loss_occupancy<scalar_t>(tf32, smem, &per_sm));
          return per_sm;
        });
    p.plan = launch.plan;
    const BackwardBuffers buffers =
        backward_buffers(args.sizes, launch, p.layout, args.x.size(0), args.x.options(), kRk4TilesPerTotal);
    p.partials = buffers.partials.mutable_data_ptr<scalar_t>();
    p.totals = buffers.totals_or_null();
    p.scratch = buffers.scratch.mutable_data_ptr<scalar_t>();
    launch_jko_block_loss<scalar_t>(lp, tf32, launch.grid, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::tie(grad_w, grad_b) = reduce_grads(buffers, launch.grid, p.layout, weights, biases);
  });
  return {terms, grad_x0, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CUDA, m) { m.impl("jko_block_loss", &jko_block_loss); }

}  // namespace jkofast::cuda
