// GroupNorm(x + shift), optionally followed by SiLU, as one autograd operation on
// float32 CPU tensors: the normalisation, the activation and an optional
// per-(example, channel) shift (the UNet's time embedding) in one pass over memory
// forward and one backward, where libtorch's separate operations make up to seven. See
// src/norm.rs for the Rust side and when it runs.
//
// Notation (per example n and group g of Cg channels, M = Cg * HW elements):
//   u = x + s_c,  mean and rstd = 1 / sqrt(var + eps) of u over the group (biased
//   variance, as GroupNorm), xhat = (u - mean) * rstd, y = gamma_c * xhat + beta_c,
//   z = y * sigmoid(y) (or z = y without the SiLU).
// Backward, from dz: dy = dz * sig * (1 + y * (1 - sig)) (or dz); per channel a_c = sum_hw dy,
// b_c = sum_hw dy * xhat, k_c = sum_hw xhat; m1 = sum_c gamma_c a_c / M,
// m2 = sum_c gamma_c b_c / M; du = rstd * (gamma_c dy - m1 - xhat m2) (= dx);
// dshift_c = sum_hw du = rstd * (gamma_c a_c - HW m1 - m2 k_c); dgamma_c = sum_n b_c,
// dbeta_c = sum_n a_c.
//
// A group's Cg * HW floats (at most a few tens of KiB for the UNets here) stay in cache
// between the passes over it, so each pass after the first reads from cache, not from
// memory. The backward pass keeps dy in dx's buffer between its two passes. A
// channels-last (NHWC) input runs the same formulas per example, vectorised over the
// channels, and its outputs keep its layout.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "elbo_ops.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

// Every loop below is inlined into two copies of the per-group drivers, one compiled for
// AVX2 + FMA and one for the baseline instruction set, and the copy the CPU supports is
// picked once, at the first call (GCC's target_clones dispatches "arch=" clones on the
// CPU model, not its features, so it would pick the baseline on AMD processors).
#define ELBO_INLINE __attribute__((always_inline)) inline
#if defined(__x86_64__) && defined(__GNUC__)
#define ELBO_HAS_AVX2_COPY 1
#define ELBO_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace {

// exp(x) for x in the range the sigmoid needs, branch-free so that loops over it
// vectorise: Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial, about 2 ulp.
// Inputs are clamped to [-87, 87], where the result and 1 / (1 + result) are normal
// floats (denormals would slow the arithmetic down).
ELBO_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 87.0f ? 87.0f : x;
  // Round x / ln 2 to the nearest integer by adding and removing 1.5 * 2^23.
  const float magic = 12582912.0f;
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

ELBO_INLINE float sigmoid(float y) { return 1.0f / (1.0f + exp_approx(-y)); }

ELBO_INLINE float sum_of(const float* x, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    acc += x[i];
  }
  return acc;
}

ELBO_INLINE float sum_of_squares(const float* x, float offset, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] + offset;
    acc += d * d;
  }
  return acc;
}

// out = silu(x * scale + shift), or without the SiLU.
template <bool Silu>
ELBO_INLINE void affine_act(const float* x, float scale, float shift, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float y = x[i] * scale + shift;
    if constexpr (Silu) {
      out[i] = y * sigmoid(y);
    } else {
      out[i] = y;
    }
  }
}

struct ChannelSums {
  float a;  // sum dy
  float b;  // sum dy * xhat
  float k;  // sum xhat
};

// dy = silu'(y) dz with y = gamma * xhat + beta, xhat = x * rstd + xhat0 (dy = dz
// without the SiLU); writes dy to out and returns the channel's sums.
template <bool Silu>
ELBO_INLINE ChannelSums act_backward_sums(const float* x, const float* dz, float rstd,
                                          float xhat0, float gamma, float beta, float* out,
                                          int64_t n) {
  float a = 0.0f, b = 0.0f, k = 0.0f;
#pragma omp simd reduction(+ : a, b, k)
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = x[i] * rstd + xhat0;
    float dy = dz[i];
    if constexpr (Silu) {
      const float y = xhat * gamma + beta;
      const float sig = sigmoid(y);
      dy *= sig * (1.0f + y * (1.0f - sig));
    }
    out[i] = dy;
    a += dy;
    b += dy * xhat;
    k += xhat;
  }
  return {a, b, k};
}

