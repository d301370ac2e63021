// CPU implementation of jkofast::rk4_block: S RK4 steps of one block over [t0, t1] that carry x,
// the log-determinant and the kinetic energy together, and its backward.
//
// Samples are independent, so each tile of samples runs all S steps while its data stays in
// cache. Forward saves only x at the start of each step ("states", (S, B, d)). Backward walks
// the steps in reverse: it recomputes the step's stage velocities (field alone, no tangents),
// then for stage 4..1 re-evaluates the field with its tangent rows and differentiates it at
// once, so the memory between the passes is O(B d S) and the workspace one tile's.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/mlp_tile_cpu.h"
#include "cpu/tiles_cpu.h"
#include "mlp_args.h"

namespace jkofast::cpu {
namespace {

struct Rk4Call {
  at::Tensor x, probes;  // probes (S, B, k, d) or undefined
  MlpSizes sizes;
  Activation activation;
  ButcherTableau tableau;
  bool with_divergence, exact;
  int64_t tangent_rows, steps;
  double t0, dt;
};

Rk4Call prepare(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                c10::string_view tableau, c10::string_view divergence, bool time, c10::string_view activation) {
  Rk4Call call;
  call.sizes = check_mlp(op, x, weights, biases, time);
  call.activation = parse_activation(op, activation);
  call.tableau = butcher_tableau(parse_tableau(op, tableau));
  TORCH_CHECK_VALUE(steps >= 1, op, ": steps must be >= 1, got ", steps);
  TORCH_CHECK_VALUE(std::isfinite(t0) && std::isfinite(t1), op, ": t0 and t1 must be finite, got t0=", t0,
                    ", t1=", t1);
  TORCH_CHECK_VALUE(divergence == "exact" || divergence == "hutchinson" || divergence == "none", op,
                    ": divergence must be 'exact', 'hutchinson' or 'none', got '", std::string(divergence), "'");
  call.with_divergence = divergence != "none";
  call.exact = divergence == "exact";
  TORCH_CHECK_VALUE(probes.has_value() == (divergence == "hutchinson"), op,
                    ": probes are required with divergence='hutchinson' and only then");
  call.x = x.contiguous();
  call.tangent_rows = call.exact ? call.sizes.dim : 0;
  if (probes.has_value()) {
    call.tangent_rows = check_probes(op, x, *probes, steps);
    call.probes = probes->contiguous();
  }
  call.steps = steps;
  call.t0 = t0;
  call.dt = (t1 - t0) / double(steps);
  return call;
}

// Stage s of step `step` runs at t0 + step * dt + c_s * dt, computed in double as the reference.
template <typename T>
T stage_time(const Rk4Call& call, int64_t step, int s) {
  return T(call.t0 + double(step) * call.dt + call.tableau.c[s] * call.dt);
}

// y = x + dt sum_{q<s} a[s][q] k_q over n*d elements; ks holds the stages, `plane` apart.
template <typename T>
void stage_inputs(const Rk4Call& call, int s, int64_t count, const T* x, const T* ks, int64_t plane, T* y) {
  const T dt = T(call.dt);
  for (int64_t e = 0; e < count; ++e) y[e] = stage_input(call.tableau, s, x[e], dt, ks + e, plane);
}

template <typename T>
const T* probes_at(const Rk4Call& call, int64_t step, int64_t sample) {
  if (!call.probes.defined()) return nullptr;
  const int64_t batch = call.x.size(0);
  return call.probes.const_data_ptr<T>() + ((step * batch + sample) * call.tangent_rows) * call.sizes.dim;
}

template <typename T>
void forward(const Rk4Call& call, at::TensorList weights, at::TensorList biases, double beta, at::Tensor& x1,
             at::Tensor& logdet, at::Tensor& kinetic, at::Tensor& states) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, batch = call.x.size(0), r = call.tangent_rows;
  const int64_t tile = tile_samples(batch, 1 + r, net.hidden);
  const T dt = T(call.dt), abs_dt = T(std::abs(call.dt));
  const T* x0 = call.x.const_data_ptr<T>();
  T *x_out = x1.mutable_data_ptr<T>(), *ld_out = logdet.mutable_data_ptr<T>();
  T *kin_out = kinetic.mutable_data_ptr<T>(), *saved = states.mutable_data_ptr<T>();
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, [&](int64_t first, int64_t end, int) {
      MlpTile<decltype(act)::value, T> eval(net, tile, r, call.exact, /*keep=*/false);
      std::vector<T> x(tile * d), y(tile * d), ks(kStages * tile * d), divs(kStages * tile);
      const int64_t plane = tile * d;
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        std::copy(x0 + b * d, x0 + (b + n) * d, x.begin());
        std::fill(ld_out + b, ld_out + b + n, T(0));
        std::fill(kin_out + b, kin_out + b + n, T(0));
        for (int64_t step = 0; step < call.steps; ++step) {
          std::copy(x.begin(), x.begin() + n * d, saved + (step * batch + b) * d);
          for (int s = 0; s < kStages; ++s) {
            stage_inputs(call, s, n * d, x.data(), ks.data(), plane, y.data());
            const T t = stage_time<T>(call, step, s);
            eval.forward(n, y.data(), call.sizes.time ? &t : nullptr, 0, probes_at<T>(call, step, b),
                         ks.data() + s * plane, call.with_divergence ? divs.data() + s * tile : nullptr);
          }
          for (int64_t e = 0; e < n * d; ++e) x[e] += dt * weighted_stage_sum(call.tableau, ks.data() + e, plane);
          for (int64_t i = 0; i < n; ++i) {
            T speed2[kStages];
            for (int s = 0; s < kStages; ++s) {
              const T* k = ks.data() + s * plane + i * d;
              speed2[s] = T(0);
              for (int64_t j = 0; j < d; ++j) speed2[s] += k[j] * k[j];
            }
            kin_out[b + i] += abs_dt * weighted_stage_sum(call.tableau, speed2, 1);
            if (call.with_divergence) ld_out[b + i] += dt * weighted_stage_sum(call.tableau, divs.data() + i, tile);
          }
        }
        std::copy(x.begin(), x.begin() + n * d, x_out + b * d);
      });
    });
  });
}

