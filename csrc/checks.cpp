#include "checks.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/quant4.h"
#include "common/quant8.h"

namespace sltrain {
namespace {

bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
                   t.scalar_type(), " but `", like_name, "` has ", like.scalar_type(),
                   "; the floating inputs of one call must share one dtype");
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": `", name, "` is on ", t.device(), " but `",
                    like_name, "` is on ", like.device());
}

void check_int32(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, op, ": `", name, "` must be int32, got ",
                   t.scalar_type());
}

void check_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": `", name, "` must be 1-D, got shape ", t.sym_sizes());
}

void check_int32_vector(const char* op, const char* name, const at::Tensor& t) {
  check_int32(op, name, t);
  check_vector(op, name, t);
}

// An index vector's length and device (its dtype is checked apart: row_ptr
// is int32, col_idx int32 or uint16).
void check_index_layout(const char* op, const char* name, const at::Tensor& t,
                        const c10::SymInt& expected_numel, const char* expected_what,
                        const char* like_name, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == expected_numel, op, ": `", name,
                    "` must be 1-D with ", expected_what, " = ", expected_numel,
                    " entries, got shape ", t.sym_sizes());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
                    " but `", like_name, "` is on ", like.device());
}

void check_columns(const char* op, const at::Tensor& col_idx, const c10::SymInt& n) {
  TORCH_CHECK_TYPE(col_idx.scalar_type() == at::kInt || col_idx.scalar_type() == at::kUInt16, op,
                   ": `col_idx` must be int32 or uint16, got ", col_idx.scalar_type());
  TORCH_CHECK_VALUE(col_idx.scalar_type() != at::kUInt16 || n <= kCompactColumnLimit, op,
                    ": uint16 `col_idx` holds columns below 65536, but n = ", n, " exceeds 65536");
}

void check_list_lengths(const char* op, std::initializer_list<std::pair<const char*, size_t>> lists) {
  const auto& [first_name, first_size] = *lists.begin();
  for (const auto& [name, size] : lists) {
    TORCH_CHECK_VALUE(size == first_size, op, ": the tensor lists must have equal lengths, but `",
                      first_name, "` has ", first_size, " and `", name, "` has ", size);
  }
}

void check_input(const char* op, const char* name, const at::Tensor& x,
                 const c10::SymInt& features, const at::Tensor& like, const char* features_name) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.sym_size(-1) == features, op, ": `", name,
                    "` must have shape [..., ", features_name, "] with ", features_name, " = ",
                    features, ", got shape ", x.sym_sizes());
  check_same(op, name, x, "A", like);
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, const SymFactorDims& dims,
                const at::Tensor& like) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == dims.m, op,
                    ": `bias` must be 1-D [m] with m = ", dims.m, ", got shape ", bias->sym_sizes());
  check_same(op, "bias", *bias, "A", like);
}

void check_grad_output(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                       const SymFactorDims& dims, const at::Tensor& like) {
  check_input(op, "grad_y", grad_y, dims.m, like, "m");
  TORCH_CHECK_VALUE(grad_y.dim() == x.dim() && grad_y.sym_sizes().slice(0, x.dim() - 1) ==
                                                   x.sym_sizes().slice(0, x.dim() - 1),
                    op, ": `grad_y` must have `x`'s leading dimensions, got ", grad_y.sym_sizes(),
                    " for x of shape ", x.sym_sizes());
}

// count > m * n where all three are concrete; symbolic sizes skip this
// overflow-safe bound (the real call checks it).
bool exceeds_sym_product(const c10::SymInt& count, const c10::SymInt& m, const c10::SymInt& n) {
  const auto c = count.maybe_as_int(), rows = m.maybe_as_int(), cols = n.maybe_as_int();
  return c && rows && cols && exceeds_product(*c, *rows, *cols);
}

// Adam hyper-parameters: lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0, step >= 1.
void check_adam_hyper(const char* op, double lr, double beta1, double beta2, double eps,
                      double weight_decay, int64_t step) {
  TORCH_CHECK_VALUE(lr >= 0 && std::isfinite(lr), op, ": `lr` must be finite and >= 0, got ", lr);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1, op, ": `beta1` must be in [0, 1), got ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0 && beta2 < 1, op, ": `beta2` must be in [0, 1), got ", beta2);
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), op, ": `eps` must be finite and > 0, got ", eps);
  TORCH_CHECK_VALUE(weight_decay >= 0 && std::isfinite(weight_decay), op,
                    ": `weight_decay` must be finite and >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(step >= 1, op, ": `step` must be >= 1 (the step being taken), got ", step);
}