// dx = rstd * (gamma * dy - m1 - xhat * m2), dy read from and dx written to `inout`.
ELBO_INLINE void group_norm_input_grad(const float* x, float rstd, float xhat0, float gamma,
                                       float m1, float m2, float* inout, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = x[i] * rstd + xhat0;
    inout[i] = rstd * (gamma * inout[i] - m1 - xhat * m2);
  }
}

struct Shape {
  int64_t n, c, hw, groups, cg;
};

// The tensors of one call, as raw pointers (contiguous float32), and its shape.
struct Plan {
  Shape s;
  double eps;
  const float* x;
  const float* shift;  // (N, C) or null
  const float* gamma;
  const float* beta;
  // Forward: z, mean and rstd are written. Backward: dz is read, mean and rstd are
  // read, dx, dshift (when shift), sums_a and sums_b are written.
  float* z;
  float* mean;
  float* rstd;
  const float* dz;
  float* dx;
  float* dshift;
  float* sums_a;
  float* sums_b;

  float shift_of(int64_t n, int64_t c) const {
    return shift != nullptr ? shift[n * s.c + c] : 0.0f;
  }

  // Group ng: example n = ng / G, its first channel c0, the offset of its first element
  // (its channels are contiguous: Cg * HW floats from there).
  struct Group {
    int64_t n, c0, base;
  };
  Group group(int64_t ng) const {
    const int64_t n = ng / s.groups;
    const int64_t c0 = (ng % s.groups) * s.cg;
    return {n, c0, (n * s.c + c0) * s.hw};
  }
};

// The forward pass of group ng.
template <bool Silu>
ELBO_INLINE void forward_group(const Plan& p, int64_t ng) {
  const Shape& s = p.s;
  const double count = static_cast<double>(s.cg * s.hw);
  const auto [n, c0, base] = p.group(ng);
  const float* xg = p.x + base;
  double total = 0.0;
  for (int64_t c = 0; c < s.cg; ++c) {
    total += static_cast<double>(sum_of(xg + c * s.hw, s.hw)) +
             static_cast<double>(p.shift_of(n, c0 + c)) * static_cast<double>(s.hw);
  }
  const double mu = total / count;
  double squares = 0.0;
  for (int64_t c = 0; c < s.cg; ++c) {
    const float offset = static_cast<float>(static_cast<double>(p.shift_of(n, c0 + c)) - mu);
    squares += static_cast<double>(sum_of_squares(xg + c * s.hw, offset, s.hw));
  }
  const double r = 1.0 / std::sqrt(squares / count + p.eps);
  for (int64_t c = 0; c < s.cg; ++c) {
    const double scale = r * static_cast<double>(p.gamma[c0 + c]);
    const double shifted = (static_cast<double>(p.shift_of(n, c0 + c)) - mu) * scale +
                           static_cast<double>(p.beta[c0 + c]);
    affine_act<Silu>(xg + c * s.hw, static_cast<float>(scale), static_cast<float>(shifted),
                     p.z + base + c * s.hw, s.hw);
  }
  p.mean[ng] = static_cast<float>(mu);
  p.rstd[ng] = static_cast<float>(r);
}

