// Every CUDA kernel of csrc/cuda, run on the CPU through the project's
// emulator (tests/cuda_emulator) and checked against the torch-free CPU
// kernels (bit for bit where the arithmetic is the same) or a float64
// reference. Outputs are poisoned (NaN / 0xff bytes) before every launch.
// Built three times by CMake: plain, ASan+UBSan and TSan (see CMakeLists.txt).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "common/csc_layout.h"
#include "cpu/torch_free_kernels/kernels.h"
#include "cuda/adam.cuh"
#include "cuda/csr.cuh"
#include "cuda/decode.cuh"
#include "cuda/support.cuh"
#include "../cpp/expect.h"

using namespace sltrain;

namespace {

// memcpy for arrays that may be empty (std::vector::data() may then be null).
void copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

// ---- device memory -----------------------------------------------------------------

template <class T>
struct DeviceArray {
  T* data = nullptr;
  size_t size = 0;
  explicit DeviceArray(size_t n, unsigned char fill = 0xff) : size(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&data), std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess)
      std::abort();
    cudaMemset(data, fill, std::max<size_t>(n, 1) * sizeof(T));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    cudaMemcpy(data, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  DeviceArray(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(data); }
  std::vector<T> host() const { return host_of(data, size); }
  static std::vector<T> host_of(const T* device, size_t n) {
    std::vector<T> out(n);
    cudaMemcpy(out.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
  }
};

// cudaMalloc'd scratch that lives until the test case ends.
struct Scratch {
  std::vector<void*> blocks;
  void* operator()(size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 1)) != cudaSuccess) std::abort();
    cudaMemset(p, 0xff, std::max<size_t>(bytes, 1));
    blocks.push_back(p);
    return p;
  }
  ~Scratch() {
    for (void* p : blocks) cudaFree(p);
  }
};

// ---- element types: the device type, its CPU twin, and how exact it is -------

template <class T> struct Traits;
template <> struct Traits<float> {
  using Cpu = float;
  static constexpr double kEps = 2e-6;
  static constexpr const char* kName = "float32";
  static float from(double x) { return float(x); }
  static double value(float x) { return x; }
};
template <> struct Traits<double> {
  using Cpu = double;
  static constexpr double kEps = 1e-13;
  static constexpr const char* kName = "float64";
  static double from(double x) { return x; }
  static double value(double x) { return x; }
};
template <> struct Traits<__nv_bfloat16> {
  using Cpu = bf16;
  static constexpr double kEps = 1.0 / 128;  // 2^-7: one rounding of the output, plus float sums
  static constexpr const char* kName = "bfloat16";
  static __nv_bfloat16 from(double x) { return __float2bfloat16_rn(float(x)); }
  static double value(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <> struct Traits<__half> {
  using Cpu = fp16;
  static constexpr double kEps = 1.0 / 1024;
  static constexpr const char* kName = "float16";
  static __half from(double x) { return __float2half_rn(float(x)); }
  static double value(__half x) { return __half2float(x); }
};

template <class T>
std::vector<T> random_values(size_t n, std::mt19937& gen) {
  std::normal_distribution<double> normal;
  std::vector<T> out(n);
  for (auto& x : out) x = Traits<T>::from(normal(gen));
  return out;
}

struct Support {
  int64_t m, n, nnz;
  std::vector<int32_t> row_ptr, col_idx;
};

Support make_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed) {
  Support s{m, n, nnz, std::vector<int32_t>(m + 1), std::vector<int32_t>(nnz)};
  cpu::random_support(m, n, nnz, seed, s.row_ptr.data(), s.col_idx.data());
  return s;
}

std::string shape(const Support& s) {
  return std::to_string(s.m) + "x" + std::to_string(s.n) + " nnz " + std::to_string(s.nnz);
}

// ---- support ----------------------------------------------------------------------

void test_random_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed) {
  const Support want = make_support(m, n, nnz, seed);
  DeviceArray<int32_t> row_ptr(m + 1), col_idx(nnz);
  Scratch scratch;
  const cudaError_t status =
      cuda::random_support(m, n, nnz, seed, row_ptr.data, col_idx.data, scratch, nullptr);
  expect(status == cudaSuccess && row_ptr.host() == want.row_ptr && col_idx.host() == want.col_idx,
         "random_support equals the CPU's bit for bit, " + shape(want));
}

void test_transpose_support(int64_t m, int64_t n, int64_t nnz) {
  const Support s = make_support(m, n, nnz, uint64_t(m * 7 + n));
  std::vector<int32_t> col_ptr(n + 1), row_idx(nnz), entry(nnz);
  cpu::transpose_support(m, n, nnz, s.row_ptr.data(), s.col_idx.data(), col_ptr.data(),
                         row_idx.data(), entry.data());
  // The CPU transpose itself against its definition.
  bool consistent = col_ptr[0] == 0 && col_ptr[n] == nnz;
  for (int64_t j = 0; j < n && consistent; ++j) {
    for (int64_t k = col_ptr[j]; k < col_ptr[j + 1]; ++k) {
      const int32_t e = entry[k];
      consistent = consistent && s.col_idx[e] == j && s.row_ptr[row_idx[k]] <= e &&
                   e < s.row_ptr[row_idx[k] + 1] && (k == col_ptr[j] || row_idx[k - 1] < row_idx[k]);
    }
  }
  expect(consistent, "cpu::transpose_support is the CSC of the support, " + shape(s));
  // On the device into one array, packed as the bindings pack it.
  const PackedCscLayout<int64_t> layout = packed_csc_layout(n, nnz);
  DeviceArray<int32_t> d_row_ptr(s.row_ptr), d_col_idx(s.col_idx), d_packed(layout.size);
  Scratch scratch;
  int32_t* const packed = d_packed.data;
  const cudaError_t status = cuda::transpose_support(m, n, nnz, d_row_ptr.data, d_col_idx.data, packed,
                                                     packed + layout.row_idx, packed + layout.entry, scratch,
                                                     nullptr);
  const std::vector<int32_t> got = d_packed.host();
  const auto segment = [&](int64_t begin, int64_t size) {
    return std::vector<int32_t>(got.begin() + begin, got.begin() + begin + size);
  };
  expect(status == cudaSuccess && segment(0, n + 1) == col_ptr && segment(layout.row_idx, nnz) == row_idx &&
             segment(layout.entry, nnz) == entry,
         "transpose_support equals the CPU's bit for bit, " + shape(s));
  // dx's transposed SpMM over the packed copy loads 4 entries at a time, at every n.
  DeviceArray<float> values(std::max<int64_t>(nnz, 1));
  const cuda::SpmmArgs<float> args{n, m, nnz, 8, packed, packed + layout.row_idx, packed + layout.entry,
                                   values.data, nullptr, m, nullptr, n, nullptr, true, false};
  expect(cuda::spmm_vector_loads(args), "the packed CSC takes the SpMM's vector path, " + shape(s));
}

