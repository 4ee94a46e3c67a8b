// CUDA masked convolution: the same semantics as the CPU kernel, any batch size.
//
// Active positions are processed in chunks: a gather kernel writes the chunk's im2col columns
// [rows, k*k*C] (read from channels-last input, so consecutive threads read consecutive channels),
// cuBLAS multiplies them by the packed weight, and a scatter kernel writes the result rows (plus
// bias) into the channels-last output. The GroupNorm epilogue then reduces each (image, group)
// over its active rows in one thread block and normalizes the active rows in place.
// Only the operator headers used here (keeps nvcc's front end fast).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/searchsorted.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "masked_conv.h"

namespace cvpods {
namespace {

constexpr int kThreads = 256;
// Budget for one chunk of gathered columns in device memory.
constexpr int64_t kChunkBytes = 128 << 20;

inline int blocks_for(int64_t work) {
  return static_cast<int>(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, 65535));
}

template <typename scalar_t>
__global__ void gather_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ active,
                              int64_t rows, int64_t c, int64_t h, int64_t w, int64_t kernel,
                              int64_t pad, scalar_t* __restrict__ col) {
  const int64_t row_len = kernel * kernel * c;
  const int64_t total = rows * row_len;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / row_len;
    const int64_t j = i - r * row_len;
    const int64_t tap = j / c;
    const int64_t ch = j - tap * c;
    const int64_t pos = active[r];
    const int64_t n = pos / (h * w);
    const int64_t rem = pos - n * h * w;
    const int64_t yy = rem / w + tap / kernel - pad;
    const int64_t xx = rem % w + tap % kernel - pad;
    const bool inside = yy >= 0 && yy < h && xx >= 0 && xx < w;
    col[i] = inside ? x[((n * h + yy) * w + xx) * c + ch] : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void scatter_kernel(const scalar_t* __restrict__ res, const int64_t* __restrict__ active,
                               int64_t rows, int64_t cout, const scalar_t* __restrict__ bias,
                               bool relu, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * cout;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / cout;
    const int64_t ch = i - r * cout;
    acc_t v = static_cast<acc_t>(res[i]);
    if (bias != nullptr) v += static_cast<acc_t>(bias[ch]);
    if (relu) v = v > acc_t(0) ? v : acc_t(0);
    out[active[r] * cout + ch] = static_cast<scalar_t>(v);
  }
}

// One block per (image, group): mean and 1/std over the image's active rows, the group's channels.
template <typename scalar_t>
__global__ void group_stats_kernel(const scalar_t* __restrict__ y, const int64_t* __restrict__ active,
                                   const int64_t* __restrict__ offsets, int64_t cout, int64_t groups,
                                   double eps, double* __restrict__ stats) {
  __shared__ double sum_shared[kThreads];
  __shared__ double sq_shared[kThreads];
  const int64_t n = blockIdx.x / groups;
  const int64_t g = blockIdx.x - n * groups;
  const int64_t group_size = cout / groups;
  const int64_t begin = offsets[n];
  const int64_t count = (offsets[n + 1] - begin) * group_size;
  double s = 0, ss = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t r = begin + i / group_size;
    const double v = static_cast<double>(y[active[r] * cout + g * group_size + i % group_size]);
    s += v;
    ss += v * v;
  }
  sum_shared[threadIdx.x] = s;
  sq_shared[threadIdx.x] = ss;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      sum_shared[threadIdx.x] += sum_shared[threadIdx.x + stride];
      sq_shared[threadIdx.x] += sq_shared[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double mean = count > 0 ? sum_shared[0] / count : 0.0;
    const double var = count > 0 ? fmax(sq_shared[0] / count - mean * mean, 0.0) : 0.0;
    stats[2 * blockIdx.x] = mean;
    stats[2 * blockIdx.x + 1] = rsqrt(var + eps);
  }
}

// Active rows: optional GroupNorm with `stats` (groups > 0) and affine, then optional ReLU.
template <typename scalar_t>
__global__ void normalize_kernel(scalar_t* __restrict__ y, const int64_t* __restrict__ active,
                                 int64_t rows, int64_t cout, int64_t hw, int64_t groups,
                                 const double* __restrict__ stats, const scalar_t* __restrict__ gamma,
                                 const scalar_t* __restrict__ beta, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * cout;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t r = i / cout;
    const int64_t ch = i - r * cout;
    const int64_t pos = active[r];
    scalar_t* p = y + pos * cout + ch;
    acc_t v = static_cast<acc_t>(*p);
    if (groups > 0) {
      const int64_t sg = ((pos / hw) * groups + ch / (cout / groups)) * 2;
      v = (v - static_cast<acc_t>(stats[sg])) * static_cast<acc_t>(stats[sg + 1]);
      if (gamma != nullptr) v *= static_cast<acc_t>(gamma[ch]);
      if (beta != nullptr) v += static_cast<acc_t>(beta[ch]);
    }
    if (relu) v = v > acc_t(0) ? v : acc_t(0);
    *p = static_cast<scalar_t>(v);
  }
}