// The backward pass of group ng.
template <bool Silu>
ELBO_INLINE void backward_group(const Plan& p, int64_t ng) {
  const Shape& s = p.s;
  const auto [n, c0, base] = p.group(ng);
  const double count = static_cast<double>(s.cg * s.hw);
  const float mu = p.mean[ng];
  const float r = p.rstd[ng];
  double m1 = 0.0, m2 = 0.0;
  for (int64_t c = 0; c < s.cg; ++c) {
    const int64_t nc = n * s.c + c0 + c;
    const float xhat0 = (p.shift_of(n, c0 + c) - mu) * r;
    const float gamma = p.gamma[c0 + c];
    const ChannelSums sums =
        act_backward_sums<Silu>(p.x + base + c * s.hw, p.dz + base + c * s.hw, r, xhat0, gamma,
                           p.beta[c0 + c], p.dx + base + c * s.hw, s.hw);
    p.sums_a[nc] = sums.a;
    p.sums_b[nc] = sums.b;
    m1 += static_cast<double>(gamma) * sums.a;
    m2 += static_cast<double>(gamma) * sums.b;
    if (p.dshift != nullptr) {
      p.dshift[nc] = sums.k;  // sum of xhat until the second pass
    }
  }
  m1 /= count;
  m2 /= count;
  for (int64_t c = 0; c < s.cg; ++c) {
    const int64_t nc = n * s.c + c0 + c;
    const float xhat0 = (p.shift_of(n, c0 + c) - mu) * r;
    const double gamma = p.gamma[c0 + c];
    group_norm_input_grad(p.x + base + c * s.hw, r, xhat0, static_cast<float>(gamma),
                          static_cast<float>(m1), static_cast<float>(m2),
                          p.dx + base + c * s.hw, s.hw);
    if (p.dshift != nullptr) {
      p.dshift[nc] = static_cast<float>(
          static_cast<double>(r) * (gamma * p.sums_a[nc] - static_cast<double>(s.hw) * m1 -
                                    m2 * static_cast<double>(p.dshift[nc])));
    }
  }
}

// Channels-last (NHWC) input: example n's HW x C floats, a position's C channels
// contiguous. A group's channels are then strided, so the passes run over a whole
// example, vectorised over the channels, with per-channel accumulators (`work`: 8 C
// floats), and the per-group statistics are combined from them. An example (C * HW
// floats: 100 KiB for the largest map here) stays in cache between the passes.
template <bool Silu>
ELBO_INLINE void forward_example_nhwc(const Plan& p, int64_t n, float* work) {
  const Shape& s = p.s;
  const int64_t C = s.c, HW = s.hw, G = s.groups;
  const double count = static_cast<double>(s.cg * HW);
  const float* x = p.x + n * HW * C;
  float* z = p.z + n * HW * C;
  float* acc = work;            // per-channel sums
  float* offset = work + C;     // shift_c - mean_g, then the affine's shift
  float* scale = work + 2 * C;  // rstd_g * gamma_c
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
  for (int64_t q = 0; q < HW; ++q) {
    const float* row = x + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
  }
  for (int64_t g = 0; g < G; ++g) {
    double total = 0.0;
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) {
      total += static_cast<double>(acc[c]) +
               static_cast<double>(p.shift_of(n, c)) * static_cast<double>(HW);
    }
    const double mu = total / count;
    p.mean[n * G + g] = static_cast<float>(mu);
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) {
      offset[c] = static_cast<float>(static_cast<double>(p.shift_of(n, c)) - mu);
      acc[c] = 0.0f;
    }
  }
  for (int64_t q = 0; q < HW; ++q) {
    const float* row = x + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d = row[c] + offset[c];
      acc[c] += d * d;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    double squares = 0.0;
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) squares += static_cast<double>(acc[c]);
    const double r = 1.0 / std::sqrt(squares / count + p.eps);
    const double mu = static_cast<double>(p.mean[n * G + g]);
    p.rstd[n * G + g] = static_cast<float>(r);
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) {
      const double sc = r * static_cast<double>(p.gamma[c]);
      scale[c] = static_cast<float>(sc);
      offset[c] = static_cast<float>((static_cast<double>(p.shift_of(n, c)) - mu) * sc +
                                     static_cast<double>(p.beta[c]));
    }
  }
  for (int64_t q = 0; q < HW; ++q) {
    const float* row = x + q * C;
    float* out = z + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float y = row[c] * scale[c] + offset[c];
      if constexpr (Silu) {
        out[c] = y * sigmoid(y);
      } else {
        out[c] = y;
      }
    }
  }
}