// ---- scatter / gather into row chunks and column windows of W ---------------------

// The block of rows [row_begin, +rows) and columns [col_begin, col_end) of S
// added into w0 [rows, ld] by the kernel, against the same sums on the host,
// each rounded once to T as the kernel does; returns the kernel's block.
template <class T>
std::vector<T> check_scatter_block(const Support& s, int64_t n, const std::vector<T>& values,
                                   const std::vector<T>& w0, int64_t ld, int64_t row_begin, int64_t rows,
                                   int64_t col_begin, int64_t col_end) {
  using R = cuda::Acc<T>;
  DeviceArray<int32_t> row_ptr(s.row_ptr), col_idx(s.col_idx);
  DeviceArray<T> d_values(values), w(w0);
  const int64_t nnz = int64_t(values.size());
  expect(cuda::csr_scatter_add_block(row_begin, rows, col_begin, col_end, n, nnz, row_ptr.data, col_idx.data,
                                     d_values.data, w.data, ld, nullptr) == cudaSuccess,
         "scatter launch");
  std::vector<T> want = w0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = s.row_ptr[row_begin + r]; k < s.row_ptr[row_begin + r + 1]; ++k)
      if (s.col_idx[k] >= col_begin && s.col_idx[k] < col_end) {
        T& target = want[r * ld + s.col_idx[k] - col_begin];
        target = Traits<T>::from(R(Traits<T>::value(target)) + R(Traits<T>::value(values[k])));
      }
  const std::vector<T> got = w.host();
  expect(std::memcmp(got.data(), want.data(), got.size() * sizeof(T)) == 0,
         std::string("scatter_add_block of rows ") + std::to_string(row_begin) + "+" + std::to_string(rows) +
             ", columns [" + std::to_string(col_begin) + ", " + std::to_string(col_end) + "), " +
             Traits<T>::kName + " " + shape(s));
  return got;
}

template <class T>
void test_scatter_gather(int64_t m, int64_t n, int64_t nnz, int64_t row_begin, int64_t rows) {
  std::mt19937 gen(unsigned(m + 31 * n));
  const Support s = make_support(m, n, nnz, 5);
  const int64_t ld = n + 3;  // a padded leading dimension
  const std::vector<T> values = random_values<T>(nnz, gen), w0 = random_values<T>(rows * ld, gen);
  // Whole rows, as the CPU kernel adds them.
  using R = cuda::Acc<T>;
  std::vector<R> w_ref(w0.size()), values_r(nnz);
  for (size_t i = 0; i < w0.size(); ++i) w_ref[i] = R(Traits<T>::value(w0[i]));
  for (int64_t k = 0; k < nnz; ++k) values_r[k] = R(Traits<T>::value(values[k]));
  const bool in_range = cpu::csr_scatter_add_rows(row_begin, row_begin + rows, n, s.row_ptr.data(),
                                                  s.col_idx.data(), values_r.data(), w_ref.data(), ld);
  const std::vector<T> got = check_scatter_block(s, n, values, w0, ld, row_begin, rows, 0, n);
  bool equal = in_range;
  for (size_t i = 0; i < got.size(); ++i) {
    const T want = Traits<T>::from(w_ref[i]);
    equal = equal && std::memcmp(&got[i], &want, sizeof(T)) == 0;
  }
  expect(equal, std::string("scatter_add_block of whole rows equals the CPU's, ") + Traits<T>::kName + " " +
                    shape(s));
  // Column windows: a leading one, an inner odd one, one past the end (clipped), an empty one.
  for (const auto& [first, last] : {std::pair<int64_t, int64_t>{0, (n + 1) / 2}, {n / 3, n / 3 + 7},
                                    {n / 2, n + 40}, {n / 4, n / 4}})
    check_scatter_block(s, n, values, w0, ld, row_begin, rows, first, last);

  DeviceArray<T> w(got);
  DeviceArray<int32_t> row_ptr(s.row_ptr), col_idx(s.col_idx);
  DeviceArray<T> out(nnz);
  const std::vector<T> before = out.host();
  expect(cuda::csr_gather_rows(row_begin, rows, n, nnz, row_ptr.data, col_idx.data, w.data, ld, out.data,
                               nullptr) == cudaSuccess,
         "gather launch");
  const std::vector<T> gathered = out.host();
  bool gather_equal = true;
  const int64_t first = s.row_ptr[row_begin], last = s.row_ptr[row_begin + rows];
  for (int64_t k = 0; k < nnz; ++k) {
    if (k < first || k >= last) {
      gather_equal = gather_equal && std::memcmp(&gathered[k], &before[k], sizeof(T)) == 0;  // untouched
      continue;
    }
    int64_t row = row_begin;
    while (s.row_ptr[row + 1] <= k) ++row;
    gather_equal = gather_equal &&
                   std::memcmp(&gathered[k], &got[(row - row_begin) * ld + s.col_idx[k]], sizeof(T)) == 0;
  }
  expect(gather_equal, std::string("gather_rows reads exactly the chunk's entries, ") + Traits<T>::kName +
                           " " + shape(s));
}

