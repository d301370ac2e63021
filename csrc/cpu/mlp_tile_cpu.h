// The CPU engine under all three ops: the MLP field (and its forward-mode tangent rows) evaluated
// on a tile of samples that stays in cache, and the hand-written backward of that evaluation.
//
// Layout of a tile of n samples with r tangent rows each (R = 1 + r rows per sample), row-major:
//   stack[(b * R + 0) * H + h]      primal row of sample b (pre-activation z or activation a)
//   stack[(b * R + 1 + i) * H + h]  tangent row i: its directional derivative along seed i
// Each hidden layer is then ONE matrix product over all n * R rows (at::mm, i.e. MKL), and every
// elementwise step (bias, sigma, sigma' scaling of the tangents, sigma'' terms of the backward,
// bias and layer-0 gradients) is one pass over the tile right after the product that made it,
// while it is still in cache. Seeds: exact trace = the d unit vectors (identical for every
// sample, so never stored); Hutchinson = the caller's probes (n, r, d).
//
// The backward recomputes nothing itself: the caller runs forward(keep=true) on the same tile
// first, which stores z's tangent rows, the activations and sigma', sigma'' of every layer.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "ops/activation_math.h"

namespace jkofast::cpu {

// The field's parameters as the kernels read them. Weight tensors are the caller's (made
// contiguous by the glue, which copies only if they were not); nothing is kept after the op.
template <typename T>
struct MlpNet {
  std::vector<at::Tensor> weights;  // (out, in) each, contiguous
  std::vector<const T*> biases;
  at::Tensor w0_t;                  // layer 0 transposed, (input_dim, H): its loops run along H
  int64_t dim, input_dim, hidden, hidden_layers;
  T beta;

  MlpNet(at::TensorList w, at::TensorList b, std::vector<at::Tensor>& keep_alive, int64_t d, bool time,
         double beta_)
      : dim(d), input_dim(d + int64_t(time)), hidden(w[0].size(0)), hidden_layers(int64_t(w.size()) - 1),
        beta(T(beta_)) {
    for (size_t l = 0; l < w.size(); ++l) {
      weights.push_back(w[l].contiguous());
      keep_alive.push_back(b[l].contiguous());
      biases.push_back(keep_alive.back().template const_data_ptr<T>());
    }
    w0_t = weights[0].t().contiguous();
  }
};

// The field's parameter gradients as the backward adds to them (layer 0 transposed: w0_t).
template <typename T>
struct MlpGrads {
  std::vector<at::Tensor> weights;  // layer 0 undefined: see w0_t
  std::vector<at::Tensor> biases;
  at::Tensor w0_t;                  // (input_dim, H), transposed like MlpNet::w0_t

  explicit MlpGrads(const MlpNet<T>& net) {
    for (const auto& w : net.weights) {
      weights.push_back(weights.empty() ? at::Tensor() : at::zeros_like(w));
      biases.push_back(at::zeros({w.size(0)}, w.options()));
    }
    w0_t = at::zeros_like(net.w0_t);
  }

  // Every tensor the backward adds to, in a fixed order.
  std::vector<at::Tensor> accumulated() const {
    std::vector<at::Tensor> all(weights.begin() + 1, weights.end());
    all.insert(all.end(), biases.begin(), biases.end());
    all.push_back(w0_t);
    return all;
  }
};

// One part's share of the parameter gradients (tiles_cpu.h). Each tile's gradient is formed in
// `tile` (element type T, zeroed per tile) and then added to `sums`, kept in double. Why: summed
// straight into one float buffer, the bias and layer-0 gradients of a 2000-sample RK4 step are
// running sums of ~12,000 float terms, measured 5-10x further from the float64 truth than torch
// in float32 (whose blocked products round along a few hundred terms); per tile, the float sums
// run over one tile's samples and field evaluations (S x 4 stages for RK4), and the sums across
// tiles lose nothing.
template <typename T>
struct GradShare {
  MlpGrads<T> tile;
  std::vector<at::Tensor> targets;  // tile.accumulated()
  std::vector<at::Tensor> sums;     // double, one per target

  explicit GradShare(const MlpNet<T>& net) : tile(net), targets(tile.accumulated()) {
    for (const auto& t : targets) sums.push_back(at::zeros(t.sizes(), t.options().dtype(at::kDouble)));
  }

