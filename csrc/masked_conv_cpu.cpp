// CPU masked convolution.
//
// Design: the input is read in channels-last memory, so the C channels of one pixel are one
// contiguous row. Active positions are processed in blocks of at most kBlockBytes of im2col
// columns (a block of rows [B, k*k*C] that stays in the last-level cache); each block is multiplied
// by the packed weight [Cout, k*k*C] with one dense GEMM (oneDNN's JIT 1x1 convolution with a
// pre-reordered weight for float32, which beats the BLAS sgemm on this shape; ATen's mm otherwise). The result rows
// are scattered into the channels-last output with the bias added and, in the same pass, the
// GroupNorm sums of each (image, group) accumulated; a second pass over the active rows applies
// the normalization and the ReLU in place.
//
// Threads work on whole blocks (gather -> GEMM -> scatter in one parallel region, the GEMM itself
// single-threaded), taking the next block from an atomic counter, rather than sharing each step:
// two synchronizations per call instead of three per block, and no thread idles while another
// one is descheduled, which matters when the cores are shared with other processes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/OpMathType.h>
#include <ATen/Context.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "masked_conv.h"

namespace cvpods {
namespace {

// Budget for one block of gathered columns (one per thread): large enough for the GEMM to run at
// full speed, small enough for every thread's block and the packed weight to share the last-level
// cache (32 MB L3 on the benchmark machine).
constexpr int64_t kBlockBytes = 4 << 20;
constexpr int64_t kMinBlockRows = 128;
constexpr int64_t kBlocksPerThread = 4;
constexpr int64_t kMaxBlockRows = 4096;

struct Geometry {
  int64_t n, c, h, w, kernel, pad;
};

template <typename scalar_t>
void gather_block(const scalar_t* x, const int64_t* active, int64_t rows, scalar_t* col,
                  const Geometry& g) {
  const int64_t hw = g.h * g.w;
  const int64_t row_len = g.kernel * g.kernel * g.c;
  {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = active[r];
      const int64_t n = pos / hw;
      const int64_t y = (pos % hw) / g.w;
      const int64_t xx = pos % g.w;
      scalar_t* dst = col + r * row_len;
      const int64_t x0 = xx - g.pad;
      for (int64_t ky = 0; ky < g.kernel; ++ky) {
        const int64_t yy = y + ky - g.pad;
        if (yy < 0 || yy >= g.h) {
          std::fill_n(dst, g.kernel * g.c, scalar_t(0));
          dst += g.kernel * g.c;
          continue;
        }
        const scalar_t* src_row = x + ((n * g.h + yy) * g.w) * g.c;
        if (x0 >= 0 && x0 + g.kernel <= g.w) {  // whole kernel row inside: one contiguous copy
          std::memcpy(dst, src_row + x0 * g.c, sizeof(scalar_t) * g.kernel * g.c);
          dst += g.kernel * g.c;
          continue;
        }
        for (int64_t kx = 0; kx < g.kernel; ++kx, dst += g.c) {
          const int64_t x2 = x0 + kx;
          if (x2 < 0 || x2 >= g.w) {
            std::fill_n(dst, g.c, scalar_t(0));
          } else {
            std::memcpy(dst, src_row + x2 * g.c, sizeof(scalar_t) * g.c);
          }
        }
      }
    }
  }
}

// The GEMM of a block of columns by the packed weight. For float32 with oneDNN available it is a
// 1x1 convolution of the block seen as a channels-last [1, K, 1, rows] image, with the weight
// reordered once per call into oneDNN's blocked layout (mkldnn::_reorder_convolution_weight and
// mkldnn::_convolution_pointwise, the ops torch.compile uses; measured ~20% faster than letting
// every block reorder the weight again); otherwise ATen's mm.
class BlockGemm {
 public:
  BlockGemm(const at::Tensor& wpack, int64_t rows_hint) : wpack_(wpack) {
    if (wpack.scalar_type() != at::kFloat || !at::hasMKLDNN()) return;
    auto reorder = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_convolution_weight", ""});
    conv_ = c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", ""});
    const int64_t cout = wpack.size(0), k = wpack.size(1);
    weight_1x1_ = wpack.view({cout, k, 1, 1});
    if (!reorder.has_value() || !conv_.has_value()) return;
    torch::jit::Stack stack{weight_1x1_, std::vector<int64_t>{0, 0}, std::vector<int64_t>{1, 1},
                            std::vector<int64_t>{1, 1}, int64_t{1},
                            std::vector<int64_t>{1, k, 1, rows_hint}};
    reorder->callBoxed(&stack);
    packed_ = stack[0].toTensor();
  }