// params[i] contiguous, of a supported dtype and on `device`; grads[i] its dtype, shape, device.
void check_adam_param(const char* op, size_t i, const at::Tensor& param, const at::Tensor& grad,
                      c10::Device device) {
  TORCH_CHECK_TYPE(is_supported_float(param.scalar_type()), op, ": `params`[", i,
                   "] must be float32, float64, bfloat16 or float16, got ", param.scalar_type());
  TORCH_CHECK_VALUE(param.device() == device, op, ": `params`[", i, "] is on ", param.device(),
                    " but `params`[0] is on ", device);
  TORCH_CHECK_VALUE(param.is_contiguous(), op, ": `params`[", i,
                    "] must be contiguous (it is updated in place)");
  TORCH_CHECK_TYPE(grad.scalar_type() == param.scalar_type(), op, ": `grads`[", i, "] has dtype ",
                   grad.scalar_type(), " but its param has ", param.scalar_type());
  TORCH_CHECK_VALUE(grad.sym_sizes() == param.sym_sizes(), op, ": `grads`[", i, "] has shape ",
                    grad.sym_sizes(), " but `params`[", i, "] has ", param.sym_sizes());
  TORCH_CHECK_VALUE(grad.device() == device, op, ": `grads`[", i, "] is on ", grad.device(),
                    " but `params`[", i, "] is on ", device);
}

// A contiguous state tensor `name`[i] of `dtype` with `numel` entries on param's device.
void check_adam_state(const char* op, const char* name, size_t i, const at::Tensor& state,
                      at::ScalarType dtype, const c10::SymInt& numel, const at::Tensor& param) {
  TORCH_CHECK_TYPE(state.scalar_type() == dtype, op, ": `", name, "`[", i, "] must be ", dtype,
                   " for a ", param.scalar_type(), " param, got ", state.scalar_type());
  TORCH_CHECK_VALUE(state.sym_numel() == numel && state.is_contiguous(), op, ": `", name, "`[", i,
                    "] must be contiguous with ", numel, " entries, got shape ", state.sym_sizes());
  TORCH_CHECK_VALUE(state.device() == param.device(), op, ": `", name, "`[", i, "] is on ",
                    state.device(), " but `params`[", i, "] is on ", param.device());
}

// No tensor the update writes (params, states) may share memory with any
// other tensor of the call: an aliased state, a parameter listed twice or a
// gradient that is a view of a parameter (a transpose, an expand) would be
// read after being written or updated twice. Each tensor is placed by its
// byte range its strides span, from the lowest to the highest element it
// reaches (a strided view counts with every byte in between): by address,
// which also catches two storages over one buffer (from_blob, numpy views);
// tensors without memory (meta, and the fake tensors torch.compile traces
// with) by their storage and byte offset, so the fake kernels see the same
// aliasing. Sorting the ranges finds any overlap in O(k log k). A symbolic
// size, stride or offset leaves a tensor to the real call.
void check_no_aliasing(const char* op,
                       std::initializer_list<std::pair<const char*, at::TensorList>> lists) {
  struct Range {
    const void* storage;  // nullptr: `begin` and `end` are addresses
    uintptr_t begin, end;
    const char* name;
    size_t index;
  };
  std::vector<Range> ranges;
  for (const auto& [name, list] : lists) {
    for (size_t i = 0; i < list.size(); ++i) {
      const at::Tensor& t = list[i];
      const auto numel = t.sym_numel().maybe_as_int();
      const auto offset = t.sym_storage_offset().maybe_as_int();
      if (!numel || !offset || *numel == 0 || !t.has_storage()) continue;
      int64_t last = *offset;  // the highest element index the tensor reaches
      bool concrete = true;
      for (int64_t d = 0; d < t.dim() && concrete; ++d) {
        const auto size = t.sym_size(d).maybe_as_int(), stride = t.sym_stride(d).maybe_as_int();
        concrete = size && stride;
        if (concrete) last += (*size - 1) * *stride;
      }
      if (!concrete) continue;
      const auto element = uintptr_t(t.element_size());
      const auto first_byte = uintptr_t(*offset) * element, end_byte = uintptr_t(last + 1) * element;
      const void* data = t.is_meta() ? nullptr : t.storage().data();
      if (data == nullptr) {
        ranges.push_back({t.storage().unsafeGetStorageImpl(), first_byte, end_byte, name, i});
      } else {
        const auto base = reinterpret_cast<uintptr_t>(data);
        ranges.push_back({nullptr, base + first_byte, base + end_byte, name, i});
      }
    }
  }
  const auto before = [](const Range& a, const Range& b) {
    return std::tie(a.storage, a.begin) < std::tie(b.storage, b.begin);
  };
  std::sort(ranges.begin(), ranges.end(), before);
  // Sorted by start: if any two ranges overlap, some two neighbours do.
  for (size_t k = 1; k < ranges.size(); ++k) {
    const Range &a = ranges[k - 1], &b = ranges[k];
    TORCH_CHECK_VALUE(a.storage != b.storage || b.begin >= a.end, op, ": `", a.name, "`[", a.index,
                      "] and `", b.name, "`[", b.index,
                      "] share memory (overlapping bytes of one buffer, e.g. through a view); every "
                      "tensor of the update must have its own");
  }
}

}  // namespace

