// Argument checks shared by every backend of every op, the fake (meta)
// kernels of csrc/meta.cpp included: the cheap, always-on half of the
// validation DESIGN.md asks for, one routine per op so that the kernels and
// the fakes raise the same errors. Each failure names the argument.
//
// Sizes are read as SymInts: under torch.compile with dynamic shapes the fake
// kernels see symbolic sizes, and dtype, rank, device and consistency checks
// apply to them all the same (a comparison of symbolic sizes becomes a guard).
// Only checks that need a concrete number (an int64 overflow bound, memory
// addresses) are skipped where a size is symbolic; they run on the real call.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace sltrain {

// Sizes of W = scale * B @ A + S with S in CSR form.
struct FactorDims {
  int64_t m, n, r, nnz;
};

// FactorDims as the checks read them (symbolic in a fake kernel under torch.compile).
struct SymFactorDims {
  c10::SymInt m, n, r, nnz;

  // The sizes of a real call (the CPU and CUDA kernels never see symbolic ones).
  FactorDims concrete() const;
};

// count > m * n, for non-negative sizes, without overflowing int64.
bool exceeds_product(int64_t count, int64_t m, int64_t n);

// col_idx holds int32 columns, or uint16 ones (2 bytes a nonzero instead of 4)
// where the input width n is at most this.
constexpr int64_t kCompactColumnLimit = 65536;

// The int32 columns the training kernels read: col_idx itself, or 16-bit
// columns widened for this call only (nnz * 4 bytes, freed when it returns).
// One index type in every training kernel; the decode kernels read both.
at::Tensor int32_columns(const at::Tensor& col_idx);

// A [r, n], B [m, r], values [nnz], row_ptr int32 [m + 1], col_idx int32 or uint16 [nnz],
// floating tensors of one supported dtype, all on one device.
SymFactorDims check_factors(const char* op, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& values, const at::Tensor& row_ptr,
                            const at::Tensor& col_idx, double scale);

// Every argument of sl_matmul: the factors, x [..., n] of their dtype and
// device, and bias [m] if given.
SymFactorDims check_sl_matmul(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& values, const at::Tensor& row_ptr,
                              const at::Tensor& col_idx, double scale,
                              const std::optional<at::Tensor>& bias);

// Every argument of sl_matmul_inference (sl_matmul's).
SymFactorDims check_sl_matmul_inference(const at::Tensor& x, const at::Tensor& A,
                                        const at::Tensor& B, const at::Tensor& values,
                                        const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                        double scale, const std::optional<at::Tensor>& bias);

// Every argument of sl_matmul_backward: sl_matmul's (without bias), and
// grad_y [..., m] with x's leading dimensions.
SymFactorDims check_sl_matmul_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                       const at::Tensor& A, const at::Tensor& B,
                                       const at::Tensor& values, const at::Tensor& row_ptr,
                                       const at::Tensor& col_idx, double scale);

// The layout half of validate_support: m, n >= 0, row_ptr and col_idx 1-D
// int32 on one device, row_ptr [m + 1], col_idx no longer than m * n. The
// O(nnz) half (monotone row_ptr, columns in range and increasing) reads values.
void check_support(const char* op, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                   const c10::SymInt& m, int64_t n);

// transpose_support's arguments: a support (check_support) with m + 1 =
// row_ptr's length >= 1 and n an int32 index bound. Returns m.
c10::SymInt check_transpose_support(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                    int64_t n);

// _random_support_fill's arguments: contiguous int32 row_ptr [m + 1 >= 1] and
// col_idx [nnz] on one device, n an int32 index bound, nnz <= m * n positions
// to draw (more would never be found) and nnz <= 2^31 - 1 (int32 row_ptr).
void check_random_support_fill(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t n);

// Every list and hyper-parameter of fused_adam_ / fused_adam8bit_: equal list
// lengths, params contiguous on `device` with grads of their dtype and shape,
// states of the right dtype and size (float32, float64 for float64 params;
// 8-bit: int8 / uint8 codes and float32 absmaxes per kQuantBlock; 4-bit,
// state_bits = 4: uint8 bytes of two codes and absmaxes per kQuant4Block), and
// no two tensors sharing memory.
void check_fused_adam(const char* op, at::TensorList params, at::TensorList grads,
                      at::TensorList exp_avgs, at::TensorList exp_avg_sqs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step,
                      c10::Device device);
void check_fused_adam8bit(const char* op, at::TensorList params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_absmaxes,
                          at::TensorList sqrt_exp_avg_sqs, at::TensorList sqrt_exp_avg_sq_absmaxes,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          int64_t step, c10::Device device, int state_bits = 8);

// The optional device scalars of a capturable Adam call: `step_tensor` an
// int64 tensor of one element (the op adds 1 to it and takes the sum as the
// step), `lr_tensor` a float32 or float64 tensor of one element; both on `device`.
void check_adam_device_scalars(const char* op, const std::optional<at::Tensor>& step_tensor,
                               const std::optional<at::Tensor>& lr_tensor, c10::Device device);

}  // namespace sltrain