// ---- SpMM (y = x S^T, dx = g S through the CSC) and SDDMM ------------------------

template <class T>
bool close(const std::vector<T>& got, const std::vector<double>& want, const std::vector<double>& magnitude) {
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = Traits<T>::value(got[i]);
    if (!(std::abs(g - want[i]) <= Traits<T>::kEps * (magnitude[i] + std::abs(want[i])) + 1e-30)) return false;
  }
  return true;
}

// y [tokens, ld_y] (+)= x [tokens, ld_x] @ S^T (+ bias), from the CSR or the CSC.
template <class T>
void test_spmm(int64_t m, int64_t n, int64_t nnz, int64_t tokens, bool transposed, bool accumulate,
               bool with_bias, int misalign) {
  std::mt19937 gen(unsigned(m * 3 + n * 5 + tokens));
  const Support s = make_support(m, n, nnz, 11);
  // Forward: rows m over columns n. Transposed: rows n (CSC columns) over columns m.
  const int64_t rows = transposed ? n : m, cols = transposed ? m : n;
  const int64_t ld_x = cols + 1, ld_y = rows + 2;
  // `misalign` shifts index and values by that many elements: no vector loads.
  std::vector<T> values = random_values<T>(nnz + misalign, gen);
  std::vector<T> x = random_values<T>(tokens * ld_x, gen), y0 = random_values<T>(tokens * ld_y, gen);
  std::vector<T> bias = random_values<T>(rows, gen);
  std::vector<int32_t> ptr = s.row_ptr, index = s.col_idx, entry;
  if (transposed) {
    ptr.assign(n + 1, 0);
    index.assign(nnz, 0);
    entry.assign(nnz, 0);
    cpu::transpose_support(m, n, nnz, s.row_ptr.data(), s.col_idx.data(), ptr.data(), index.data(),
                           entry.data());
    for (auto& e : entry) e += misalign;
  }
  index.insert(index.begin(), misalign, 0);
  DeviceArray<int32_t> d_ptr(ptr), d_index(index), d_entry(entry);
  DeviceArray<T> d_values(values), d_x(x), d_y(accumulate ? y0 : std::vector<T>(y0.size())), d_bias(bias);
  if (!accumulate) cudaMemset(d_y.data, 0xff, y0.size() * sizeof(T));  // poisoned
  cuda::SpmmArgs<T> args{rows, cols, nnz, tokens, d_ptr.data, d_index.data + misalign,
                         transposed ? d_entry.data : nullptr, d_values.data + (transposed ? 0 : misalign),
                         d_x.data, ld_x, d_y.data, ld_y, with_bias ? d_bias.data : nullptr, accumulate, false};
  expect(cuda::csr_spmm(args, nullptr) == cudaSuccess, "spmm launch");
  std::vector<double> want(tokens * ld_y), magnitude(tokens * ld_y);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < rows; ++i) {
      double sum = with_bias ? Traits<T>::value(bias[i]) : 0.0, size = std::abs(sum);
      for (int64_t k = ptr[i]; k < ptr[i + 1]; ++k) {
        const double term = Traits<T>::value(values[transposed ? entry[k] : k + misalign]) *
                            Traits<T>::value(x[t * ld_x + index[k + misalign]]);
        sum += term;
        size += std::abs(term);
      }
      if (accumulate) {
        sum += Traits<T>::value(y0[t * ld_y + i]);
        size += std::abs(Traits<T>::value(y0[t * ld_y + i]));
      }
      want[t * ld_y + i] = sum;
      magnitude[t * ld_y + i] = size;
    }
  }
  std::vector<T> got = d_y.host();
  // Padding columns of y must be untouched: compare them with what was there.
  const std::vector<T> padding_source = accumulate ? y0 : std::vector<T>();
  bool padding_kept = true;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = rows; i < ld_y; ++i) {
      const T& g = got[t * ld_y + i];
      if (accumulate) {
        padding_kept = padding_kept && std::memcmp(&g, &y0[t * ld_y + i], sizeof(T)) == 0;
      } else {
        unsigned char bytes[sizeof(T)];
        std::memcpy(bytes, &g, sizeof(T));
        for (unsigned char b : bytes) padding_kept = padding_kept && b == 0xff;
      }
      want[t * ld_y + i] = 0;
      magnitude[t * ld_y + i] = 0;
      got[t * ld_y + i] = Traits<T>::from(0.0);
    }
  }
  expect(padding_kept && close(got, want, magnitude),
         std::string(transposed ? "transposed " : "") + "spmm matches float64, " + Traits<T>::kName + " " +
             shape(s) + " tokens " + std::to_string(tokens) + (accumulate ? " accumulate" : "") +
             (with_bias ? " bias" : "") + (misalign ? " misaligned" : ""));
}