template <bool Silu>
ELBO_INLINE void backward_example_nhwc(const Plan& p, int64_t n, float* work) {
  const Shape& s = p.s;
  const int64_t C = s.c, HW = s.hw, G = s.groups;
  const double count = static_cast<double>(s.cg * HW);
  const float* x = p.x + n * HW * C;
  const float* dz = p.dz + n * HW * C;
  float* dx = p.dx + n * HW * C;
  float* rv = work;              // rstd of the channel's group
  float* x0 = work + C;          // (shift_c - mean_g) * rstd_g
  float* a = work + 2 * C;       // sum dy
  float* b = work + 3 * C;       // sum dy * xhat
  float* k = work + 4 * C;       // sum xhat
  float* m1 = work + 5 * C;      // the group's m1, per channel
  float* m2 = work + 6 * C;      // the group's m2, per channel
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / s.cg;
    const float r = p.rstd[n * G + g];
    rv[c] = r;
    x0[c] = (p.shift_of(n, c) - p.mean[n * G + g]) * r;
    a[c] = 0.0f;
    b[c] = 0.0f;
    k[c] = 0.0f;
  }
  const float* gamma = p.gamma;
  const float* beta = p.beta;
  for (int64_t q = 0; q < HW; ++q) {
    const float* xr = x + q * C;
    const float* dzr = dz + q * C;
    float* out = dx + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = xr[c] * rv[c] + x0[c];
      float dy = dzr[c];
      if constexpr (Silu) {
        const float y = xhat * gamma[c] + beta[c];
        const float sig = sigmoid(y);
        dy *= sig * (1.0f + y * (1.0f - sig));
      }
      out[c] = dy;
      a[c] += dy;
      b[c] += dy * xhat;
      k[c] += xhat;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) {
      s1 += static_cast<double>(gamma[c]) * a[c];
      s2 += static_cast<double>(gamma[c]) * b[c];
    }
    s1 /= count;
    s2 /= count;
    for (int64_t c = g * s.cg; c < (g + 1) * s.cg; ++c) {
      m1[c] = static_cast<float>(s1);
      m2[c] = static_cast<float>(s2);
      const int64_t nc = n * C + c;
      p.sums_a[nc] = a[c];
      p.sums_b[nc] = b[c];
      if (p.dshift != nullptr) {
        p.dshift[nc] = static_cast<float>(
            static_cast<double>(rv[c]) * (static_cast<double>(gamma[c]) * a[c] -
                                          static_cast<double>(HW) * s1 - s2 * k[c]));
      }
    }
  }
  for (int64_t q = 0; q < HW; ++q) {
    const float* xr = x + q * C;
    float* out = dx + q * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xhat = xr[c] * rv[c] + x0[c];
      out[c] = rv[c] * (gamma[c] * out[c] - m1[c] - xhat * m2[c]);
    }
  }
}

// The drivers over examples [begin, end) of a channels-last input, with their own
// scratch.
template <bool Silu>
ELBO_INLINE void forward_examples_nhwc(const Plan& p, int64_t begin, int64_t end) {
  std::vector<float> work(static_cast<size_t>(8 * p.s.c));
  for (int64_t n = begin; n < end; ++n) forward_example_nhwc<Silu>(p, n, work.data());
}
template <bool Silu>
ELBO_INLINE void backward_examples_nhwc(const Plan& p, int64_t begin, int64_t end) {
  std::vector<float> work(static_cast<size_t>(8 * p.s.c));
  for (int64_t n = begin; n < end; ++n) backward_example_nhwc<Silu>(p, n, work.data());
}

