// Reused memory for the CPU operators' full-size outputs.
//
// A 256-channel P3 map of an 800x1333 image is 17 MB. glibc serves blocks that large with fresh
// pages (mmap, or a heap top trimmed back to the system after the last free), and the kernel
// zeroes every page on first touch: about 4,200 page faults per map, several microseconds each in
// a virtual machine. The dynamic head's operators write one such map per call and free the
// previous ones a few calls later, so in a forward pass a few percent of the time went to
// faulting in pages that had just been given back.
//
// The pool keeps freed output blocks (exact byte size, most recently freed first) up to a byte
// budget and hands them to the next output of that size, already faulted in. Tensors made from
// it are ordinary CPU tensors whose deleter returns the block; blocks beyond the budget, and
// every block when the budget is 0, go back to the system allocator.
// CVPODS_OUTPUT_POOL_MB (default 512) sets the budget; 0 disables the pool.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <string>

#include "masked_conv.h"

namespace cvpods {
namespace {

constexpr size_t kAlignment = 64;

size_t budget_from_env() {
  const char* value = std::getenv("CVPODS_OUTPUT_POOL_MB");
  if (value == nullptr || *value == '\0') return size_t{512} << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(value, &end, 10);
  TORCH_CHECK(end != value && *end == '\0' && mb >= 0,
              "CVPODS_OUTPUT_POOL_MB must be a whole number of megabytes >= 0, got '", value, "'");
  return static_cast<size_t>(mb) << 20;
}

class OutputPool {
 public:
  static OutputPool& instance() {
    // Never destroyed: tensors may outlive static destruction at interpreter exit.
    static OutputPool* pool = new OutputPool(budget_from_env());
    return *pool;
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->bytes == bytes) {
          void* p = it->ptr;
          cached_ -= bytes;
          free_.erase(it);
          return p;
        }
      }
    }
    void* p = std::aligned_alloc(kAlignment, round_up(bytes));
    TORCH_CHECK(p != nullptr, "cvpods: out of memory allocating ", bytes, " bytes");
    return p;
  }

  void give(void* p, size_t bytes) {
    if (bytes > budget_) {
      std::free(p);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_front(Block{p, bytes});
    cached_ += bytes;
    while (cached_ > budget_) {  // the least recently freed blocks go first
      cached_ -= free_.back().bytes;
      std::free(free_.back().ptr);
      free_.pop_back();
    }
  }

  bool enabled() const { return budget_ > 0; }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };
  explicit OutputPool(size_t budget) : budget_(budget) {}
  static size_t round_up(size_t bytes) {
    return (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  }

  const size_t budget_;
  std::mutex mutex_;
  std::list<Block> free_;
  size_t cached_ = 0;
};

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format) {
  OutputPool& pool = OutputPool::instance();
  if (!pool.enabled() || options.device().type() != c10::DeviceType::CPU) {
    return at::empty(sizes, options, format);
  }
  std::vector<int64_t> strides(sizes.size(), 1);
  if (format == at::MemoryFormat::ChannelsLast) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 2; d >= 0; --d) {
      strides[d] = strides[d + 1] * std::max<int64_t>(sizes[d + 1], 1);
    }
  }
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  void* data = pool.take(bytes);
  return at::from_blob(
      data, sizes, strides, [bytes](void* p) { OutputPool::instance().give(p, bytes); },
      options);
}

}  // namespace cvpods