  // [rows, K] -> [rows, Cout] contiguous.
  at::Tensor operator()(const at::Tensor& col) const {
    const int64_t rows = col.size(0), k = col.size(1), cout = wpack_.size(0);
    if (!weight_1x1_.defined()) return at::mm(col, wpack_.t());
    const at::Tensor image = col.view({1, 1, rows, k}).permute({0, 3, 1, 2});
    at::Tensor out;
    if (packed_.defined()) {
      torch::jit::Stack stack{image, packed_, c10::IValue(), std::vector<int64_t>{0, 0},
                              std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}, int64_t{1},
                              std::string("none"), c10::List<std::optional<at::Scalar>>(),
                              c10::IValue()};
      conv_->callBoxed(&stack);
      out = stack[0].toTensor();
    } else {
      out = at::conv2d(image, weight_1x1_);
    }
    return out.permute({0, 2, 3, 1}).reshape({rows, cout}).contiguous();
  }

 private:
  at::Tensor wpack_;
  at::Tensor weight_1x1_;
  at::Tensor packed_;
  std::optional<c10::OperatorHandle> conv_;
};

// Accumulates (sum, sum of squares) per (image, group) of rows in `partial`
// ([threads][images][groups][2]) and optionally adds the bias / applies ReLU first.
template <typename scalar_t>
void scatter_block(const scalar_t* res, const int64_t* active, int64_t rows, scalar_t* out,
                   int64_t cout, int64_t hw, const scalar_t* bias, bool relu_now, int64_t groups,
                   double* mine) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t group_size = groups > 0 ? cout / groups : 0;
  {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = active[r];
      const scalar_t* src = res + r * cout;
      scalar_t* dst = out + pos * cout;
      for (int64_t c = 0; c < cout; ++c) {
        acc_t v = static_cast<acc_t>(src[c]);
        if (bias != nullptr) v += static_cast<acc_t>(bias[c]);
        if (relu_now) v = v > acc_t(0) ? v : acc_t(0);
        dst[c] = static_cast<scalar_t>(v);
      }
      if (mine == nullptr) continue;
      double* acc = mine + (pos / hw) * groups * 2;
      for (int64_t g = 0; g < groups; ++g) {
        acc_t s = 0, ss = 0;
        const scalar_t* p = dst + g * group_size;
        for (int64_t c = 0; c < group_size; ++c) {
          const acc_t v = static_cast<acc_t>(p[c]);
          s += v;
          ss += v * v;
        }
        acc[2 * g] += s;
        acc[2 * g + 1] += ss;
      }
    }
  }
}

// Per (image, channel) scale and shift of the GroupNorm affine from the reduced sums.
std::vector<double> gn_affine(const std::vector<double>& partial, int64_t threads, int64_t images,
                              int64_t groups, const std::vector<int64_t>& counts, int64_t cout,
                              const Epilogue& post) {
  const int64_t group_size = cout / groups;
  at::Tensor w = post.weight.has_value() ? post.weight->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor b = post.bias.has_value() ? post.bias->to(at::kDouble).contiguous() : at::Tensor();
  const double* wp = w.defined() ? w.data_ptr<double>() : nullptr;
  const double* bp = b.defined() ? b.data_ptr<double>() : nullptr;
  std::vector<double> affine(images * cout * 2, 0.0);
  for (int64_t n = 0; n < images; ++n) {
    const double count = static_cast<double>(counts[n] * group_size);
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0, ss = 0;
      for (int64_t t = 0; t < threads; ++t) {
        s += partial[((t * images + n) * groups + g) * 2];
        ss += partial[((t * images + n) * groups + g) * 2 + 1];
      }
      const double mean = count > 0 ? s / count : 0.0;
      const double var = count > 0 ? std::max(ss / count - mean * mean, 0.0) : 0.0;
      const double rstd = 1.0 / std::sqrt(var + post.eps);
      for (int64_t c = g * group_size; c < (g + 1) * group_size; ++c) {
        const double scale = rstd * (wp ? wp[c] : 1.0);
        affine[(n * cout + c) * 2] = scale;
        affine[(n * cout + c) * 2 + 1] = (bp ? bp[c] : 0.0) - mean * scale;
      }
    }
  }
  return affine;
}

