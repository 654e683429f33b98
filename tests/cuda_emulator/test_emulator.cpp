// The CUDA-on-CPU emulator's own tests (tests/cuda_emulator/cuda_emulator.h).
//
//   test_emulator            every clean case: kernels checked against a CPU
//                            reference; they must pass in every build and
//                            under every SLTRAIN_EMU_SCHEDULE
//   test_emulator <case>     one case, clean or planted bug
//   test_emulator list       the case names
//
// A planted-bug case runs a kernel with one deliberate mistake; the build it
// runs in must catch it: a wrong result (a line "WRONG RESULT: <case>" and
// exit 1), an emulator message ("cuda_emulator: ..."), or a sanitizer report.
// CMakeLists.txt says which build and schedule must catch which bug how.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/portability.cuh"

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- device memory ---------------------------------------------------------------

// Exact-size device memory (ASan sees overruns), filled from or read into a vector.
template <class T>
struct Device {
  T* ptr = nullptr;
  size_t n = 0;
  explicit Device(size_t count) : n(count) {
    if (cudaMalloc(&ptr, n * sizeof(T)) != cudaSuccess) {
      std::printf("cudaMalloc failed\n");
      std::exit(2);
    }
  }
  explicit Device(const std::vector<T>& host) : Device(host.size()) {
    cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~Device() { cudaFree(ptr); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  std::vector<T> get() const {
    std::vector<T> host(n);
    cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
};

std::vector<int> random_ints(size_t n, int lo, int hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int> v(n);
  for (int& x : v) x = dist(gen);
  return v;
}

// Small integers as floats: every sum below is exact, whatever the order.
std::vector<float> random_floats(size_t n, int lo, int hi, unsigned seed) {
  std::vector<float> v(n);
  const std::vector<int> i = random_ints(n, lo, hi, seed);
  for (size_t k = 0; k < n; ++k) v[k] = float(i[k]);
  return v;
}

template <class T>
bool same(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  if (got.size() != want.size()) {
    std::printf("%s: %zu values, expected %zu\n", what, got.size(), want.size());
    return false;
  }
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      std::printf("%s: first mismatch at %zu\n", what, i);
      return false;
    }
  }
  return true;
}

unsigned blocks_for(size_t n, unsigned threads) { return unsigned((n + threads - 1) / threads); }

// ---- 1. CSR row loop (one thread per row) ----------------------------------------------

struct Csr {
  int m, n;
  std::vector<int> row_ptr, col_idx;
  std::vector<float> values, x;
};

Csr make_csr(int m, int n, unsigned seed) {
  Csr c{m, n, {0}, {}, {}, {}};
  std::mt19937 gen(seed);
  for (int r = 0; r < m; ++r) {
    const int len = int(gen() % 9);  // empty rows included
    for (int k = 0; k < len; ++k) c.col_idx.push_back(int(gen() % unsigned(n)));
    c.row_ptr.push_back(int(c.col_idx.size()));
  }
  c.values = random_floats(c.col_idx.size(), 1, 4, seed + 1);
  c.x = random_floats(size_t(n), 1, 4, seed + 2);
  return c;
}

__global__ void csr_rows(int m, const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
                         const float* __restrict__ values, const float* __restrict__ x, float* __restrict__ y) {
  const int r = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (r >= m) return;
  float acc = 0.0f;
  for (int k = row_ptr[r]; k < row_ptr[r + 1]; ++k) acc += values[k] * __ldg(&x[col_idx[k]]);
  y[r] = acc;
}

// Planted bug 1: the loop runs one past the row end (<= instead of <).
__global__ void csr_rows_past_end(int m, int n, const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
                                  const float* __restrict__ values, const float* __restrict__ x,
                                  float* __restrict__ y) {
  const int r = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (r >= m) return;
  float acc = 0.0f;
  for (int k = row_ptr[r]; k <= row_ptr[r + 1]; ++k) {
    const int c = col_idx[k];
    if (c >= 0 && c < n) acc += values[k] * x[c];
  }
  y[r] = acc;
}

bool run_csr(bool bug) {
  const Csr c = make_csr(20000, 3000, 7);
  Device<int> row_ptr(c.row_ptr), col_idx(c.col_idx);
  Device<float> values(c.values), x(c.x), y(size_t(c.m));
  const unsigned threads = 128;
  if (bug) {
    SLTRAIN_LAUNCH(csr_rows_past_end, blocks_for(size_t(c.m), threads), threads, 0, 0)
    (c.m, c.n, row_ptr.ptr, col_idx.ptr, values.ptr, x.ptr, y.ptr);
  } else {
    SLTRAIN_LAUNCH(csr_rows, blocks_for(size_t(c.m), threads), threads, 0, 0)
    (c.m, row_ptr.ptr, col_idx.ptr, values.ptr, x.ptr, y.ptr);
  }
  std::vector<float> want(size_t(c.m));
  for (int r = 0; r < c.m; ++r) {
    float acc = 0.0f;
    for (int k = c.row_ptr[r]; k < c.row_ptr[r + 1]; ++k) acc += c.values[k] * c.x[c.col_idx[k]];
    want[r] = acc;
  }
  return same(y.get(), want, "csr rows");
}

// ---- 2./3. warp shuffle tree reductions ------------------------------------------------

__device__ __forceinline__ int warp_sum_down(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFull, v, offset);
  return v;
}

