// Device-independent parts of the masked convolution: argument checks, active-position lists,
// weight packing and the Python bindings of the extension module cvpods._C.
#include <ATen/autocast_mode.h>
#include <torch/extension.h>

#include "masked_conv.h"

namespace cvpods {

void check_epilogue(const Epilogue& post, int64_t channels, const at::Tensor& like) {
  TORCH_CHECK(post.num_groups >= 0, "masked_conv2d: post.num_groups must be >= 0, got ",
              post.num_groups);
  if (post.num_groups > 0) {
    TORCH_CHECK(channels % post.num_groups == 0, "masked_conv2d: post.num_groups=",
                post.num_groups, " must divide the number of output channels ", channels);
    TORCH_CHECK(post.eps > 0, "masked_conv2d: post.eps must be > 0, got ", post.eps);
  }
  for (const auto* item : {&post.weight, &post.bias}) {
    if (!item->has_value()) continue;
    const at::Tensor& t = item->value();
    const char* name = item == &post.weight ? "post.weight" : "post.bias";
    TORCH_CHECK(post.num_groups > 0, "masked_conv2d: ", name, " given without GroupNorm (num_groups=0)");
    TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "masked_conv2d: ", name,
                " must have shape [", channels, "], got ", t.sizes());
    TORCH_CHECK(t.device() == like.device(), "masked_conv2d: ", name, " is on ", t.device(),
                " but the input is on ", like.device());
  }
}

void check_masked_conv_inputs(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t padding,
                              const Epilogue& post, const GatedResidual& residual) {
  TORCH_CHECK(x.dim() == 4, "masked_conv2d: x must be [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, "masked_conv2d: weight must be [Cout, C, k, k], got shape ",
              weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "masked_conv2d: weight has ", weight.size(1),
              " input channels but x has ", x.size(1));
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "masked_conv2d: the kernel must be square with an odd size, got ",
              weight.sizes().slice(2));
  TORCH_CHECK(padding == weight.size(2) / 2, "masked_conv2d: padding must be ", weight.size(2) / 2,
              " for a ", weight.size(2), "x", weight.size(2), " kernel (same-size output), got ",
              padding);
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == x.size(0) && mask.size(1) == x.size(2) &&
                  mask.size(2) == x.size(3),
              "masked_conv2d: mask must be [N, H, W] = ", x.size(0), "x", x.size(2), "x", x.size(3),
              ", got shape ", mask.sizes());
  TORCH_CHECK(mask.device() == x.device() && weight.device() == x.device(),
              "masked_conv2d: x, mask and weight must be on one device, got ", x.device(), ", ",
              mask.device(), ", ", weight.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "masked_conv2d: weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "masked_conv2d: x must be floating point, got ",
              x.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "masked_conv2d: bias must have shape [", weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->device() == x.device(), "masked_conv2d: bias is on ", bias->device(),
                " but x is on ", x.device());
  }
  check_epilogue(post, weight.size(0), x);
  if (residual.residual.has_value()) {
    const at::Tensor& r = *residual.residual;
    TORCH_CHECK(r.dim() == 4 && r.size(0) == x.size(0) && r.size(1) == weight.size(0) &&
                    r.size(2) == x.size(2) && r.size(3) == x.size(3),
                "masked_conv2d: residual must be [N, Cout, H, W] = [", x.size(0), ", ",
                weight.size(0), ", ", x.size(2), ", ", x.size(3), "], got ", r.sizes());
    TORCH_CHECK(r.device() == x.device(), "masked_conv2d: residual is on ", r.device(),
                " but x is on ", x.device());
  }
  if (residual.gate.has_value()) {
    const at::Tensor& gt = *residual.gate;
    TORCH_CHECK(residual.residual.has_value(), "masked_conv2d: gate is given without residual");
    TORCH_CHECK(gt.dim() == 4 && gt.size(0) == x.size(0) && gt.size(1) >= 1 &&
                    weight.size(0) % gt.size(1) == 0 && gt.size(2) == x.size(2) &&
                    gt.size(3) == x.size(3),
                "masked_conv2d: gate must be [N, G, H, W] with G dividing Cout=", weight.size(0),
                " and the input's N, H, W, got ", gt.sizes());
    TORCH_CHECK(gt.device() == x.device(), "masked_conv2d: gate is on ", gt.device(),
                " but x is on ", x.device());
  }
}