// y[pos] = relu?(y[pos] * scale[n] + shift[n]) for the active rows.
template <typename scalar_t>
void normalize_rows(scalar_t* y, const int64_t* active, int64_t rows, int64_t cout, int64_t hw,
                    const std::vector<double>& affine64, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> affine(affine64.begin(), affine64.end());
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t pos = active[r];
      const acc_t* a = affine.data() + (pos / hw) * cout * 2;
      scalar_t* p = y + pos * cout;
      for (int64_t c = 0; c < cout; ++c) {
        acc_t v = static_cast<acc_t>(p[c]) * a[2 * c] + a[2 * c + 1];
        if (relu) v = v > acc_t(0) ? v : acc_t(0);
        p[c] = static_cast<scalar_t>(v);
      }
    }
  });
}

std::vector<int64_t> counts_per_image(const at::Tensor& active, int64_t images, int64_t hw) {
  std::vector<int64_t> counts(images, 0);
  const int64_t* a = active.data_ptr<int64_t>();
  for (int64_t i = 0, p = active.numel(); i < p; ++i) counts[a[i] / hw] += 1;
  return counts;
}

template <typename scalar_t>
void finish_gn(at::Tensor& out, const at::Tensor& active, const std::vector<double>& partial,
               int64_t threads, const Epilogue& post) {
  const int64_t images = out.size(0), cout = out.size(1), hw = out.size(2) * out.size(3);
  const auto counts = counts_per_image(active, images, hw);
  const auto affine = gn_affine(partial, threads, images, post.num_groups, counts, cout, post);
  normalize_rows(out.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), active.numel(), cout, hw,
                 affine, post.relu);
}

}  // namespace

at::Tensor gather_columns_cpu(const at::Tensor& x_nhwc, const at::Tensor& active, int64_t kernel,
                              int64_t padding) {
  const Geometry g{x_nhwc.size(0), x_nhwc.size(1), x_nhwc.size(2), x_nhwc.size(3), kernel, padding};
  at::Tensor col = at::empty({active.numel(), kernel * kernel * g.c}, x_nhwc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_nhwc.scalar_type(), "gather_columns",
                                  [&] {
    at::parallel_for(0, active.numel(), 16, [&](int64_t begin, int64_t end) {
      gather_block(x_nhwc.data_ptr<scalar_t>(), active.data_ptr<int64_t>() + begin, end - begin,
                   col.data_ptr<scalar_t>() + begin * col.size(1), g);
    });
  });
  return col;
}

void scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& active, at::Tensor& out_nhwc) {
  const at::Tensor rows_typed = rows.to(out_nhwc.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out_nhwc.scalar_type(), "scatter_rows", [&] {
        const int64_t cout = out_nhwc.size(1);
        at::parallel_for(0, active.numel(), 64, [&](int64_t begin, int64_t end) {
          scatter_block<scalar_t>(rows_typed.data_ptr<scalar_t>() + begin * cout,
                                  active.data_ptr<int64_t>() + begin, end - begin,
                                  out_nhwc.data_ptr<scalar_t>(), cout,
                                  out_nhwc.size(2) * out_nhwc.size(3), nullptr, false, 0, nullptr);
        });
      });
}