  // backward(tile) adds one tile's gradient to `tile`, zeroed first; it then joins the sums.
  // Raw loops: a dispatched op per tensor and tile would cost more than the additions.
  template <typename Backward>
  void add_tile(Backward&& backward) {
    for (auto& t : targets) std::fill_n(t.mutable_data_ptr<T>(), t.numel(), T(0));
    backward(tile);
    for (size_t i = 0; i < targets.size(); ++i) {
      const T* __restrict__ from = targets[i].const_data_ptr<T>();
      double* __restrict__ to = sums[i].mutable_data_ptr<double>();
      for (int64_t e = 0, n = targets[i].numel(); e < n; ++e) to[e] += double(from[e]);
    }
  }
};

// Sum the parts' shares, in part order, into the gradients the op returns (layer 0 transposed back).
template <typename T>
void reduce_grads(std::vector<GradShare<T>>& shares, std::vector<at::Tensor>& grad_w, std::vector<at::Tensor>& grad_b) {
  std::vector<at::Tensor>& total = shares[0].sums;
  for (size_t s = 1; s < shares.size(); ++s) {
    for (size_t i = 0; i < total.size(); ++i) total[i].add_(shares[s].sums[i]);
  }
  // The order of accumulated(): weights 1..L, biases 0..L, w0_t.
  const auto dtype = shares[0].targets[0].scalar_type();
  const size_t layers = shares[0].tile.weights.size();
  grad_w.clear();
  grad_b.clear();
  grad_w.push_back(total.back().t().to(dtype).contiguous());
  for (size_t l = 1; l < layers; ++l) grad_w.push_back(total[l - 1].to(dtype));
  for (size_t l = 0; l < layers; ++l) grad_b.push_back(total[layers - 1 + l].to(dtype));
}

// A row-major (rows, cols) matrix view of raw memory for at::mm.
template <typename T>
at::Tensor matrix(T* data, int64_t rows, int64_t cols, const at::TensorOptions& options) {
  return at::from_blob(data, {rows, cols}, options);
}

// out (rows, cols) = a @ b, written into raw memory.
template <typename T>
void matmul_into(T* out, int64_t rows, int64_t cols, const at::Tensor& a, const at::Tensor& b,
                 const at::TensorOptions& options) {
  at::Tensor view = matrix(out, rows, cols, options);
  at::mm_out(view, a, b);
}

template <Activation kAct, typename T>
class MlpTile {
 public:
  // capacity: most samples per tile; tangent_rows: r (0 = the field alone); exact: seeds are
  // the unit vectors (r == dim) rather than probes; keep: store what backward() needs.
  MlpTile(const MlpNet<T>& net, int64_t capacity, int64_t tangent_rows, bool exact, bool keep)
      : net_(net), R_(1 + tangent_rows), exact_(exact), keep_(keep),
        options_(net.weights[0].options()) {
    const int64_t H = net.hidden, rows = capacity * R_;
    const int64_t stacks = keep ? 2 * net.hidden_layers : 2;  // without keep: two buffers, ping-pong
    for (int64_t s = 0; s < stacks; ++s) stacks_.push_back(at::empty({rows, H}, options_));
    const int64_t derivs = keep ? net.hidden_layers : 1;
    for (int64_t s = 0; s < 2 * derivs; ++s) derivs_.push_back(at::empty({capacity, H}, options_));
    out_ = at::empty({rows, net.dim}, options_);
    input_ = at::empty({capacity, net.input_dim}, options_);
    if (keep) {
      grad_a_ = at::empty({rows, H}, options_);
      grad_b_ = at::empty({rows, H}, options_);
      grad_out_ = at::empty({rows, net.dim}, options_);
      scratch_ = at::empty({H}, options_);
    }
  }

  int64_t tangent_rows() const { return R_ - 1; }

