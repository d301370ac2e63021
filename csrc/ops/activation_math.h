// The activations of the MLP field with their first and second derivatives, shared by the CPU
// and CUDA kernels. The forward-mode divergence scales tangent rows by sigma'(z); its hand-written
// backward needs sigma''(z). jkofast/reference.py::ACTIVATIONS is the same math in torch.
//
// Everything is branch-free arithmetic on one exp(-|y|): the CPU loops that call these get
// vectorized by the compiler (a libm call per element would not be), and no intermediate
// overflows for large |z|. exp and log1p are evaluated here by polynomials accurate to about one
// unit in the last place of float and of double, so float64 kernels agree with the torch
// reference to ~1e-15 relative.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace jkofast {

enum class Activation : int { Softplus = 0, Tanh = 1, Silu = 2 };

template <typename T>
struct ActivationValues {
  T value;  // sigma(z)
  T d1;     // sigma'(z)
  T d2;     // sigma''(z)
};

namespace detail {

// Bit casts and round-to-nearest, written so that the compiler vectorizes the CPU loops:
// GCC keeps a loop scalar if it calls floor() (without -fno-trapping-math) or bit-casts
// through memcpy or a union, so rounding is the add-and-subtract of 1.5 * 2^mantissa_bits.
#if defined(__CUDA_ARCH__)
JKO_HOST_DEVICE float bits_to_float(int32_t bits) { return __int_as_float(bits); }
JKO_HOST_DEVICE double bits_to_double(int64_t bits) { return __longlong_as_double(bits); }
#else
JKO_HOST_DEVICE float bits_to_float(int32_t bits) { return __builtin_bit_cast(float, bits); }
JKO_HOST_DEVICE double bits_to_double(int64_t bits) { return __builtin_bit_cast(double, bits); }
#endif

// The integer nearest to v, for |v| < 2^22 (float) or 2^51 (double).
JKO_HOST_DEVICE float round_to_integer(float v) {
  constexpr float magic = 12582912.0f;  // 1.5 * 2^23
  return (v + magic) - magic;
}
JKO_HOST_DEVICE double round_to_integer(double v) {
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  return (v + magic) - magic;
}

// 2^n for an integral n in the normal range.
JKO_HOST_DEVICE float pow2(float n) { return bits_to_float((static_cast<int32_t>(n) + 127) << 23); }
JKO_HOST_DEVICE double pow2(double n) { return bits_to_double((static_cast<int64_t>(n) + 1023) << 52); }

template <typename T> struct ExpConstants;
template <> struct ExpConstants<float> {
  static constexpr float lowest = -87.0f;  // exp(-87) ~ 1.6e-38, still a normal float
  static constexpr int degree = 7;         // |r| <= ln2/2: r^8/8! < 6e-9, below float's ulp
};
template <> struct ExpConstants<double> {
  static constexpr double lowest = -708.0;  // exp(-708) ~ 3.3e-308, still a normal double
  static constexpr int degree = 13;         // r^14/14! < 5e-18
};

// exp(x) for x <= 0: x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor polynomial, times 2^n.
// Below `lowest` the result would be subnormal; it is clamped there (the callers add it to 1).
template <typename T>
JKO_HOST_DEVICE T exp_nonpositive(T x) {
  constexpr T log2e = T(1.4426950408889634074);
  constexpr T ln2_hi = T(0.693145751953125);           // few mantissa bits: n * ln2_hi is exact
  constexpr T ln2_lo = T(1.42860682030941723212e-6);   // ln2 - ln2_hi
  x = x < ExpConstants<T>::lowest ? ExpConstants<T>::lowest : x;
  const T n = round_to_integer(x * log2e);
  const T r = (x - n * ln2_hi) - n * ln2_lo;
  T p = T(1);
  for (int k = ExpConstants<T>::degree; k >= 1; --k) p = T(1) + p * (r * (T(1) / T(k)));
  return p * pow2(n);
}

// log(1 + e) for e in [0, 1] by log(1 + e) = 2 atanh(w), w = e / (2 + e) in [0, 1/3]: the odd
// series in w converges by a factor w^2 <= 1/9 per term.
template <typename T> struct Log1pTerms;
template <> struct Log1pTerms<float> { static constexpr int value = 9; };    // 9^-9 ~ 2.6e-9
template <> struct Log1pTerms<double> { static constexpr int value = 18; };  // 9^-18 ~ 6.6e-18

template <typename T>
JKO_HOST_DEVICE T log1p_unit(T e) {
  const T w = e / (T(2) + e);
  const T w2 = w * w;
  T series = T(0);
  for (int m = Log1pTerms<T>::value - 1; m >= 0; --m) series = T(1) / T(2 * m + 1) + w2 * series;
  return T(2) * w * series;
}

// sigmoid(y) from e = exp(-|y|), without overflow on either side.
// (The select picks a value, not a computation: a multiply inside the ?: would be a branch
// that GCC cannot if-convert without AVX-512 masks, and the loop would stay scalar.)
template <typename T>
JKO_HOST_DEVICE T sigmoid_from(T y, T e) {
  return (y >= T(0) ? T(1) : e) / (T(1) + e);
}

template <typename T>
JKO_HOST_DEVICE T abs_of(T v) { return v < T(0) ? -v : v; }

}  // namespace detail

// sigma(z), sigma'(z), sigma''(z). beta is the softplus sharpness: softplus(beta z) / beta.
// The kind is a template argument so the per-element loops that call this have no branch on it.
template <Activation kind, typename T>
JKO_HOST_DEVICE ActivationValues<T> activation(T z, T beta) {
  using namespace detail;
  if constexpr (kind == Activation::Softplus) {
    const T y = beta * z;
    const T e = exp_nonpositive(-abs_of(y));
    const T s = sigmoid_from(y, e);
    const T positive_part = y > T(0) ? y : T(0);
    return {(positive_part + log1p_unit(e)) / beta, s, beta * s * (T(1) - s)};
  } else if constexpr (kind == Activation::Tanh) {
    // tanh(|z|) = (1 - e2) / (1 + e2), e2 = exp(-2|z|); odd in z.
    const T e2 = exp_nonpositive(T(-2) * abs_of(z));
    const T magnitude = (T(1) - e2) / (T(1) + e2);
    const T y = z < T(0) ? -magnitude : magnitude;
    const T d1 = T(1) - y * y;
    return {y, d1, T(-2) * y * d1};
  } else {  // SiLU z * sigmoid(z)
    const T s = sigmoid_from(z, exp_nonpositive(-abs_of(z)));
    return {z * s, s * (T(1) + z * (T(1) - s)), s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s))};
  }
}

}  // namespace jkofast
