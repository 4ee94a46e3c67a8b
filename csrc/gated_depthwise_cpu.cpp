// The gated depthwise unit of the dynamic head's scale fusion, at inference, in two passes:
//
//   out = gate * GroupNorm(depthwise_conv3x3(x) + bias)   where any gate map is non-zero,
//   out = 0                                                elsewhere.
//
// GroupNorm takes its statistics over the whole map (the unit is dense; only its output is
// gated), so pass 1 computes the convolution everywhere and accumulates per-channel sums without
// storing it; pass 2 computes it again, only where the gate is open, and writes the normalized,
// gated value (zeros elsewhere). The library path (depthwise convolution, GroupNorm, multiply)
// makes five passes over 256-channel maps; this one reads the input twice and writes once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "masked_conv.h"

namespace cvpods {

// Row kernels. Layouts: x and out are channels-last [N, H, W, C]; w9 is the weight as [9][C]
// (tap-major); gate is [N, G, H, W] contiguous; C / G is a multiple of 16 (the caller checks).
namespace portable {

// Channels c0 .. c0 + 15 of the convolution (plus bias) at position (y, xx) of image n.
inline void conv16(const float* x, const float* w9, const float* bias, int64_t h, int64_t w,
                   int64_t c, int64_t n, int64_t y, int64_t xx, int64_t c0, float* a) {
  for (int l = 0; l < 16; ++l) a[l] = bias ? bias[c0 + l] : 0.f;
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t yy = y + ky - 1;
    if (yy < 0 || yy >= h) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t x2 = xx + kx - 1;
      if (x2 < 0 || x2 >= w) continue;
      const float* src = x + ((n * h + yy) * w + x2) * c + c0;
      const float* tap = w9 + (ky * 3 + kx) * c + c0;
      for (int l = 0; l < 16; ++l) a[l] += src[l] * tap[l];
    }
  }
}

// Accumulates, for image n and row y, the per-channel sum and sum of squares of
// y = depthwise_conv3x3(x) + bias over the row's positions (float within the row, double across).
inline void dw_row_stats(const float* x, const float* w9, const float* bias, int64_t h, int64_t w,
                         int64_t c, int64_t n, int64_t y, float* row_sum, float* row_sq,
                         double* sum, double* sq) {
  for (int64_t ch = 0; ch < c; ++ch) {
    row_sum[ch] = 0.f;
    row_sq[ch] = 0.f;
  }
  for (int64_t xx = 0; xx < w; ++xx) {
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      float a[16];
      conv16(x, w9, bias, h, w, c, n, y, xx, c0, a);
      for (int l = 0; l < 16; ++l) {
        row_sum[c0 + l] += a[l];
        row_sq[c0 + l] += a[l] * a[l];
      }
    }
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    sum[ch] += row_sum[ch];
    sq[ch] += row_sq[ch];
  }
}