__device__ __forceinline__ int warp_sum_xor(int v) {
  for (int mask = 1; mask < 32; mask <<= 1) v += __shfl_xor_sync(kFull, v, mask);
  return v;
}

// sums[w] = sum of the 32 inputs of warp w (lane 0 holds it); every lane of
// the butterfly gets the total.
__global__ void warp_sums(int n, const int* in, int* sums, int* totals) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  const int v = i < n ? in[i] : 0;  // every lane takes part
  const int down = warp_sum_down(v);
  const int all = warp_sum_xor(v);
  if ((threadIdx.x & 31) == 0) sums[i / 32] = down;
  totals[i] = all;
}

// Planted bug 2: the reduction skips its last step (offset 1).
__global__ void warp_sums_skip_step(int n, const int* in, int* sums, int* totals) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  int v = i < n ? in[i] : 0;
  for (int offset = 16; offset > 1; offset >>= 1) v += __shfl_down_sync(kFull, v, offset);
  if ((threadIdx.x & 31) == 0) sums[i / 32] = v;
  totals[i] = v;
}

// Planted bug 3: out-of-range lanes return before the full-mask shuffles.
__global__ void warp_sums_early_exit(int n, const int* in, int* sums, int* totals) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  const int down = warp_sum_down(in[i]);
  if ((threadIdx.x & 31) == 0) sums[i / 32] = down;
  totals[i] = down;
}

bool run_warp_sums(int variant) {
  const int n = 10000 - 13;  // not a multiple of 32
  const unsigned threads = 256, blocks = blocks_for(size_t(n), threads);
  const std::vector<int> in = random_ints(size_t(n), -1000, 1000, 11);
  Device<int> d_in(in), sums(blocks * threads / 32), totals(blocks * threads);
  if (variant == 0) SLTRAIN_LAUNCH(warp_sums, blocks, threads, 0, 0)(n, d_in.ptr, sums.ptr, totals.ptr);
  if (variant == 1) SLTRAIN_LAUNCH(warp_sums_skip_step, blocks, threads, 0, 0)(n, d_in.ptr, sums.ptr, totals.ptr);
  if (variant == 2) SLTRAIN_LAUNCH(warp_sums_early_exit, blocks, threads, 0, 0)(n, d_in.ptr, sums.ptr, totals.ptr);
  std::vector<int> want_sums(sums.n, 0), want_totals(totals.n, 0);
  for (int i = 0; i < n; ++i) want_sums[size_t(i / 32)] += in[size_t(i)];
  for (size_t i = 0; i < totals.n; ++i) want_totals[i] = want_sums[i / 32];
  return same(sums.get(), want_sums, "warp sums") && same(totals.get(), want_totals, "warp totals");
}

// ---- ballot / any / all / syncthreads_count ---------------------------------------------

__global__ void votes(const int* in, unsigned* ballots, int* anys, int* alls, unsigned* halves, int* counts) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31;
  const int pred = in[i] > 0;
  const unsigned b = __ballot_sync(kFull, pred);
  const int any = __any_sync(kFull, pred);
  const int all = __all_sync(kFull, pred);
  // Divergent halves, each with its own mask.
  unsigned h;
  if (lane < 16) {
    h = __ballot_sync(0x0000ffffu, pred);
  } else {
    h = __ballot_sync(0xffff0000u, pred);
  }
  halves[i] = h;
  const int count = __syncthreads_count(pred);
  if (lane == 0) {
    ballots[i / 32] = b;
    anys[i / 32] = any;
    alls[i / 32] = all;
  }
  if (threadIdx.x == 0) counts[blockIdx.x] = count;
}

bool run_votes() {
  const unsigned threads = 128, blocks = 40, n = threads * blocks, warps = n / 32;
  std::vector<int> in = random_ints(n, -5, 5, 3);
  for (unsigned i = 0; i < 32; ++i) in[i] = 1 + int(i);        // warp 0: all positive
  for (unsigned i = 32; i < 64; ++i) in[i] = -int(i);          // warp 1: none
  for (unsigned i = 64; i < 96; ++i) in[i] = i == 70 ? 3 : 0;  // warp 2: one
  Device<int> d_in(in), anys(warps), alls(warps), counts(blocks);
  Device<unsigned> ballots(warps), halves(n);
  SLTRAIN_LAUNCH(votes, blocks, threads, 0, nullptr)(d_in.ptr, ballots.ptr, anys.ptr, alls.ptr, halves.ptr, counts.ptr);
  std::vector<unsigned> want_ballots(warps, 0), want_halves(n);
  std::vector<int> want_anys(warps), want_alls(warps), want_counts(blocks, 0);
  for (unsigned i = 0; i < n; ++i) {
    if (in[i] > 0) {
      want_ballots[i / 32] |= 1u << (i % 32);
      ++want_counts[i / threads];
    }
  }
  for (unsigned w = 0; w < warps; ++w) {
    want_anys[w] = want_ballots[w] != 0;
    want_alls[w] = want_ballots[w] == kFull;
  }
  for (unsigned i = 0; i < n; ++i) want_halves[i] = want_ballots[i / 32] & (i % 32 < 16 ? 0x0000ffffu : 0xffff0000u);
  return same(ballots.get(), want_ballots, "ballot") && same(anys.get(), want_anys, "any") &&
         same(alls.get(), want_alls, "all") && same(halves.get(), want_halves, "half-warp ballot") &&
         same(counts.get(), want_counts, "__syncthreads_count");
}