at::Tensor active_positions(const at::Tensor& mask) {
  at::Tensor flags = mask.scalar_type() == at::kBool ? mask : mask.gt(0);
  return flags.reshape({-1}).nonzero().view({-1});
}

at::Tensor pack_weight(const at::Tensor& weight) {
  const int64_t cout = weight.size(0);
  return weight.permute({0, 2, 3, 1}).reshape({cout, -1}).contiguous();
}

namespace {

Epilogue make_epilogue(int64_t num_groups, const std::optional<at::Tensor>& gn_weight,
                       const std::optional<at::Tensor>& gn_bias, double eps, bool relu) {
  Epilogue post;
  post.num_groups = num_groups;
  post.weight = gn_weight;
  post.bias = gn_bias;
  post.eps = eps;
  post.relu = relu;
  return post;
}

#ifndef WITH_CUDA
[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": got CUDA tensors but cvpods._C was built without CUDA support "
              "(rebuild with FORCE_CUDA=1)");
}
#endif

// out = relu(residual + gate * out) at the active positions, relu(residual) elsewhere, with ATen
// operators (any device; `out` is exactly zero at inactive positions).
at::Tensor gated_residual_aten(const at::Tensor& out, const GatedResidual& residual) {
  at::Tensor scaled = out;
  if (residual.gate.has_value()) {
    const at::Tensor& gate = *residual.gate;
    const int64_t n = out.size(0), c = out.size(1), h = out.size(2), w = out.size(3);
    const int64_t groups = gate.size(1);
    scaled = (out.reshape({n, groups, c / groups, h, w}) * gate.unsqueeze(2)).view({n, c, h, w});
  }
  at::Tensor out_sum = scaled + *residual.residual;
  return out_sum.relu_().contiguous(at::MemoryFormat::ChannelsLast);
}

void masked_epilogue_any(at::Tensor& y, const at::Tensor& flags, const Epilogue& post) {
  if (y.is_cuda()) {
#ifdef WITH_CUDA
    masked_epilogue_cuda(y, flags, post);
    return;
#else
    no_cuda("masked_conv2d");
#endif
  }
  masked_epilogue_cpu(y, flags, post);
}

// The dense convolution (channels-last), then the epilogue at the active positions.
at::Tensor dense_then_epilogue(const at::Tensor& x, const at::Tensor& flags,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               int64_t padding, const Epilogue& post,
                               const GatedResidual& residual) {
  at::Tensor y = at::conv2d(x.contiguous(at::MemoryFormat::ChannelsLast), weight, bias, {1, 1},
                            {padding, padding})
                     .contiguous(at::MemoryFormat::ChannelsLast);
  if (flags.all().item<bool>()) {  // every position active: the ordinary (vectorized) GroupNorm
    if (post.num_groups > 0) {
      y = at::group_norm(y, post.num_groups, post.weight, post.bias, post.eps)
              .contiguous(at::MemoryFormat::ChannelsLast);
    }
    if (post.relu) y.relu_();
  } else {
    masked_epilogue_any(y, flags, post);
  }
  if (!residual.defined()) return y;
  if (y.device().is_cpu()) {
    apply_gated_residual_cpu(y, flags, residual);
    return y;
  }
  return gated_residual_aten(y, residual);
}

}  // namespace