template <bool Silu>
void forward_groups_base(const Plan& p, int64_t begin, int64_t end) {
  for (int64_t ng = begin; ng < end; ++ng) forward_group<Silu>(p, ng);
}
template <bool Silu>
void backward_groups_base(const Plan& p, int64_t begin, int64_t end) {
  for (int64_t ng = begin; ng < end; ++ng) backward_group<Silu>(p, ng);
}
template <bool Silu>
void forward_nhwc_base(const Plan& p, int64_t begin, int64_t end) {
  forward_examples_nhwc<Silu>(p, begin, end);
}
template <bool Silu>
void backward_nhwc_base(const Plan& p, int64_t begin, int64_t end) {
  backward_examples_nhwc<Silu>(p, begin, end);
}

using GroupsFn = void (*)(const Plan&, int64_t, int64_t);
// The drivers for one instruction set: [with SiLU?] forward and backward, over groups
// of a contiguous input, and over examples of a channels-last one.
struct Kernels {
  GroupsFn forward[2];
  GroupsFn backward[2];
  GroupsFn forward_nhwc[2];
  GroupsFn backward_nhwc[2];
};

#if defined(ELBO_HAS_AVX2_COPY)
template <bool Silu>
ELBO_AVX2 void forward_groups_avx2(const Plan& p, int64_t begin, int64_t end) {
  for (int64_t ng = begin; ng < end; ++ng) forward_group<Silu>(p, ng);
}
template <bool Silu>
ELBO_AVX2 void backward_groups_avx2(const Plan& p, int64_t begin, int64_t end) {
  for (int64_t ng = begin; ng < end; ++ng) backward_group<Silu>(p, ng);
}
template <bool Silu>
ELBO_AVX2 void forward_nhwc_avx2(const Plan& p, int64_t begin, int64_t end) {
  forward_examples_nhwc<Silu>(p, begin, end);
}
template <bool Silu>
ELBO_AVX2 void backward_nhwc_avx2(const Plan& p, int64_t begin, int64_t end) {
  backward_examples_nhwc<Silu>(p, begin, end);
}
#endif

const Kernels& kernels() {
  static const Kernels chosen = [] {
#if defined(ELBO_HAS_AVX2_COPY)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Kernels{{forward_groups_avx2<false>, forward_groups_avx2<true>},
                     {backward_groups_avx2<false>, backward_groups_avx2<true>},
                     {forward_nhwc_avx2<false>, forward_nhwc_avx2<true>},
                     {backward_nhwc_avx2<false>, backward_nhwc_avx2<true>}};
    }
#endif
    return Kernels{{forward_groups_base<false>, forward_groups_base<true>},
                   {backward_groups_base<false>, backward_groups_base<true>},
                   {forward_nhwc_base<false>, forward_nhwc_base<true>},
                   {backward_nhwc_base<false>, backward_nhwc_base<true>}};
  }();
  return chosen;
}

// Whether x is a 4-d channels-last (NHWC) tensor that is not also contiguous (with one
// channel or one position the two layouts are the same, and the contiguous path runs).
bool is_nhwc(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

Shape check_inputs(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& weight,
                   const at::Tensor& bias, int64_t groups) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("group_norm: " + what);
  };
  if (x.scalar_type() != at::kFloat || !x.device().is_cpu()) {
    fail("expected a float32 CPU input, found " + std::string(c10::toString(x.scalar_type())) +
         " on " + x.device().str());
  }
  if (x.dim() < 2) {
    fail("expected an input of shape (N, C, ...), found " + std::to_string(x.dim()) +
         " dimensions");
  }
  Shape s{x.size(0), x.size(1), 1, groups, 0};
  for (int64_t d = 2; d < x.dim(); ++d) {
    s.hw *= x.size(d);
  }
  if (groups < 1 || s.c % groups != 0) {
    fail(std::to_string(s.c) + " channels do not split into " + std::to_string(groups) +
         " groups");
  }
  s.cg = s.c / groups;
  for (const at::Tensor* t : {&weight, &bias}) {
    if (t->scalar_type() != at::kFloat || !t->device().is_cpu() || t->dim() != 1 ||
        t->size(0) != s.c) {
      fail("expected float32 CPU weight and bias of shape (" + std::to_string(s.c) +
           "), found " + std::string(c10::toString(t->scalar_type())) + " " +
           c10::str(t->sizes()));
    }
  }
  if (shift.defined() &&
      (shift.scalar_type() != at::kFloat || !shift.device().is_cpu() || shift.dim() != 2 ||
       shift.size(0) != s.n || shift.size(1) != s.c)) {
    fail("expected a float32 CPU shift of shape (" + std::to_string(s.n) + ", " +
         std::to_string(s.c) + "), found " + std::string(c10::toString(shift.scalar_type())) +
         " " + c10::str(shift.sizes()));
  }
  return s;
}

