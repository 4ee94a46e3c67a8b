// The weighted neighbour sum of the dynamic head's scale fusion, at inference, in one pass:
//
//   out = output_weight * x + scale_weight * (resize(finer) + resize(coarser))
//
// where resize is bilinear interpolation with align_corners=True to x's size, and finer /
// coarser (the gated units of the neighbouring pyramid levels) may be absent. The library path
// (two interpolations, an add, a multiply and a multiply-add) makes six passes over 256-channel
// maps and allocates three of them; this one reads each input once and writes the output once.
//
// A source may come with its gate [N, G, H', W'] (a gated_depthwise output written only where the
// gate is open): a source pixel where every gate map is 0 is then taken as 0 and never read.
//
// Layouts: x, finer, coarser and out are channels-last [N, H, W, C] (C contiguous per pixel).
// Interpolation weights follow ATen's upsample_bilinear2d(align_corners=True): source index
// src = dst * (in - 1) / (out - 1), computed in the accumulation type.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CVPODS_HAVE_AVX2_FUSION 1
#endif

#include "masked_conv.h"

namespace cvpods {
namespace {

// One output coordinate's two source indices and the weight of the second (acc_t: the
// accumulation type, float for float32 / float16 / bfloat16 maps, double for float64).
template <typename acc_t>
struct Lerp {
  int64_t i0, i1;
  acc_t l1;
};

template <typename acc_t>
std::vector<Lerp<acc_t>> lerps(int64_t out_size, int64_t in_size) {
  std::vector<Lerp<acc_t>> result(out_size);
  const acc_t scale =
      out_size > 1 ? static_cast<acc_t>(in_size - 1) / static_cast<acc_t>(out_size - 1) : acc_t(0);
  for (int64_t d = 0; d < out_size; ++d) {
    const acc_t src = scale * static_cast<acc_t>(d);
    const int64_t i0 = std::min(static_cast<int64_t>(src), in_size - 1);
    const int64_t i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
    result[d] = Lerp<acc_t>{i0, i1, src - static_cast<acc_t>(i0)};
  }
  return result;
}

// A source map and its per-row / per-column interpolation tables for the output size.
template <typename scalar_t>
struct Source {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* data = nullptr;  // nullptr: absent
  const float* gate = nullptr;     // [N, G, h, w] float32 contiguous, or nullptr: all open
  int64_t gate_maps = 0;
  int64_t h = 0, w = 0;
  std::vector<Lerp<acc_t>> rows, cols;