at::Tensor masked_conv2d_op(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t padding,
                            int64_t num_groups, const std::optional<at::Tensor>& gn_weight,
                            const std::optional<at::Tensor>& gn_bias, double eps, bool relu,
                            const std::optional<at::Tensor>& residual,
                            const std::optional<at::Tensor>& gate, const std::string& impl,
                            double dense_from, bool zero_inactive) {
  const Epilogue post = make_epilogue(num_groups, gn_weight, gn_bias, eps, relu);
  const GatedResidual gated{residual, gate};
  check_masked_conv_inputs(x, mask, weight, bias, padding, post, gated);
  TORCH_CHECK(impl == "auto" || impl == "sparse" || impl == "dense",
              "masked_conv2d: impl must be 'auto', 'sparse' or 'dense', got '", impl, "'");
  at::NoGradGuard no_grad;
  const at::Tensor flags = (mask.scalar_type() == at::kBool ? mask : mask.gt(0)).contiguous();
  bool dense = impl == "dense";
  if (impl == "auto" && flags.numel() > 0) {
    const double density =
        static_cast<double>(flags.count_nonzero().item<int64_t>()) / flags.numel();
    dense = density > 0.0 && density >= dense_from;
  }
  if (dense) return dense_then_epilogue(x, flags, weight, bias, padding, post, gated);
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    at::Tensor out = masked_conv2d_cuda(x, flags, weight, bias, padding, post);
    return gated.defined() ? gated_residual_aten(out, gated) : out;
#else
    no_cuda("masked_conv2d");
#endif
  }
  TORCH_CHECK(x.device().is_cpu(), "masked_conv2d: unsupported device ", x.device());
  return masked_conv2d_cpu(x, flags, weight, bias, padding, post, gated, zero_inactive);
}

namespace {

#ifdef WITH_CUDA
at::Tensor gate_conv2d_library(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, bool /*simd*/) {
  return at::conv2d(x, weight, bias, {1, 1}, {1, 1});
}
#endif

std::tuple<at::Tensor, at::Tensor> gather_active_columns(const at::Tensor& x, const at::Tensor& mask,
                                                         int64_t kernel, int64_t padding) {
  TORCH_CHECK(x.dim() == 4, "gather_active_columns: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == x.size(0) && mask.size(1) == x.size(2) &&
                  mask.size(2) == x.size(3),
              "gather_active_columns: mask must be [N, H, W] matching x, got ", mask.sizes());
  TORCH_CHECK(kernel >= 1 && kernel % 2 == 1 && padding == kernel / 2,
              "gather_active_columns: need an odd kernel and padding = kernel // 2, got kernel=",
              kernel, " padding=", padding);
  at::NoGradGuard no_grad;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor active = active_positions(mask);
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    return {gather_columns_cuda(xc, active, kernel, padding), active};
#else
    no_cuda("gather_active_columns");
#endif
  }
  return {gather_columns_cpu(xc, active, kernel, padding), active};
}

at::Tensor scatter_active_rows(const at::Tensor& rows, const at::Tensor& active, int64_t n,
                               int64_t h, int64_t w) {
  TORCH_CHECK(rows.dim() == 2 && active.dim() == 1 && rows.size(0) == active.size(0),
              "scatter_active_rows: rows must be [P, C] and active [P], got ", rows.sizes(), " and ",
              active.sizes());
  TORCH_CHECK(active.scalar_type() == at::kLong, "scatter_active_rows: active must be int64");
  at::NoGradGuard no_grad;
  at::Tensor out =
      at::empty({n, rows.size(1), h, w}, rows.options(), at::MemoryFormat::ChannelsLast).zero_();
  const at::Tensor r = rows.contiguous();
  if (rows.is_cuda()) {
#ifdef WITH_CUDA
    scatter_rows_cuda(r, active, out);
    return out;
#else
    no_cuda("scatter_active_rows");
#endif
  }
  scatter_rows_cpu(r, active, out);
  return out;
}