  // f (n, d) and, with tangent rows, div (n,) at n <= capacity samples x (n, d) contiguous and
  // times t[b * t_stride] (t == nullptr: autonomous field). probes: (n, r, d) or nullptr (exact).
  // f or div may be nullptr when only the stored internals are wanted (before backward()).
  void forward(int64_t n, const T* x, const T* t, int64_t t_stride, const T* probes, T* f, T* div) {
    n_ = n;
    probes_ = probes;
    const int64_t H = net_.hidden, R = R_, d = net_.dim, din = net_.input_dim;
    T* __restrict__ u = input_.mutable_data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t c = 0; c < d; ++c) u[b * din + c] = x[b * d + c];
      if (din > d) u[b * din + d] = t[b * t_stride];
    }
    layer0_products(n, u);
    activate(0, n);
    for (int64_t l = 1; l < net_.hidden_layers; ++l) {
      matmul_into(pre(l), n * R, H, matrix(post(l - 1), n * R, H, options_), net_.weights[l].t(), options_);
      activate(l, n);
    }
    const int64_t last = net_.hidden_layers;
    if (f == nullptr && div == nullptr) return;  // backward()'s recompute: it needs the layers only
    T* __restrict__ out = out_.mutable_data_ptr<T>();
    matmul_into(out, n * R, d, matrix(post(last - 1), n * R, H, options_), net_.weights[last].t(), options_);
    const T* __restrict__ bias = net_.biases[last];
    for (int64_t b = 0; b < n; ++b) {
      if (f != nullptr) {
        for (int64_t j = 0; j < d; ++j) f[b * d + j] = out[b * R * d + j] + bias[j];
      }
      if (div != nullptr) div[b] = seed_dot_out(b, out);
    }
  }

  // Gradients of sum(grad_f * f) + sum(grad_div * div) for the tile of the last forward():
  // grad_x (n, d) and grad_t (n,) are written (grad_t may be nullptr), the parameter gradients
  // are added to `grads`. grad_div is ignored (may be nullptr) without tangent rows.
  void backward(const T* grad_f, const T* grad_div, T* grad_x, T* grad_t, MlpGrads<T>& grads) {
    TORCH_INTERNAL_ASSERT(keep_, "MlpTile::backward needs forward(keep=true)");
    const int64_t n = n_, H = net_.hidden, R = R_, d = net_.dim, last = net_.hidden_layers;
    const T scale = divergence_scale();
    // d(loss)/d(out stack): f's rows get grad_f; tangent row i gets scale * grad_div * seed_i.
    T* __restrict__ gout = grad_out_.mutable_data_ptr<T>();
    T* __restrict__ gbias_last = grads.biases[last].template mutable_data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t j = 0; j < d; ++j) {
        gout[b * R * d + j] = grad_f[b * d + j];
        gbias_last[j] += grad_f[b * d + j];
      }
      for (int64_t i = 0; i + 1 < R; ++i) {
        T* row = gout + (b * R + 1 + i) * d;
        const T g = scale * grad_div[b];
        if (exact_) {
          for (int64_t j = 0; j < d; ++j) row[j] = j == i ? g : T(0);
        } else {
          const T* v = probes_ + (b * (R - 1) + i) * d;
          for (int64_t j = 0; j < d; ++j) row[j] = g * v[j];
        }
      }
    }
    auto gout_m = matrix(gout, n * R, d, options_);
    grads.weights[last].addmm_(gout_m.t(), matrix(post(last - 1), n * R, H, options_));
    T* ga = grad_a_.mutable_data_ptr<T>();
    T* gnext = grad_b_.mutable_data_ptr<T>();
    matmul_into(ga, n * R, H, gout_m, net_.weights[last], options_);
    for (int64_t l = last - 1; l >= 0; --l) {
      activation_backward(l, n, ga, grads.biases[l].template mutable_data_ptr<T>());  // ga -> dloss/dz
      if (l == 0) break;
      auto gz = matrix(ga, n * R, H, options_);
      grads.weights[l].addmm_(gz.t(), matrix(post(l - 1), n * R, H, options_));
      matmul_into(gnext, n * R, H, gz, net_.weights[l], options_);
      std::swap(ga, gnext);
    }
    layer0_backward(n, ga, grad_x, grad_t, grads.w0_t.template mutable_data_ptr<T>());
  }

 private:
  T* pre(int64_t l) { return stacks_[keep_ ? 2 * l : l % 2].template mutable_data_ptr<T>(); }
  // Without keep the activation overwrites z in place; with keep both are stored.
  T* post(int64_t l) { return stacks_[keep_ ? 2 * l + 1 : l % 2].template mutable_data_ptr<T>(); }
  T* sigma1(int64_t l) { return derivs_[keep_ ? 2 * l : 0].template mutable_data_ptr<T>(); }
  T* sigma2(int64_t l) { return derivs_[keep_ ? 2 * l + 1 : 1].template mutable_data_ptr<T>(); }

  T divergence_scale() const { return exact_ ? T(1) : T(1) / T(R_ - 1); }

  // Layer 0 is a product with K = input_dim (d or d + 1, small): plain loops along H beat a GEMM
  // call. Its tangent rows are seed_i^T W0x^T: the columns of W0 for the exact trace.
  void layer0_products(int64_t n, const T* __restrict__ u) {
    const int64_t H = net_.hidden, R = R_, d = net_.dim, din = net_.input_dim;
    const T* __restrict__ w0t = net_.w0_t.template const_data_ptr<T>();
    T* __restrict__ z = pre(0);
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ zb = z + b * R * H;
      for (int64_t h = 0; h < H; ++h) zb[h] = T(0);
      for (int64_t c = 0; c < din; ++c) {
        const T uc = u[b * din + c];
        const T* __restrict__ wc = w0t + c * H;
        for (int64_t h = 0; h < H; ++h) zb[h] += uc * wc[h];
      }
      for (int64_t i = 0; i + 1 < R; ++i) {
        T* __restrict__ zi = zb + (1 + i) * H;
        if (exact_) {
          const T* __restrict__ wi = w0t + i * H;
          for (int64_t h = 0; h < H; ++h) zi[h] = wi[h];
        } else {
          const T* v = probes_ + (b * (R - 1) + i) * d;
          for (int64_t h = 0; h < H; ++h) zi[h] = T(0);
          for (int64_t j = 0; j < d; ++j) {
            const T vj = v[j];
            const T* __restrict__ wj = w0t + j * H;
            for (int64_t h = 0; h < H; ++h) zi[h] += vj * wj[h];
          }
        }
      }
    }
  }

  // z += bias; a = sigma(z) on primal rows, tangent rows scaled by sigma'(z).
  void activate(int64_t l, int64_t n) {
    const int64_t H = net_.hidden, R = R_;
    const T* __restrict__ bias = net_.biases[l];
    const T beta = net_.beta;
    T* zs = pre(l);
    T* as = post(l);
    for (int64_t b = 0; b < n; ++b) {
      T* __restrict__ s1 = sigma1(l) + (keep_ ? b * H : 0);
      T* __restrict__ s2 = sigma2(l) + (keep_ ? b * H : 0);
      const T* zb = zs + b * R * H;
      T* ab = as + b * R * H;
      for (int64_t h = 0; h < H; ++h) {
        const auto v = activation<kAct>(zb[h] + bias[h], beta);
        ab[h] = v.value;
        s1[h] = v.d1;
        s2[h] = v.d2;
      }
      for (int64_t i = 1; i < R; ++i) {
        const T* zi = zb + i * H;
        T* ai = ab + i * H;
        for (int64_t h = 0; h < H; ++h) ai[h] = s1[h] * zi[h];
      }
    }
  }

  // In place: g = dloss/da (stack) -> dloss/dz. Tangent rows: sigma' g_i. Primal row:
  // sigma' g_0 + sigma'' sum_i (dz_i * g_i), the second derivative term of the divergence.
  void activation_backward(int64_t l, int64_t n, T* g, T* __restrict__ grad_bias) {
    const int64_t H = net_.hidden, R = R_;
    const T* zs = pre(l);
    T* __restrict__ acc = scratch_.template mutable_data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      const T* __restrict__ s1 = sigma1(l) + b * H;
      const T* __restrict__ s2 = sigma2(l) + b * H;
      T* __restrict__ g0 = g + b * R * H;
      for (int64_t h = 0; h < H; ++h) acc[h] = T(0);
      for (int64_t i = 1; i < R; ++i) {
        const T* __restrict__ zi = zs + (b * R + i) * H;
        T* __restrict__ gi = g0 + i * H;
        for (int64_t h = 0; h < H; ++h) {
          acc[h] += zi[h] * gi[h];
          gi[h] *= s1[h];
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        g0[h] = s1[h] * g0[h] + s2[h] * acc[h];
        grad_bias[h] += g0[h];
      }
    }
  }

  // Layer 0 from dloss/dz0 (stack g): W0 gradient (transposed), input gradient [x, t].
  void layer0_backward(int64_t n, const T* g, T* grad_x, T* grad_t, T* __restrict__ gw0t) {
    const int64_t H = net_.hidden, R = R_, d = net_.dim, din = net_.input_dim;
    const T* __restrict__ u = input_.template const_data_ptr<T>();
    const T* __restrict__ w0t = net_.w0_t.template const_data_ptr<T>();
    for (int64_t b = 0; b < n; ++b) {
      const T* __restrict__ g0 = g + b * R * H;
      for (int64_t c = 0; c < din; ++c) {
        const T uc = u[b * din + c];
        T* __restrict__ gwc = gw0t + c * H;
        const T* __restrict__ wc = w0t + c * H;
        T dot = T(0);
        for (int64_t h = 0; h < H; ++h) {
          gwc[h] += uc * g0[h];
          dot += g0[h] * wc[h];
        }
        if (c < d) {
          grad_x[b * d + c] = dot;
        } else if (grad_t != nullptr) {
          grad_t[b] = dot;
        }
      }
      for (int64_t i = 0; i + 1 < R; ++i) {  // tangent row i of z0 = W0x seed_i
        const T* __restrict__ gi = g0 + (1 + i) * H;
        if (exact_) {
          T* __restrict__ gwi = gw0t + i * H;
          for (int64_t h = 0; h < H; ++h) gwi[h] += gi[h];
        } else {
          const T* v = probes_ + (b * (R - 1) + i) * d;
          for (int64_t j = 0; j < d; ++j) {
            const T vj = v[j];
            T* __restrict__ gwj = gw0t + j * H;
            for (int64_t h = 0; h < H; ++h) gwj[h] += vj * gi[h];
          }
        }
      }
    }
  }

  // div of sample b: scale * sum_i seed_i . (J seed_i), J seed_i being tangent row i of out.
  T seed_dot_out(int64_t b, const T* out) const {
    const int64_t R = R_, d = net_.dim;
    T sum = T(0);
    for (int64_t i = 0; i + 1 < R; ++i) {
      const T* row = out + (b * R + 1 + i) * d;
      if (exact_) {
        sum += row[i];
      } else {
        const T* v = probes_ + (b * (R - 1) + i) * d;
        for (int64_t j = 0; j < d; ++j) sum += v[j] * row[j];
      }
    }
    return divergence_scale() * sum;
  }

  const MlpNet<T>& net_;
  const int64_t R_;
  const bool exact_, keep_;
  const at::TensorOptions options_;
  std::vector<at::Tensor> stacks_, derivs_;
  at::Tensor out_, input_, grad_a_, grad_b_, grad_out_, scratch_;
  int64_t n_ = 0;
  const T* probes_ = nullptr;
};

