// 3x3 "same" convolution with few output channels, for the spatial gates of the dynamic head.
//
// A gate reads a 256-channel map and writes one value per position (or a few: several gates that
// read the same input are one convolution). oneDNN's direct convolution is built for many output
// channels and spends most of its time on such a layer re-laying out the input.
//
// Two code paths, both accumulating in float32:
// * AVX2 + FMA, when the CPU has them (x86-64-v3 and later): tap projections. Each input pixel
//   (its C contiguous channels in the channels-last input) is read once and dotted with the
//   weights of all 9 taps of every output (9 independent accumulators, 8 channels per step); an
//   output is then the sum of 9 projections of its neighbourhood, taken from a ring of three
//   projected rows. The map streams through the cache once, where a direct convolution reads each
//   pixel once per tap (9 times).
// * portable C++ otherwise: each output position is the dot product of its 3x3 neighbourhood
//   with each output's weight (channels in blocks of 16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "masked_conv.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CVPODS_HAVE_AVX2_PATH 1
#endif

namespace cvpods {
namespace {

constexpr int64_t kLanes = 16;     // channels per accumulation step
constexpr int64_t kMaxOutputs = 8;  // output channels per pass over the input

struct GateGeometry {
  int64_t n, c, h, w, cout;
};

// Weight [Cout, C, 3, 3] -> [9][Cout][C] (tap-major), so each tap's rows are contiguous.
at::Tensor pack_gate_weight(const at::Tensor& weight) {
  return weight.permute({2, 3, 0, 1}).contiguous().to(at::kFloat);
}

// Row y of image n, outputs [first, first + count): portable path.
void gate_row_portable(const float* x, const float* wt, const float* bias, float* out,
                       const GateGeometry& g, int64_t n, int64_t y, int64_t first, int64_t count) {
  for (int64_t xx = 0; xx < g.w; ++xx) {
    float acc[kMaxOutputs][kLanes] = {};
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t yy = y + ky - 1;
      if (yy < 0 || yy >= g.h) continue;
      for (int64_t kx = 0; kx < 3; ++kx) {
        const int64_t x2 = xx + kx - 1;
        if (x2 < 0 || x2 >= g.w) continue;
        const float* src = x + ((n * g.h + yy) * g.w + x2) * g.c;
        const float* tap = wt + ((ky * 3 + kx) * g.cout + first) * g.c;
        for (int64_t o = 0; o < count; ++o) {
          const float* wo = tap + o * g.c;
          for (int64_t c0 = 0; c0 < g.c; c0 += kLanes) {
            for (int64_t l = 0; l < kLanes; ++l) acc[o][l] += src[c0 + l] * wo[c0 + l];
          }
        }
      }
    }
    for (int64_t o = 0; o < count; ++o) {
      float s = 0.f;
      for (int64_t l = 0; l < kLanes; ++l) s += acc[o][l];
      out[((n * g.cout + first + o) * g.h + y) * g.w + xx] = s + (bias ? bias[first + o] : 0.f);
    }
  }
}

#ifdef CVPODS_HAVE_AVX2_PATH
constexpr int64_t kAvxLanes = 8;
constexpr int64_t kPrefetchPixels = 2;

// Weight [G, C, 3, 3] -> [G][C / 8][9][8]: for one output and one step of 8 channels, the nine
// taps' weights are contiguous (tap rows C floats apart would share cache sets with each other
// and with the input pixels, also C floats apart, and evict one another from L1).
at::Tensor pack_gate_weight_by_output(const at::Tensor& weight) {
  const int64_t g = weight.size(0), c = weight.size(1);
  return weight.reshape({g, c / kAvxLanes, kAvxLanes, 9}).permute({0, 1, 3, 2}).contiguous().to(
      at::kFloat);
}

// [a0 .. a7] -> (sum of a0's lanes, ..., sum of a7's lanes).
__attribute__((target("avx2,fma"))) inline __m256 sum_lanes8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

__attribute__((target("avx2,fma"))) inline float sum_lanes(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 half = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(half, _mm_shuffle_ps(half, half, 1)));
}

// Tap projections of one input row: proj[(o * w + x) * 9 + t] = x_row[x] . weight[o, :, t] for
// every pixel x of the row, output o and tap t = 3 * ky + kx. Each pixel's channels are read
// once for all 9 G products (9 independent accumulators per output), so the row streams through
// the cache once instead of once per tap as a direct convolution reads it.
__attribute__((target("avx2,fma"))) void project_row(const float* row, const float* wt,
                                                     int64_t w, int64_t c, int64_t cout,
                                                     float* proj) {
  for (int64_t x = 0; x < w; ++x) {
    const float* px = row + x * c;
    // The hardware prefetcher does not run far enough ahead of this loop on large maps.
    if (x + kPrefetchPixels < w) {
      for (int64_t c0 = 0; c0 < c; c0 += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(px + kPrefetchPixels * c + c0), _MM_HINT_T0);
      }
    }
    for (int64_t o = 0; o < cout; ++o) {
      const float* wo = wt + o * 9 * c;
      __m256 acc[9];
      for (int t = 0; t < 9; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t c0 = 0; c0 < c; c0 += kAvxLanes) {
        const __m256 v = _mm256_loadu_ps(px + c0);
        const float* wc = wo + c0 * 9;  // [9][8] for these 8 channels
        for (int t = 0; t < 9; ++t) {
          acc[t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(wc + t * kAvxLanes), acc[t]);
        }
      }
      float* dst = proj + (o * w + x) * 9;
      _mm256_storeu_ps(dst, sum_lanes8(acc));
      dst[8] = sum_lanes(acc[8]);
    }
  }
}

