// CPU masked convolution.
//
// Design: the input is read in channels-last memory, so the C channels of one pixel are one
// contiguous row (an input in another layout is first copied, at the pixels the active positions
// read only, into compact rows). Active positions are processed in blocks of at most kBlockBytes of
// im2col columns (a block of rows [B, k*k*C] that stays in the last-level cache); each block is
// multiplied by the packed weight [Cout, k*k*C] (packed once per weight tensor and version) with
// one dense GEMM. The result rows are scattered into the channels-last output with the bias added
// and, in the same pass, the GroupNorm sums of each (image, group) accumulated; a second pass over
// the active rows applies the normalization and the ReLU in place. An optional gated residual,
// relu(residual + gate * y), is applied in one last pass that also writes relu(residual) at the
// inactive positions (a dynamic depth cell's whole output).
//
// Threads work on whole blocks (gather -> GEMM -> scatter in one parallel region, the GEMM itself
// single-threaded), taking the next block from an atomic counter, rather than sharing each step:
// two synchronizations per call instead of three per block, and no thread idles while another
// one is descheduled, which matters when the cores are shared with other processes. With too few
// active rows for that (fewer than kBlocksPerThread blocks per thread: the coarse pyramid levels,
// where one block would leave the other threads idle), the rows are gathered in parallel, the
// GEMM is threaded by the BLAS itself and the scatter is parallel again.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/Context.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
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

// Source rows of the gather: the channels-last input itself (row of pixel p = p), or a compact
// copy of the pixels the convolution reads, with `row_of[p]` the row of pixel p.
template <typename scalar_t>
struct SourceRows {
  const scalar_t* data;
  const int32_t* row_of;  // nullptr: rows are the pixels of the channels-last input
};

template <typename scalar_t>
void gather_block(const SourceRows<scalar_t>& src, const int64_t* active, int64_t rows,
                  scalar_t* col, const Geometry& g) {
  const int64_t hw = g.h * g.w;
  const int64_t row_len = g.kernel * g.kernel * g.c;
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
      const int64_t line = (n * g.h + yy) * g.w;  // first pixel of the source image row
      if (src.row_of == nullptr && x0 >= 0 && x0 + g.kernel <= g.w) {
        // The whole kernel row is inside and contiguous: one copy.
        std::memcpy(dst, src.data + (line + x0) * g.c, sizeof(scalar_t) * g.kernel * g.c);
        dst += g.kernel * g.c;
        continue;
      }
      for (int64_t kx = 0; kx < g.kernel; ++kx, dst += g.c) {
        const int64_t x2 = x0 + kx;
        if (x2 < 0 || x2 >= g.w) {
          std::fill_n(dst, g.c, scalar_t(0));
          continue;
        }
        const int64_t row = src.row_of == nullptr ? line + x2 : src.row_of[line + x2];
        std::memcpy(dst, src.data + row * g.c, sizeof(scalar_t) * g.c);
      }
    }
  }
}

// Copies the pixels `needed` ([P] flat positions) of an input of any strides into compact rows
// [P, C], and fills `row_of` ([N*H*W], -1 elsewhere). Pixels are taken in blocks, channel by
// channel, so that each channel plane is read at nearby positions and each block of rows stays
// in cache while it is written column by column.
template <typename scalar_t>
void compact_rows(const at::Tensor& x, const at::Tensor& needed, at::Tensor& rows,
                  at::Tensor& row_of) {
  const int64_t c = x.size(1), h = x.size(2), w = x.size(3), hw = h * w;
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const int64_t count = needed.numel();
  const int64_t* pos = needed.data_ptr<int64_t>();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* out = rows.data_ptr<scalar_t>();
  int32_t* map = row_of.data_ptr<int32_t>();
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, (count + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    int64_t offset[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * kBlock, last = std::min(count, first + kBlock);
      for (int64_t i = first; i < last; ++i) {
        const int64_t p = pos[i], n = p / hw, y = (p % hw) / w, xx = p % w;
        offset[i - first] = n * sn + y * sh + xx * sw;
        map[p] = static_cast<int32_t>(i);
      }
      for (int64_t ch = 0; ch < c; ++ch) {
        const scalar_t* plane = xp + ch * sc;
        for (int64_t i = first; i < last; ++i) out[i * c + ch] = plane[offset[i - first]];
      }
    }
  });
}

// The weight packed for the GEMM of gathered columns: [Cout, k*k*C].
struct PackedWeight {
  at::Tensor wpack;
};

PackedWeight make_packed_weight(const at::Tensor& weight) { return PackedWeight{pack_weight(weight)}; }