// ---- 3-D grids and blocks, a template kernel, warp-level exchange ------------------------

// Each thread writes Scale * its global linear id; also exchanges values with
// the mirror lane of its warp through shared memory fenced by __syncwarp, and
// sums its warp with __reduce_add_sync.
template <class T, int Scale>
__global__ void indexing(T* ids, T* mirrored, unsigned* warp_sums) {
  __shared__ T exchange[1024];
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned id = block * threads + t;
  ids[id] = T(Scale) * T(id);
  exchange[t] = T(id);
  __syncwarp();
  mirrored[id] = exchange[t ^ 31u];
  __syncwarp();
  exchange[t] = T(0);  // safe only because of the second __syncwarp
  const unsigned sum = __reduce_add_sync(0xffffffffu, id);
  if ((t & 31u) == 0) warp_sums[id / 32] = sum;
}

bool run_indexing() {
  const dim3 grid(3, 2, 2), block(8, 4, 2);  // 64 threads per block, 12 blocks
  const unsigned n = 12 * 64;
  Device<long long> ids(n), mirrored(n);
  Device<unsigned> sums(n / 32);
  SLTRAIN_LAUNCH((indexing<long long, 3>), grid, block, 0, 0)(ids.ptr, mirrored.ptr, sums.ptr);
  std::vector<long long> want_ids(n), want_mirrored(n);
  std::vector<unsigned> want_sums(n / 32, 0);
  for (unsigned i = 0; i < n; ++i) {
    want_ids[i] = 3 * (long long)i;
    want_mirrored[i] = (long long)(i ^ 31u);
    want_sums[i / 32] += i;
  }
  return same(ids.get(), want_ids, "3-D ids") && same(mirrored.get(), want_mirrored, "__syncwarp exchange") &&
         same(sums.get(), want_sums, "__reduce_add_sync");
}

// ---- shuffles with width 16 ------------------------------------------------------

__global__ void shuffles16(const int* in, int* up, int* down, int* idx, int* xor16, int* scan) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31;
  const int v = in[i];
  up[i] = __shfl_up_sync(kFull, v, 1, 16);
  down[i] = __shfl_down_sync(kFull, v, 2, 16);
  idx[i] = __shfl_sync(kFull, v, 19, 16);  // 19 mod 16: lane 3 of each half
  xor16[i] = __shfl_xor_sync(kFull, v, 5, 16);
  int s = v;  // inclusive scan of each 16-lane segment
  for (unsigned d = 1; d < 16; d <<= 1) {
    const int other = __shfl_up_sync(kFull, s, d, 16);
    if ((lane & 15) >= d) s += other;
  }
  scan[i] = s;
}

bool run_shuffles16() {
  const unsigned threads = 96, blocks = 30, n = threads * blocks;
  const std::vector<int> in = random_ints(n, -100, 100, 5);
  Device<int> d_in(in), up(n), down(n), idx(n), xor16(n), scan(n);
  SLTRAIN_LAUNCH(shuffles16, dim3(blocks), dim3(threads), 0, 0)(d_in.ptr, up.ptr, down.ptr, idx.ptr, xor16.ptr, scan.ptr);
  std::vector<int> w_up(n), w_down(n), w_idx(n), w_xor(n), w_scan(n);
  for (unsigned i = 0; i < n; ++i) {
    const unsigned seg = i / 16 * 16, pos = i % 16;
    w_up[i] = pos >= 1 ? in[i - 1] : in[i];
    w_down[i] = pos + 2 < 16 ? in[i + 2] : in[i];
    w_idx[i] = in[seg + 3];
    w_xor[i] = in[seg + (pos ^ 5)];
    int s = 0;
    for (unsigned k = seg; k <= i; ++k) s += in[k];
    w_scan[i] = s;
  }
  return same(up.get(), w_up, "shfl_up width 16") && same(down.get(), w_down, "shfl_down width 16") &&
         same(idx.get(), w_idx, "shfl width 16") && same(xor16.get(), w_xor, "shfl_xor width 16") &&
         same(scan.get(), w_scan, "segmented scan");
}

// ---- transpose staged through shared memory -------------------------------------------

constexpr int kTile = 32, kTileRows = 8;

__global__ void transpose(int rows, int cols, const float* in, float* out) {
  __shared__ float tile[kTile][kTile + 1];
  int x = int(blockIdx.x) * kTile + int(threadIdx.x);
  int y = int(blockIdx.y) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  }
  __syncthreads();
  x = int(blockIdx.y) * kTile + int(threadIdx.x);
  y = int(blockIdx.x) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
  }
}

// Planted bug 5: no barrier between staging the tile and reading it transposed.
__global__ void transpose_no_barrier(int rows, int cols, const float* in, float* out) {
  __shared__ float tile[kTile][kTile + 1];
  int x = int(blockIdx.x) * kTile + int(threadIdx.x);
  int y = int(blockIdx.y) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  }
  x = int(blockIdx.y) * kTile + int(threadIdx.x);
  y = int(blockIdx.x) * kTile + int(threadIdx.y);
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
  }
}

