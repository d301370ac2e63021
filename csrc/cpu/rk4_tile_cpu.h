// One tile of samples through S RK4 steps of one block, forwards and backwards: the work under
// jkofast::rk4_block (+ backward) and jkofast::jko_block_loss.
//
// Samples are independent, so a tile runs all S steps while its data stays in cache. The forward
// saves x at the start of each step (the "states"); the backward walks the steps in reverse, gets
// the step's stage velocities (recomputed with the field alone, or handed over by a forward that
// kept them), then for stage 4..1 re-evaluates the field with its tangent rows and differentiates
// it at once. Memory between the passes is O(B d S); the workspace is one tile's.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <vector>

#include "cpu/mlp_tile_cpu.h"
#include "mlp_args.h"
#include "ops/rk4_math.h"

namespace jkofast::cpu {

// x at the start of each step for a range of samples: (steps, batch, d) rows, of which this view
// addresses the ones from sample `first` on (a slice of the op's states, or a tile's own buffer).
template <typename T>
struct StepStates {
  T* data;
  int64_t batch, first, dim;
  T* at(int64_t step) const { return data + (step * batch + first) * dim; }
};

template <Activation kAct, typename T>
class Rk4Tile {
 public:
  // One thread's workspace for tiles of up to `tile` samples. forward_rows: tangent rows of the
  // forward's field evaluations (r, or 0 when the forward needs no divergence); backward: also
  // make the evaluators backward() needs.
  Rk4Tile(const Rk4Args& call, const MlpNet<T>& net, int64_t tile, int64_t forward_rows, bool backward)
      : call_(call), net_(net), tile_(tile), plane_(tile * net.dim),
        stage_eval_(net, tile, forward_rows, call.exact, /*keep=*/false),
        x_(plane_), y_(plane_), ks_(kStages * plane_), divs_(kStages * tile) {
    if (backward) {
      velocity_.emplace(net, tile, 0, true, /*keep=*/false);
      full_.emplace(net, tile, call.tangent_rows, call.exact, /*keep=*/true);
      ys_.resize(kStages * plane_);
      gys_.resize(kStages * plane_);
      gk_.resize(plane_);
      gx_.resize(plane_);
      gdiv_.resize(tile);
      div_.resize(tile);
    }
  }

  // Integrates samples [b, b + n) from x0 (their rows) over the S steps: x1, logdet (when the
  // forward evaluations have tangent rows) and kinetic rows for the same samples; x at each
  // step's start into `states`; with stage_velocities (S, 4, tile * d), the k's as well.
  void forward(int64_t b, int64_t n, const T* x0, const StepStates<T>& states, T* x1, T* logdet, T* kinetic,
               T* stage_velocities = nullptr) {
    const int64_t d = net_.dim, plane = plane_;
    const T dt = T(call_.dt), abs_dt = T(std::abs(call_.dt));
    const bool with_div = stage_eval_.tangent_rows() > 0;
    std::copy(x0, x0 + n * d, x_.begin());
    for (int64_t i = 0; i < n; ++i) {
      if (logdet != nullptr) logdet[i] = T(0);
      kinetic[i] = T(0);
    }
    for (int64_t step = 0; step < call_.steps; ++step) {
      std::copy(x_.begin(), x_.begin() + n * d, states.at(step));
      T* ks = stage_velocities != nullptr ? stage_velocities + step * kStages * plane : ks_.data();
      for (int s = 0; s < kStages; ++s) {
        stage_inputs(s, n * d, x_.data(), ks, y_.data());
        const T t = stage_time(step, s);
        stage_eval_.forward(n, y_.data(), call_.sizes.time ? &t : nullptr, 0, probes_at(step, b), ks + s * plane,
                            with_div ? divs_.data() + s * tile_ : nullptr);
      }
      for (int64_t e = 0; e < n * d; ++e) x_[e] += dt * weighted_stage_sum(call_.tableau, ks + e, plane);
      for (int64_t i = 0; i < n; ++i) {
        kinetic[i] += abs_dt * weighted_speed2(ks + i * d);
        if (with_div) logdet[i] += dt * weighted_stage_sum(call_.tableau, divs_.data() + i, tile_);
      }
    }
    std::copy(x_.begin(), x_.begin() + n * d, x1);
  }