// Writes row y of image n: gate * (conv * scale + shift) where any gate map is non-zero, zeros
// elsewhere. scale / shift: [C] for this image (the GroupNorm affine folded in).
inline void dw_row_output(const float* x, const float* w9, const float* bias, const float* scale,
                          const float* shift, const float* gate, int64_t gate_maps, int64_t h,
                          int64_t w, int64_t c, int64_t n, int64_t y, float* out,
                          bool zero_closed) {
  const int64_t hw = h * w;
  const int64_t per_map = c / gate_maps;
  for (int64_t xx = 0; xx < w; ++xx) {
    float* o = out + ((n * h + y) * w + xx) * c;
    const float* g = gate + n * gate_maps * hw + y * w + xx;
    bool open = false;
    for (int64_t m = 0; m < gate_maps; ++m) open = open || g[m * hw] != 0.f;
    if (!open) {
      if (zero_closed) std::fill_n(o, c, 0.f);
      continue;
    }
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      float a[16];
      conv16(x, w9, bias, h, w, c, n, y, xx, c0, a);
      // per_map is a multiple of 16 (checked by the caller): one gate value per 16 channels.
      const float gv = g[(c0 / per_map) * hw];
      for (int l = 0; l < 16; ++l) o[c0 + l] = (a[l] * scale[c0 + l] + shift[c0 + l]) * gv;
    }
  }
}

}  // namespace portable

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CVPODS_HAVE_AVX2_DW 1
namespace avx2 {

// The same two kernels with AVX2 + FMA: 8 channels per vector, the 9 taps accumulated in a
// register, two vectors (16 channels) per step.
__attribute__((target("avx2,fma"))) inline void conv16(const float* x, const float* w9,
                                                      const float* bias, int64_t h, int64_t w,
                                                      int64_t c, int64_t n, int64_t y, int64_t xx,
                                                      int64_t c0, __m256& lo, __m256& hi) {
  lo = bias ? _mm256_loadu_ps(bias + c0) : _mm256_setzero_ps();
  hi = bias ? _mm256_loadu_ps(bias + c0 + 8) : _mm256_setzero_ps();
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t yy = y + ky - 1;
    if (yy < 0 || yy >= h) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t x2 = xx + kx - 1;
      if (x2 < 0 || x2 >= w) continue;
      const float* src = x + ((n * h + yy) * w + x2) * c + c0;
      const float* tap = w9 + (ky * 3 + kx) * c + c0;
      lo = _mm256_fmadd_ps(_mm256_loadu_ps(src), _mm256_loadu_ps(tap), lo);
      hi = _mm256_fmadd_ps(_mm256_loadu_ps(src + 8), _mm256_loadu_ps(tap + 8), hi);
    }
  }
}

// Columns per tile of the statistics pass: the four input rows a tile reads (4 x 66 pixels of
// 256 channels, 264 KB) stay in the L2 cache from one pair of output rows to the next.
constexpr int64_t kStatsTileColumns = 64;
// Output rows per job of the statistics pass (an even number: rows are taken in pairs).
constexpr int64_t kStatsBandRows = 16;

// The depthwise weight [C, 1, 3, 3] as [C / 16][9][16]: the nine taps of 16 channels contiguous.
at::Tensor pack_stats_weight(const at::Tensor& weight) {
  const int64_t c = weight.size(0);
  return weight.reshape({c / 16, 16, 9}).permute({0, 2, 1}).contiguous().to(at::kFloat);
}

// One output column x of output rows y0 (input rows r[0..2]) and, when kTwoRows, y0 + 1 (input
// rows r[1..3]), 16 channels (two vectors, lo / hi); the taps of column x - 1 / x + 1 only when
// kLeft / kRight. k: the 16 channels' [9][16] weights.
template <bool kTwoRows, bool kLeft, bool kRight>
__attribute__((target("avx2,fma"), always_inline)) inline void dw_stats_column(
    const float* const* r, const float* k, __m256 b_lo, __m256 b_hi, int64_t x, int64_t c,
    __m256* s, __m256* q) {
  __m256 a0[2] = {b_lo, b_hi}, a1[2] = {b_lo, b_hi};
  for (int kx = 0; kx < 3; ++kx) {
    if ((kx == 0 && !kLeft) || (kx == 2 && !kRight)) continue;
    const int64_t at = (x + kx - 1) * c;
    for (int h = 0; h < 2; ++h) {
      const __m256 k0 = _mm256_loadu_ps(k + kx * 16 + 8 * h);
      const __m256 k1 = _mm256_loadu_ps(k + (3 + kx) * 16 + 8 * h);
      const __m256 k2 = _mm256_loadu_ps(k + (6 + kx) * 16 + 8 * h);
      const __m256 v1 = _mm256_loadu_ps(r[1] + at + 8 * h);
      const __m256 v2 = _mm256_loadu_ps(r[2] + at + 8 * h);
      a0[h] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(r[0] + at + 8 * h), a0[h]);
      a0[h] = _mm256_fmadd_ps(k1, v1, a0[h]);
      a0[h] = _mm256_fmadd_ps(k2, v2, a0[h]);
      if (kTwoRows) {
        a1[h] = _mm256_fmadd_ps(k0, v1, a1[h]);
        a1[h] = _mm256_fmadd_ps(k1, v2, a1[h]);
        a1[h] = _mm256_fmadd_ps(k2, _mm256_loadu_ps(r[3] + at + 8 * h), a1[h]);
      }
    }
  }
  for (int h = 0; h < 2; ++h) {
    s[h] = _mm256_add_ps(s[h], a0[h]);
    q[h] = _mm256_fmadd_ps(a0[h], a0[h], q[h]);
    if (kTwoRows) {
      s[h] = _mm256_add_ps(s[h], a1[h]);
      q[h] = _mm256_fmadd_ps(a1[h], a1[h], q[h]);
    }
  }
}

