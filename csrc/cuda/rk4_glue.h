// Torch-side setup shared by the glue of the two integrating ops (rk4_block_cuda.cpp,
// jko_block_loss_cuda.cpp): their argument checks and the Rk4Params fields they fill alike.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cuda/cuda_glue.h"

namespace jkofast::cuda {

// check_rk4_args (mlp_args.h) plus what the kernels need: the fit rule and an int step count.
inline Rk4Args prepare_rk4(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                           at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                           c10::string_view tableau, c10::string_view divergence, bool time,
                           c10::string_view activation) {
  Rk4Args args = check_rk4_args(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  check_fits(op, args.sizes);
  TORCH_CHECK_VALUE(steps < (int64_t(1) << 30), op, ": steps must be < 2^30, got ", steps);
  return args;
}

// The field, the integration settings, x0 and a fresh stage-velocity workspace: (4, B, d) for one
// step at a time, or (S, 4, B, d) with keep_every_step (velocity_step_stride set to match).
template <typename T>
Rk4Params<T> make_rk4_params(const Rk4Args& args, at::TensorList weights, at::TensorList biases, double beta,
                             bool keep_every_step, at::Tensor& stage_velocities, std::vector<at::Tensor>& keep_alive) {
  Rk4Params<T> p{};
  p.net = make_view<T>(args.sizes, weights, biases, args.activation, beta, keep_alive);
  p.batch = args.x.size(0);
  p.steps = int(args.steps);
  p.time = args.sizes.time;
  p.tableau = args.tableau;
  p.t0 = args.t0;
  p.dt = args.dt;
  p.divergence = !args.with_divergence ? Divergence::None : args.exact ? Divergence::Exact : Divergence::Hutchinson;
  p.probes = data_or_null<T>(args.probes);
  p.tangent_rows = int(args.tangent_rows);
  p.x0 = args.x.const_data_ptr<T>();
  const int64_t plane = args.x.size(0) * args.x.size(1);
  stage_velocities = keep_every_step ? at::empty({args.steps, 4, args.x.size(0), args.x.size(1)}, args.x.options())
                                     : at::empty({4, args.x.size(0), args.x.size(1)}, args.x.options());
  p.stage_velocities = stage_velocities.mutable_data_ptr<T>();
  p.velocity_step_stride = keep_every_step ? 4 * plane : 0;
  return p;
}

}  // namespace jkofast::cuda
