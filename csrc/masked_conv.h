// Masked (sparse-position) 2-D convolution for inference: declarations shared by the CPU
// implementation, the CUDA implementation, the operator registration and the Python bindings.
//
// Layout conventions used throughout:
//   x         [N, C, H, W]     any strides; channels-last (NHWC memory) is read directly, other
//                              layouts are read only at the positions the convolution needs
//   mask      [N, H, W]        bool or floating; a position is active when mask > 0
//   weight    [Cout, C, k, k]  k odd; stride 1, dilation 1, groups 1
//   residual  [N, Cout, H, W]  optional; with it the output is relu(residual + gate * y)
//   gate      [N, G, H, W]     optional (with residual); gate map g scales channel group g
//   active    [P] int64        flat indices n * H * W + y * W + x of the active positions, ascending
//   output    [N, Cout, H, W]  channels-last memory; at inactive positions exact zeros (or
//                              relu(residual) when a residual is given)
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace cvpods {

// Optional GroupNorm (statistics per image over its active positions only) then optional ReLU.
struct Epilogue {
  int64_t num_groups = 0;  // 0: no GroupNorm
  std::optional<at::Tensor> weight;
  std::optional<at::Tensor> bias;
  double eps = 1e-5;
  bool relu = false;
};

// The gated residual applied after the epilogue: out = relu(residual + gate * y).
struct GatedResidual {
  std::optional<at::Tensor> residual;  // [N, Cout, H, W]
  std::optional<at::Tensor> gate;      // [N, G, H, W], G divides Cout; absent: gate = 1
  bool defined() const { return residual.has_value(); }
};

// Validates shapes/dtypes/devices; throws c10::Error with a message naming the argument.
void check_masked_conv_inputs(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t padding,
                              const Epilogue& post, const GatedResidual& residual);
void check_epilogue(const Epilogue& post, int64_t channels, const at::Tensor& like);

// Flat indices of the active positions of `mask` ([N, H, W]) in ascending order, int64.
at::Tensor active_positions(const at::Tensor& mask);

// Weight [Cout, C, k, k] packed as [Cout, k * k * C] (tap-major, channel-minor), matching the
// column layout produced by the gather.
at::Tensor pack_weight(const at::Tensor& weight);

// The registered operator cvpods::masked_conv2d: `impl` is "auto" (dense convolution + masked
// epilogue from `dense_from` active fraction on, sparse below), "sparse" or "dense".
// `zero_inactive` false (no residual, sparse CPU path only): the inactive positions of the output
// are left unwritten, for a consumer that reads only positions this mask covers (a masked
// convolution whose k x k neighbourhoods lie inside it); their memory is then never touched.
at::Tensor masked_conv2d_op(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t padding,
                            int64_t num_groups, const std::optional<at::Tensor>& gn_weight,
                            const std::optional<at::Tensor>& gn_bias, double eps, bool relu,
                            const std::optional<at::Tensor>& residual,
                            const std::optional<at::Tensor>& gate, const std::string& impl,
                            double dense_from, bool zero_inactive = true);

// ---- CPU ----
// at::empty for the operators' full-size CPU outputs, from a pool of reused, already faulted-in
// blocks (buffer_pool.cpp; CVPODS_OUTPUT_POOL_MB, default 512, 0: plain at::empty).
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);
at::Tensor masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t padding,
                             const Epilogue& post, const GatedResidual& residual = {},
                             bool zero_inactive = true);
void masked_epilogue_cpu(at::Tensor& y, const at::Tensor& mask, const Epilogue& post);
// Zeros at the positions where `flags` ([N, H, W] bool, contiguous) is false (in place).
void fill_inactive_rows_cpu(at::Tensor& out, const at::Tensor& flags);
// out = relu(residual + gate * out) at active positions, relu(residual) elsewhere (in place).
void apply_gated_residual_cpu(at::Tensor& out, const at::Tensor& mask,
                              const GatedResidual& residual);
at::Tensor gather_columns_cpu(const at::Tensor& x_nhwc, const at::Tensor& active, int64_t kernel,
                              int64_t padding);
void scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& active, at::Tensor& out_nhwc);
// 3x3 "same" convolution with few output channels (spatial gates): [N, C, H, W] -> [N, G, H, W].
at::Tensor gate_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, bool simd);

// gate * GroupNorm(depthwise_conv3x3(x) + bias) where any gate map is open, zeros elsewhere
// (num_groups = 0: no GroupNorm). x [N, C, H, W], weight [C, 1, 3, 3], gate [N, G, H, W].
// zero_closed false (CPU kernel): positions where every gate map is closed are left unwritten,
// for a consumer that takes the gate into account (fuse_neighbours with the gate).
at::Tensor gated_depthwise_cpu(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t num_groups,
                               const std::optional<at::Tensor>& gn_weight,
                               const std::optional<at::Tensor>& gn_bias, double eps,
                               const at::Tensor& gate, bool zero_closed = true);
// The same with ATen operators (any device, any dtype and layout; always writes the zeros).
at::Tensor gated_depthwise_library(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t num_groups,
                                   const std::optional<at::Tensor>& gn_weight,
                                   const std::optional<at::Tensor>& gn_bias, double eps,
                                   const at::Tensor& gate, bool zero_closed = true);

// The scale fusion's weighted neighbour sum: output_weight * x + scale_weight * (resize(finer) +
// resize(coarser)), resize = bilinear with align_corners=True to x's [H, W]; finer / coarser
// [N, C, H', W'] optional, scale_weight / output_weight one-element tensors. Channels-last output.
// finer_gate / coarser_gate [N, G, H', W'] optional: a source pixel where every gate map is 0
// counts as 0 whatever its memory holds (a gated_depthwise output with zero_closed=false).
void check_fuse_neighbours_inputs(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                                  const std::optional<at::Tensor>& coarser,
                                  const std::optional<at::Tensor>& finer_gate,
                                  const std::optional<at::Tensor>& coarser_gate);
at::Tensor fuse_neighbours_cpu(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                               const std::optional<at::Tensor>& coarser,
                               const at::Tensor& scale_weight, const at::Tensor& output_weight,
                               const std::optional<at::Tensor>& finer_gate,
                               const std::optional<at::Tensor>& coarser_gate);
// The same with ATen operators (any device, any dtype).
at::Tensor fuse_neighbours_library(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                                   const std::optional<at::Tensor>& coarser,
                                   const at::Tensor& scale_weight,
                                   const at::Tensor& output_weight,
                                   const std::optional<at::Tensor>& finer_gate,
                                   const std::optional<at::Tensor>& coarser_gate);

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