template <typename T>
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward(
    const Rk4Call& call, const at::Tensor& grad_x1, const at::Tensor& grad_logdet, const at::Tensor& grad_kinetic,
    const at::Tensor& states, at::TensorList weights, at::TensorList biases, double beta) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, batch = call.x.size(0), r = call.tangent_rows;
  const int64_t tile = tile_samples(batch, 1 + r, net.hidden);
  const ButcherTableau& tab = call.tableau;
  const T dt = T(call.dt), abs_dt = T(std::abs(call.dt));
  at::Tensor grad_x = at::empty_like(call.x);
  std::vector<MlpGrads<T>> shares;
  for (int i = 0; i < at::get_num_threads(); ++i) shares.emplace_back(net);
  const T *gx1 = grad_x1.const_data_ptr<T>(), *gld = grad_logdet.const_data_ptr<T>();
  const T *gkin = grad_kinetic.const_data_ptr<T>(), *saved = states.const_data_ptr<T>();
  T* gx_out = grad_x.mutable_data_ptr<T>();
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, [&](int64_t first, int64_t end, int thread) {
      MlpTile<decltype(act)::value, T> velocity(net, tile, 0, true, /*keep=*/false);
      MlpTile<decltype(act)::value, T> full(net, tile, r, call.exact, /*keep=*/true);
      const int64_t plane = tile * d;
      std::vector<T> gx(plane), ys(kStages * plane), ks(kStages * plane), gys(kStages * plane), gk(plane);
      std::vector<T> gdiv(tile);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        std::copy(gx1 + b * d, gx1 + (b + n) * d, gx.begin());
        for (int64_t step = call.steps - 1; step >= 0; --step) {
          const T* x = saved + (step * batch + b) * d;
          for (int s = 0; s < kStages; ++s) {  // the step's stage inputs and velocities, again
            T* y = ys.data() + s * plane;
            stage_inputs(call, s, n * d, x, ks.data(), plane, y);
            const T t = stage_time<T>(call, step, s);
            velocity.forward(n, y, call.sizes.time ? &t : nullptr, 0, nullptr, ks.data() + s * plane, nullptr);
          }
          for (int s = kStages - 1; s >= 0; --s) {
            // dloss/dk_s: through x_{n+1}, the kinetic energy and the later stages' inputs.
            const T bs = T(tab.b[s]);
            const T* k = ks.data() + s * plane;
            for (int64_t i = 0; i < n; ++i) {
              for (int64_t j = 0; j < d; ++j) {
                const int64_t e = i * d + j;
                T g = dt * bs * gx[e] + T(2) * abs_dt * bs * gkin[b + i] * k[e];
                for (int q = s + 1; q < kStages; ++q) g += dt * T(tab.a[q][s]) * gys[q * plane + e];
                gk[e] = g;
              }
              gdiv[i] = dt * bs * gld[b + i];
            }
            const T t = stage_time<T>(call, step, s);
            full.forward(n, ys.data() + s * plane, call.sizes.time ? &t : nullptr, 0, probes_at<T>(call, step, b),
                         nullptr, nullptr);
            full.backward(gk.data(), call.with_divergence ? gdiv.data() : nullptr, gys.data() + s * plane, nullptr,
                          shares[thread]);
          }
          for (int64_t e = 0; e < n * d; ++e) {
            for (int s = 0; s < kStages; ++s) gx[e] += gys[s * plane + e];
          }
        }
        std::copy(gx.begin(), gx.begin() + n * d, gx_out + b * d);
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
  const Rk4Call call = prepare(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
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
  const Rk4Call call = prepare(op, x, probes, weights, biases, t0, t1, steps, tableau, divergence, time, activation);
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
