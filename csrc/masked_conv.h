// Masked (sparse-position) 2-D convolution for inference: declarations shared by the CPU
// implementation, the CUDA implementation and the Python bindings.
//
// Layout conventions used throughout:
//   x       [N, C, H, W]     any strides; converted to channels-last (NHWC memory) internally
//   mask    [N, H, W]        bool or floating; a position is active when mask > 0
//   weight  [Cout, C, k, k]  k odd; stride 1, dilation 1, groups 1
//   active  [P] int64        flat indices n * H * W + y * W + x of the active positions, ascending
//   output  [N, Cout, H, W]  channels-last memory; exact zeros at inactive positions
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace cvpods {

// Optional GroupNorm (statistics per image over its active positions only) then optional ReLU.
struct Epilogue {
  int64_t num_groups = 0;  // 0: no GroupNorm
  std::optional<at::Tensor> weight;
  std::optional<at::Tensor> bias;
  double eps = 1e-5;
  bool relu = false;
};

// Validates shapes/dtypes/devices; throws c10::Error with a message naming the argument.
void check_masked_conv_inputs(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t padding,
                              const Epilogue& post);
void check_epilogue(const Epilogue& post, int64_t channels, const at::Tensor& like);

// Flat indices of the active positions of `mask` ([N, H, W]) in ascending order, int64.
at::Tensor active_positions(const at::Tensor& mask);

// Weight [Cout, C, k, k] packed as [Cout, k * k * C] (tap-major, channel-minor), matching the
// column layout produced by the gather.
at::Tensor pack_weight(const at::Tensor& weight);

// ---- CPU ----
at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t padding,
                             const Epilogue& post);
void masked_epilogue_cpu(at::Tensor& y, const at::Tensor& mask, const Epilogue& post);
at::Tensor gather_columns_cpu(const at::Tensor& x_nhwc, const at::Tensor& active, int64_t kernel,
                              int64_t padding);
void scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& active, at::Tensor& out_nhwc);

#ifdef WITH_CUDA
// ---- CUDA ----
at::Tensor masked_conv2d_cuda(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t padding,
                              const Epilogue& post);
void masked_epilogue_cuda(at::Tensor& y, const at::Tensor& mask, const Epilogue& post);
at::Tensor gather_columns_cuda(const at::Tensor& x_nhwc, const at::Tensor& active, int64_t kernel,
                               int64_t padding);
void scatter_rows_cuda(const at::Tensor& rows, const at::Tensor& active, at::Tensor& out_nhwc);
#endif

}  // namespace cvpods
