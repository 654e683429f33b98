// The sltrain operator library: every schema, defined once. Backends register
// their kernels in csrc/cpu/ops.cpp and csrc/cuda/ops.cu; fake kernels and
// autograd are registered in Python (sltrain_ext/ops.py).
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <string>

#include "config.h"

namespace sltrain {
namespace {

std::atomic<int> g_path_override{int(MatmulPath::kAuto)};
std::atomic<int64_t> g_workspace_bytes{int64_t{64} << 20};

const char* path_name(MatmulPath path) {
  switch (path) {
    case MatmulPath::kFactored: return "factored";
    case MatmulPath::kMaterialized: return "materialized";
    default: return "auto";
  }
}

void set_matmul_config(const std::string& path, int64_t workspace_bytes) {
  MatmulPath parsed;
  if (path == "auto") {
    parsed = MatmulPath::kAuto;
  } else if (path == "factored") {
    parsed = MatmulPath::kFactored;
  } else if (path == "materialized") {
    parsed = MatmulPath::kMaterialized;
  } else {
    TORCH_CHECK_VALUE(false, "set_matmul_config: `path` must be 'auto', 'factored' or ",
                      "'materialized', got '", path, "'");
  }
  TORCH_CHECK_VALUE(workspace_bytes > 0, "set_matmul_config: `workspace_bytes` must be positive, ",
                    "got ", workspace_bytes);
  g_path_override = int(parsed);
  g_workspace_bytes = workspace_bytes;
}

std::tuple<std::string, int64_t> get_matmul_config() {
  return {path_name(matmul_path_override()), matmul_workspace_bytes()};
}

std::string matmul_path(int64_t b, int64_t m, int64_t n, int64_t r, int64_t nnz,
                        c10::Device device) {
  TORCH_CHECK_NOT_IMPLEMENTED(device.is_cpu() || device.is_cuda(), "matmul_path: no cost model for ",
                              device);
  for (const auto& [name, size] : {std::pair{"b", b}, {"m", m}, {"n", n}, {"r", r}, {"nnz", nnz}}) {
    TORCH_CHECK_VALUE(size >= 0, "matmul_path: `", name, "` must be non-negative, got ", size);
  }
  return path_name(
      resolve_matmul_path(b, m, n, r, nnz, device.is_cuda() ? kCudaPathCosts : kCpuPathCosts));
}

std::tuple<at::Tensor, at::Tensor> random_support(int64_t m, int64_t n, int64_t nnz, int64_t seed,
                                                  std::optional<c10::Device> device) {
  constexpr int64_t kIndexLimit = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(m >= 0 && m <= kIndexLimit, "random_support: `m` must be in [0, 2^31 - 1], got ",
                    m);
  TORCH_CHECK_VALUE(n >= 0 && n <= kIndexLimit, "random_support: `n` must be in [0, 2^31 - 1], got ",
                    n);
  TORCH_CHECK_VALUE(nnz >= 0 && nnz <= m * n, "random_support: `nnz` must be in [0, m * n] = [0, ",
                    m * n, "], got ", nnz);
  TORCH_CHECK_VALUE(nnz <= kIndexLimit, "random_support: `nnz` must fit int32 indices (<= 2^31 - 1), got ",
                    nnz);
  const auto options = at::TensorOptions(at::kInt).device(device.value_or(c10::Device(c10::kCPU)));
  at::Tensor row_ptr = at::empty({m + 1}, options);
  at::Tensor col_idx = at::empty({nnz}, options);
  static const auto fill = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("sltrain::_random_support_fill", "")
                               .typed<void(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  fill.call(row_ptr, col_idx, n, seed);
  return {row_ptr, col_idx};
}

}  // namespace

MatmulPath matmul_path_override() { return MatmulPath(g_path_override.load()); }
int64_t matmul_workspace_bytes() { return g_workspace_bytes.load(); }

}  // namespace sltrain

TORCH_LIBRARY(sltrain, m) {
  m.def(
      "sl_matmul(Tensor x, Tensor A, Tensor B, Tensor values, Tensor row_ptr, Tensor col_idx, "
      "float scale, Tensor? bias=None) -> Tensor");
  m.def(
      "sl_matmul_backward(Tensor grad_y, Tensor x, Tensor A, Tensor B, Tensor values, "
      "Tensor row_ptr, Tensor col_idx, float scale, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // sl_matmul's forward without autograd, for inference: one op per layer
  // call (no Python autograd formula runs), and optionally a uint16 copy of
  // col_idx (n <= 65536) that the CPU decode kernel reads instead, a quarter
  // fewer bytes. Gradients go through sl_matmul only.
  m.def(
      "sl_matmul_inference(Tensor x, Tensor A, Tensor B, Tensor values, Tensor row_ptr, "
      "Tensor col_idx, float scale, Tensor? bias=None) -> Tensor");
  m.def(
      "densify(Tensor A, Tensor B, Tensor values, Tensor row_ptr, Tensor col_idx, float scale) "
      "-> Tensor");
  // With step_tensor (capturable steps, as torch.optim's capturable=True) the
  // op adds 1 to it on the device and takes the sum as the step, ignoring
  // `step`; with lr_tensor it reads the learning rate there, ignoring `lr`:
  // a CUDA graph of the call replayed N times takes N successive steps.
  m.def(
      "fused_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int step, bool decoupled, Tensor(z!)? step_tensor=None, "
      "Tensor? lr_tensor=None) -> ()");
  // fused_adam_ with 8-bit block-quantised states (csrc/common/quant8.h): int8
  // exp_avg codes, uint8 codes of sqrt(exp_avg_sq), one float32 absmax per 256.
  m.def(
      "fused_adam8bit_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_absmaxes, Tensor(d!)[] sqrt_exp_avg_sqs, "
      "Tensor(e!)[] sqrt_exp_avg_sq_absmaxes, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int step, bool decoupled, Tensor(z!)? step_tensor=None, "
      "Tensor? lr_tensor=None) -> ()");
  // The same with 4-bit states (csrc/common/quant4.h): uint8 bytes of two codes
  // each (exp_avg, sqrt(exp_avg_sq)), one float32 absmax per 128.
  m.def(
      "fused_adam4bit_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_absmaxes, Tensor(d!)[] sqrt_exp_avg_sqs, "
      "Tensor(e!)[] sqrt_exp_avg_sq_absmaxes, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int step, bool decoupled, Tensor(z!)? step_tensor=None, "
      "Tensor? lr_tensor=None) -> ()");
  m.def(
      "random_support(int m, int n, int nnz, int seed, Device? device=None) -> (Tensor, Tensor)");
  // The per-device half of random_support: fills preallocated CSR arrays
  // (row_ptr [m + 1], col_idx [nnz]) so that the dispatcher can pick the
  // backend from their device.
  m.def("_random_support_fill(Tensor(a!) row_ptr, Tensor(b!) col_idx, int n, int seed) -> ()");
  // The CSC copy of a valid support, packed as one int32 tensor
  // [col_ptr (n + 1) | pad | row_idx (nnz) | pad | entry (nnz)], segments
  // 16-byte aligned (csrc/common/csc_layout.h), entry being each CSC entry's
  // CSR position. The CUDA factored backward computes dx = g @ S from it
  // without atomics; it builds and caches its own copy (csrc/cuda/ops.cu) and
  // takes none from the caller, so no user-made CSC ever reaches a kernel.
  m.def("transpose_support(Tensor row_ptr, Tensor col_idx, int n) -> Tensor");
  // O(nnz) check of a CSR support; raises ValueError naming what is wrong.
  m.def("validate_support(Tensor row_ptr, Tensor col_idx, int m, int n) -> ()");
  m.def("set_matmul_config(str path, int workspace_bytes) -> ()");
  m.def("get_matmul_config() -> (str, int)");
  m.def("matmul_path(int b, int m, int n, int r, int nnz, Device device) -> str");

  m.impl("random_support", c10::DispatchKey::CompositeExplicitAutograd, &sltrain::random_support);
  m.impl("set_matmul_config", c10::DispatchKey::CompositeExplicitAutograd,
         &sltrain::set_matmul_config);
  m.impl("get_matmul_config", c10::DispatchKey::CompositeExplicitAutograd,
         &sltrain::get_matmul_config);
  m.impl("matmul_path", c10::DispatchKey::CompositeExplicitAutograd, &sltrain::matmul_path);
}

// `import sltrain_ext._C` loads this library, and with it the registrations
// above; the module itself has no Python functions (no pybind11 needed).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
