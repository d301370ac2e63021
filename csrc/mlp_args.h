// Argument checks and string options shared by the CPU and CUDA glue of every MLP op. Errors
// name the op and the argument, and say what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <string_view>

#include "ops/activation_math.h"
#include "ops/rk4_math.h"

namespace jkofast {

// The sizes of an MLP field [x, t] -> hidden -> ... -> hidden -> x, read off its weights.
struct MlpSizes {
  int64_t dim;            // d
  int64_t input_dim;      // d + 1 with a time input, d without
  int64_t hidden;         // H
  int64_t hidden_layers;  // number of hidden layers (= number of weight matrices - 1)
  bool time;
};

Activation parse_activation(std::string_view op, std::string_view name);
Tableau parse_tableau(std::string_view op, std::string_view name);

// Checks the weights/biases chain against x (B, d): floating dtype, same dtype and device as x,
// shapes (H, d [+1]), (H, H)..., (d, H). Returns the sizes.
MlpSizes check_mlp(std::string_view op, const at::Tensor& x, at::TensorList weights,
                   at::TensorList biases, bool time);

// t: (B,) on x's dtype and device (the Python layer expands a scalar t).
void check_time(std::string_view op, const at::Tensor& x, const at::Tensor& t);

// probes: (B, k, d) with k >= 1; with_steps: (S, B, k, d).
int64_t check_probes(std::string_view op, const at::Tensor& x, const at::Tensor& probes, int64_t steps);

// The scalar options of rk4_block and its backward, checked: steps >= 1, finite t0 and t1, a known
// tableau and divergence, probes given exactly when divergence == "hutchinson".
struct Rk4Options {
  ButcherTableau tableau;
  bool with_divergence, exact;
  double dt;  // (t1 - t0) / steps
};
Rk4Options check_rk4_options(std::string_view op, double t0, double t1, int64_t steps, std::string_view tableau,
                             std::string_view divergence, bool has_probes);

// A gradient tensor of the given shape on x's dtype and device.
void check_like(std::string_view op, std::string_view name, const at::Tensor& x, const at::Tensor& g,
                c10::IntArrayRef shape);

}  // namespace jkofast