// ---- Autocast (torch.autocast) ----
//
// Without these kernels autocast would fall through to the device kernels with autocast still
// active, so the ATen calls inside them (at::mm, at::conv2d, at::group_norm) would be cast on
// their own and disagree with the kernels' data types. Each kernel below casts the operator's
// inputs once, disables autocast, and calls the device kernel:
//   masked_conv2d:    the autocast dtype (bfloat16 on CPU): x, weight, bias, residual and gate.
//                     The GroupNorm affine stays as given (the kernels read it as float64), the
//                     statistics are accumulated in float32 per row and float64 across rows.
//   gate_conv2d,
//   gated_depthwise,
//   fuse_neighbours:  float32 (converted at the operator boundary): the gate logits decide
//                     where the head computes (their sign opens a gate), and the depthwise unit's
//                     GroupNorm takes statistics over the whole map; all three are memory-bound,
//                     so a bfloat16 kernel would save little (the library scale fusion mixed the
//                     bfloat16 level with the float32 units and gave float32, as this does).
template <c10::DeviceType kDevice>
struct AutocastKernels {
  static c10::DispatchKey key() {
    return at::autocast::get_autocast_dispatch_key_from_device_type(kDevice);
  }
  static at::Tensor cast(at::ScalarType dtype, const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, kDevice);
  }
  static std::optional<at::Tensor> cast(at::ScalarType dtype, const std::optional<at::Tensor>& t) {
    return at::autocast::cached_cast(dtype, t, kDevice);
  }

  static at::Tensor masked_conv2d(const at::Tensor& x, const at::Tensor& mask,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t padding, int64_t num_groups,
                                  const std::optional<at::Tensor>& gn_weight,
                                  const std::optional<at::Tensor>& gn_bias, double eps, bool relu,
                                  const std::optional<at::Tensor>& residual,
                                  const std::optional<at::Tensor>& gate, const std::string& impl,
                                  double dense_from, bool zero_inactive) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    const at::ScalarType dt = at::autocast::get_autocast_dtype(kDevice);
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cvpods::masked_conv2d", "")
                         .typed<decltype(masked_conv2d_op)>();
    return op.call(cast(dt, x), mask, cast(dt, weight), cast(dt, bias), padding, num_groups,
                   gn_weight, gn_bias, eps, relu, cast(dt, residual), cast(dt, gate), impl,
                   dense_from, zero_inactive);
  }

  static at::Tensor gate_conv2d(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool simd) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cvpods::gate_conv2d", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const std::optional<at::Tensor>&, bool)>();
    return op.call(cast(at::kFloat, x), cast(at::kFloat, weight), cast(at::kFloat, bias), simd);
  }

  static at::Tensor gated_depthwise(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, int64_t num_groups,
                                    const std::optional<at::Tensor>& gn_weight,
                                    const std::optional<at::Tensor>& gn_bias, double eps,
                                    const at::Tensor& gate, bool zero_closed) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cvpods::gated_depthwise", "")
                         .typed<decltype(gated_depthwise_cpu)>();
    const at::ScalarType f = at::kFloat;
    return op.call(cast(f, x), cast(f, weight), cast(f, bias), num_groups, cast(f, gn_weight),
                   cast(f, gn_bias), eps, cast(f, gate), zero_closed);
  }

  static at::Tensor fuse_neighbours(const at::Tensor& x, const std::optional<at::Tensor>& finer,
                                    const std::optional<at::Tensor>& coarser,
                                    const at::Tensor& scale_weight,
                                    const at::Tensor& output_weight,
                                    const std::optional<at::Tensor>& finer_gate,
                                    const std::optional<at::Tensor>& coarser_gate) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(key());
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cvpods::fuse_neighbours", "")
                         .typed<decltype(fuse_neighbours_cpu)>();
    const at::ScalarType f = at::kFloat;
    return op.call(cast(f, x), cast(f, finer), cast(f, coarser), scale_weight, output_weight,
                   cast(f, finer_gate), cast(f, coarser_gate));
  }
};

}  // namespace
}  // namespace cvpods