// Packed weights, remembered per weight tensor so that repeated inference calls do not pack (and
// reorder) the same weight again. An entry is valid while its tensor is alive, at the same
// storage, with the same version counter: in-place updates (optimizer steps, load_state_dict's
// copy_) bump the version, `.to()` / `.cuda()` make new tensors, so a stale entry is never used.
class PackedWeightCache {
 public:
  PackedWeight get(const at::Tensor& weight) {
    // Inference tensors have no version counter: pack them on every call.
    if (weight.is_inference()) return make_packed_weight(weight);
    const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
    const void* data = weight.data_ptr();
    const int64_t version = weight._version();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const Entry& e : entries_) {
        if (e.data == data && e.version == version && e.dtype == weight.scalar_type() &&
            e.sizes == weight.sizes().vec() && e.impl.lock().get() == impl) {
          return e.packed;
        }
      }
    }
    PackedWeight packed = make_packed_weight(weight);
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(entries_, [&](const Entry& e) { return e.impl.expired() || e.data == data; });
    if (entries_.size() >= kMaxEntries) entries_.erase(entries_.begin());
    entries_.push_back(Entry{WeakImpl(weight.getIntrusivePtr()), data, version, weight.scalar_type(),
                             weight.sizes().vec(), packed});
    return packed;
  }

 private:
  static constexpr size_t kMaxEntries = 1024;
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Entry {
    WeakImpl impl;
    const void* data;
    int64_t version;
    at::ScalarType dtype;
    std::vector<int64_t> sizes;
    PackedWeight packed;
  };
  std::mutex mutex_;
  std::vector<Entry> entries_;
};

PackedWeightCache& packed_weight_cache() {
  static PackedWeightCache cache;
  return cache;
}

// The GEMM of a block of columns by the packed weight (ATen's mm: MKL's sgemm for float32).
// oneDNN's 1x1 convolution on the block, with the weight reordered ahead of time, was measured too:
// no faster per block, and its speed depends on the block size the weight was reordered for, which
// a weight cache cannot know (2x slower GEMMs in the dynamic head with a fixed size).
class BlockGemm {
 public:
  explicit BlockGemm(PackedWeight packed) : packed_(std::move(packed)) {}

  // [rows, K] -> [rows, Cout] contiguous.
  at::Tensor operator()(const at::Tensor& col) const { return at::mm(col, packed_.wpack.t()); }

 private:
  PackedWeight packed_;
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
      gather_block(SourceRows<scalar_t>{x_nhwc.data_ptr<scalar_t>(), nullptr},
                   active.data_ptr<int64_t>() + begin, end - begin,
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
                             const Epilogue& post, const GatedResidual& residual,
                             bool zero_inactive) {
  const Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(2), padding};
  const int64_t cout = weight.size(0);
  const int64_t hw = g.h * g.w;
  const at::Tensor flags = (mask.scalar_type() == at::kBool ? mask : mask.gt(0)).contiguous();
  at::Tensor out = pooled_empty({g.n, cout, g.h, g.w}, x.options(), at::MemoryFormat::ChannelsLast);
  const at::Tensor active = active_positions(flags);
  const int64_t total = active.numel();
  // Inactive positions: relu(residual) (written by the residual pass below), zeros, or (when the
  // caller reads only active positions) nothing: untouched memory costs no page faults either.
  if (!residual.defined() && zero_inactive) {
    if (total == 0) return out.zero_();
    fill_inactive_rows_cpu(out, flags);
  }
  if (total == 0 || out.numel() == 0) {
    if (residual.defined()) apply_gated_residual_cpu(out, flags, residual);
    return out;
  }