FactorDims SymFactorDims::concrete() const {
  return {m.expect_int(), n.expect_int(), r.expect_int(), nnz.expect_int()};
}

bool exceeds_product(int64_t count, int64_t m, int64_t n) {
  if (m == 0 || n == 0) return count > 0;
  if (m > std::numeric_limits<int64_t>::max() / n) return false;  // m * n exceeds every int64
  return count > m * n;
}

at::Tensor int32_columns(const at::Tensor& col_idx) {
  return col_idx.scalar_type() == at::kInt ? col_idx.contiguous() : col_idx.to(at::kInt);
}

SymFactorDims check_factors(const char* op, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& values, const at::Tensor& row_ptr,
                            const at::Tensor& col_idx, double scale) {
  TORCH_CHECK_TYPE(is_supported_float(A.scalar_type()), op,
                   ": `A` must be float32, float64, bfloat16 or float16, got ", A.scalar_type());
  TORCH_CHECK_VALUE(A.dim() == 2, op, ": `A` must be 2-D [r, n], got shape ", A.sym_sizes());
  TORCH_CHECK_VALUE(B.dim() == 2 && B.sym_size(1) == A.sym_size(0), op,
                    ": `B` must be 2-D [m, r] with r = A.size(0) = ", A.sym_size(0),
                    ", got shape ", B.sym_sizes());
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": `values` must be 1-D [nnz], got shape ",
                    values.sym_sizes());
  check_same(op, "B", B, "A", A);
  check_same(op, "values", values, "A", A);
  const SymFactorDims dims{B.sym_size(0), A.sym_size(1), A.sym_size(0), values.sym_size(0)};
  check_int32(op, "row_ptr", row_ptr);
  check_index_layout(op, "row_ptr", row_ptr, dims.m + 1, "m + 1", "values", values);
  check_columns(op, col_idx, dims.n);
  check_index_layout(op, "col_idx", col_idx, dims.nnz, "nnz = values.numel()", "values", values);
  TORCH_CHECK_VALUE(!exceeds_sym_product(dims.nnz, dims.m, dims.n), op, ": `values` has ",
                    dims.nnz, " entries, more than the m * n = ", dims.m, " * ", dims.n, " of W");
  // Kernels may multiply by scale in the factors' dtype: it must be representable there.
  double largest = std::numeric_limits<double>::max();
  switch (A.scalar_type()) {
    case at::kFloat: largest = std::numeric_limits<float>::max(); break;
    case at::kBFloat16: largest = double(std::numeric_limits<c10::BFloat16>::max()); break;
    case at::kHalf: largest = double(std::numeric_limits<c10::Half>::max()); break;
    default: break;
  }
  TORCH_CHECK_VALUE(std::isfinite(scale) && std::abs(scale) <= largest, op,
                    ": `scale` must be finite and at most ", largest, " in magnitude for ",
                    A.scalar_type(), " factors, got ", scale);
  return dims;
}

SymFactorDims check_sl_matmul(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& values, const at::Tensor& row_ptr,
                              const at::Tensor& col_idx, double scale,
                              const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sl_matmul";
  const SymFactorDims dims = check_factors(op, A, B, values, row_ptr, col_idx, scale);
  check_input(op, "x", x, dims.n, A, "n");
  check_bias(op, bias, dims, A);
  return dims;
}