// Output rows [first, last) of image n (the rows of one thread). Each input row is projected
// once into a ring of three projected rows; output (o, y, x) sums the 9 projections of its
// neighbourhood (taps outside the map are zero padding: skipped).
void gate_rows_projected(const float* xp, const float* wt, const float* bias, float* op,
                         const GateGeometry& g, int64_t n, int64_t first, int64_t last) {
  const int64_t row_floats = g.cout * g.w * 9;
  std::vector<float> ring(3 * row_floats);
  auto slot = [&](int64_t yy) { return ring.data() + ((yy + 3) % 3) * row_floats; };
  const float* image = xp + n * g.h * g.w * g.c;
  // Rows first - 1 and first are projected before the loop; row y + 1 at step y.
  for (int64_t yy = std::max<int64_t>(first - 1, 0); yy < std::min(first + 1, g.h); ++yy) {
    project_row(image + yy * g.w * g.c, wt, g.w, g.c, g.cout, slot(yy));
  }
  for (int64_t y = first; y < last; ++y) {
    if (y + 1 < g.h) project_row(image + (y + 1) * g.w * g.c, wt, g.w, g.c, g.cout, slot(y + 1));
    for (int64_t o = 0; o < g.cout; ++o) {
      float* out = op + ((n * g.cout + o) * g.h + y) * g.w;
      const float b = bias ? bias[o] : 0.f;
      for (int64_t x = 0; x < g.w; ++x) out[x] = b;
      for (int64_t ky = 0; ky < 3; ++ky) {
        const int64_t yy = y + ky - 1;
        if (yy < 0 || yy >= g.h) continue;
        const float* p = slot(yy) + o * g.w * 9 + ky * 3;
        // Tap (ky, kx) of output x is pixel x + kx - 1's projection number 3 ky + kx.
        for (int64_t x = 0; x < g.w; ++x) out[x] += p[x * 9 + 1];
        for (int64_t x = 1; x < g.w; ++x) out[x] += p[(x - 1) * 9];
        for (int64_t x = 0; x + 1 < g.w; ++x) out[x] += p[(x + 1) * 9 + 2];
      }
    }
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

}  // namespace

at::Tensor gate_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, bool simd) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == x.size(1) &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "gate_conv2d: expects x [N, C, H, W] and weight [G, C, 3, 3], got ", x.sizes(),
              " and ", weight.sizes());
  const GateGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0)};
  const bool fast_layout = x.scalar_type() == at::kFloat && g.c % kLanes == 0 &&
                           x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!fast_layout) {
    // Other dtypes (bfloat16 outside autocast: autocast gives this operator float32) / channel
    // counts / layouts: the library convolution, in the contiguous layout the operator returns.
    const std::optional<at::Tensor> b =
        bias.has_value() ? std::optional<at::Tensor>(bias->to(x.scalar_type())) : std::nullopt;
    return at::conv2d(x, weight.to(x.scalar_type()), b, {1, 1}, {1, 1}).contiguous();
  }
  at::Tensor out = at::empty({g.n, g.cout, g.h, g.w}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* xp = x.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
#ifdef CVPODS_HAVE_AVX2_PATH
  if (simd && cpu_has_avx2()) {
    const at::Tensor wt = pack_gate_weight_by_output(weight);
    const float* wp = wt.data_ptr<float>();
    // Bands of rows per thread (a band projects its two border rows once more).
    const int64_t bands = std::min<int64_t>(g.h, std::max<int64_t>(1, at::get_num_threads()));
    const int64_t band = (g.h + bands - 1) / bands;
    at::parallel_for(0, g.n * bands, 1, [&](int64_t begin, int64_t end) {
      for (int64_t job = begin; job < end; ++job) {
        const int64_t n = job / bands, first = (job % bands) * band;
        if (first < g.h) gate_rows_projected(xp, wp, bp, op, g, n, first, std::min(g.h, first + band));
      }
    });
    return out;
  }
#else
  (void)simd;
#endif
  const at::Tensor wt = pack_gate_weight(weight);
  const float* wp = wt.data_ptr<float>();
  at::parallel_for(0, g.n * g.h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.h, y = row % g.h;
      for (int64_t first = 0; first < g.cout; first += kMaxOutputs) {
        gate_row_portable(xp, wp, bp, op, g, n, y, first, std::min(kMaxOutputs, g.cout - first));
      }
    }
  });
  return out;
}

}  // namespace cvpods