at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t padding,
                             const Epilogue& post) {
  const Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(2), padding};
  const int64_t cout = weight.size(0);
  const int64_t hw = g.h * g.w;
  at::Tensor out =
      at::empty({g.n, cout, g.h, g.w}, x.options(), at::MemoryFormat::ChannelsLast).zero_();
  const at::Tensor active = active_positions(mask);
  const int64_t total = active.numel();
  if (total == 0 || out.numel() == 0) return out;

  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wpack = pack_weight(weight);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t row_len = wpack.size(1);
  const int64_t threads = at::get_num_threads();
  // Equal blocks of at most kBlockBytes of columns each.
  const int64_t max_rows = std::clamp<int64_t>(kBlockBytes / (row_len * x.element_size()),
                                               kMinBlockRows, kMaxBlockRows);
  // Several blocks per thread when there are enough rows, so that the dynamic assignment below
  // can balance threads slowed down by other processes.
  const int64_t blocks = std::max<int64_t>(
      {(total + max_rows - 1) / max_rows, std::min(kBlocksPerThread * threads, total / kMinBlockRows),
       int64_t{1}});
  const int64_t block_rows = (total + blocks - 1) / blocks;

  const int64_t groups = post.num_groups;
  std::vector<double> partial(groups > 0 ? threads * g.n * groups * 2 : 0, 0.0);
  const int64_t* act = active.data_ptr<int64_t>();
  const BlockGemm gemm(wpack, block_rows);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv2d_cpu",
                                  [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bp = bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    // One parallel region: each thread gathers, multiplies (single-threaded GEMM: nested
    // parallelism is off inside the region) and scatters its own blocks.
    std::atomic<int64_t> next_block{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      at::Tensor col = at::empty({block_rows, row_len}, x.options());
      double* mine =
          groups > 0 ? partial.data() + at::get_thread_num() * g.n * groups * 2 : nullptr;
      for (int64_t b = next_block++; b < blocks; b = next_block++) {
        const int64_t start = b * block_rows;
        const int64_t rows = std::min(block_rows, total - start);
        if (rows <= 0) break;
        at::Tensor block = col.narrow(0, 0, rows);
        gather_block(xp, act + start, rows, block.data_ptr<scalar_t>(), g);
        const at::Tensor res = gemm(block);
        scatter_block<scalar_t>(res.data_ptr<scalar_t>(), act + start, rows, op, cout, hw, bp,
                                post.relu && groups == 0, groups, mine);
      }
    });
    if (groups > 0) finish_gn<scalar_t>(out, active, partial, threads, post);
  });
  return out;
}

void masked_epilogue_cpu(at::Tensor& y, const at::Tensor& mask, const Epilogue& post) {
  const int64_t images = y.size(0), cout = y.size(1), hw = y.size(2) * y.size(3);
  const at::Tensor flags = (mask.scalar_type() == at::kBool ? mask : mask.gt(0)).contiguous();
  const at::Tensor active = active_positions(flags);
  const int64_t threads = at::get_num_threads();
  const int64_t groups = post.num_groups;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "masked_epilogue_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* yp = y.data_ptr<scalar_t>();
    const bool* fp = flags.data_ptr<bool>();
    std::vector<double> affine;
    if (groups > 0) {
      std::vector<double> partial(threads * images * groups * 2, 0.0);
      const int64_t group_size = cout / groups;
      const int64_t* act = active.data_ptr<int64_t>();
      at::parallel_for(0, active.numel(), 64, [&](int64_t begin, int64_t end) {
        double* mine = partial.data() + at::get_thread_num() * images * groups * 2;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t pos = act[r];
          const scalar_t* row = yp + pos * cout;
          double* acc = mine + (pos / hw) * groups * 2;
          for (int64_t gi = 0; gi < groups; ++gi) {
            acc_t s = 0, ss = 0;
            for (int64_t c = gi * group_size; c < (gi + 1) * group_size; ++c) {
              const acc_t v = static_cast<acc_t>(row[c]);
              s += v;
              ss += v * v;
            }
            acc[2 * gi] += s;
            acc[2 * gi + 1] += ss;
          }
        }
      });
      affine = gn_affine(partial, threads, images, groups, counts_per_image(active, images, hw),
                         cout, post);
    }
    std::vector<acc_t> aff(affine.begin(), affine.end());
    const bool relu = post.relu;
    // One pass over every position: zero the inactive rows, normalize / rectify the active ones.
    at::parallel_for(0, images * hw, 256, [&](int64_t begin, int64_t end) {
      for (int64_t pos = begin; pos < end; ++pos) {
        scalar_t* row = yp + pos * cout;
        if (!fp[pos]) {
          std::fill_n(row, cout, scalar_t(0));
          continue;
        }
        if (groups > 0) {
          const acc_t* a = aff.data() + (pos / hw) * cout * 2;
          for (int64_t c = 0; c < cout; ++c) {
            acc_t v = static_cast<acc_t>(row[c]) * a[2 * c] + a[2 * c + 1];
            if (relu) v = v > acc_t(0) ? v : acc_t(0);
            row[c] = static_cast<scalar_t>(v);
          }
        } else if (relu) {
          for (int64_t c = 0; c < cout; ++c) {
            if (!(static_cast<acc_t>(row[c]) > acc_t(0))) row[c] = scalar_t(0);
          }
        }
      }
    });
  });
}

}  // namespace cvpods