SymFactorDims check_sl_matmul_inference(const at::Tensor& x, const at::Tensor& A,
                                        const at::Tensor& B, const at::Tensor& values,
                                        const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                        double scale, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sl_matmul_inference";
  const SymFactorDims dims = check_factors(op, A, B, values, row_ptr, col_idx, scale);
  check_input(op, "x", x, dims.n, A, "n");
  check_bias(op, bias, dims, A);
  return dims;
}

SymFactorDims check_sl_matmul_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                       const at::Tensor& A, const at::Tensor& B,
                                       const at::Tensor& values, const at::Tensor& row_ptr,
                                       const at::Tensor& col_idx, double scale) {
  constexpr const char* op = "sl_matmul_backward";
  const SymFactorDims dims = check_factors(op, A, B, values, row_ptr, col_idx, scale);
  check_input(op, "x", x, dims.n, A, "n");
  check_grad_output(op, grad_y, x, dims, A);
  return dims;
}

void check_support(const char* op, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                   const c10::SymInt& m, int64_t n) {
  TORCH_CHECK_VALUE(m >= 0 && n >= 0, op, ": `m` and `n` must be non-negative, got ", m, " and ", n);
  check_int32_vector(op, "row_ptr", row_ptr);
  check_columns(op, col_idx, n);
  check_vector(op, "col_idx", col_idx);
  TORCH_CHECK_VALUE(row_ptr.sym_size(0) == m + 1, op, ": `row_ptr` must have m + 1 = ", m + 1,
                    " entries, got ", row_ptr.sym_size(0));
  TORCH_CHECK_VALUE(col_idx.device() == row_ptr.device(), op, ": `col_idx` is on ",
                    col_idx.device(), " but `row_ptr` is on ", row_ptr.device());
  const c10::SymInt nnz = col_idx.sym_size(0);
  TORCH_CHECK_VALUE(!exceeds_sym_product(nnz, m, n), op, ": `col_idx` has ", nnz,
                    " entries, more than m * n = ", m, " * ", n);
}

c10::SymInt check_transpose_support(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                    int64_t n) {
  constexpr const char* op = "transpose_support";
  check_int32_vector(op, "row_ptr", row_ptr);
  TORCH_CHECK_VALUE(row_ptr.sym_size(0) >= 1, op,
                    ": `row_ptr` must have m + 1 >= 1 entries, got shape ", row_ptr.sym_sizes());
  TORCH_CHECK_VALUE(n <= std::numeric_limits<int32_t>::max(), op,
                    ": `n` must be in [0, 2^31 - 1], got ", n);
  const c10::SymInt m = row_ptr.sym_size(0) - 1;
  check_support(op, row_ptr, col_idx, m, n);
  return m;
}

void check_random_support_fill(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t n) {
  constexpr const char* op = "_random_support_fill";
  check_int32_vector(op, "row_ptr", row_ptr);
  check_int32_vector(op, "col_idx", col_idx);
  TORCH_CHECK_VALUE(row_ptr.sym_size(0) >= 1, op, ": `row_ptr` must have m + 1 >= 1 entries");
  TORCH_CHECK_VALUE(row_ptr.is_contiguous() && col_idx.is_contiguous(), op,
                    ": `row_ptr` and `col_idx` must be contiguous (they are written in place)");
  TORCH_CHECK_VALUE(col_idx.device() == row_ptr.device(), op, ": `col_idx` is on ",
                    col_idx.device(), " but `row_ptr` is on ", row_ptr.device());
  TORCH_CHECK_VALUE(n >= 0 && n <= std::numeric_limits<int32_t>::max(), op,
                    ": `n` must be in [0, 2^31 - 1], got ", n);
  const c10::SymInt m = row_ptr.sym_size(0) - 1, nnz = col_idx.sym_size(0);
  TORCH_CHECK_VALUE(!exceeds_sym_product(nnz, m, n), op, ": `col_idx` has ", nnz,
                    " entries, more than the m * n = ", m, " * ", n, " positions to draw from");
  TORCH_CHECK_VALUE(nnz <= std::numeric_limits<int32_t>::max(), op, ": `col_idx` has ", nnz,
                    " entries; int32 `row_ptr` holds at most 2^31 - 1");
}