// Adds, per channel, the sum and sum of squares of y = depthwise_conv3x3(x) + bias over the
// columns [xs, xe) of output row y0, and of row y0 + 1 when kTwoRows. `rows` are the input rows
// y0 - 1 .. y0 + 2 (channels-last; a row outside the map points to a zero row), `next` the rows
// y0 + 3 and y0 + 4 (prefetched; a zero row when outside); `k16` the weight
// packed by pack_stats_weight. Sixteen channels (one cache line of a pixel) at a time, walking
// the columns, so that each line is read for all six outputs of the two rows that use it while it
// is in L1. Sums are float within the tile, double across.
template <bool kTwoRows>
__attribute__((target("avx2,fma"))) void dw_stats_rows(const float* const* rows,
                                                       const float* const* next, const float* k16,
                                                       const float* bias, int64_t w, int64_t c,
                                                       int64_t xs, int64_t xe, double* sum,
                                                       double* sq) {
  for (int64_t c0 = 0; c0 < c; c0 += 16) {
    const float* k = k16 + c0 * 9;
    const __m256 b_lo = bias ? _mm256_loadu_ps(bias + c0) : _mm256_setzero_ps();
    const __m256 b_hi = bias ? _mm256_loadu_ps(bias + c0 + 8) : _mm256_setzero_ps();
    const float* r[4] = {rows[0] + c0, rows[1] + c0, rows[2] + c0, rows[3] + c0};
    __m256 s[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 q[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t x = xs;
    if (x == 0) {
      if (w == 1) {
        dw_stats_column<kTwoRows, false, false>(r, k, b_lo, b_hi, x, c, s, q);
      } else {
        dw_stats_column<kTwoRows, false, true>(r, k, b_lo, b_hi, x, c, s, q);
      }
      ++x;
    }
    for (const int64_t interior_end = std::min(xe, w - 1); x < interior_end; ++x) {
      // This line of the next pair's two new rows, into L2 ahead of their walk (the hardware
      // prefetcher does not follow walks with a stride of one pixel).
      _mm_prefetch(reinterpret_cast<const char*>(next[0] + x * c + c0), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(next[1] + x * c + c0), _MM_HINT_T1);
      dw_stats_column<kTwoRows, true, true>(r, k, b_lo, b_hi, x, c, s, q);
    }
    if (x < xe) dw_stats_column<kTwoRows, true, false>(r, k, b_lo, b_hi, x, c, s, q);  // w - 1
    alignas(32) float s16[16], q16[16];
    _mm256_store_ps(s16, s[0]);
    _mm256_store_ps(s16 + 8, s[1]);
    _mm256_store_ps(q16, q[0]);
    _mm256_store_ps(q16 + 8, q[1]);
    for (int l = 0; l < 16; ++l) {
      sum[c0 + l] += s16[l];
      sq[c0 + l] += q16[l];
    }
  }
}

__attribute__((target("avx2,fma"))) void dw_row_output(const float* x, const float* w9,
                                                       const float* bias, const float* scale,
                                                       const float* shift, const float* gate,
                                                       int64_t gate_maps, int64_t h, int64_t w,
                                                       int64_t c, int64_t n, int64_t y,
                                                       float* out, bool zero_closed) {
  const int64_t hw = h * w;
  const int64_t per_map = c / gate_maps;
  for (int64_t xx = 0; xx < w; ++xx) {
    float* o = out + ((n * h + y) * w + xx) * c;
    const float* g = gate + n * gate_maps * hw + y * w + xx;
    bool open = false;
    for (int64_t m = 0; m < gate_maps; ++m) open = open || g[m * hw] != 0.f;
    if (!open) {
      if (zero_closed) {
        for (int64_t c0 = 0; c0 < c; c0 += 8) _mm256_storeu_ps(o + c0, _mm256_setzero_ps());
      }
      continue;
    }
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      __m256 lo, hi;
      conv16(x, w9, bias, h, w, c, n, y, xx, c0, lo, hi);
      const __m256 gv = _mm256_set1_ps(g[(c0 / per_map) * hw]);
      lo = _mm256_fmadd_ps(lo, _mm256_loadu_ps(scale + c0), _mm256_loadu_ps(shift + c0));
      hi = _mm256_fmadd_ps(hi, _mm256_loadu_ps(scale + c0 + 8), _mm256_loadu_ps(shift + c0 + 8));
      _mm256_storeu_ps(o + c0, _mm256_mul_ps(lo, gv));
      _mm256_storeu_ps(o + c0 + 8, _mm256_mul_ps(hi, gv));
    }
  }
}

}  // namespace avx2
#endif

