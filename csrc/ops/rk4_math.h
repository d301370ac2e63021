// Butcher tableaus and the per-element RK4 stage sums, shared by the CPU and CUDA kernels.
// jkofast/reference.py::TABLEAUS and jkofast/integrate.py::rk4 are the same math in torch.
#pragma once

#include "host_device.h"

namespace jkofast {

enum class Tableau : int { Classical = 0, ThreeEighths = 1 };

constexpr int kStages = 4;

// a[s][q] (q < s), b[s], c[s] of a 4-stage explicit Runge-Kutta method.
struct ButcherTableau {
  double a[kStages][kStages];
  double b[kStages];
  double c[kStages];
};

JKO_HOST_DEVICE ButcherTableau butcher_tableau(Tableau kind) {
  if (kind == Tableau::Classical) {
    return {{{0, 0, 0, 0}, {0.5, 0, 0, 0}, {0, 0.5, 0, 0}, {0, 0, 1, 0}},
            {1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6},
            {0, 0.5, 0.5, 1}};
  }
  // Kutta's 3/8 rule: torchdiffeq's "rk4", which the official JKO-iFlow code uses.
  return {{{0, 0, 0, 0}, {1.0 / 3, 0, 0, 0}, {-1.0 / 3, 1, 0, 0}, {1, -1, 1, 0}},
          {1.0 / 8, 3.0 / 8, 3.0 / 8, 1.0 / 8},
          {0, 1.0 / 3, 2.0 / 3, 1}};
}

// One element of stage s's input: x + dt * sum_{q<s} a[s][q] k_q, where k[q] points at stage q's
// velocity for this element and stride separates the stages.
template <typename T>
JKO_HOST_DEVICE T stage_input(const ButcherTableau& tab, int s, T x, T dt, const T* k, long stride) {
  T sum = T(0);
  for (int q = 0; q < s; ++q) sum += T(tab.a[s][q]) * k[q * stride];
  return x + dt * sum;
}

// sum_s b[s] * v_s for one element (the step's weighted velocity, divergence or speed^2).
template <typename T>
JKO_HOST_DEVICE T weighted_stage_sum(const ButcherTableau& tab, const T* v, long stride) {
  T sum = T(0);
  for (int s = 0; s < kStages; ++s) sum += T(tab.b[s]) * v[s * stride];
  return sum;
}

}  // namespace jkofast
