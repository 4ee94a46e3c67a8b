// 3x3 "same" convolution with few output channels, for the spatial gates of the dynamic head.
//
// A gate reads a 256-channel map and writes one value per position (or a few: several gates that
// read the same input are one convolution). oneDNN's direct convolution is built for many output
// channels and spends most of its time on such a layer re-laying out the input; here each output
// position is a dot product of its 3x3 neighbourhood (9 contiguous channel rows of the
// channels-last input, read from cache) with the weight of each output channel, accumulated in
// vector registers across channels. The map is read once, nothing is written but the G outputs.
//
// Two code paths: AVX2 + FMA when the CPU has them (x86-64-v3 and later; four positions at a
// time, so each weight vector is loaded once for four outputs, channels in blocks of 8), and
// portable C++ otherwise (channels in blocks of 16). Both accumulate in float32.
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
// kPositions consecutive outputs of a row at once: each weight vector is loaded once for all of
// them, and the kPositions x kCount accumulators are independent dependency chains.
constexpr int64_t kPositions = 4;
constexpr int64_t kAvxLanes = 8;

__attribute__((target("avx2,fma"))) inline float sum_lanes(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 half = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(half, _mm_shuffle_ps(half, half, 1)));
}

template <int kCount>
__attribute__((target("avx2,fma"))) void gate_row_avx2(const float* x, const float* wt,
                                                       const float* bias, float* out,
                                                       const GateGeometry& g, int64_t n, int64_t y,
                                                       int64_t first, const float* zeros) {
  for (int64_t x0 = 0; x0 < g.w; x0 += kPositions) {
    const int64_t count = std::min(kPositions, g.w - x0);
    __m256 acc[kPositions][kCount];
    for (int p = 0; p < kPositions; ++p) {
      for (int o = 0; o < kCount; ++o) acc[p][o] = _mm256_setzero_ps();
    }
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t yy = y + ky - 1;
      if (yy < 0 || yy >= g.h) continue;
      const float* line = x + (n * g.h + yy) * g.w * g.c;
      for (int64_t kx = 0; kx < 3; ++kx) {
        const float* src[kPositions];
        for (int64_t p = 0; p < kPositions; ++p) {
          const int64_t x2 = x0 + p + kx - 1;
          src[p] = (p < count && x2 >= 0 && x2 < g.w) ? line + x2 * g.c : zeros;
        }
        const float* tap = wt + ((ky * 3 + kx) * g.cout + first) * g.c;
        for (int64_t c0 = 0; c0 < g.c; c0 += kAvxLanes) {
          __m256 wv[kCount];
          for (int o = 0; o < kCount; ++o) wv[o] = _mm256_loadu_ps(tap + o * g.c + c0);
          for (int p = 0; p < kPositions; ++p) {
            const __m256 v = _mm256_loadu_ps(src[p] + c0);
            for (int o = 0; o < kCount; ++o) acc[p][o] = _mm256_fmadd_ps(v, wv[o], acc[p][o]);
          }
        }
      }
    }
    for (int64_t p = 0; p < count; ++p) {
      for (int o = 0; o < kCount; ++o) {
        out[((n * g.cout + first + o) * g.h + y) * g.w + x0 + p] =
            sum_lanes(acc[p][o]) + (bias ? bias[first + o] : 0.f);
      }
    }
  }
}

using AvxRow = void (*)(const float*, const float*, const float*, float*, const GateGeometry&,
                        int64_t, int64_t, int64_t, const float*);

// Outputs per pass of the AVX2 kernel (16 vector registers: 4 x 2 accumulators, 2 weights).
constexpr int64_t kAvxOutputs = 2;

AvxRow avx2_row(int64_t count) { return count == 1 ? gate_row_avx2<1> : gate_row_avx2<2>; }

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
  const at::Tensor wt = pack_gate_weight(weight);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* xp = x.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
#ifdef CVPODS_HAVE_AVX2_PATH
  const bool use_avx2 = simd && cpu_has_avx2();
#else
  const bool use_avx2 = false;
  (void)simd;
#endif
  const std::vector<float> zeros(g.c, 0.f);
  at::parallel_for(0, g.n * g.h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.h, y = row % g.h;
#ifdef CVPODS_HAVE_AVX2_PATH
      if (use_avx2) {
        for (int64_t first = 0; first < g.cout; first += kAvxOutputs) {
          avx2_row(std::min(kAvxOutputs, g.cout - first))(xp, wp, bp, op, g, n, y, first,
                                                          zeros.data());
        }
        continue;
      }
#endif
      for (int64_t first = 0; first < g.cout; first += kMaxOutputs) {
        gate_row_portable(xp, wp, bp, op, g, n, y, first, std::min(kMaxOutputs, g.cout - first));
      }
    }
  });
  return out;
}

}  // namespace cvpods
