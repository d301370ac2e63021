// CPU implementation of jkofast::rk4_block: S RK4 steps of one block over [t0, t1] that carry x,
// the log-determinant and the kinetic energy together, and its backward. The per-tile work is
// cpu/rk4_tile_cpu.h; this file splits the batch into tiles and checks the arguments.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/rk4_tile_cpu.h"
#include "cpu/tiles_cpu.h"

namespace jkofast::cpu {
namespace {

template <typename T>
void forward(const Rk4Args& call, at::TensorList weights, at::TensorList biases, double beta, at::Tensor& x1,
             at::Tensor& logdet, at::Tensor& kinetic, at::Tensor& states) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, batch = call.x.size(0), r = call.tangent_rows;
  const int64_t tile = tile_samples(batch, 1 + r, net.hidden, net.hidden_layers, /*keep=*/false);
  const T* x0 = call.x.const_data_ptr<T>();
  T *x_out = x1.mutable_data_ptr<T>(), *ld_out = logdet.mutable_data_ptr<T>();
  T *kin_out = kinetic.mutable_data_ptr<T>(), *saved = states.mutable_data_ptr<T>();
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, tile_parts(batch, tile), [&](int64_t first, int64_t end, int64_t) {
      Rk4Tile<decltype(act)::value, T> work(call, net, tile, r, /*backward=*/false);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        work.forward(b, n, x0 + b * d, StepStates<T>{saved, batch, b, d}, x_out + b * d,
                     call.with_divergence ? ld_out + b : nullptr, kin_out + b);
      });
    });
  });
}

template <typename T>
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward(
    const Rk4Args& call, const at::Tensor& grad_x1, const at::Tensor& grad_logdet, const at::Tensor& grad_kinetic,
    const at::Tensor& states, at::TensorList weights, at::TensorList biases, double beta) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, batch = call.x.size(0);
  const int64_t tile = tile_samples(batch, 1 + call.tangent_rows, net.hidden, net.hidden_layers, /*keep=*/true);
  at::Tensor grad_x = at::empty_like(call.x);
  const int64_t parts = tile_parts(batch, tile);
  std::vector<GradShare<T>> shares;  // one per part of the batch (tiles_cpu.h)
  for (int64_t i = 0; i < parts; ++i) shares.emplace_back(net);
  const T *gx1 = grad_x1.const_data_ptr<T>(), *gld = grad_logdet.const_data_ptr<T>();
  const T* gkin = grad_kinetic.const_data_ptr<T>();
  T* saved = const_cast<T*>(states.const_data_ptr<T>());  // read only: StepStates serves both passes
  T* gx_out = grad_x.mutable_data_ptr<T>();
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, parts, [&](int64_t first, int64_t end, int64_t part) {
      Rk4Tile<decltype(act)::value, T> work(call, net, tile, 0, /*backward=*/true);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        shares[part].add_tile([&](MlpGrads<T>& grads) {
          work.backward(b, n, gx1 + b * d, gld + b, gkin + b, StepStates<T>{saved, batch, b, d}, nullptr,
                        gx_out + b * d, grads);
        });
      });
    });
  });
  std::vector<at::Tensor> grad_w, grad_b;
  reduce_grads(shares, grad_w, grad_b);
  return {grad_x, grad_w, grad_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rk4_block(
    const at::Tensor& x, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block";
  const Rk4Args call =
      check_rk4_args(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  at::Tensor x1 = at::empty_like(call.x);
  at::Tensor logdet = at::zeros({x.size(0)}, call.x.options());
  at::Tensor kinetic = at::empty({x.size(0)}, call.x.options());
  at::Tensor states = at::empty({steps, x.size(0), x.size(1)}, call.x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { forward<scalar_t>(call, weights, biases, beta, x1, logdet, kinetic, states); });
  return {x1, logdet, kinetic, states};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> rk4_block_backward(
    const at::Tensor& grad_x1, const at::Tensor& grad_logdet, const at::Tensor& grad_kinetic, const at::Tensor& states,
    const at::Tensor& x, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta) {
  const char* op = "jkofast::rk4_block_backward";
  const Rk4Args call =
      check_rk4_args(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  check_like(op, "grad_x1", x, grad_x1, x.sizes());
  check_like(op, "grad_logdet", x, grad_logdet, {x.size(0)});
  check_like(op, "grad_kinetic", x, grad_kinetic, {x.size(0)});
  check_like(op, "states", x, states, {steps, x.size(0), x.size(1)});
  std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast", [&] {
    out = backward<scalar_t>(call, grad_x1.contiguous(), grad_logdet.contiguous(), grad_kinetic.contiguous(),
                             states.contiguous(), weights, biases, beta);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CPU, m) {
  m.impl("rk4_block", &rk4_block);
  m.impl("rk4_block_backward", &rk4_block_backward);
}

}  // namespace jkofast::cpu
