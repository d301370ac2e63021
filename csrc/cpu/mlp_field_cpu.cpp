// CPU implementations of jkofast::mlp_field and jkofast::mlp_field_div (forward and backward).
// The field alone is the divergence op with no tangent rows; both run MlpTile over tiles of the
// batch in parallel. Backward recomputes each tile's forward (keeping its internals only while
// the tile is being differentiated), so nothing but the inputs is saved between the passes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/mlp_tile_cpu.h"
#include "cpu/tiles_cpu.h"
#include "mlp_args.h"

namespace jkofast::cpu {
namespace {

using GradTuple = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
void forward(const FieldArgs& call, at::TensorList weights, at::TensorList biases, double beta, at::Tensor& f,
             at::Tensor* div) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, r = call.tangent_rows, batch = call.x.size(0);
  const int64_t tile = tile_samples(batch, 1 + r, net.hidden, net.hidden_layers, /*keep=*/false);
  const T* x = call.x.const_data_ptr<T>();
  const T* t = data_or_null<T>(call.t);
  const int64_t t_stride = call.t.defined() ? call.t.stride(0) : 0;
  const T* probes = data_or_null<T>(call.probes);
  T* f_out = f.mutable_data_ptr<T>();
  T* div_out = div != nullptr ? div->mutable_data_ptr<T>() : nullptr;
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, tile_parts(batch, tile), [&](int64_t first, int64_t end, int64_t) {
      MlpTile<decltype(act)::value, T> eval(net, tile, r, probes == nullptr, /*keep=*/false);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        eval.forward(n, x + b * d, t ? t + b * t_stride : nullptr, t_stride, probes ? probes + b * r * d : nullptr,
                     f_out + b * d, div_out ? div_out + b : nullptr);
      });
    });
  });
}

template <typename T>
GradTuple backward(const FieldArgs& call, const at::Tensor& grad_f, const at::Tensor& grad_div,
                   at::TensorList weights, at::TensorList biases, double beta) {
  std::vector<at::Tensor> keep_alive;
  const MlpNet<T> net(weights, biases, keep_alive, call.sizes.dim, call.sizes.time, beta);
  const int64_t d = net.dim, r = call.tangent_rows, batch = call.x.size(0);
  const int64_t tile = tile_samples(batch, 1 + r, net.hidden, net.hidden_layers, /*keep=*/true);
  at::Tensor grad_x = at::empty_like(call.x);
  at::Tensor grad_t = at::empty({call.t.defined() ? batch : 0}, call.x.options());
  const int64_t parts = tile_parts(batch, tile);
  std::vector<GradShare<T>> shares;  // one per part of the batch (tiles_cpu.h)
  for (int64_t i = 0; i < parts; ++i) shares.emplace_back(net);
  const T* x = call.x.const_data_ptr<T>();
  const T* t = data_or_null<T>(call.t);
  const int64_t t_stride = call.t.defined() ? call.t.stride(0) : 0;
  const T* probes = data_or_null<T>(call.probes);
  const T* gf = grad_f.const_data_ptr<T>();
  const T* gdiv = data_or_null<T>(grad_div);
  T* gx = grad_x.mutable_data_ptr<T>();
  T* gt = call.t.defined() ? grad_t.mutable_data_ptr<T>() : nullptr;
  dispatch_activation(call.activation, [&](auto act) {
    for_each_tile_range(batch, tile, parts, [&](int64_t first, int64_t end, int64_t part) {
      MlpTile<decltype(act)::value, T> eval(net, tile, r, probes == nullptr, /*keep=*/true);
      each_tile(first, end, tile, [&](int64_t b, int64_t n) {
        eval.forward(n, x + b * d, t ? t + b * t_stride : nullptr, t_stride, probes ? probes + b * r * d : nullptr,
                     nullptr, nullptr);
        shares[part].add_tile([&](MlpGrads<T>& grads) {
          eval.backward(gf + b * d, gdiv ? gdiv + b : nullptr, gx + b * d, gt ? gt + b : nullptr, grads);
        });
      });
    });
  });
  std::vector<at::Tensor> grad_w, grad_b;
  reduce_grads(shares, grad_w, grad_b);
  return {grad_x, grad_t, grad_w, grad_b};
}

at::Tensor mlp_field(const at::Tensor& x, const std::optional<at::Tensor>& t, at::TensorList weights,
                     at::TensorList biases, c10::string_view activation, double beta) {
  const FieldArgs call = check_field_args("jkofast::mlp_field", x, t, std::nullopt, weights, biases, activation, false);
  at::Tensor f = at::empty_like(call.x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast::mlp_field",
                             [&] { forward<scalar_t>(call, weights, biases, beta, f, nullptr); });
  return f;
}

GradTuple mlp_field_backward(const at::Tensor& grad_f, const at::Tensor& x, const std::optional<at::Tensor>& t,
                             at::TensorList weights, at::TensorList biases, c10::string_view activation,
                             double beta) {
  const char* op = "jkofast::mlp_field_backward";
  const FieldArgs call = check_field_args(op, x, t, std::nullopt, weights, biases, activation, false);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  const at::Tensor gf = grad_f.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(call, gf, at::Tensor(), weights, biases, beta); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mlp_field_div(const at::Tensor& x, const std::optional<at::Tensor>& t,
                                                 const std::optional<at::Tensor>& probes, at::TensorList weights,
                                                 at::TensorList biases, c10::string_view activation, double beta) {
  const FieldArgs call = check_field_args("jkofast::mlp_field_div", x, t, probes, weights, biases, activation, true);
  at::Tensor f = at::empty_like(call.x);
  at::Tensor div = at::empty({x.size(0)}, call.x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast::mlp_field_div",
                             [&] { forward<scalar_t>(call, weights, biases, beta, f, &div); });
  return {f, div};
}

GradTuple mlp_field_div_backward(const at::Tensor& grad_f, const at::Tensor& grad_div, const at::Tensor& x,
                                 const std::optional<at::Tensor>& t, const std::optional<at::Tensor>& probes,
                                 at::TensorList weights, at::TensorList biases, c10::string_view activation,
                                 double beta) {
  const char* op = "jkofast::mlp_field_div_backward";
  const FieldArgs call = check_field_args(op, x, t, probes, weights, biases, activation, true);
  check_like(op, "grad_f", x, grad_f, x.sizes());
  check_like(op, "grad_div", x, grad_div, {x.size(0)});
  const at::Tensor gf = grad_f.contiguous(), gdiv = grad_div.contiguous();
  GradTuple out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "jkofast",
                             [&] { out = backward<scalar_t>(call, gf, gdiv, weights, biases, beta); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jkofast, CPU, m) {
  m.impl("mlp_field", &mlp_field);
  m.impl("mlp_field_backward", &mlp_field_backward);
  m.impl("mlp_field_div", &mlp_field_div);
  m.impl("mlp_field_div_backward", &mlp_field_div_backward);
}

}  // namespace jkofast::cpu