void check_fused_adam(const char* op, at::TensorList params, at::TensorList grads,
                      at::TensorList exp_avgs, at::TensorList exp_avg_sqs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step,
                      c10::Device device) {
  check_list_lengths(op, {{"params", params.size()}, {"grads", grads.size()},
                          {"exp_avgs", exp_avgs.size()}, {"exp_avg_sqs", exp_avg_sqs.size()}});
  check_adam_hyper(op, lr, beta1, beta2, eps, weight_decay, step);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    check_adam_param(op, i, param, grads[i], device);
    const auto state_dtype = param.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    check_adam_state(op, "exp_avgs", i, exp_avgs[i], state_dtype, param.sym_numel(), param);
    check_adam_state(op, "exp_avg_sqs", i, exp_avg_sqs[i], state_dtype, param.sym_numel(), param);
  }
  check_no_aliasing(op, {{"params", params}, {"grads", grads}, {"exp_avgs", exp_avgs},
                         {"exp_avg_sqs", exp_avg_sqs}});
}

void check_fused_adam8bit(const char* op, at::TensorList params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_absmaxes,
                          at::TensorList sqrt_exp_avg_sqs, at::TensorList sqrt_exp_avg_sq_absmaxes,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          int64_t step, c10::Device device, int state_bits) {
  check_list_lengths(op, {{"params", params.size()}, {"grads", grads.size()},
                          {"exp_avgs", exp_avgs.size()}, {"exp_avg_absmaxes", exp_avg_absmaxes.size()},
                          {"sqrt_exp_avg_sqs", sqrt_exp_avg_sqs.size()},
                          {"sqrt_exp_avg_sq_absmaxes", sqrt_exp_avg_sq_absmaxes.size()}});
  check_adam_hyper(op, lr, beta1, beta2, eps, weight_decay, step);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    check_adam_param(op, i, param, grads[i], device);
    TORCH_CHECK_TYPE(param.scalar_type() != at::kDouble, op, ": `params`[", i, "] is float64; ", state_bits,
                     "-bit states are for float32, bfloat16 and float16 params");
    const c10::SymInt numel = param.sym_numel();
    // 8-bit: a code a byte, int8 for the signed moment; 4-bit: two codes a byte, both uint8.
    const bool four_bit = state_bits == 4;
    const int64_t block = four_bit ? kQuant4Block : kQuantBlock;
    const c10::SymInt blocks = (numel + block - 1) / block;
    const c10::SymInt code_bytes = four_bit ? (numel + 1) / 2 : numel;
    check_adam_state(op, "exp_avgs", i, exp_avgs[i], four_bit ? at::kByte : at::kChar, code_bytes, param);
    check_adam_state(op, "exp_avg_absmaxes", i, exp_avg_absmaxes[i], at::kFloat, blocks, param);
    check_adam_state(op, "sqrt_exp_avg_sqs", i, sqrt_exp_avg_sqs[i], at::kByte, code_bytes, param);
    check_adam_state(op, "sqrt_exp_avg_sq_absmaxes", i, sqrt_exp_avg_sq_absmaxes[i], at::kFloat,
                     blocks, param);
  }
  check_no_aliasing(op, {{"params", params}, {"grads", grads}, {"exp_avgs", exp_avgs},
                         {"exp_avg_absmaxes", exp_avg_absmaxes}, {"sqrt_exp_avg_sqs", sqrt_exp_avg_sqs},
                         {"sqrt_exp_avg_sq_absmaxes", sqrt_exp_avg_sq_absmaxes}});
}

void check_adam_device_scalars(const char* op, const std::optional<at::Tensor>& step_tensor,
                               const std::optional<at::Tensor>& lr_tensor, c10::Device device) {
  if (step_tensor) {
    TORCH_CHECK_TYPE(step_tensor->scalar_type() == at::kLong, op, ": `step_tensor` must be int64, got ",
                     step_tensor->scalar_type());
    TORCH_CHECK_VALUE(step_tensor->numel() == 1 && step_tensor->device() == device, op,
                      ": `step_tensor` must hold one element on ", device, ", got shape ",
                      step_tensor->sizes(), " on ", step_tensor->device());
  }
  if (lr_tensor) {
    TORCH_CHECK_TYPE(lr_tensor->scalar_type() == at::kFloat || lr_tensor->scalar_type() == at::kDouble, op,
                     ": `lr_tensor` must be float32 or float64, got ", lr_tensor->scalar_type());
    TORCH_CHECK_VALUE(lr_tensor->numel() == 1 && lr_tensor->device() == device, op,
                      ": `lr_tensor` must hold one element on ", device, ", got shape ",
                      lr_tensor->sizes(), " on ", lr_tensor->device());
  }
}

}  // namespace sltrain
