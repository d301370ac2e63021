#include "mlp_args.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace jkofast {

Activation parse_activation(std::string_view op, std::string_view name) {
  if (name == "softplus") return Activation::Softplus;
  if (name == "tanh") return Activation::Tanh;
  if (name == "silu") return Activation::Silu;
  TORCH_CHECK_VALUE(false, op, ": unknown activation '", std::string(name),
                    "'; expected one of 'silu', 'softplus', 'tanh'");
}

Tableau parse_tableau(std::string_view op, std::string_view name) {
  if (name == "rk4") return Tableau::Classical;
  if (name == "rk4-3/8") return Tableau::ThreeEighths;
  TORCH_CHECK_VALUE(false, op, ": unknown tableau '", std::string(name), "'; expected 'rk4' or 'rk4-3/8'");
}

static void check_same(std::string_view op, std::string_view name, const at::Tensor& x, const at::Tensor& v) {
  TORCH_CHECK_VALUE(v.scalar_type() == x.scalar_type(), op, ": ", std::string(name), " has dtype ",
                    v.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK_VALUE(v.device() == x.device(), op, ": ", std::string(name), " is on ", v.device(),
                    " but x is on ", x.device());
}

MlpSizes check_mlp(std::string_view op, const at::Tensor& x, at::TensorList weights,
                   at::TensorList biases, bool time) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x should have shape (B, d), got ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                    ": x should be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(weights.size() >= 2, op, ": the field needs at least 2 layers, got ", weights.size(),
                    " weight matrices");
  TORCH_CHECK_VALUE(biases.size() == weights.size(), op, ": ", weights.size(), " weights but ",
                    biases.size(), " biases");
  const int64_t d = x.size(1);
  TORCH_CHECK_VALUE(d >= 1, op, ": x should have at least one column, got ", x.sizes());
  const int64_t hidden = weights[0].dim() == 2 ? weights[0].size(0) : -1;
  const size_t last = weights.size() - 1;
  for (size_t l = 0; l < weights.size(); ++l) {
    const int64_t out = l == last ? d : hidden;
    const int64_t in = l == 0 ? d + int64_t(time) : hidden;
    const std::string w_name = "weights[" + std::to_string(l) + "]";
    const std::string b_name = "biases[" + std::to_string(l) + "]";
    TORCH_CHECK_VALUE(weights[l].dim() == 2 && weights[l].size(0) == out && weights[l].size(1) == in, op,
                      ": ", w_name, " should have shape (", out, ", ", in, "), got ", weights[l].sizes());
    TORCH_CHECK_VALUE(biases[l].dim() == 1 && biases[l].size(0) == out, op, ": ", b_name,
                      " should have shape (", out, "), got ", biases[l].sizes());
    check_same(op, w_name, x, weights[l]);
    check_same(op, b_name, x, biases[l]);
  }
  TORCH_CHECK_VALUE(hidden >= 1, op, ": the hidden width must be >= 1");
  return {d, d + int64_t(time), hidden, int64_t(weights.size()) - 1, time};
}

void check_time(std::string_view op, const at::Tensor& x, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), op, ": t should have shape (", x.size(0),
                    "), got ", t.sizes());
  check_same(op, "t", x, t);
}

int64_t check_probes(std::string_view op, const at::Tensor& x, const at::Tensor& probes, int64_t steps) {
  const int64_t lead = steps > 0 ? 1 : 0;
  const bool ok = probes.dim() == 3 + lead && (steps == 0 || probes.size(0) == steps) &&
                  probes.size(lead) == x.size(0) && probes.size(lead + 1) >= 1 &&
                  probes.size(lead + 2) == x.size(1);
  if (steps > 0) {
    TORCH_CHECK_VALUE(ok, op, ": probes should have shape (", steps, ", ", x.size(0), ", k, ", x.size(1),
                      ") with k >= 1, got ", probes.sizes());
  } else {
    TORCH_CHECK_VALUE(ok, op, ": probes should have shape (", x.size(0), ", k, ", x.size(1),
                      ") with k >= 1, got ", probes.sizes());
  }
  check_same(op, "probes", x, probes);
  return probes.size(lead + 1);
}

FieldArgs check_field_args(std::string_view op, const at::Tensor& x, const std::optional<at::Tensor>& t,
                           const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
                           std::string_view activation, bool with_divergence) {
  FieldArgs args;
  args.sizes = check_mlp(op, x, weights, biases, t.has_value());
  args.activation = parse_activation(op, activation);
  args.x = x.contiguous();
  if (t.has_value()) {
    check_time(op, x, *t);
    args.t = *t;
  }
  args.tangent_rows = 0;
  if (with_divergence) {
    if (probes.has_value()) {
      args.tangent_rows = check_probes(op, x, *probes, 0);
      args.probes = probes->contiguous();
    } else {
      args.tangent_rows = args.sizes.dim;
    }
  }
  return args;
}

Rk4Args check_rk4_args(std::string_view op, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                       at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                       std::string_view tableau, std::string_view divergence, bool time, std::string_view activation) {
  Rk4Args args;
  args.sizes = check_mlp(op, x, weights, biases, time);
  args.activation = parse_activation(op, activation);
  args.tableau = butcher_tableau(parse_tableau(op, tableau));
  TORCH_CHECK_VALUE(steps >= 1, op, ": steps must be >= 1, got ", steps);
  TORCH_CHECK_VALUE(std::isfinite(t0) && std::isfinite(t1), op, ": t0 and t1 must be finite, got t0=", t0,
                    ", t1=", t1);
  TORCH_CHECK_VALUE(divergence == "exact" || divergence == "hutchinson" || divergence == "none", op,
                    ": divergence must be 'exact', 'hutchinson' or 'none', got '", std::string(divergence), "'");
  args.with_divergence = divergence != "none";
  args.exact = divergence == "exact";
  TORCH_CHECK_VALUE(probes.has_value() == (divergence == "hutchinson"), op,
                    ": probes are required with divergence='hutchinson' and only then");
  args.x = x.contiguous();
  args.tangent_rows = args.exact ? args.sizes.dim : 0;
  if (probes.has_value()) {
    args.tangent_rows = check_probes(op, x, *probes, steps);
    args.probes = probes->contiguous();
  }
  args.steps = steps;
  args.t0 = t0;
  args.dt = (t1 - t0) / double(steps);
  return args;
}

void check_like(std::string_view op, std::string_view name, const at::Tensor& x, const at::Tensor& g,
                c10::IntArrayRef shape) {
  TORCH_CHECK_VALUE(g.sizes() == shape, op, ": ", std::string(name), " should have shape ", shape, ", got ",
                    g.sizes());
  check_same(op, name, x, g);
}

}  // namespace jkofast