  // Whether pixel (i, j) of image n is computed (some gate map is non-zero there).
  bool open(int64_t n, int64_t i, int64_t j) const {
    if (gate == nullptr) return true;
    const float* g = gate + (n * gate_maps * h + i) * w + j;
    for (int64_t m = 0; m < gate_maps; ++m) {
      if (g[m * h * w] != 0.f) return true;
    }
    return false;
  }
};

template <typename scalar_t>
Source<scalar_t> make_source(const at::Tensor& t, const at::Tensor& gate, int64_t h, int64_t w) {
  Source<scalar_t> s;
  if (!t.defined()) return s;
  s.data = t.data_ptr<scalar_t>();
  if (gate.defined()) {
    s.gate = gate.data_ptr<float>();
    s.gate_maps = gate.size(1);
  }
  s.h = t.size(2);
  s.w = t.size(3);
  s.rows = lerps<typename Source<scalar_t>::acc_t>(h, s.h);
  s.cols = lerps<typename Source<scalar_t>::acc_t>(w, s.w);
  return s;
}

// The four source rows (pixels) and weights of one output position; weights include the scale.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
int corners(const Source<scalar_t>& s, int64_t n, int64_t y, int64_t xx, int64_t c, acc_t scale,
            const scalar_t** ptr, acc_t* weight) {
  if (s.data == nullptr) return 0;
  const Lerp<acc_t>& r = s.rows[y];
  const Lerp<acc_t>& q = s.cols[xx];
  const scalar_t* base = s.data + n * s.h * s.w * c;
  const int64_t ri[4] = {r.i0, r.i0, r.i1, r.i1}, ci[4] = {q.i0, q.i1, q.i0, q.i1};
  const acc_t wr[4] = {1 - r.l1, 1 - r.l1, r.l1, r.l1}, wc[4] = {1 - q.l1, q.l1, 1 - q.l1, q.l1};
  int terms = 0;
  for (int k = 0; k < 4; ++k) {
    if (!s.open(n, ri[k], ci[k])) continue;  // a closed pixel is 0: skip it, do not read it
    ptr[terms] = base + (ri[k] * s.w + ci[k]) * c;
    weight[terms] = scale * wr[k] * wc[k];
    ++terms;
  }
  return terms;
}

#ifdef CVPODS_HAVE_AVX2_FUSION
// float32, C a multiple of 8: eight channels per vector.
__attribute__((target("avx2,fma"))) void fuse_pixel_avx2(const float* x, float ow,
                                                         const float* const* ptr,
                                                         const float* weight, int terms, int64_t c,
                                                         float* out) {
  __m256 w[8];
  for (int t = 0; t < terms; ++t) w[t] = _mm256_set1_ps(weight[t]);
  const __m256 o = _mm256_set1_ps(ow);
  for (int64_t ch = 0; ch < c; ch += 8) {
    __m256 v = _mm256_mul_ps(o, _mm256_loadu_ps(x + ch));
    for (int t = 0; t < terms; ++t) v = _mm256_fmadd_ps(w[t], _mm256_loadu_ps(ptr[t] + ch), v);
    _mm256_storeu_ps(out + ch, v);
  }
}

#endif

bool has_avx2() {
#ifdef CVPODS_HAVE_AVX2_FUSION
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// One output pixel: out = ow * x + sum of the terms' weight * source row (SIMD for float32 when
// `simd`, i.e. the CPU has AVX2 + FMA and C is a multiple of 8).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void fuse_pixel(const scalar_t* x, acc_t ow, const scalar_t* const* ptr, const acc_t* weight,
                int terms, int64_t c, scalar_t* out, bool simd) {
#ifdef CVPODS_HAVE_AVX2_FUSION
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (simd) return fuse_pixel_avx2(x, ow, ptr, weight, terms, c, out);
  }
#endif
  for (int64_t ch = 0; ch < c; ++ch) {
    acc_t v = ow * static_cast<acc_t>(x[ch]);
    for (int t = 0; t < terms; ++t) v += weight[t] * static_cast<acc_t>(ptr[t][ch]);
    out[ch] = static_cast<scalar_t>(v);
  }
}

void check_gate(const std::optional<at::Tensor>& s, const std::optional<at::Tensor>& gate,
                const char* name) {
  if (!gate.has_value()) return;
  TORCH_CHECK(s.has_value(), "fuse_neighbours: ", name, "_gate given without ", name);
  TORCH_CHECK(gate->dim() == 4 && gate->size(0) == s->size(0) && gate->size(1) >= 1 &&
                  gate->size(2) == s->size(2) && gate->size(3) == s->size(3),
              "fuse_neighbours: ", name, "_gate must be [N, G, H', W'] matching ", name, " ",
              s->sizes(), ", got ", gate->sizes());
  TORCH_CHECK(gate->device() == s->device(), "fuse_neighbours: ", name,
              "_gate must be on ", name, "'s device");
}

void check_source(const at::Tensor& x, const std::optional<at::Tensor>& s, const char* name) {
  if (!s.has_value()) return;
  TORCH_CHECK(s->dim() == 4 && s->size(0) == x.size(0) && s->size(1) == x.size(1),
              "fuse_neighbours: ", name, " must be [N, C, H', W'] with N=", x.size(0),
              " and C=", x.size(1), " as x, got ", s->sizes());
  TORCH_CHECK(s->size(2) > 0 && s->size(3) > 0, "fuse_neighbours: ", name,
              " must not be empty, got ", s->sizes());
  TORCH_CHECK(s->scalar_type() == x.scalar_type() && s->device() == x.device(),
              "fuse_neighbours: ", name, " must have x's dtype and device (", x.scalar_type(),
              ", ", x.device(), "), got ", s->scalar_type(), ", ", s->device());
}

double scalar_of(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1, "fuse_neighbours: ", name, " must have one element, got ",
              t.sizes());
  return t.item<double>();
}

}  // namespace