  // Where the gather reads: the channels-last input itself, or a compact copy of the pixels the
  // active positions read (their k x k neighbourhoods), so that other layouts are never converted
  // whole.
  at::Tensor compact, row_of;
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!channels_last) {
    const at::Tensor needed =
        g.kernel == 1 ? active
                      : active_positions(at::max_pool2d(flags.unsqueeze(1).to(x.scalar_type()),
                                                        {g.kernel, g.kernel}, {1, 1},
                                                        {g.pad, g.pad})
                                             .squeeze(1));
    compact = at::empty({needed.numel(), g.c}, x.options());
    row_of = at::empty({g.n * hw}, x.options().dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "compact_rows",
                                    [&] { compact_rows<scalar_t>(x, needed, compact, row_of); });
  }

  const PackedWeight packed = packed_weight_cache().get(weight);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t row_len = packed.wpack.size(1);
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
  const BlockGemm gemm(packed);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv2d_cpu",
                                  [&] {
    const SourceRows<scalar_t> src{
        channels_last ? x.data_ptr<scalar_t>() : compact.data_ptr<scalar_t>(),
        channels_last ? nullptr : row_of.data_ptr<int32_t>()};
    const scalar_t* bp = bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    // The calling thread's GroupNorm partial sums (nullptr without GroupNorm).
    const auto my_partial = [&]() -> double* {
      return groups > 0 ? partial.data() + at::get_thread_num() * g.n * groups * 2 : nullptr;
    };
    if (threads > 1 && blocks < kBlocksPerThread * threads) {
      // Too few rows for every thread to get whole blocks (the small pyramid levels): gather all
      // rows, then one GEMM that the BLAS spreads over the threads itself (it splits the output
      // columns, so each thread also reads only its part of the weight), then scatter.
      at::Tensor col = at::empty({total, row_len}, x.options());
      scalar_t* cp = col.data_ptr<scalar_t>();
      at::parallel_for(0, total, 16, [&](int64_t begin, int64_t end) {
        gather_block(src, act + begin, end - begin, cp + begin * row_len, g);
      });
      const at::Tensor res = gemm(col);
      const scalar_t* rp = res.data_ptr<scalar_t>();
      at::parallel_for(0, total, 16, [&](int64_t begin, int64_t end) {
        scatter_block<scalar_t>(rp + begin * cout, act + begin, end - begin, op, cout, hw, bp,
                                post.relu && groups == 0, groups, my_partial());
      });
    } else {
      // One parallel region: each thread gathers, multiplies (single-threaded GEMM: nested
      // parallelism is off inside the region) and scatters its own blocks.
      std::atomic<int64_t> next_block{0};
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        at::Tensor col = at::empty({block_rows, row_len}, x.options());
        double* mine = my_partial();
        for (int64_t b = next_block++; b < blocks; b = next_block++) {
          const int64_t start = b * block_rows;
          const int64_t rows = std::min(block_rows, total - start);
          if (rows <= 0) break;
          at::Tensor block = col.narrow(0, 0, rows);
          gather_block(src, act + start, rows, block.data_ptr<scalar_t>(), g);
          const at::Tensor res = gemm(block);
          scatter_block<scalar_t>(res.data_ptr<scalar_t>(), act + start, rows, op, cout, hw, bp,
                                  post.relu && groups == 0, groups, mine);
        }
      });
    }
    if (groups > 0) finish_gn<scalar_t>(out, active, partial, threads, post);
  });
  if (residual.defined()) apply_gated_residual_cpu(out, flags, residual);
  return out;
}

void fill_inactive_rows_cpu(at::Tensor& out, const at::Tensor& flags) {
  const int64_t cout = out.size(1), positions = out.size(0) * out.size(2) * out.size(3);
  const bool* fp = flags.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fill_inactive",
                                  [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, positions, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        if (!fp[p]) std::fill_n(op + p * cout, cout, scalar_t(0));
      }
    });
  });
}

void apply_gated_residual_cpu(at::Tensor& out, const at::Tensor& mask,
                              const GatedResidual& residual) {
  const int64_t n = out.size(0), cout = out.size(1), h = out.size(2), w = out.size(3);
  const int64_t hw = h * w;
  const at::Tensor flags = (mask.scalar_type() == at::kBool ? mask : mask.gt(0)).contiguous();
  const at::Tensor res =
      residual.residual->to(out.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor gate =
      residual.gate.has_value() ? residual.gate->to(out.scalar_type()).contiguous() : at::Tensor();
  const int64_t groups = gate.defined() ? gate.size(1) : 1;
  const int64_t group_size = cout / groups;
  const bool* fp = flags.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "gated_residual",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t* rp = res.data_ptr<scalar_t>();
    const scalar_t* gp = gate.defined() ? gate.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n * hw, 256, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        scalar_t* o = op + p * cout;
        const scalar_t* r = rp + p * cout;
        if (!fp[p]) {
          for (int64_t c = 0; c < cout; ++c) {
            o[c] = r[c] > scalar_t(0) ? r[c] : scalar_t(0);
          }
          continue;
        }
        const int64_t image = p / hw, pixel = p % hw;
        for (int64_t gi = 0; gi < groups; ++gi) {
          const acc_t s = gp ? static_cast<acc_t>(gp[(image * groups + gi) * hw + pixel]) : acc_t(1);
          for (int64_t c = gi * group_size; c < (gi + 1) * group_size; ++c) {
            const acc_t v = static_cast<acc_t>(r[c]) + s * static_cast<acc_t>(o[c]);
            o[c] = static_cast<scalar_t>(v > acc_t(0) ? v : acc_t(0));
          }
        }
      }
    });
  });
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