// Epilogue on the active rows of a channels-last [N, C, H, W] tensor (inactive rows untouched).
void apply_epilogue(at::Tensor& out, const at::Tensor& active, const Epilogue& post,
                    bool bias_relu_done) {
  const int64_t images = out.size(0), cout = out.size(1), hw = out.size(2) * out.size(3);
  const int64_t rows = active.numel();
  const bool relu_left = post.relu && !(bias_relu_done && post.num_groups == 0);
  if (rows == 0 || (post.num_groups == 0 && !relu_left)) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor stats;
  if (post.num_groups > 0) {
    const at::Tensor bounds = at::arange(images + 1, active.options()).mul_(hw);
    const at::Tensor offsets = at::searchsorted(active, bounds);
    stats = at::empty({images * post.num_groups * 2}, active.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "group_stats", [&] {
      group_stats_kernel<scalar_t><<<images * post.num_groups, kThreads, 0, stream>>>(
          out.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), cout,
          post.num_groups, post.eps, stats.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor gamma = post.weight.has_value() ? post.weight->to(out.scalar_type()).contiguous()
                                                   : at::Tensor();
  const at::Tensor beta =
      post.bias.has_value() ? post.bias->to(out.scalar_type()).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "normalize", [&] {
    normalize_kernel<scalar_t><<<blocks_for(rows * cout), kThreads, 0, stream>>>(
        out.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), rows, cout, hw, post.num_groups,
        stats.defined() ? stats.data_ptr<double>() : nullptr,
        gamma.defined() ? gamma.data_ptr<scalar_t>() : nullptr,
        beta.defined() ? beta.data_ptr<scalar_t>() : nullptr, post.relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor gather_columns_cuda(const at::Tensor& x_nhwc, const at::Tensor& active, int64_t kernel,
                               int64_t padding) {
  c10::cuda::CUDAGuard guard(x_nhwc.device());
  const int64_t c = x_nhwc.size(1);
  at::Tensor col = at::empty({active.numel(), kernel * kernel * c}, x_nhwc.options());
  if (col.numel() == 0) return col;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_nhwc.scalar_type(), "gather", [&] {
    gather_kernel<scalar_t><<<blocks_for(col.numel()), kThreads, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(
        x_nhwc.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), active.numel(), c,
        x_nhwc.size(2), x_nhwc.size(3), kernel, padding, col.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return col;
}

void scatter_rows_cuda(const at::Tensor& rows, const at::Tensor& active, at::Tensor& out_nhwc) {
  c10::cuda::CUDAGuard guard(out_nhwc.device());
  const at::Tensor r = rows.to(out_nhwc.scalar_type()).contiguous();
  if (r.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "scatter", [&] {
    scatter_kernel<scalar_t><<<blocks_for(r.numel()), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        r.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), r.size(0), r.size(1), nullptr, false,
        out_nhwc.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor masked_conv2d_cuda(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t padding,
                              const Epilogue& post) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t cout = weight.size(0), kernel = weight.size(2);
  at::Tensor out = at::empty({n, cout, h, w}, x.options(), at::MemoryFormat::ChannelsLast).zero_();
  const at::Tensor active = active_positions(mask);
  const int64_t total = active.numel();
  if (total == 0 || out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wpack = pack_weight(weight);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t row_len = wpack.size(1);
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / (row_len * x.element_size()), 256, total);
  at::Tensor col = at::empty({std::min(chunk, total), row_len}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool relu_in_scatter = post.relu && post.num_groups == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv2d_cuda",
                                  [&] {
    for (int64_t start = 0; start < total; start += chunk) {
      const int64_t rows = std::min(chunk, total - start);
      at::Tensor block = col.narrow(0, 0, rows);
      const int64_t* act = active.data_ptr<int64_t>() + start;
      gather_kernel<scalar_t><<<blocks_for(block.numel()), kThreads, 0, stream>>>(
          xc.data_ptr<scalar_t>(), act, rows, c, h, w, kernel, padding, block.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor res = at::mm(block, wpack.t());
      scatter_kernel<scalar_t><<<blocks_for(res.numel()), kThreads, 0, stream>>>(
          res.data_ptr<scalar_t>(), act, rows, cout,
          bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr, relu_in_scatter,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  apply_epilogue(out, active, post, /*bias_relu_done=*/true);
  return out;
}

void masked_epilogue_cuda(at::Tensor& y, const at::Tensor& mask, const Epilogue& post) {
  c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor flags = mask.scalar_type() == at::kBool ? mask : mask.gt(0);
  y.masked_fill_(flags.logical_not().unsqueeze(1), 0);
  apply_epilogue(y, active_positions(flags), post, /*bias_relu_done=*/false);
}

}  // namespace cvpods