void check_fuse_neighbours_inputs(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                                  const std::optional<at::Tensor>& coarser,
                                  const std::optional<at::Tensor>& finer_gate,
                                  const std::optional<at::Tensor>& coarser_gate) {
  TORCH_CHECK(x.dim() == 4, "fuse_neighbours: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "fuse_neighbours: x must be a floating-point tensor, got ", x.scalar_type());
  check_source(x, finer, "finer");
  check_source(x, coarser, "coarser");
  check_gate(finer, finer_gate, "finer");
  check_gate(coarser, coarser_gate, "coarser");
}

at::Tensor fuse_neighbours_library(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                                   const std::optional<at::Tensor>& coarser,
                                   const at::Tensor& scale_weight,
                                   const at::Tensor& output_weight,
                                   const std::optional<at::Tensor>& finer_gate,
                                   const std::optional<at::Tensor>& coarser_gate) {
  check_fuse_neighbours_inputs(x, finer, coarser, finer_gate, coarser_gate);
  at::Tensor out = x * output_weight;
  const std::vector<int64_t> size{x.size(2), x.size(3)};
  for (const auto& [s, gate] : {std::pair{&finer, &finer_gate}, std::pair{&coarser, &coarser_gate}}) {
    if (!s->has_value()) continue;
    at::Tensor source = **s;
    if (gate->has_value()) {  // closed pixels are 0, whatever the source holds there
      source = at::where((**gate != 0).any(1, /*keepdim=*/true), source, at::zeros({}, source.options()));
    }
    out = out + at::upsample_bilinear2d(source, size, /*align_corners=*/true) * scale_weight;
  }
  return out.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor fuse_neighbours_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& finer,
                               const std::optional<at::Tensor>& coarser,
                               const at::Tensor& scale_weight, const at::Tensor& output_weight,
                               const std::optional<at::Tensor>& finer_gate,
                               const std::optional<at::Tensor>& coarser_gate) {
  check_fuse_neighbours_inputs(x_in, finer, coarser, finer_gate, coarser_gate);
  const double sw = scalar_of(scale_weight, "scale_weight");
  const double ow = scalar_of(output_weight, "output_weight");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl);
  const at::Tensor f = finer.has_value() ? finer->contiguous(cl) : at::Tensor();
  const at::Tensor k = coarser.has_value() ? coarser->contiguous(cl) : at::Tensor();
  const auto gate_of = [](const std::optional<at::Tensor>& g) {
    return g.has_value() ? g->to(at::kFloat).contiguous() : at::Tensor();
  };
  const at::Tensor fg = gate_of(finer_gate), kg = gate_of(coarser_gate);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor out = pooled_empty({n, c, h, w}, x.options(), cl);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fuse_neighbours",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Source<scalar_t> fs = make_source<scalar_t>(f, fg, h, w);
    const Source<scalar_t> ks = make_source<scalar_t>(k, kg, h, w);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const bool simd = std::is_same_v<scalar_t, float> && c % 8 == 0 && has_avx2();
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      const scalar_t* ptr[8];
      acc_t weight[8];
      const acc_t scale = static_cast<acc_t>(sw), own = static_cast<acc_t>(ow);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t image = row / h, y = row % h;
        for (int64_t xx = 0; xx < w; ++xx) {
          int terms = corners(fs, image, y, xx, c, scale, ptr, weight);
          terms += corners(ks, image, y, xx, c, scale, ptr + terms, weight + terms);
          const int64_t offset = (row * w + xx) * c;
          fuse_pixel(xp + offset, own, ptr, weight, terms, c, op + offset, simd);
        }
      }
    });
  });
  return out;
}

}  // namespace cvpods