// The fused decode forward y [tokens, ld_y] = scale * x A^T B^T + x S^T (+ bias)
// against float64, with int32 or uint16 columns. `ld_x` and `b_offset` (B
// shifted by that many elements) pick the vector or the scalar loads;
// columns of y past m must keep their poison.
template <class T, class Index>
void test_decode(int64_t m, int64_t n, int64_t r, int64_t nnz, int64_t tokens, int64_t ld_x, int b_offset,
                 bool with_bias) {
  std::mt19937 gen(unsigned(m * 7 + n * 3 + r + tokens));
  const Support s = make_support(m, n, nnz, 5);
  const int64_t ld_y = m + 3;
  const std::vector<T> A = random_values<T>(r * n, gen), B = random_values<T>(m * r + b_offset, gen);
  const std::vector<T> values = random_values<T>(nnz, gen), x = random_values<T>(tokens * ld_x, gen);
  const std::vector<T> bias = random_values<T>(m, gen);
  const std::vector<Index> columns(s.col_idx.begin(), s.col_idx.end());
  const double scale = 0.75;
  DeviceArray<int32_t> d_ptr(s.row_ptr);
  DeviceArray<Index> d_columns(columns);
  DeviceArray<T> d_A(A), d_B(B), d_values(values), d_x(x), d_bias(bias), d_y(tokens * ld_y);
  DeviceArray<cuda::Acc<T>> d_t(tokens * r);
  const cuda::DecodeArgs<T, Index> args{m, n, r, nnz, tokens, cuda::Acc<T>(scale), d_A.data, d_B.data + b_offset,
                                        d_ptr.data, d_columns.data, d_values.data, d_x.data, ld_x,
                                        with_bias ? d_bias.data : nullptr, d_y.data, ld_y, d_t.data};
  const bool supported = cuda::decode_supported<T>(n, r, tokens);
  expect(supported && cuda::sl_decode(args, nullptr) == cudaSuccess, "decode launch");
  const std::vector<T> got = d_y.host();
  bool close_enough = true, padding_kept = true;
  for (int64_t j = 0; j < tokens; ++j) {
    std::vector<double> t(r), t_size(r);
    for (int64_t q = 0; q < r; ++q)
      for (int64_t c = 0; c < n; ++c) {
        const double term = Traits<T>::value(A[q * n + c]) * Traits<T>::value(x[j * ld_x + c]);
        t[q] += term;
        t_size[q] += std::abs(term);
      }
    for (int64_t i = 0; i < m; ++i) {
      double want = with_bias ? Traits<T>::value(bias[i]) : 0.0, size = std::abs(want);
      for (int64_t q = 0; q < r; ++q) {
        const double b = Traits<T>::value(B[b_offset + i * r + q]);
        want += scale * b * t[q];
        size += scale * std::abs(b) * t_size[q];
      }
      for (int64_t k = s.row_ptr[i]; k < s.row_ptr[i + 1]; ++k) {
        const double term = Traits<T>::value(values[k]) * Traits<T>::value(x[j * ld_x + s.col_idx[k]]);
        want += term;
        size += std::abs(term);
      }
      const double g = Traits<T>::value(got[j * ld_y + i]);
      close_enough = close_enough && std::abs(g - want) <= Traits<T>::kEps * (size + std::abs(want)) + 1e-30;
    }
    for (int64_t i = m; i < ld_y; ++i) {
      unsigned char bytes[sizeof(T)];
      std::memcpy(bytes, &got[j * ld_y + i], sizeof(T));
      for (unsigned char byte : bytes) padding_kept = padding_kept && byte == 0xff;
    }
  }
  expect(close_enough && padding_kept,
         std::string("decode matches float64, ") + Traits<T>::kName + (sizeof(Index) == 2 ? " uint16 " : " int32 ") +
             shape(s) + " r " + std::to_string(r) + " tokens " + std::to_string(tokens) + " ld_x " +
             std::to_string(ld_x) + (b_offset ? " unaligned B" : "") + (with_bias ? " bias" : ""));
}

template <class T>
void test_sddmm(int64_t m, int64_t n, int64_t nnz, int64_t tokens) {
  std::mt19937 gen(unsigned(m + n + tokens));
  const Support s = make_support(m, n, nnz, 3);
  const int64_t ld_g = m + 1, ld_x = n + 2;
  const std::vector<T> g = random_values<T>(tokens * ld_g, gen), x = random_values<T>(tokens * ld_x, gen);
  DeviceArray<int32_t> row_ptr(s.row_ptr), col_idx(s.col_idx);
  DeviceArray<T> d_g(g), d_x(x), dvalues(nnz);
  expect(cuda::csr_sddmm(m, n, nnz, tokens, row_ptr.data, col_idx.data, d_g.data, ld_g, d_x.data, ld_x,
                         dvalues.data, nullptr) == cudaSuccess,
         "sddmm launch");
  std::vector<double> want(nnz), magnitude(nnz);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = s.row_ptr[i]; k < s.row_ptr[i + 1]; ++k) {
      for (int64_t t = 0; t < tokens; ++t) {
        const double term = Traits<T>::value(g[t * ld_g + i]) * Traits<T>::value(x[t * ld_x + s.col_idx[k]]);
        want[k] += term;
        magnitude[k] += std::abs(term);
      }
    }
  }
  expect(close(dvalues.host(), want, magnitude),
         std::string("sddmm matches float64, ") + Traits<T>::kName + " " + shape(s) + " tokens " +
             std::to_string(tokens));
}

// ---- Adam --------------------------------------------------------------------------

// Adds 1 to every element of every tensor of a launch, chunk by chunk.
template <class Chunks>
__global__ void count_chunk_elements(Chunks chunks, int64_t chunk_size) {
  cuda::for_each_chunk(chunks, chunk_size, [&](const cuda::ChunkSlice& slice) {
    int* data = cuda::list_pointer<int>(chunks, 0, slice);
    for (int64_t i = 0; i < slice.count; ++i) ++data[i];
  });
}