// The operators, registered with PyTorch's dispatcher (torch.ops.cvpods.*): callable from
// TorchScript, traceable by torch.fx and torch.compile (their fake kernels are registered in
// Python, cvpods/layers/masked_conv.py).
TORCH_LIBRARY(cvpods, m) {
  m.def(
      "masked_conv2d(Tensor x, Tensor mask, Tensor weight, Tensor? bias, int padding, "
      "int num_groups, Tensor? gn_weight, Tensor? gn_bias, float eps, bool relu, "
      "Tensor? residual=None, Tensor? gate=None, str impl='auto', float dense_from=0.85, "
      "bool zero_inactive=True) -> Tensor");
  m.def("gate_conv2d(Tensor x, Tensor weight, Tensor? bias, bool simd=True) -> Tensor");
  m.def(
      "gated_depthwise(Tensor x, Tensor weight, Tensor? bias, int num_groups, Tensor? gn_weight, "
      "Tensor? gn_bias, float eps, Tensor gate, bool zero_closed=True) -> Tensor");
  m.def(
      "fuse_neighbours(Tensor x, Tensor? finer, Tensor? coarser, Tensor scale_weight, "
      "Tensor output_weight, Tensor? finer_gate=None, Tensor? coarser_gate=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(cvpods, CPU, m) {
  m.impl("masked_conv2d", &cvpods::masked_conv2d_op);
  m.impl("gate_conv2d", &cvpods::gate_conv2d_cpu);
  m.impl("gated_depthwise", &cvpods::gated_depthwise_cpu);
  m.impl("fuse_neighbours", &cvpods::fuse_neighbours_cpu);
}

TORCH_LIBRARY_IMPL(cvpods, AutocastCPU, m) {
  using K = cvpods::AutocastKernels<c10::DeviceType::CPU>;
  m.impl("masked_conv2d", &K::masked_conv2d);
  m.impl("gate_conv2d", &K::gate_conv2d);
  m.impl("gated_depthwise", &K::gated_depthwise);
  m.impl("fuse_neighbours", &K::fuse_neighbours);
}

// CUDA autocast (float16 or bfloat16, the autocast dtype): registered in every build; without
// CUDA kernels the call below it fails with the usual "built without CUDA" message.
TORCH_LIBRARY_IMPL(cvpods, Autocast, m) {
  using K = cvpods::AutocastKernels<c10::DeviceType::CUDA>;
  m.impl("masked_conv2d", &K::masked_conv2d);
  m.impl("gate_conv2d", &K::gate_conv2d);
  m.impl("gated_depthwise", &K::gated_depthwise);
  m.impl("fuse_neighbours", &K::fuse_neighbours);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(cvpods, CUDA, m) {
  m.impl("masked_conv2d", &cvpods::masked_conv2d_op);
  m.impl("gate_conv2d", &cvpods::gate_conv2d_library);
  m.impl("gated_depthwise", &cvpods::gated_depthwise_library);
  m.impl("fuse_neighbours", &cvpods::fuse_neighbours_library);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cvpods C++/CUDA operators: masked (sparse-position) convolution for inference";
  m.def("gather_active_columns", &cvpods::gather_active_columns,
        "Columns [P, k*k*C] (tap-major, channel-minor; zeros outside the image) of the P active "
        "positions, and their flat indices [P].",
        py::arg("x"), py::arg("mask"), py::arg("kernel"), py::arg("padding"));
  m.def("scatter_active_rows", &cvpods::scatter_active_rows,
        "Rows [P, C] placed at flat positions active [P] of a zero [N, C, H, W] channels-last map.",
        py::arg("rows"), py::arg("active"), py::arg("n"), py::arg("h"), py::arg("w"));
  m.def("with_cuda", []() {
#ifdef WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