bool run_transpose(bool bug) {
  const int rows = 200, cols = 130;
  const std::vector<float> in = random_floats(size_t(rows * cols), 1, 1000000, 9);
  Device<float> d_in(in), out(size_t(rows * cols));
  const dim3 grid(blocks_for(size_t(cols), kTile), blocks_for(size_t(rows), kTile)), block(kTile, kTileRows);
  if (bug) {
    SLTRAIN_LAUNCH(transpose_no_barrier, grid, block, 0, 0)(rows, cols, d_in.ptr, out.ptr);
  } else {
    SLTRAIN_LAUNCH(transpose, grid, block, 0, 0)(rows, cols, d_in.ptr, out.ptr);
  }
  std::vector<float> want(in.size());
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) want[size_t(c * rows + r)] = in[size_t(r * cols + c)];
  }
  return same(out.get(), want, "transpose");
}

// ---- shared-memory tree reduction ---------------------------------------------------

constexpr int kReduceThreads = 256;

__global__ void __launch_bounds__(kReduceThreads) block_sums(int n, const int* in, int* out) {
  __shared__ int partial[kReduceThreads];
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  partial[t] = i < unsigned(n) ? in[i] : 0;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) partial[t] += partial[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// Planted bug 6: no barrier between the steps of the tree.
__global__ void block_sums_no_barrier(int n, const int* in, int* out) {
  __shared__ int partial[kReduceThreads];
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  partial[t] = i < unsigned(n) ? in[i] : 0;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) partial[t] += partial[t + s];
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// Planted bug 7: each thread also reads its right neighbour, one past the end of the array.
__global__ void neighbour_sums_static_oob(int n, const int* in, int* out) {
  __shared__ int staged[kReduceThreads];
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  staged[t] = i < unsigned(n) ? in[i] : 0;
  __syncthreads();
  const int right = staged[t + 1];  // should be: t + 1 < blockDim.x ? staged[t + 1] : 0
  if (i < unsigned(n)) out[i] = staged[t] + right;
}

// Planted bug 4: threads past the end return before the barrier the others wait at.
__global__ void block_sums_early_return(int n, const int* in, int* out) {
  __shared__ int partial[kReduceThreads];
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  if (i >= unsigned(n)) return;
  partial[t] = in[i];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) partial[t] += partial[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

bool run_block_sums(int variant) {
  const int n = 20000;
  const unsigned blocks = blocks_for(size_t(n), kReduceThreads);
  const std::vector<int> in = random_ints(size_t(n), -1000, 1000, 13);
  Device<int> d_in(in), out(blocks);
  if (variant == 0) SLTRAIN_LAUNCH(block_sums, blocks, kReduceThreads, 0, 0)(n, d_in.ptr, out.ptr);
  if (variant == 1) SLTRAIN_LAUNCH(block_sums_no_barrier, blocks, kReduceThreads, 0, 0)(n, d_in.ptr, out.ptr);
  if (variant == 2) SLTRAIN_LAUNCH(block_sums_early_return, blocks, kReduceThreads, 0, 0)(n, d_in.ptr, out.ptr);
  std::vector<int> want(blocks, 0);
  for (int i = 0; i < n; ++i) want[size_t(i) / kReduceThreads] += in[size_t(i)];
  return same(out.get(), want, "block sums");
}

bool run_static_oob() {
  const int n = 4096;
  const std::vector<int> in = random_ints(size_t(n), 1, 1000, 17);
  Device<int> d_in(in), out(static_cast<size_t>(n));
  SLTRAIN_LAUNCH(neighbour_sums_static_oob, blocks_for(size_t(n), kReduceThreads), kReduceThreads, 0, 0)
  (n, d_in.ptr, out.ptr);
  std::vector<int> want(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) want[size_t(i)] = in[size_t(i)] + ((i + 1) % kReduceThreads ? in[size_t(i) + 1] : 0);
  return same(out.get(), want, "neighbour sums");
}

// ---- static shared memory read before it is written ----------------------------------

constexpr int kPartialWarps = 8;

// Sums in[0, n) with one block of 256 threads: each warp's shuffle sum goes to
// a static shared slot, thread 0 adds the slots. Only warps that hold
// elements write theirs; the correct kernel zeroes every slot first, the
// planted bug assumes unwritten slots read as zero (as the emulator's zero-
// initialised statics used to make them).
__global__ void sum_through_static_slots(int n, const int* in, int* out, bool zero_slots) {
  __shared__ int partial[kPartialWarps];
  const int thread = int(threadIdx.x), warp = thread / 32;
  if (zero_slots && thread < kPartialWarps) partial[thread] = 0;
  __syncthreads();
  int value = thread < n ? in[thread] : 0;
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  if (thread % 32 == 0 && warp * 32 < n) partial[warp] = value;
  __syncthreads();
  if (thread == 0) {
    int total = 0;
    for (int w = 0; w < kPartialWarps; ++w) total += partial[w];
    *out = total;
  }
}

bool run_static_slots(bool bug) {
  const int n = 100;  // four of the eight warps hold elements
  const std::vector<int> in = random_ints(size_t(n), 1, 1000, 23);
  Device<int> d_in(in), out(size_t(1));
  SLTRAIN_LAUNCH(sum_through_static_slots, 1, 32 * kPartialWarps, 0, 0)(n, d_in.ptr, out.ptr, !bug);
  int want = 0;
  for (int v : in) want += v;
  return same(out.get(), std::vector<int>{want}, "sum through static shared slots");
}

// ---- dynamic shared memory ------------------------------------------------------------

// Reverses each segment of per_thread * blockDim.x elements through dynamic shared memory.
__global__ void reverse_segments(int n, int per_thread, const float* in, float* out) {
  SLTRAIN_DYNAMIC_SHARED(float, buffer);
  const int size = per_thread * int(blockDim.x);
  const int base = int(blockIdx.x) * size;
  for (int k = int(threadIdx.x); k < size; k += int(blockDim.x)) {
    buffer[k] = base + k < n ? in[base + k] : 0.0f;
  }
  __syncthreads();
  for (int k = int(threadIdx.x); k < size; k += int(blockDim.x)) {
    const int src = size - 1 - k;
    if (base + k < n && base + src < n) out[base + k] = buffer[src];
    if (base + k < n && base + src >= n) out[base + k] = -1.0f;
  }
}

// Planted bug 8: the staging loop writes one element past the end (<= size).
__global__ void reverse_segments_oob(int n, int per_thread, const float* in, float* out) {
  SLTRAIN_DYNAMIC_SHARED(float, buffer);
  const int size = per_thread * int(blockDim.x);
  const int base = int(blockIdx.x) * size;
  for (int k = int(threadIdx.x); k <= size; k += int(blockDim.x)) {
    buffer[k] = base + k < n ? in[base + k] : 0.0f;
  }
  __syncthreads();
  for (int k = int(threadIdx.x); k < size; k += int(blockDim.x)) {
    const int src = size - 1 - k;
    if (base + k < n && base + src < n) out[base + k] = buffer[src];
    if (base + k < n && base + src >= n) out[base + k] = -1.0f;
  }
}

bool check_reverse(const std::vector<float>& in, const std::vector<float>& got, int size) {
  const int n = int(in.size());
  std::vector<float> want(in.size());
  for (int i = 0; i < n; ++i) {
    const int base = i / size * size, src = base + size - 1 - (i - base);
    want[size_t(i)] = src < n ? in[size_t(src)] : -1.0f;
  }
  return same(got, want, "reversed segments");
}

bool run_dynamic_shared(bool bug) {
  const int n = 40000;
  const std::vector<float> in = random_floats(size_t(n), -1000, 1000, 19);
  Device<float> d_in(in), out(static_cast<size_t>(n));
  // 1 KiB per block.
  const unsigned threads = 128;
  const int per_thread = 2, size = per_thread * int(threads);
  if (bug) {
    SLTRAIN_LAUNCH(reverse_segments_oob, blocks_for(size_t(n), unsigned(size)), threads, size_t(size) * sizeof(float), 0)
    (n, per_thread, d_in.ptr, out.ptr);
  } else {
    SLTRAIN_LAUNCH(reverse_segments, blocks_for(size_t(n), unsigned(size)), threads, size_t(size) * sizeof(float), 0)
    (n, per_thread, d_in.ptr, out.ptr);
  }
  if (!check_reverse(in, out.get(), size)) return false;
  if (bug) return true;
  // 64 KiB per block: above the default limit, so raise it first.
  const unsigned big_threads = 256;
  const int big_per_thread = 64, big_size = big_per_thread * int(big_threads);
  const size_t bytes = size_t(big_size) * sizeof(float);
  if (cudaFuncSetAttribute(reverse_segments, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) != cudaSuccess) {
    std::printf("cudaFuncSetAttribute failed\n");
    return false;
  }
  SLTRAIN_LAUNCH(reverse_segments, blocks_for(size_t(n), unsigned(big_size)), big_threads, bytes, 0)
  (n, big_per_thread, d_in.ptr, out.ptr);
  return check_reverse(in, out.get(), big_size);
}

// ---- float4 loop with a scalar tail ---------------------------------------------------

__global__ void axpy4(int n, float a, const float* x, float* y) {
  const int nvec = n / 4;
  const int stride = int(gridDim.x * blockDim.x);
  const int first = int(blockIdx.x * blockDim.x + threadIdx.x);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  for (int v = first; v < nvec; v += stride) {
    const float4 xv = x4[v];
    float4 yv = y4[v];
    yv.x = a * xv.x + yv.x;
    yv.y = a * xv.y + yv.y;
    yv.z = a * xv.z + yv.z;
    yv.w = a * xv.w + yv.w;
    y4[v] = yv;
  }
  for (int i = nvec * 4 + first; i < n; i += stride) y[i] = a * x[i] + y[i];
}

// Planted bug 9: the vector loop only; the last n % 4 elements are never updated.
__global__ void axpy4_no_tail(int n, float a, const float* x, float* y) {
  const int nvec = n / 4;
  const int stride = int(gridDim.x * blockDim.x);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* y4 = reinterpret_cast<float4*>(y);
  for (int v = int(blockIdx.x * blockDim.x + threadIdx.x); v < nvec; v += stride) {
    const float4 xv = x4[v];
    float4 yv = y4[v];
    yv.x = a * xv.x + yv.x;
    yv.y = a * xv.y + yv.y;
    yv.z = a * xv.z + yv.z;
    yv.w = a * xv.w + yv.w;
    y4[v] = yv;
  }
}

// variant 0: clean; 1: no tail; 2: called on views that start one float in
// (planted bug 10: the kernel assumes 16-byte aligned pointers).
bool run_axpy4(int variant) {
  const int n = 100003;  // not a multiple of 4
  const float a = 3.0f;
  const std::vector<float> x = random_floats(size_t(n), -100, 100, 23), y0 = random_floats(size_t(n), -100, 100, 29);
  Device<float> dx(x), dy(y0);
  const unsigned threads = 256, blocks = 48;
  std::vector<float> want = y0;
  if (variant == 2) {
    SLTRAIN_LAUNCH(axpy4, blocks, threads, 0, 0)(n - 1, a, dx.ptr + 1, dy.ptr + 1);
    for (int i = 1; i < n; ++i) want[size_t(i)] = a * x[size_t(i)] + y0[size_t(i)];
  } else {
    if (variant == 0) SLTRAIN_LAUNCH(axpy4, blocks, threads, 0, 0)(n, a, dx.ptr, dy.ptr);
    if (variant == 1) SLTRAIN_LAUNCH(axpy4_no_tail, blocks, threads, 0, 0)(n, a, dx.ptr, dy.ptr);
    for (int i = 0; i < n; ++i) want[size_t(i)] = a * x[size_t(i)] + y0[size_t(i)];
  }
  return same(dy.get(), want, "axpy");
}

// ---- atomics ---------------------------------------------------------------------------

constexpr int kBins = 40;

__global__ void atomics(int n, const int* in, int* hist, float* fsum, double* dsum, unsigned long long* usum,
                        int* imax, unsigned* umin, int* cas_count, unsigned* exch) {
  __shared__ int local[kBins];
  for (int b = int(threadIdx.x); b < kBins; b += int(blockDim.x)) local[b] = 0;
  __syncthreads();
  const int stride = int(gridDim.x * blockDim.x);
  for (int i = int(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
    const int v = in[i];
    atomicAdd(&local[v % kBins], 1);
    atomicAdd(fsum, float(v));
    atomicAdd(dsum, double(v));
    atomicAdd(usum, static_cast<unsigned long long>(v));
    atomicMax(imax, v);
    atomicMin(umin, unsigned(v));
    int old = atomicCAS(cas_count, 0, 0), assumed;  // an increment built from compare-and-swap
    do {
      assumed = old;
      old = atomicCAS(cas_count, assumed, assumed + 1);
    } while (old != assumed);
    atomicExch(exch, unsigned(v));
  }
  __syncthreads();
  for (int b = int(threadIdx.x); b < kBins; b += int(blockDim.x)) atomicAdd(&hist[b], local[b]);
}

bool run_atomics() {
  const int n = 30000;
  const std::vector<int> in = random_ints(size_t(n), 0, 100, 31);
  Device<int> d_in(in), hist(kBins), imax(1), cas_count(1);
  Device<float> fsum(1);
  Device<double> dsum(1);
  Device<unsigned long long> usum(1);
  Device<unsigned> umin(1), exch(1);
  cudaMemset(hist.ptr, 0, kBins * sizeof(int));
  cudaMemset(fsum.ptr, 0, sizeof(float));
  cudaMemset(dsum.ptr, 0, sizeof(double));
  cudaMemset(usum.ptr, 0, sizeof(unsigned long long));
  cudaMemset(imax.ptr, 0x80, sizeof(int));  // very negative
  cudaMemset(umin.ptr, 0xFF, sizeof(unsigned));
  cudaMemset(cas_count.ptr, 0, sizeof(int));
  cudaMemset(exch.ptr, 0xFF, sizeof(unsigned));
  SLTRAIN_LAUNCH(atomics, 20, 192, 0, 0)
  (n, d_in.ptr, hist.ptr, fsum.ptr, dsum.ptr, usum.ptr, imax.ptr, umin.ptr, cas_count.ptr, exch.ptr);
  std::vector<int> want_hist(kBins, 0);
  long long total = 0;
  int vmax = INT32_MIN;
  unsigned vmin = UINT32_MAX;
  for (int v : in) {
    ++want_hist[size_t(v % kBins)];
    total += v;
    vmax = std::max(vmax, v);
    vmin = std::min(vmin, unsigned(v));
  }
  const unsigned last = exch.get()[0];
  const bool exch_ok = last <= 100u;  // some thread's value, whichever came last
  if (!exch_ok) std::printf("atomicExch left %u\n", last);
  return same(hist.get(), want_hist, "histogram") && same(fsum.get(), {float(total)}, "float atomicAdd") &&
         same(dsum.get(), {double(total)}, "double atomicAdd") &&
         same(usum.get(), {static_cast<unsigned long long>(total)}, "u64 atomicAdd") &&
         same(imax.get(), {vmax}, "atomicMax") && same(umin.get(), {vmin}, "atomicMin") &&
         same(cas_count.get(), {n}, "atomicCAS loop") && exch_ok;
}

// ---- bf16 / fp16 conversions ---------------------------------------------------------

__global__ void convert_halves(int n, const float* in, __nv_bfloat16* bf, __half* hf, float* back) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  bf[i] = __float2bfloat16_rn(in[i]);
  hf[i] = __float2half(in[i]);
  back[i] = __bfloat162float(bf[i]) + __half2float(hf[i]);
}

bool run_halves() {
  std::vector<float> in = {1.0f, -2.5f, 3.14159265f, 1e-8f, 65504.0f, 70000.0f, 1.00390625f, 0.0f};
  std::mt19937 gen(37);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  while (in.size() < 1000) in.push_back(normal(gen));
  const int n = int(in.size());
  Device<float> d_in(in), back(static_cast<size_t>(n));
  Device<__nv_bfloat16> bf(static_cast<size_t>(n));
  Device<__half> hf(static_cast<size_t>(n));
  SLTRAIN_LAUNCH(convert_halves, blocks_for(size_t(n), 64), 64, 0, 0)(n, d_in.ptr, bf.ptr, hf.ptr, back.ptr);
  const std::vector<__nv_bfloat16> got_bf = bf.get();
  const std::vector<__half> got_hf = hf.get();
  const std::vector<float> got_back = back.get();
  bool ok = got_bf[0].__x == 0x3F80 && got_hf[0].__x == 0x3C00 && got_hf[4].__x == 0x7BFF && got_hf[5].__x == 0x7C00 &&
            got_bf[6].__x == 0x3F80;  // 1 + 2^-8 is a tie: rounds to even
  for (int i = 0; i < n; ++i) {
    const sltrain::bf16 b = sltrain::to_bf16(in[size_t(i)]);
    const sltrain::fp16 h = sltrain::to_fp16(in[size_t(i)]);
    const float sum = sltrain::to_float(b) + sltrain::to_float(h);
    ok = ok && got_bf[size_t(i)].__x == b.bits && got_hf[size_t(i)].__x == h.bits &&
         std::memcmp(&got_back[size_t(i)], &sum, 4) == 0;
  }
  if (!ok) std::printf("half conversions differ\n");
  return ok;
}

// ---- the CUB shim -----------------------------------------------------------------

bool run_cub_sort() {
  const int n = 5000;
  std::mt19937 gen(41);
  std::vector<uint32_t> keys(n);
  std::vector<uint64_t> keys64(n);
  std::vector<int> values(n);
  for (int i = 0; i < n; ++i) {
    keys[size_t(i)] = gen();
    keys64[size_t(i)] = (uint64_t(gen()) << 32) | gen();
    values[size_t(i)] = i;
  }
  Device<uint32_t> k_in(keys), k_out(static_cast<size_t>(n));
  Device<uint64_t> k64_in(keys64), k64_out(static_cast<size_t>(n));
  Device<int> v_in(values), v_out(static_cast<size_t>(n));
  // Pairs sorted on bits [4, 12): stable, so ties keep their input order.
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, k_in.ptr, k_out.ptr, v_in.ptr, v_out.ptr, n, 4, 12);
  Device<unsigned char> temp(bytes);
  if (bytes == 0 ||
      cub::DeviceRadixSort::SortPairs(temp.ptr, bytes, k_in.ptr, k_out.ptr, v_in.ptr, v_out.ptr, n, 4, 12) !=
          cudaSuccess) {
    return false;
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[size_t(i)] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return (keys[size_t(a)] >> 4 & 0xFF) < (keys[size_t(b)] >> 4 & 0xFF); });
  std::vector<uint32_t> want_keys(n);
  for (int i = 0; i < n; ++i) want_keys[size_t(i)] = keys[size_t(order[size_t(i)])];
  size_t bytes64 = 0;
  cub::DeviceRadixSort::SortKeys(nullptr, bytes64, k64_in.ptr, k64_out.ptr, n);
  Device<unsigned char> temp64(bytes64);
  cub::DeviceRadixSort::SortKeys(temp64.ptr, bytes64, k64_in.ptr, k64_out.ptr, n);
  std::vector<uint64_t> want64 = keys64;
  std::sort(want64.begin(), want64.end());
  return same(v_out.get(), order, "SortPairs values") && same(k_out.get(), want_keys, "SortPairs keys") &&
         same(k64_out.get(), want64, "SortKeys");
}