// Both kernels on several tensors of the given sizes (one tensor may start
// `misalign` elements into its allocation, which turns vector loads off).
template <class P>
void test_adam(const std::vector<int64_t>& sizes, int misalign) {
  using S = cuda::Acc<P>;
  using Cpu = typename Traits<P>::Cpu;
  std::mt19937 gen(unsigned(sizes.size() * 101 + misalign));
  const AdamHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.1, 3, true};
  bool equal = true;
  std::vector<std::unique_ptr<DeviceArray<P>>> params, grads;
  std::vector<std::unique_ptr<DeviceArray<S>>> ms, vs;
  std::vector<std::array<void*, 4>> pointers;
  std::vector<std::vector<P>> p_host, g_host;
  std::vector<std::vector<S>> m_host, v_host;
  for (int64_t size : sizes) {
    const int offset = misalign;
    p_host.push_back(random_values<P>(size + offset, gen));
    g_host.push_back(random_values<P>(size + offset, gen));
    std::vector<S> m(size + offset), v(size + offset);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (int64_t i = 0; i < size + offset; ++i) { m[i] = S(uniform(gen) - 0.5); v[i] = S(uniform(gen)); }
    m_host.push_back(m);
    v_host.push_back(v);
    params.push_back(std::make_unique<DeviceArray<P>>(p_host.back()));
    grads.push_back(std::make_unique<DeviceArray<P>>(g_host.back()));
    ms.push_back(std::make_unique<DeviceArray<S>>(m));
    vs.push_back(std::make_unique<DeviceArray<S>>(v));
    pointers.push_back({params.back()->data + offset, grads.back()->data + offset, ms.back()->data + offset,
                        vs.back()->data + offset});
  }
  expect(cuda::adam_step<P, S>(int64_t(sizes.size()), pointers.data(), sizes.data(), hyper, nullptr) ==
             cudaSuccess,
         "adam launch");
  for (size_t t = 0; t < sizes.size(); ++t) {
    const int offset = misalign;
    std::vector<Cpu> p(sizes[t]), g(sizes[t]);
    copy_bytes(p.data(), p_host[t].data() + offset, sizeof(P) * sizes[t]);
    copy_bytes(g.data(), g_host[t].data() + offset, sizeof(P) * sizes[t]);
    std::vector<S> m(m_host[t].begin() + offset, m_host[t].end()), v(v_host[t].begin() + offset, v_host[t].end());
    cpu::adam_step<Cpu, S>(sizes[t], p.data(), g.data(), m.data(), v.data(), hyper);
    const std::vector<P> p_got = params[t]->host();
    const std::vector<S> m_got = ms[t]->host(), v_got = vs[t]->host();
    for (int64_t i = 0; i < sizes[t]; ++i) {
      P p_want;
      std::memcpy(&p_want, &p[i], sizeof(P));
      // Rounding errors are relative to the terms of each sum, not to the
      // result (m cancels when the gradient opposes it), and either side may
      // fuse multiply-adds (the CPU's AVX2 clone, nvcc).
      const double tolerance = std::is_same_v<S, double> ? 1e-13 : 1e-6;
      const double g_i = Traits<P>::value(g_host[t][i + offset]);
      const double m_old = m_host[t][i + offset], v_old = v_host[t][i + offset];
      const double pw = Traits<P>::value(p_want), pg = Traits<P>::value(p_got[i + offset]);
      const double p_old = Traits<P>::value(p_host[t][i + offset]);
      equal = equal &&
              std::abs(pw - pg) <= (sizeof(P) == 2 ? Traits<P>::kEps : tolerance) * (std::abs(pw) + std::abs(p_old)) &&
              std::abs(double(m_got[i + offset]) - double(m[i])) <= tolerance * (std::abs(m_old) + std::abs(g_i)) &&
              std::abs(double(v_got[i + offset]) - double(v[i])) <= tolerance * (v_old + g_i * g_i);
    }
    // Elements before a misaligned tensor's start are not the kernel's.
    for (int i = 0; i < offset; ++i)
      equal = equal && std::memcmp(&params[t]->host()[i], &p_host[t][i], sizeof(P)) == 0;
  }
  expect(equal, std::string("adam matches the CPU kernel, ") + Traits<P>::kName + ", " +
                    std::to_string(sizes.size()) + " tensors" + (misalign ? ", misaligned" : ""));
}

// The codes of element i of a state as signed integers in code order, so
// that neighbouring codes differ by 1: 8-bit codes as int8 (exp_avg) or
// uint8; 4-bit nibbles, the signed ones as sign and magnitude.
int code_of(const std::vector<uint8_t>& bytes, int64_t i, int bits, bool is_signed) {
  if (bits == 8) return is_signed ? int(int8_t(bytes[i])) : int(bytes[i]);
  const int nibble = i % 2 == 0 ? low_code(bytes[i / 2]) : high_code(bytes[i / 2]);
  return is_signed && nibble >= 8 ? -(nibble - 8) : nibble;
}

