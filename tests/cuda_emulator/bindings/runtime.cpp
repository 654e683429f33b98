// A test-only torch extension: csrc/cuda/ops.cu and support.cu compiled with
// g++ against the CUDA emulator, registered for CPU tensors under the library
// `sltrain_emulated_cuda`, so the bindings' own logic (row chunks, padding,
// workspaces, which GEMM gets which view, output masks, the CSC copy, the Adam
// groups) runs and is tested without a GPU. Dense products go to ATen's CPU
// kernels in place of cuBLAS; kernels launch through the emulator; the CUDA
// stream, device guard and error check are the shims of ../aten_shim. Built by
// tests/emulated_cuda.py; nothing of it is linked into the real extension.
//
// This file adds what the bindings take from the rest of the extension:
//   * the op schemas, copied from the `sltrain` library's own (one schema per
//     op stays in csrc/sltrain.cpp);
//   * the matmul configuration, read through `sltrain::get_matmul_config`, so
//     `sltrain_ext.matmul_config` steers both libraries;
//   * an allocation ledger: every CPU allocation and free while recording, so
//     tests and benchmarks measure the bindings' transient memory;
//   * the one cuBLAS product ATen offers only on CUDA: addmm.dtype_out (16-bit
//     inputs, float32 output), as a plain loop that allocates nothing.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <unordered_map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "config.h"

namespace sltrain {

namespace {

std::tuple<std::string, int64_t> matmul_config() {
  static const auto get = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("sltrain::get_matmul_config", "")
                              .typed<std::tuple<std::string, int64_t>()>();
  return get.call();
}

}  // namespace

MatmulPath matmul_path_override() {
  const std::string path = std::get<0>(matmul_config());
  if (path == "factored") return MatmulPath::kFactored;
  if (path == "materialized") return MatmulPath::kMaterialized;
  return MatmulPath::kAuto;
}

int64_t matmul_workspace_bytes() { return std::get<1>(matmul_config()); }

}  // namespace sltrain

namespace {

// ---- the op schemas ---------------------------------------------------------------

constexpr const char* kLibrary = "sltrain_emulated_cuda";
const char* const kOps[] = {"sl_matmul",       "sl_matmul_backward",   "sl_matmul_inference",
                            "densify",         "fused_adam_",          "fused_adam8bit_",
                            "fused_adam4bit_", "_random_support_fill", "transpose_support"};

TORCH_LIBRARY(sltrain_emulated_cuda, m) {
  for (const char* op : kOps) {
    std::ostringstream schema;
    schema << c10::Dispatcher::singleton()
                  .findSchemaOrThrow((std::string("sltrain::") + op).c_str(), "")
                  .schema();
    std::string text = schema.str();
    text.erase(0, std::string("sltrain::").size());  // m.def names it in this library
    m.def(text.c_str());
  }
}

// ---- the allocation ledger ----------------------------------------------------------

// +bytes for each allocation and -bytes for each free, in order, while recording.
struct Ledger {
  std::mutex mutex;
  std::atomic<bool> recording{false};
  std::vector<int64_t> events;

  void record(int64_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (recording) events.push_back(bytes);
  }
};

Ledger& ledger() {
  static Ledger instance;
  return instance;
}

// Wraps torch's CPU allocator. An allocation made while recording is
// registered by its address (so, as torch's raw_allocate requires, its context
// is its data pointer) and records its size again when freed. Outside a
// recording the wrapper hands out the base allocator's memory untouched.
class LedgerAllocator final : public c10::Allocator {
 public:
  explicit LedgerAllocator(c10::Allocator* base) { base_allocator() = base; }

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = base_allocator()->allocate(bytes);
    if (!ledger().recording) return inner;
    void* data = inner.get();
    const c10::Device device = inner.device();
    {
      const std::lock_guard<std::mutex> lock(table_mutex());
      table()[data] = Tracked{std::move(inner), int64_t(bytes)};
    }
    ledger().record(int64_t(bytes));
    return {data, data, &release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Tracked {
    c10::DataPtr inner;
    int64_t bytes;
  };

  static std::unordered_map<void*, Tracked>& table() {
    static std::unordered_map<void*, Tracked> instance;
    return instance;
  }
  static std::mutex& table_mutex() {
    static std::mutex instance;
    return instance;
  }
  static c10::Allocator*& base_allocator() {
    static c10::Allocator* instance = nullptr;
    return instance;
  }

  // Frees a tracked allocation (recording its size), or hands an untracked
  // raw one back to the base allocator.
  static void release(void* data) {
    Tracked tracked;
    {
      const std::lock_guard<std::mutex> lock(table_mutex());
      const auto found = table().find(data);
      if (found == table().end()) {
        base_allocator()->raw_deleter()(data);
        return;
      }
      tracked = std::move(found->second);
      table().erase(found);
    }
    ledger().record(-tracked.bytes);
  }  // tracked.inner frees the memory here
};

void ledger_start() {
  static LedgerAllocator allocator(c10::GetCPUAllocator());
  static const bool installed = (c10::SetCPUAllocator(&allocator, /*priority=*/255), true);
  (void)installed;
  const std::lock_guard<std::mutex> lock(ledger().mutex);
  ledger().events.clear();
  ledger().recording = true;
}

std::vector<int64_t> ledger_stop() {
  const std::lock_guard<std::mutex> lock(ledger().mutex);
  ledger().recording = false;
  return std::move(ledger().events);
}

// ---- addmm.dtype_out on CPU tensors --------------------------------------------------

// out = beta * self + alpha * mat1 @ mat2 with float32 out and float sums, as
// cuBLAS computes it for bf16/fp16 inputs. Strided operands; beta = 0 ignores self.
at::Tensor& addmm_dtype_out(const at::Tensor& self, const at::Tensor& mat1, const at::Tensor& mat2,
                            at::ScalarType out_dtype, const at::Scalar& beta, const at::Scalar& alpha,
                            at::Tensor& out) {
  TORCH_CHECK(out_dtype == at::kFloat && out.scalar_type() == at::kFloat && self.scalar_type() == at::kFloat,
              "emulated addmm.dtype_out: float32 self and out only");
  const int64_t rows = mat1.size(0), inner = mat1.size(1), cols = mat2.size(1);
  const float beta_f = beta.toFloat(), alpha_f = alpha.toFloat();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(mat1.scalar_type(), "emulated addmm.dtype_out", [&] {
    const scalar_t* a = mat1.data_ptr<scalar_t>();
    const scalar_t* b = mat2.data_ptr<scalar_t>();
    const float* c = self.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        float sum = 0;
        for (int64_t k = 0; k < inner; ++k)
          sum += float(a[i * mat1.stride(0) + k * mat1.stride(1)]) * float(b[k * mat2.stride(0) + j * mat2.stride(1)]);
        const float addend = beta_f == 0 ? 0.f : beta_f * c[i * self.stride(0) + j * self.stride(1)];
        o[i * out.stride(0) + j * out.stride(1)] = addend + alpha_f * sum;
      }
  });
  return out;
}

TORCH_LIBRARY_IMPL(aten, CPU, m) { m.impl("addmm.dtype_out", &addmm_dtype_out); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("ledger_start", &ledger_start,
             "Record every CPU allocation (+bytes) and free (-bytes) from now on.");
  module.def("ledger_stop", &ledger_stop, "Stop recording; the events since ledger_start, in order.");
}