// Runs a call's drivers in parallel: [with SiLU?] over its examples for a channels-last
// input, over its (example, group) pairs otherwise.
void run_parallel(const Plan& p, bool nhwc, const GroupsFn (&per_example)[2],
                  const GroupsFn (&per_group)[2], bool silu) {
  const GroupsFn run = (nhwc ? per_example : per_group)[silu ? 1 : 0];
  const int64_t units = nhwc ? p.s.n : p.s.n * p.s.groups;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) { run(p, begin, end); });
}

// Returns z, mean and rstd (both (N, groups)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_kernel(const at::Tensor& x_in,
                                                              const at::Tensor& shift_in,
                                                              const at::Tensor& weight_in,
                                                              const at::Tensor& bias_in,
                                                              int64_t groups, double eps,
                                                              bool silu) {
  Plan p{};
  p.s = check_inputs(x_in, shift_in, weight_in, bias_in, groups);
  p.eps = eps;
  const bool nhwc = is_nhwc(x_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor shift = shift_in.defined() ? shift_in.contiguous() : shift_in;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  at::Tensor z = at::empty_like(x, format);
  at::Tensor mean = at::empty({p.s.n, groups}, x.options());
  at::Tensor rstd = at::empty({p.s.n, groups}, x.options());
  p.x = x.data_ptr<float>();
  p.shift = shift.defined() ? shift.data_ptr<float>() : nullptr;
  p.gamma = weight.data_ptr<float>();
  p.beta = bias.data_ptr<float>();
  p.z = z.data_ptr<float>();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  run_parallel(p, nhwc, kernels().forward_nhwc, kernels().forward, silu);
  return {z, mean, rstd};
}

// Returns dx, dshift (undefined without a shift), dweight, dbias.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_kernel(
    const at::Tensor& dz_in, const at::Tensor& x_in, const at::Tensor& shift_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, int64_t groups, bool silu) {
  Plan p{};
  p.s = check_inputs(x_in, shift_in, weight_in, bias_in, groups);
  // The layout the forward pass ran in (it saved x as it read it).
  const bool nhwc = is_nhwc(x_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor dz = dz_in.contiguous(format);
  const at::Tensor shift = shift_in.defined() ? shift_in.contiguous() : shift_in;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  at::Tensor dx = at::empty_like(x, format);
  at::Tensor dshift = shift.defined() ? at::empty({p.s.n, p.s.c}, x.options()) : at::Tensor();
  at::Tensor sums_a = at::empty({p.s.n, p.s.c}, x.options());
  at::Tensor sums_b = at::empty({p.s.n, p.s.c}, x.options());
  p.x = x.data_ptr<float>();
  p.dz = dz.data_ptr<float>();
  p.shift = shift.defined() ? shift.data_ptr<float>() : nullptr;
  p.gamma = weight.data_ptr<float>();
  p.beta = bias.data_ptr<float>();
  p.mean = const_cast<float*>(mean.data_ptr<float>());
  p.rstd = const_cast<float*>(rstd.data_ptr<float>());
  p.dx = dx.data_ptr<float>();
  p.dshift = dshift.defined() ? dshift.data_ptr<float>() : nullptr;
  p.sums_a = sums_a.data_ptr<float>();
  p.sums_b = sums_b.data_ptr<float>();
  run_parallel(p, nhwc, kernels().backward_nhwc, kernels().backward, silu);
  return {dx, dshift, sums_b.sum(0), sums_a.sum(0)};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Both autograd functions below: the forward pass, saving x, the shift (when there is
// one), weight, bias, mean and rstd.
at::Tensor save_and_run(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                        const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                        double eps, bool silu) {
  auto [z, mean, rstd] = forward_kernel(x, shift, weight, bias, groups, eps, silu);
  if (shift.defined()) {
    ctx->save_for_backward({x, shift, weight, bias, mean, rstd});
  } else {
    ctx->save_for_backward({x, weight, bias, mean, rstd});
  }
  ctx->saved_data["groups"] = groups;
  ctx->saved_data["silu"] = silu;
  return z;
}

// The backward pass: gradients of x, the shift (when `shifted`), weight and bias, and
// none for groups, eps and silu.
variable_list backward_from_saved(AutogradContext* ctx, const at::Tensor& dz, bool shifted) {
  if (at::GradMode::is_enabled()) {
    throw std::runtime_error(
        "group_norm: elbo's fused GroupNorm (+ SiLU) has no second derivative "
        "(backward with create_graph); use the separate operations");
  }
  const variable_list v = ctx->get_saved_variables();
  const size_t o = shifted ? 1 : 0;
  auto [dx, dshift, dweight, dbias] = backward_kernel(
      dz, v[0], shifted ? v[1] : at::Tensor(), v[1 + o], v[2 + o], v[3 + o], v[4 + o],
      ctx->saved_data["groups"].toInt(), ctx->saved_data["silu"].toBool());
  variable_list grads{dx};
  if (shifted) {
    grads.push_back(dshift);
  }
  grads.insert(grads.end(), {dweight, dbias, at::Tensor(), at::Tensor(), at::Tensor()});
  return grads;
}

// group_norm(x), then SiLU when `silu`. (An undefined tensor cannot be an input of an
// autograd function, hence two functions rather than an optional shift.)
struct GroupNormAct : public torch::autograd::Function<GroupNormAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, int64_t groups, double eps, bool silu) {
    return save_and_run(ctx, x, at::Tensor(), weight, bias, groups, eps, silu);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return backward_from_saved(ctx, grad_outputs[0], false);
  }
};

// group_norm(x + shift[:, :, None, ...]), then SiLU when `silu`.
struct ShiftedGroupNormAct : public torch::autograd::Function<ShiftedGroupNormAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                            const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                            double eps, bool silu) {
    return save_and_run(ctx, x, shift, weight, bias, groups, eps, silu);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return backward_from_saved(ctx, grad_outputs[0], true);
  }
};

}  // namespace

extern "C" {

// z = group_norm(x + shift[:, :, None, ...], groups, weight, bias, eps), then SiLU when
// silu != 0, into a new tensor handle *out; shift may be null. Float32 CPU tensors only.
char* elbo_group_norm(at::Tensor* x, at::Tensor* shift, at::Tensor* weight, at::Tensor* bias,
                      int64_t groups, double eps, int silu, at::Tensor** out) {
  try {
    at::Tensor z =
        shift != nullptr
            ? ShiftedGroupNormAct::apply(*x, *shift, *weight, *bias, groups, eps, silu != 0)
            : GroupNormAct::apply(*x, *weight, *bias, groups, eps, silu != 0);
    *out = new at::Tensor(std::move(z));
    return nullptr;
  } catch (const std::exception& e) {
    return elbo::message(e.what());
  } catch (...) {
    return elbo::message("unknown C++ exception in elbo_group_norm");
  }
}

}  // extern "C"