// The 8- or 4-bit kernel (Codec cuda::Codes8 or cuda::Codes4) against the CPU's.
template <class P, class Codec>
void test_quantised_adam(const std::vector<int64_t>& sizes) {
  using Cpu = typename Traits<P>::Cpu;
  constexpr int bits = std::is_same_v<Codec, cuda::Codes4> ? 4 : 8;
  std::mt19937 gen(unsigned(sizes.size() * 7));
  bool ok = true;
  // Two steps from zero states: the second decodes codes the first wrote.
  std::vector<std::vector<Cpu>> p_cpu;
  std::vector<std::vector<uint8_t>> m_cpu, v_cpu;
  std::vector<std::vector<float>> m_abs_cpu, v_abs_cpu;
  std::vector<std::unique_ptr<DeviceArray<P>>> params, grads;
  std::vector<std::unique_ptr<DeviceArray<uint8_t>>> ms, vs;
  std::vector<std::unique_ptr<DeviceArray<float>>> m_abs, v_abs;
  std::vector<std::array<void*, 6>> pointers;
  for (int64_t size : sizes) {
    const int64_t blocks = (size + Codec::kBlock - 1) / Codec::kBlock;
    const int64_t code_bytes = (size + Codec::kCodesPerByte - 1) / Codec::kCodesPerByte;
    const std::vector<P> p = random_values<P>(size, gen);
    std::vector<Cpu> p_copy(size);
    copy_bytes(p_copy.data(), p.data(), sizeof(P) * size);
    p_cpu.push_back(p_copy);
    m_cpu.emplace_back(code_bytes, 0);
    v_cpu.emplace_back(code_bytes, 0);
    m_abs_cpu.emplace_back(blocks, 0.0f);
    v_abs_cpu.emplace_back(blocks, 0.0f);
    params.push_back(std::make_unique<DeviceArray<P>>(p));
    grads.push_back(std::make_unique<DeviceArray<P>>(size));
    ms.push_back(std::make_unique<DeviceArray<uint8_t>>(code_bytes, 0));
    vs.push_back(std::make_unique<DeviceArray<uint8_t>>(code_bytes, 0));
    m_abs.push_back(std::make_unique<DeviceArray<float>>(blocks, 0));
    v_abs.push_back(std::make_unique<DeviceArray<float>>(blocks, 0));
    pointers.push_back({params.back()->data, grads.back()->data, ms.back()->data, m_abs.back()->data,
                        vs.back()->data, v_abs.back()->data});
  }
  for (int step = 1; step <= 2; ++step) {
    const AdamHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.0, step, true};
    for (size_t t = 0; t < sizes.size(); ++t) {
      const std::vector<P> g = random_values<P>(sizes[t], gen);
      cudaMemcpy(grads[t]->data, g.data(), sizeof(P) * sizes[t], cudaMemcpyHostToDevice);
      std::vector<Cpu> g_cpu(sizes[t]);
      copy_bytes(g_cpu.data(), g.data(), sizeof(P) * sizes[t]);
      if constexpr (bits == 4) {
        cpu::adam4bit_step<Cpu>(sizes[t], p_cpu[t].data(), g_cpu.data(), m_cpu[t].data(), m_abs_cpu[t].data(),
                                v_cpu[t].data(), v_abs_cpu[t].data(), hyper);
      } else {
        cpu::adam8bit_step<Cpu>(sizes[t], p_cpu[t].data(), g_cpu.data(), reinterpret_cast<int8_t*>(m_cpu[t].data()),
                                m_abs_cpu[t].data(), v_cpu[t].data(), v_abs_cpu[t].data(), hyper);
      }
    }
    ok = ok && cuda::quantised_adam_step<P, Codec>(int64_t(sizes.size()), pointers.data(), sizes.data(), hyper,
                                                   nullptr, nullptr) == cudaSuccess;
  }
  for (size_t t = 0; t < sizes.size(); ++t) {
    const auto m_got = ms[t]->host();
    const auto v_got = vs[t]->host();
    const auto m_abs_got = m_abs[t]->host(), v_abs_got = v_abs[t]->host();
    const auto p_got = params[t]->host();
    for (int64_t i = 0; i < sizes[t]; ++i) {
      ok = ok && std::abs(code_of(m_got, i, bits, true) - code_of(m_cpu[t], i, bits, true)) <= 1 &&
           std::abs(code_of(v_got, i, bits, false) - code_of(v_cpu[t], i, bits, false)) <= 1;
      P p_want;
      std::memcpy(&p_want, &p_cpu[t][i], sizeof(P));
      const double pw = Traits<P>::value(p_want), pg = Traits<P>::value(p_got[i]);
      ok = ok && std::abs(pw - pg) <= (sizeof(P) == 2 ? Traits<P>::kEps : 1e-5) * (std::abs(pw) + 1e-2);
    }
    for (size_t b = 0; b < m_abs_got.size(); ++b)
      ok = ok && std::abs(m_abs_got[b] - m_abs_cpu[t][b]) <= 1e-5f * m_abs_cpu[t][b] &&
           std::abs(v_abs_got[b] - v_abs_cpu[t][b]) <= 1e-5f * v_abs_cpu[t][b];
    // An odd tensor's padding nibble is code 0 on both.
    if (bits == 4 && sizes[t] % 2 != 0) ok = ok && high_code(m_got.back()) == 0 && high_code(v_got.back()) == 0;
  }
  expect(ok, "adam" + std::to_string(bits) + "bit within one code of the CPU kernel, " + Traits<P>::kName + ", " +
                 std::to_string(sizes.size()) + " tensors");
}