  // Gradients of sum(gx1 . x1) + sum(gld * logdet) + sum(gkin * kinetic) for samples [b, b + n):
  // gx0 rows are written, the parameter gradients added to `grads`. stage_velocities: the
  // forward's k's (else they are recomputed). logdet, if not nullptr, receives the samples'
  // logdet, a by-product of the pass (the forward then need not compute it).
  void backward(int64_t b, int64_t n, const T* gx1, const T* gld, const T* gkin,
                const StepStates<T>& states, const T* stage_velocities, T* gx0, MlpGrads<T>& grads,
                T* logdet = nullptr) {
    const int64_t d = net_.dim, plane = plane_;
    const ButcherTableau& tab = call_.tableau;
    const T dt = T(call_.dt), abs_dt = T(std::abs(call_.dt));
    T* gx = gx_.data();
    std::copy(gx1, gx1 + n * d, gx);
    if (logdet != nullptr) std::fill(logdet, logdet + n, T(0));
    for (int64_t step = call_.steps - 1; step >= 0; --step) {
      const T* x = states.at(step);
      const T* ks = stage_velocities != nullptr ? stage_velocities + step * kStages * plane : ks_.data();
      for (int s = 0; s < kStages; ++s) {  // the step's stage inputs (and velocities, if not kept)
        T* y = ys_.data() + s * plane;
        stage_inputs(s, n * d, x, ks, y);
        if (stage_velocities == nullptr) {
          const T t = stage_time(step, s);
          velocity_->forward(n, y, call_.sizes.time ? &t : nullptr, 0, nullptr, ks_.data() + s * plane, nullptr);
        }
      }
      for (int s = kStages - 1; s >= 0; --s) {
        // dloss/dk_s: through x_{n+1}, the kinetic energy and the later stages' inputs.
        const T bs = T(tab.b[s]);
        const T* k = ks + s * plane;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < d; ++j) {
            const int64_t e = i * d + j;
            T g = dt * bs * gx[e] + T(2) * abs_dt * bs * gkin[i] * k[e];
            for (int q = s + 1; q < kStages; ++q) g += dt * T(tab.a[q][s]) * gys_[q * plane + e];
            gk_[e] = g;
          }
          gdiv_[i] = dt * bs * gld[i];
        }
        const T t = stage_time(step, s);
        const bool div_wanted = logdet != nullptr && call_.with_divergence;
        full_->forward(n, ys_.data() + s * plane, call_.sizes.time ? &t : nullptr, 0, probes_at(step, b), nullptr,
                       div_wanted ? div_.data() : nullptr);
        if (div_wanted) {
          for (int64_t i = 0; i < n; ++i) logdet[i] += dt * bs * div_[i];
        }
        full_->backward(gk_.data(), call_.with_divergence ? gdiv_.data() : nullptr, gys_.data() + s * plane, nullptr,
                        grads);
      }
      for (int64_t e = 0; e < n * d; ++e) {
        for (int s = 0; s < kStages; ++s) gx[e] += gys_[s * plane + e];
      }
    }
    std::copy(gx, gx + n * d, gx0);
  }

 private:
  // Stage s of step `step` runs at t0 + step * dt + c_s * dt, computed in double as the reference.
  T stage_time(int64_t step, int s) const {
    return T(call_.t0 + double(step) * call_.dt + call_.tableau.c[s] * call_.dt);
  }

  // y = x + dt sum_{q<s} a[s][q] k_q over `count` elements; ks holds the stages, a plane apart.
  void stage_inputs(int s, int64_t count, const T* x, const T* ks, T* y) const {
    const T dt = T(call_.dt);
    for (int64_t e = 0; e < count; ++e) y[e] = stage_input(call_.tableau, s, x[e], dt, ks + e, plane_);
  }

  // sum_s b_s |k_s|^2 for the sample whose stage-0 velocity starts at k.
  T weighted_speed2(const T* k) const {
    T speed2[kStages];
    for (int s = 0; s < kStages; ++s) {
      const T* ks = k + s * plane_;
      speed2[s] = T(0);
      for (int64_t j = 0; j < net_.dim; ++j) speed2[s] += ks[j] * ks[j];
    }
    return weighted_stage_sum(call_.tableau, speed2, 1);
  }

  const T* probes_at(int64_t step, int64_t sample) const {
    if (!call_.probes.defined()) return nullptr;
    const int64_t batch = call_.x.size(0);
    return call_.probes.const_data_ptr<T>() + ((step * batch + sample) * call_.tangent_rows) * net_.dim;
  }

  const Rk4Args& call_;
  const MlpNet<T>& net_;
  const int64_t tile_, plane_;
  MlpTile<kAct, T> stage_eval_;
  std::optional<MlpTile<kAct, T>> velocity_, full_;
  std::vector<T> x_, y_, ks_, divs_, ys_, gys_, gk_, gx_, gdiv_, div_;
};

}  // namespace jkofast::cpu
