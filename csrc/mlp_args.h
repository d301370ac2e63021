// Argument checks and string options shared by the CPU and CUDA glue of every MLP op. Errors
// name the op and the argument, and say what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
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

// The inputs of one field evaluation (mlp_field, mlp_field_div and their backward), checked and
// made contiguous: t and probes undefined for an autonomous field and the exact trace; t is read
// through its stride (an expanded scalar costs no copy). tangent_rows: 0 for the field alone, d
// for the exact trace, k for Hutchinson probes (B, k, d).
struct FieldArgs {
  at::Tensor x, t, probes;
  MlpSizes sizes;
  int64_t tangent_rows;
  Activation activation;
};
FieldArgs check_field_args(std::string_view op, const at::Tensor& x, const std::optional<at::Tensor>& t,
                           const std::optional<at::Tensor>& probes, at::TensorList weights, at::TensorList biases,
                           std::string_view activation, bool with_divergence);

// The inputs of rk4_block and its backward, checked: steps >= 1, finite t0 and t1, a known
// tableau and divergence, probes (steps, B, k, d) given exactly when divergence == "hutchinson".
struct Rk4Args {
  at::Tensor x, probes;  // contiguous; probes undefined unless Hutchinson
  MlpSizes sizes;
  Activation activation;
  ButcherTableau tableau;
  bool with_divergence, exact;
  int64_t tangent_rows, steps;  // tangent rows: d (exact), k (Hutchinson) or 0
  double t0, dt;                // dt = (t1 - t0) / steps
};
Rk4Args check_rk4_args(std::string_view op, const at::Tensor& x, const std::optional<at::Tensor>& probes,
                       at::TensorList weights, at::TensorList biases, double t0, double t1, int64_t steps,
                       std::string_view tableau, std::string_view divergence, bool time, std::string_view activation);

// A gradient tensor of the given shape on x's dtype and device.
void check_like(std::string_view op, std::string_view name, const at::Tensor& x, const at::Tensor& g,
                c10::IntArrayRef shape);

}  // namespace jkofast