// Capturable steps: the same launches, arguments unchanged, repeated 4 times
// (as a replayed CUDA graph repeats them) take steps 1..4 from the step count
// in device memory and the learning rate there, as 4 eager CPU steps do.
void test_adam_device_step() {
  constexpr int kSteps = 4;
  constexpr double kLr = 2e-2;
  const std::vector<int64_t> sizes = {300, 5461};
  std::mt19937 gen(5);
  std::vector<std::vector<float>> p_cpu, p8_cpu, m_cpu, v_cpu, m_abs_cpu, v_abs_cpu;
  std::vector<std::vector<int8_t>> m8_cpu;
  std::vector<std::vector<uint8_t>> v8_cpu;
  std::vector<std::vector<float>> g_host;
  std::vector<std::unique_ptr<DeviceArray<float>>> keep;
  std::vector<std::unique_ptr<DeviceArray<int8_t>>> m8;
  std::vector<std::unique_ptr<DeviceArray<uint8_t>>> v8;
  std::vector<std::array<void*, 4>> pointers;
  std::vector<std::array<void*, 6>> pointers8;
  const auto device_copy = [&](const std::vector<float>& host) {
    keep.push_back(std::make_unique<DeviceArray<float>>(host));
    return static_cast<void*>(keep.back()->data);
  };
  for (int64_t size : sizes) {
    const int64_t blocks = (size + kQuantBlock - 1) / kQuantBlock;
    p_cpu.push_back(random_values<float>(size, gen));
    p8_cpu.push_back(p_cpu.back());
    g_host.push_back(random_values<float>(size, gen));
    m_cpu.emplace_back(size, 0.0f);
    v_cpu.emplace_back(size, 0.0f);
    m8_cpu.emplace_back(size, 0);
    v8_cpu.emplace_back(size, 0);
    m_abs_cpu.emplace_back(blocks, 0.0f);
    v_abs_cpu.emplace_back(blocks, 0.0f);
    void* grad = device_copy(g_host.back());
    pointers.push_back({device_copy(p_cpu.back()), grad, device_copy(m_cpu.back()), device_copy(v_cpu.back())});
    m8.push_back(std::make_unique<DeviceArray<int8_t>>(size, 0));
    v8.push_back(std::make_unique<DeviceArray<uint8_t>>(size, 0));
    pointers8.push_back({device_copy(p8_cpu.back()), grad, m8.back()->data, device_copy(m_abs_cpu.back()),
                         v8.back()->data, device_copy(v_abs_cpu.back())});
  }
  DeviceArray<int64_t> step(std::vector<int64_t>{0});
  DeviceArray<int64_t> step8(std::vector<int64_t>{0});
  DeviceArray<float> lr(std::vector<float>{float(kLr)});
  DeviceArray<cuda::DeviceAdamScalars> scalars(1), scalars8(1);
  // The host-side hyper-parameters hold a wrong step and lr: only the device's may count.
  const AdamHyper stale{1.0, 0.9, 0.999, 1e-8, 0.1, 1, true};
  bool ok = true;
  for (int i = 0; i < kSteps; ++i) {
    ok = ok && cuda::advance_adam_step(step.data, lr.data, false, stale, scalars.data, nullptr) == cudaSuccess;
    ok = ok && cuda::adam_step<float, float>(int64_t(sizes.size()), pointers.data(), sizes.data(), stale, nullptr,
                                             scalars.data) == cudaSuccess;
    ok = ok && cuda::advance_adam_step(step8.data, lr.data, false, stale, scalars8.data, nullptr) == cudaSuccess;
    ok = ok && cuda::adam8bit_step<float>(int64_t(sizes.size()), pointers8.data(), sizes.data(), stale, nullptr,
                                          scalars8.data) == cudaSuccess;
    const AdamHyper eager{double(float(kLr)), 0.9, 0.999, 1e-8, 0.1, i + 1, true};
    for (size_t t = 0; t < sizes.size(); ++t) {
      cpu::adam_step<float, float>(sizes[t], p_cpu[t].data(), g_host[t].data(), m_cpu[t].data(), v_cpu[t].data(),
                                   eager);
      cpu::adam8bit_step<float>(sizes[t], p8_cpu[t].data(), g_host[t].data(), m8_cpu[t].data(), m_abs_cpu[t].data(),
                                v8_cpu[t].data(), v_abs_cpu[t].data(), eager);
    }
  }
  ok = ok && step.host()[0] == kSteps && step8.host()[0] == kSteps;
  for (size_t t = 0; t < sizes.size(); ++t) {
    const std::vector<float> p_got = DeviceArray<float>::host_of(static_cast<float*>(pointers[t][0]), sizes[t]);
    const std::vector<float> p8_got = DeviceArray<float>::host_of(static_cast<float*>(pointers8[t][0]), sizes[t]);
    for (int64_t i = 0; i < sizes[t]; ++i) {
      ok = ok && std::abs(p_got[i] - p_cpu[t][i]) <= 1e-5f * (std::abs(p_cpu[t][i]) + 1e-2f);
      ok = ok && std::abs(p8_got[i] - p8_cpu[t][i]) <= 1e-5f * (std::abs(p8_cpu[t][i]) + 1e-2f);
    }
  }
  expect(ok, "capturable steps: 4 repeated launches equal 4 eager steps (32- and 8-bit)");
}

// The multi-tensor batching on the host: every element of every tensor is
// covered exactly once, whole tensors per launch, however they fall into
// batches; the device walk (for_each_chunk) maps each chunk back to its tensor.
void test_chunk_batches() {
  using Small = cuda::TensorChunks<1, 3>;
  const std::vector<int64_t> sizes = {0, 1, 9, 4, 0, 23, 2, 2, 2, 17, 0};
  std::vector<std::vector<int>> covered;
  std::vector<std::array<void*, 1>> tensors;
  for (int64_t size : sizes) covered.emplace_back(size, 0);
  for (auto& c : covered) tensors.push_back({c.data()});
  int launches = 0;
  bool within_limits = true;
  cuda::for_each_chunk_batch<Small>(int64_t(sizes.size()), tensors.data(), sizes.data(), 4,
                                    [&](const Small& chunks) {
    ++launches;
    within_limits = within_limits && chunks.chunks >= 1;
    // A grid of 2 blocks of 1 thread walks the chunks on the emulator.
    cudaStream_t stream = nullptr;
    SLTRAIN_LAUNCH(count_chunk_elements<Small>, 2, 1, 0, stream)(chunks, int64_t(4));
  });
  bool once = true;
  for (const auto& c : covered)
    for (int count : c) once = once && count == 1;
  expect(within_limits && once && launches == 3, "multi-tensor batches cover every element once");
}

}  // namespace

