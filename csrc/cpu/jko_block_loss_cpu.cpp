// CPU implementation of jkofast::jko_block_loss: one JKO-iFlow block's training loss and its
// gradients in one pass over the data.
//
// Why a fused op: the loss is a fixed linear function of per-sample quantities (x1, logdet,
// kinetic energy), so its gradients with respect to them are known as soon as x1 is. The
// forward therefore integrates the trajectories with the field alone (one row per sample
// instead of 1 + d) and keeps the stage velocities; the backward pass, which must evaluate the
// field with its d tangent rows anyway to differentiate the divergence, yields the divergence
// (hence logdet and the loss value) on the way. Against rk4_block + rk4_block_backward this
// saves the forward's tangent products and the backward's velocity recompute: about a quarter
// of the arithmetic of a training step at d = 6, H = 128.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/rk4_tile_cpu.h"
#include "cpu/tiles_cpu.h"

namespace jkofast::cpu {
namespace {

enum Term : int64_t { kPotential = 0, kLogdet = 1, kEndpoint = 2, kKinetic = 3, kTerms = 4 };

template <typename T>
void loss_and_grads(const Rk4Args& call, at::TensorList weights, at::TensorList biases, double beta,
                    double endpoint_weight, double path_weight, at::Tensor& terms, at::Tensor& grad_x0,
                    std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, batch = call.x.size(0), S = call.steps;
  const int64_t tile = tile_samples(batch, 1 + call.tangent_rows, net.hidden, net.hidden_layers, /*keep=*/true);
  // d(mean over the batch)/d(per-sample term)
  const T inv_b = T(1) / T(batch), ew = T(endpoint_weight), pw = T(path_weight);
  const int64_t parts = tile_parts(batch, tile);
  std::vector<GradShare<T>> shares;  // one per part of the batch (tiles_cpu.h)
  for (int64_t i = 0; i < parts; ++i) shares.emplace_back(net);
  const T* x0 = call.x.const_data_ptr<T>();
  T* terms_out = terms.mutable_data_ptr<T>();
  T* gx0_out = grad_x0.mutable_data_ptr<T>();
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, parts, [&](int64_t first, int64_t end, int64_t part) {
      Rk4Tile<decltype(act)::value, T> work(call, net, tile, /*forward_rows=*/0, /*backward=*/true);
      const int64_t plane = tile * d;
      std::vector<T> states(S * plane), ks(S * kStages * plane), x1(plane), gx1(plane), gx0(plane);
      std::vector<T> kinetic(tile), logdet(tile), gld(tile, -inv_b), gkin(tile, pw * inv_b);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        const StepStates<T> saved{states.data(), tile, 0, d};
        work.forward(b, n, x0 + b * d, saved, x1.data(), nullptr, kinetic.data(), ks.data());
        for (int64_t e = 0; e < n * d; ++e) {
          const T xe = x1[e], we = x0[b * d + e];
          gx1[e] = inv_b * (xe + T(2) * ew * (xe - we));
        }
        shares[part].add_tile([&](MlpGrads<T>& grads) {
          work.backward(b, n, gx1.data(), gld.data(), gkin.data(), saved, ks.data(), gx0.data(), grads,
                        logdet.data());
        });
        for (int64_t i = 0; i < n; ++i) {
          T potential = T(0), endpoint = T(0);
          for (int64_t j = 0; j < d; ++j) {
            const int64_t e = i * d + j;
            const T xe = x1[e], step = xe - x0[b * d + e];
            potential += xe * xe;
            endpoint += step * step;
            // x0 also enters the endpoint cost directly
            gx0_out[b * d + e] = gx0[e] - T(2) * ew * inv_b * step;
          }
          T* row = terms_out + (b + i) * kTerms;
          row[kPotential] = T(0.5) * potential;
          row[kLogdet] = logdet[i];
          row[kEndpoint] = endpoint;
          row[kKinetic] = kinetic[i];
        }
      });
    });
  });
  reduce_grads(shares, grad_w, grad_b);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> jko_block_loss(
    const at::Tensor& x0, const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
    double t0, double t1, int64_t steps, c10::string_view tableau, c10::string_view divergence, bool time,
    c10::string_view activation, double beta, double endpoint_weight, double path_weight) {
  const char* op = "jkofast::jko_block_loss";
  const Rk4Args call =
      check_rk4_args(op, x0, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
  TORCH_CHECK_VALUE(std::isfinite(endpoint_weight) && std::isfinite(path_weight), op,
                    ": endpoint_weight and path_weight must be finite, got ", endpoint_weight, " and ", path_weight);
  TORCH_CHECK_VALUE(x0.size(0) >= 1, op, ": the loss is a mean over the batch, which is empty");
  at::Tensor terms = at::empty({x0.size(0), kTerms}, call.x.options());
  at::Tensor grad_x0 = at::empty_like(call.x);
  std::vector<at::Tensor> grad_w, grad_b;
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "jkofast", [&] {
    loss_and_grads<scalar_t>(call, weights, biases, beta, endpoint_weight, path_weight, terms, grad_x0, grad_w,
                             grad_b);
  });
  return {terms, grad_x0, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CPU, m) { m.impl("jko_block_loss", &jko_block_loss); }

}  // namespace jkofast::cpu