namespace {

bool use_avx2_kernels() {
#ifdef CVPODS_HAVE_AVX2_DW
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace

at::Tensor gated_depthwise_library(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t num_groups,
                                   const std::optional<at::Tensor>& gn_weight,
                                   const std::optional<at::Tensor>& gn_bias, double eps,
                                   const at::Tensor& gate, bool /*zero_closed*/) {
  at::Tensor y = at::conv2d(x, weight, bias, {1, 1}, {1, 1}, {1, 1}, x.size(1));
  if (num_groups > 0) y = at::group_norm(y, num_groups, gn_weight, gn_bias, eps);
  const int64_t n = y.size(0), c = y.size(1), h = y.size(2), w = y.size(3);
  const int64_t maps = gate.size(1);
  return (y.reshape({n, maps, c / maps, h, w}) * gate.unsqueeze(2))
      .view({n, c, h, w})
      .contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor gated_depthwise_cpu(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t num_groups,
                               const std::optional<at::Tensor>& gn_weight,
                               const std::optional<at::Tensor>& gn_bias, double eps,
                               const at::Tensor& gate, bool zero_closed) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(0) == x.size(1) &&
                  weight.size(1) == 1 && weight.size(2) == 3 && weight.size(3) == 3,
              "gated_depthwise: expects x [N, C, H, W] and a depthwise weight [C, 1, 3, 3], got ",
              x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(gate.dim() == 4 && gate.size(0) == x.size(0) && x.size(1) % gate.size(1) == 0 &&
                  gate.size(2) == x.size(2) && gate.size(3) == x.size(3),
              "gated_depthwise: gate must be [N, G, H, W] with G dividing C=", x.size(1),
              ", got ", gate.sizes());
  TORCH_CHECK(num_groups == 0 || x.size(1) % num_groups == 0, "gated_depthwise: num_groups ",
              num_groups, " must divide C=", x.size(1));
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  if (x.scalar_type() != at::kFloat || !x.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      n * h * w == 0 || (c / gate.size(1)) % 16 != 0) {
    return gated_depthwise_library(x, weight, bias, num_groups, gn_weight, gn_bias, eps, gate,
                                   zero_closed);
  }
  const at::Tensor w9 = weight.reshape({c, 9}).t().contiguous().to(at::kFloat);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor g = gate.to(at::kFloat).contiguous();
  const float* xp = x.data_ptr<float>();
  const float* wp = w9.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const bool fast = use_avx2_kernels();
  const bool fast_stats = fast && c % 16 == 0;  // the AVX2 statistics take 16 channels a step
  const int64_t threads = at::get_num_threads();

  // Pass 1: per image and channel, sum and sum of squares of the convolution output.
  std::vector<float> scale(n * c, 1.f), shift(n * c, 0.f);
  if (num_groups > 0) {
    std::vector<double> partial(threads * n * c * 2, 0.0);
#ifdef CVPODS_HAVE_AVX2_DW
    if (fast_stats) {
      // Jobs: (image, tile of columns, band of rows); each walks its band in pairs of rows.
      const int64_t tiles = (w + avx2::kStatsTileColumns - 1) / avx2::kStatsTileColumns;
      const int64_t tile = (w + tiles - 1) / tiles;  // equal tiles
      const int64_t bands = (h + avx2::kStatsBandRows - 1) / avx2::kStatsBandRows;
      const at::Tensor k16 = avx2::pack_stats_weight(weight);
      const float* kp = k16.data_ptr<float>();
      const std::vector<float> zeros(w * c, 0.f);  // the rows above the first / below the last
      at::parallel_for(0, n * tiles * bands, 1, [&](int64_t begin, int64_t end) {
        double* mine = partial.data() + at::get_thread_num() * n * c * 2;
        for (int64_t job = begin; job < end; ++job) {
          const int64_t image = job / (tiles * bands);
          const int64_t xs = (job / bands % tiles) * tile, xe = std::min(w, xs + tile);
          const int64_t ys = job % bands * avx2::kStatsBandRows;
          const int64_t ye = std::min(h, ys + avx2::kStatsBandRows);
          double* sum = mine + image * c * 2;
          for (int64_t y = ys; y < ye; y += 2) {
            const float* rows[6];  // input rows y - 1 .. y + 4
            for (int i = 0; i < 6; ++i) {
              const int64_t yy = y + i - 1;
              rows[i] = yy < 0 || yy >= h ? zeros.data() : xp + (image * h + yy) * w * c;
            }
            if (y + 1 < ye) {
              avx2::dw_stats_rows<true>(rows, rows + 4, kp, bp, w, c, xs, xe, sum, sum + c);
            } else {
              avx2::dw_stats_rows<false>(rows, rows + 4, kp, bp, w, c, xs, xe, sum, sum + c);
            }
          }
        }
      });
    } else
#endif
    {
      at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> row_sum(c), row_sq(c);
        double* mine = partial.data() + at::get_thread_num() * n * c * 2;
        for (int64_t row = begin; row < end; ++row) {
          const int64_t image = row / h, y = row % h;
          double* sum = mine + image * c * 2;
          portable::dw_row_stats(xp, wp, bp, h, w, c, image, y, row_sum.data(), row_sq.data(),
                                 sum, sum + c);
        }
      });
    }
    const at::Tensor gw = gn_weight.has_value() ? gn_weight->to(at::kDouble) : at::ones({c}, at::kDouble);
    const at::Tensor gb = gn_bias.has_value() ? gn_bias->to(at::kDouble) : at::zeros({c}, at::kDouble);
    const double* gwp = gw.data_ptr<double>();
    const double* gbp = gb.data_ptr<double>();
    const int64_t per_group = c / num_groups;
    const double count = static_cast<double>(h * w * per_group);
    for (int64_t image = 0; image < n; ++image) {
      for (int64_t grp = 0; grp < num_groups; ++grp) {
        double s = 0, ss = 0;
        for (int64_t t = 0; t < threads; ++t) {
          const double* p = partial.data() + (t * n + image) * c * 2;
          for (int64_t ch = grp * per_group; ch < (grp + 1) * per_group; ++ch) {
            s += p[ch];
            ss += p[c + ch];
          }
        }
        const double mean = s / count;
        const double rstd = 1.0 / std::sqrt(std::max(ss / count - mean * mean, 0.0) + eps);
        for (int64_t ch = grp * per_group; ch < (grp + 1) * per_group; ++ch) {
          const double sc = rstd * gwp[ch];
          scale[image * c + ch] = static_cast<float>(sc);
          shift[image * c + ch] = static_cast<float>(gbp[ch] - mean * sc);
        }
      }
    }
  }

  // Pass 2: the normalized, gated output where a gate is open, zeros elsewhere.
  at::Tensor out = pooled_empty({n, c, h, w}, x.options(), at::MemoryFormat::ChannelsLast);
  float* op = out.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const int64_t maps = g.size(1);
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / h, y = row % h;
#ifdef CVPODS_HAVE_AVX2_DW
      auto kernel = fast ? &avx2::dw_row_output : &portable::dw_row_output;
#else
      auto kernel = &portable::dw_row_output;
#endif
      kernel(xp, wp, bp, scale.data() + image * c, shift.data() + image * c, gp, maps, h, w, c,
             image, y, op, zero_closed);
    }
  });
  return out;
}

}  // namespace cvpods