// ---- many threads: a barrier each, timed ------------------------------------------------

__global__ void many_threads(const int* in, unsigned long long* total) {
  __shared__ int staged[256];
  const unsigned t = threadIdx.x;
  staged[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  atomicAdd(total, static_cast<unsigned long long>(staged[blockDim.x - 1 - t]));
}

bool run_many_threads() {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  const unsigned blocks = 100;  // sanitizers: the same kernel, a quarter of the blocks
#else
  const unsigned blocks = 400;  // 102400 threads
#endif
  const unsigned threads = 256, n = threads * blocks;
  const std::vector<int> in = random_ints(n, 0, 1000, 43);
  Device<int> d_in(in);
  Device<unsigned long long> total(1);
  cudaMemset(total.ptr, 0, sizeof(unsigned long long));
  const auto start = std::chrono::steady_clock::now();
  SLTRAIN_LAUNCH(many_threads, blocks, threads, 0, 0)(d_in.ptr, total.ptr);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("  %u emulated threads, one barrier each: %.3f s\n", n, seconds);
  unsigned long long want = 0;
  for (int v : in) want += unsigned(v);
  return same(total.get(), {want}, "many threads");
}

// ---- emulator diagnostics (must stop with "cuda_emulator: ...") ---------------------------

__global__ void tiny(int* out) { out[threadIdx.x] = 1; }

__global__ void divergent_barriers(int* out) {
  if (threadIdx.x < 64) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_outside_mask(int* out) {
  const unsigned lane = threadIdx.x & 31;
  int v = int(lane);
  if (lane < 16) v = __shfl_sync(0x0000ffffu, v, int(lane) + 16);  // reads the other half
  out[threadIdx.x] = v;
}

__global__ void warp_cycle(int* out) {
  const unsigned lane = threadIdx.x & 31;
  if (lane == 0) __syncwarp(0x3u);  // waits for lane 1
  if (lane == 1) __syncwarp(0x6u);  // waits for lane 2
  if (lane == 2) __syncwarp(0x5u);  // waits for lane 0
  out[threadIdx.x] = 1;
}

__global__ void misaligned_ldg(const float* x, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(x + 1));
  out[threadIdx.x] = v.x;
}

int run_diagnostic(const char* name) {
  Device<int> out(1024);
  Device<float> x(64), fout(64);
  if (!std::strcmp(name, "diag_block_too_large")) SLTRAIN_LAUNCH(tiny, 1, 1025, 0, 0)(out.ptr);
  if (!std::strcmp(name, "diag_shared_over_limit")) SLTRAIN_LAUNCH(tiny, 1, 32, 64 << 10, 0)(out.ptr);
  if (!std::strcmp(name, "diag_divergent_barriers")) SLTRAIN_LAUNCH(divergent_barriers, 1, 128, 0, 0)(out.ptr);
  if (!std::strcmp(name, "diag_shuffle_outside_mask")) SLTRAIN_LAUNCH(shuffle_outside_mask, 1, 32, 0, 0)(out.ptr);
  if (!std::strcmp(name, "diag_warp_deadlock")) SLTRAIN_LAUNCH(warp_cycle, 1, 32, 0, 0)(out.ptr);
  if (!std::strcmp(name, "diag_misaligned_ldg")) SLTRAIN_LAUNCH(misaligned_ldg, 1, 32, 0, 0)(x.ptr, fout.ptr);
  std::printf("%s: the emulator did not object\n", name);
  return 1;
}

// ---- the cases ------------------------------------------------------------------------

struct Case {
  const char* name;
  bool (*run)();
  bool clean;
};

const Case kCases[] = {
    {"csr_rows", [] { return run_csr(false); }, true},
    {"warp_shuffle_sums", [] { return run_warp_sums(0); }, true},
    {"votes", run_votes, true},
    {"indexing_3d", run_indexing, true},
    {"shuffles_width16", run_shuffles16, true},
    {"transpose", [] { return run_transpose(false); }, true},
    {"block_tree_sums", [] { return run_block_sums(0); }, true},
    {"dynamic_shared", [] { return run_dynamic_shared(false); }, true},
    {"float4_axpy", [] { return run_axpy4(0); }, true},
    {"atomics", run_atomics, true},
    {"half_conversions", run_halves, true},
    {"cub_sort", run_cub_sort, true},
    {"many_threads", run_many_threads, true},
    {"static_shared_slots", [] { return run_static_slots(false); }, true},
    // Planted bugs, numbered as in CMakeLists.txt.
    {"bug_csr_past_row_end", [] { return run_csr(true); }, false},                  // 1
    {"bug_shuffle_skips_step", [] { return run_warp_sums(1); }, false},             // 2
    {"bug_lane_exits_before_shuffle", [] { return run_warp_sums(2); }, false},      // 3
    {"bug_return_before_syncthreads", [] { return run_block_sums(2); }, false},     // 4
    {"bug_staging_without_barrier", [] { return run_transpose(true); }, false},     // 5
    {"bug_tree_without_barrier", [] { return run_block_sums(1); }, false},          // 6
    {"bug_static_shared_oob", run_static_oob, false},                                // 7
    {"bug_dynamic_shared_oob", [] { return run_dynamic_shared(true); }, false},     // 8
    {"bug_float4_without_tail", [] { return run_axpy4(1); }, false},                // 9
    {"bug_misaligned_float4", [] { return run_axpy4(2); }, false},                  // 10
    {"bug_static_shared_read_before_write", [] { return run_static_slots(true); }, false},  // 11
};

const char* const kDiagnostics[] = {"diag_block_too_large",    "diag_shared_over_limit",  "diag_divergent_barriers",
                                    "diag_shuffle_outside_mask", "diag_warp_deadlock", "diag_misaligned_ldg"};

bool run_case(const Case& c) {
  const bool ok = c.run();
  if (ok) {
    std::printf("OK %s\n", c.name);
  } else {
    std::printf("WRONG RESULT: %s\n", c.name);
  }
  std::fflush(stdout);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    int failures = 0;
    for (const Case& c : kCases) {
      if (c.clean && !run_case(c)) ++failures;
    }
    return failures == 0 ? 0 : 1;
  }
  if (!std::strcmp(argv[1], "list")) {
    for (const Case& c : kCases) std::printf("%s\n", c.name);
    for (const char* d : kDiagnostics) std::printf("%s\n", d);
    return 0;
  }
  for (const Case& c : kCases) {
    if (!std::strcmp(argv[1], c.name)) return run_case(c) ? 0 : 1;
  }
  for (const char* d : kDiagnostics) {
    if (!std::strcmp(argv[1], d)) return run_diagnostic(d);
  }
  std::printf("unknown case %s (try: list)\n", argv[1]);
  return 2;
}
