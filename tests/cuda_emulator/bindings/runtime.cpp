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
//     tests and benchmarks measure the bindings' transient memory.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
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
const char* const kOps[] = {"sl_matmul", "sl_matmul_backward", "densify", "fused_adam_",
                            "fused_adam8bit_", "_random_support_fill", "transpose_support"};

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

// Wraps torch's CPU allocator; allocations made while recording carry their
// size to their deleter. Outside a recording it adds nothing.
class LedgerAllocator final : public c10::Allocator {
 public:
  explicit LedgerAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = base_->allocate(bytes);
    if (!ledger().recording) return inner;
    ledger().record(int64_t(bytes));
    auto* tracked = new Tracked{std::move(inner), int64_t(bytes)};
    void* data = tracked->inner.get();
    const c10::Device device = tracked->inner.device();
    return {data, tracked, &release, device};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Tracked {
    c10::DataPtr inner;
    int64_t bytes;
  };

  static void release(void* context) {
    auto* tracked = static_cast<Tracked*>(context);
    ledger().record(-tracked->bytes);
    delete tracked;
  }

  c10::Allocator* base_;
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("ledger_start", &ledger_start,
             "Record every CPU allocation (+bytes) and free (-bytes) from now on.");
  module.def("ledger_stop", &ledger_stop, "Stop recording; the events since ledger_start, in order.");
}