int main() {
  // support: empty, single, full, wide rows (4096, 5461: n + 1 not a multiple
  // of 4, nnz either way), tall and thin.
  for (const auto& [m, n, nnz] : std::vector<std::array<int64_t, 3>>{
           {0, 5, 0}, {3, 0, 0}, {1, 1, 1}, {7, 5, 35}, {37, 5461, 2000}, {11, 4096, 1001}, {300, 64, 1000},
           {2000, 3, 4001}}) {
    test_random_support(m, n, nnz, 42);
    test_transpose_support(m, n, nnz);
  }
  test_random_support(64, 64, 100, 1ull << 63);

  test_scatter_gather<float>(20, 70, 600, 3, 11);
  test_scatter_gather<double>(9, 33, 100, 0, 9);
  test_scatter_gather<__nv_bfloat16>(17, 5461, 3000, 5, 7);
  test_scatter_gather<__half>(12, 40, 200, 11, 1);

  // Rows longer than a warp (a 5461-wide row at 3 % holds ~160 entries),
  // empty rows (sparse 300 x 64), every token count up to two tiles.
  for (int64_t tokens : {1, 2, 3, 4, 5, 8, 9, 17}) {
    test_spmm<float>(37, 5461, 6000, tokens, false, false, false, 0);
    test_spmm<float>(300, 64, 150, tokens, true, true, false, 0);
  }
  test_spmm<float>(41, 130, 2000, 6, false, true, true, 0);
  test_spmm<float>(41, 130, 2000, 6, false, true, true, 1);
  test_spmm<float>(41, 130, 2000, 3, true, false, false, 3);
  test_spmm<double>(29, 77, 900, 5, false, true, true, 0);
  test_spmm<double>(29, 77, 900, 1, true, true, false, 0);
  test_spmm<__nv_bfloat16>(33, 5461, 5000, 1, false, true, true, 0);
  test_spmm<__nv_bfloat16>(33, 5461, 5000, 7, true, true, false, 0);
  test_spmm<__half>(25, 99, 600, 4, false, false, true, 2);
  test_spmm<__half>(25, 99, 600, 9, true, true, false, 0);
  test_spmm<float>(1, 1, 1, 1, false, false, true, 0);
  test_spmm<float>(8, 8, 0, 3, false, true, false, 0);

  // Decode: every token group (1..16, odd counts padded), rows longer than a
  // warp, odd m (a warp's second row missing), empty rows, aligned and
  // unaligned A/x and B, both index widths, every dtype; float32 at n = 4096
  // and 16 tokens needs two passes of 8 tokens to fit shared memory.
  for (int64_t tokens : {1, 2, 3, 5, 8, 16}) {
    test_decode<float, int32_t>(37, 64, 8, 900, tokens, 64, 0, true);
    test_decode<float, uint16_t>(37, 61, 5, 700, tokens, 63, 1, false);
  }
  test_decode<float, uint16_t>(33, 4096, 4, 2000, 16, 4096, 0, true);
  test_decode<float, int32_t>(300, 24, 3, 150, 4, 24, 0, false);
  test_decode<float, int32_t>(1, 1, 1, 1, 1, 1, 0, true);
  test_decode<float, int32_t>(5, 8, 0, 12, 2, 8, 0, true);
  test_decode<double, int32_t>(29, 77, 6, 900, 5, 77, 0, true);
  test_decode<double, uint16_t>(30, 80, 8, 900, 16, 80, 0, false);
  test_decode<__nv_bfloat16, uint16_t>(45, 5461, 16, 5000, 1, 5461, 0, true);
  test_decode<__nv_bfloat16, uint16_t>(40, 128, 16, 1000, 16, 128, 0, true);
  test_decode<__nv_bfloat16, int32_t>(41, 130, 9, 2000, 7, 131, 3, false);
  test_decode<__half, uint16_t>(25, 96, 8, 600, 4, 96, 0, true);
  test_decode<__half, int32_t>(26, 99, 7, 600, 12, 99, 1, true);

  for (int64_t tokens : {0, 1, 5, 33}) test_sddmm<float>(23, 5461, 4000, tokens);
  test_sddmm<double>(20, 31, 300, 7);
  test_sddmm<__nv_bfloat16>(16, 200, 900, 12);
  test_sddmm<__half>(9, 64, 100, 3);

  test_chunk_batches();
  // Every vector tail (sizes 0..9), a size past one chunk, odd 5461.
  const std::vector<int64_t> sizes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5461, cuda::kAdamChunk + 3};
  test_adam<float>(sizes, 0);
  test_adam<float>({5, 4096, 13}, 1);
  test_adam<double>({1, 7, 333}, 0);
  test_adam<__nv_bfloat16>(sizes, 0);
  test_adam<__half>({6, 100, 5461}, 1);
  test_quantised_adam<float, cuda::Codes8>({1, 255, 256, 257, 5461, cuda::kAdam8bitChunk + 100});
  // More tensors than one launch takes, more chunks than the grid has blocks.
  test_quantised_adam<float, cuda::Codes8>(std::vector<int64_t>(cuda::Adam8bitChunks::kTensors + 5, 3 * 256 + 7));
  test_quantised_adam<float, cuda::Codes8>({cuda::kAdam8bitChunk * 1100 + 9});
  test_quantised_adam<__nv_bfloat16, cuda::Codes8>({300, 4096});
  test_quantised_adam<__half, cuda::Codes8>({513});
  // 4-bit: odd sizes (a padding nibble), one block and one past it, a chunk and past it.
  const int64_t chunk4 = cuda::kQuantisedChunk<cuda::Codes4>;
  test_quantised_adam<float, cuda::Codes4>({1, 7, 127, 128, 129, 5461, chunk4 + 101});
  test_quantised_adam<float, cuda::Codes4>(std::vector<int64_t>(cuda::Adam8bitChunks::kTensors + 5, 3 * 128 + 7));
  test_quantised_adam<float, cuda::Codes4>({chunk4 * 1100 + 9});
  test_quantised_adam<__nv_bfloat16, cuda::Codes4>({300, 4096});
  test_quantised_adam<__half, cuda::Codes4>({513});
  test_adam_device_step();

  return test_summary();
}