// Runs fn(activation_tag) with the activation as a compile-time constant.
template <typename Fn>
void dispatch_activation(Activation kind, Fn&& fn) {
  switch (kind) {
    case Activation::Softplus: return fn(std::integral_constant<Activation, Activation::Softplus>{});
    case Activation::Tanh: return fn(std::integral_constant<Activation, Activation::Tanh>{});
    case Activation::Silu: return fn(std::integral_constant<Activation, Activation::Silu>{});
  }
}

// Samples per tile, from the values a tile touches per sample: rows_per_sample (1 + r) rows of
// H per stack, and 2 stacks for a forward (ping-pong) or, kept for a backward, 2 per hidden layer
// plus 2 gradient stacks. Budgets measured with bench/bench_cpu.py on the 2-core Zen 4 machine
// (1 MB L2 per core): the forward is fastest at about 384 * 128 values per stack (tiles of 54 at
// d = 6, H = 128); for the backward, budgets from 128K to 384K values (tiles of 18 to 54 there)
// measured the same within noise, and tiles smaller than that were slower.
inline int64_t tile_samples(int64_t batch, int64_t rows_per_sample, int64_t hidden, int64_t hidden_layers,
                            bool keep) {
  constexpr int64_t kForwardValues = 384 * 128, kKeepValues = 192 * 1024;
  const int64_t H = hidden > 0 ? hidden : 1;
  const int64_t values_per_sample = keep ? rows_per_sample * H * (2 * hidden_layers + 2) : rows_per_sample * H;
  int64_t tile = (keep ? kKeepValues : kForwardValues) / values_per_sample;
  tile = tile < 8 ? 8 : (tile > 128 ? 128 : tile);
  return batch < tile ? (batch > 0 ? batch : 1) : tile;
}

}  // namespace jkofast::cpu
