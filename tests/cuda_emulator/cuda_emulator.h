// The project's CUDA-on-CPU emulator: a test tool, never linked into the
// extension. csrc/cuda/portability.cuh includes this header when compiled
// with g++ and -DSLTRAIN_CUDA_EMULATOR, so the torch-free kernel sources in
// csrc/cuda/*.cuh compile unchanged and run on the CPU, where the C++
// sanitizers can watch them (DESIGN.md, "CUDA kernels, and testing them
// without a GPU"). Header-only; needs csrc/ on the include path
// (common/half.h); Linux/glibc (ucontext). CMakeLists.txt builds a test
// three ways with sltrain_add_emulated_test(); tests/cuda_emulator/
// test_emulator.cpp is its own test and a catalogue of caught bugs.
//
// What it does
//   * Every CUDA thread is a fiber with its own stack (stacks reused across
//     blocks; 64 KiB, 256 KiB under ASan/TSan, SLTRAIN_EMU_STACK_KB to
//     change), created with makecontext or, on x86-64, by hand. Switches use
//     a small x86-64 routine that saves what the ABI requires a call to keep
//     (callee-saved registers, x87/SSE control words); SLTRAIN_EMU_SWITCH=
//     ucontext, and other architectures, use swapcontext instead, about 6x
//     slower (a sigprocmask system call per switch). Blocks
//     run one at a time, in linear order (x fastest), or in a seeded random
//     order under the random schedule; a launch is synchronous (every block
//     has finished when SLTRAIN_LAUNCH(...)(...) returns).
//   * Within a block the threads run one at a time, each until it reaches a
//     barrier or warp collective or exits; a thread that meets none runs to
//     completion in one switch. The order of each such round is picked by
//     SLTRAIN_EMU_SCHEDULE = forward (default) | reverse | random |
//     random:<seed>, so a missing barrier changes results.
//   * __syncthreads (and _count/_and/_or), __syncwarp, __shfl{,_up,_down,_xor}
//     _sync (optional width), __ballot_sync, __any_sync, __all_sync and
//     __reduce_{add,min,max,and,or,xor}_sync are rendezvous (warp of 32, lane
//     = linear thread id % 32). A collective resolves when every lane of its
//     mask has arrived; all results are computed before any lane runs on (a
//     lane may run ahead to its next collective). The emulator stops the
//     program with "cuda_emulator: file:line: block (..) thread (..) [warp w
//     lane l] ...: what" on stderr and exit code 70 when threads of a block
//     wait at different barriers (call sites, kinds or masks), a mask omits
//     the calling lane or names an exited lane or one the block does not
//     have (partial last warp), a thread exits while others wait for it
//     (early return before __syncthreads, a lane leaving before a full-mask
//     shuffle), a shuffle reads a lane outside its mask, or nothing can
//     progress (a deadlock: the waiting threads are listed).
//   * Invalid launches stop too: 0 or > 1024 threads per block, block.x/y >
//     1024, block.z > 64, a grid dimension 0 (or negative), grid.x > 2^31-1,
//     grid.y/z > 65535, dynamic shared memory above 48 KiB unless raised with
//     cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
//     bytes) (at most 227 KiB), a launch from inside a kernel.
//   * Dynamic shared memory (SLTRAIN_DYNAMIC_SHARED) is a fresh exact-size,
//     16-byte aligned heap block per thread block, filled with 0xFF bytes.
//     ASan sees any access past its end; the other builds keep a canary
//     behind it and stop when a block wrote past the end. Static __shared__
//     variables are function-local statics (real arrays: UBSan's bounds check
//     sees overruns) placed in one ELF section, cuda_emu_shared, which is
//     filled with 0xFF bytes at the start of every block too: a read before
//     the block's first write sees garbage (NaN as float), as on a GPU, never
//     a lucky zero or the previous block's value.
//   * cudaMalloc'd memory is 256-byte aligned, exact-size (ASan sees
//     overruns, LSan leaks) and filled with 0xFF bytes (NaN as float), as
//     unset device memory holds garbage. __ldg and the other cache-hinted
//     loads and stores check alignment.
//   * Plain builds: a fault inside a kernel (SIGSEGV, e.g. a misaligned
//     float4 access compiled to an aligned SSE load, SIGBUS, SIGFPE, a fiber
//     stack overflow) is reported with its block and thread.
//   * -fsanitize=thread: every CUDA thread runs as a TSan fiber (one per
//     thread slot, reused and renamed by the next block, so reports name the
//     block and thread), switched without synchronisation;
//     threads synchronise only through barriers, collectives and atomics
//     (explicit release/acquire on per-barrier-instance objects), so a
//     missing barrier is a reported data race. The emulator's own
//     bookkeeping is not instrumented. The end of a block happens before the
//     start of the next one.
//   * -fsanitize=address,undefined: fiber switches are annotated
//     (__sanitizer_start/finish_switch_fiber); ASan sees global and dynamic
//     shared out-of-bounds accesses, UBSan static shared out-of-bounds
//     (-fsanitize=bounds) and misaligned vector loads (float4 and friends
//     have CUDA's real alignment).
//   * Cost (plain build, one core of this project's CI machine): about 0.15 us
//     per thread plus 0.15-0.2 us per thread and barrier or collective: 100k
//     threads with one barrier take 0.03 s, with five shuffles 0.11 s. ASan
//     costs 3-5x that, TSan 30-100x (its vector clocks grow with the block
//     size: keep TSan cases small).
//
// What it cannot see: timing and performance; lockstep hazards that depend
// on how the lanes of a warp interleave inside one instruction; concurrency
// between blocks: blocks run one at a time, each to completion, so two blocks
// that write the same global element, or one that reads what another writes
// (a scatter whose rows collide, a reduction across blocks without atomics or
// a second pass, a flag another block sets), give the result of one block
// order; the random schedule shuffles that order, which catches a result that
// depends on it, never a torn or lost update between simultaneous blocks (a
// spin-wait on another block never yields here and hangs); TSan sees only
// races between the threads of one block; memory-model subtleties
// (atomics are sequentially consistent, __threadfence is a no-op); tensor
// cores, inline PTX and other architecture-specific instructions; the
// rounding of fast-math intrinsics (__expf is expf). Those wait for a GPU
// and compute-sanitizer.
//
// API available to kernels (beyond plain C++):
//   SLTRAIN_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...);
//       kernel names one function (a template needs its template arguments,
//       in parentheses if they contain a comma: (k<float, 4>)); grid and
//       block are dim3 or integers; args convert to the parameter types as
//       in a call, once.
//   SLTRAIN_DYNAMIC_SHARED(T, name);   // T* name = this block's dynamic smem
//   __global__ __device__ __host__ (nothing), __forceinline__ (inline),
//   __noinline__, __launch_bounds__(...) (nothing), __align__(n) (alignas),
//   __shared__ (static), __constant__ (static), __restrict__ (g++'s own)
//   threadIdx blockIdx (uint3) blockDim gridDim (dim3) warpSize (32)
//   __syncthreads() __syncthreads_count/_and/_or(pred) __syncwarp([mask])
//   __shfl_sync __shfl_up_sync __shfl_down_sync __shfl_xor_sync (mask, v, x[, width])
//       (any trivially copyable v of at most 8 bytes)
//   __ballot_sync __any_sync __all_sync (mask, pred)
//   __reduce_add/min/max_sync (mask, int|unsigned), __reduce_and/or/xor_sync (mask, unsigned)
//   __threadfence __threadfence_block __threadfence_system (compiler barriers)
//   __ldg __ldca __ldcg __ldcs __ldlu __ldcv (p) and __stcg __stcs __stwb __stwt (p, v)
//   atomicAdd (int, unsigned, unsigned long long, float, double, __half,
//   __nv_bfloat16), atomicSub (int, unsigned), atomicMax/atomicMin (int,
//   unsigned, long long, unsigned long long), atomicCAS (int, unsigned,
//   unsigned long long, unsigned short), atomicExch (int, unsigned, unsigned
//   long long, float), atomicAnd/Or/Xor (int, unsigned, unsigned long long),
//   atomicInc/atomicDec (unsigned): __atomic builtins, sequentially consistent
//   __popc __popcll __ffs __ffsll __clz __clzll __brev __brevll __umulhi __umul64hi
//   vector types char2..ulonglong2, float2/3/4, double2, int2/3/4, uint2/3/4,
//   dim3 (1-3 unsigned), make_<type>(...)
//   __half __nv_bfloat16 (raw bits in .__x), __half2 __nv_bfloat162 (.x .y),
//   no arithmetic operators: __float2bfloat16{,_rn}, __bfloat162float,
//   __float2half{,_rn}, __half2float (bit-exact, round to nearest even),
//   __floats2bfloat162_rn, __float22bfloat162_rn, __bfloat1622float2,
//   __floats2half2_rn, __float22half2_rn, __half22float2, __low2float,
//   __high2float, __bfloat16_as_ushort, __ushort_as_bfloat16,
//   __half_as_ushort, __ushort_as_half
//   <cmath> float functions (sqrtf fabsf fmaxf fminf fmaf expf ...) plus
//   rsqrtf rsqrt __fdividef __expf __exp10f __logf __log2f __log10f __sinf
//   __cosf __tanf __powf __saturatef __frcp_rn __fsqrt_rn __frsqrt_rn
//   __fdiv_rn __fadd_rn __fsub_rn __fmul_rn __fmaf_rn __float2int_rn/_rz/_rd/
//   _ru __float2uint_rn/_rz __float2ll_rn (saturating) __int2float_rn
//   __uint2float_rn __ll2float_rn __float_as_int __int_as_float
//   __float_as_uint __uint_as_float __double_as_longlong
//   __longlong_as_double, CUDA's global min/max overloads
// Host side: cudaStream_t cudaError_t cudaSuccess cudaError* cudaGetLastError
//   cudaPeekAtLastError cudaGetErrorString cudaGetErrorName cudaMalloc
//   cudaFree cudaMallocAsync cudaFreeAsync cudaMemset{,Async}
//   cudaMemcpy{,Async} cudaMemcpyKind cudaStreamCreate cudaStreamDestroy
//   cudaStreamSynchronize cudaDeviceSynchronize cudaFuncSetAttribute
//   cudaGetDevice cudaSetDevice cudaDeviceGetAttribute (H100-like values),
//   cub::DeviceRadixSort::SortKeys / SortPairs for unsigned integer keys: a
//   stable host sort on bits [begin_bit, end_bit) that stops the program when
//   its temporary storage is smaller than its size query said or ranges
//   overlap (CUB is a library, like cuBLAS: we test our kernels, not it).
// One host thread at a time may launch.
#pragma once

#include <dlfcn.h>
#include <signal.h>
#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/half.h"

// ---- which sanitizers are on ------------------------------------------------

#if defined(__SANITIZE_THREAD__)
#define CUDA_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDA_EMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
#ifndef CUDA_EMU_TSAN
#define CUDA_EMU_TSAN 0
#endif
#ifndef CUDA_EMU_ASAN
#define CUDA_EMU_ASAN 0
#endif

#if CUDA_EMU_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
#if defined(__clang__)
#define CUDA_EMU_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define CUDA_EMU_NO_TSAN __attribute__((no_sanitize_thread))
#endif
#else
#define CUDA_EMU_NO_TSAN
#endif

#if CUDA_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#if defined(__clang__)
#define CUDA_EMU_NO_ASAN __attribute__((no_sanitize("address")))
#else
#define CUDA_EMU_NO_ASAN __attribute__((no_sanitize_address))
#endif
#else
#define CUDA_EMU_NO_ASAN
#endif

// ---- CUDA keywords --------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory: one section, poisoned at every block start (run_one_block).
#define __shared__ __attribute__((section("cuda_emu_shared"))) static
#define __constant__ static

// ---- vector types (CUDA's sizes and alignments) ---------------------------------

#define CUDA_EMU_VEC2(T, N, A)                                       \
  struct alignas(A) N {                                              \
    T x, y;                                                          \
  };                                                                 \
  inline N make_##N(T x, T y) { return N{x, y}; }
#define CUDA_EMU_VEC3(T, N)                                          \
  struct N {                                                         \
    T x, y, z;                                                       \
  };                                                                 \
  inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define CUDA_EMU_VEC4(T, N, A)                                       \
  struct alignas(A) N {                                              \
    T x, y, z, w;                                                    \
  };                                                                 \
  inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }

CUDA_EMU_VEC2(signed char, char2, 2)
CUDA_EMU_VEC2(unsigned char, uchar2, 2)
CUDA_EMU_VEC4(signed char, char4, 4)
CUDA_EMU_VEC4(unsigned char, uchar4, 4)
CUDA_EMU_VEC2(short, short2, 4)
CUDA_EMU_VEC2(unsigned short, ushort2, 4)
CUDA_EMU_VEC4(short, short4, 8)
CUDA_EMU_VEC4(unsigned short, ushort4, 8)
CUDA_EMU_VEC2(int, int2, 8)
CUDA_EMU_VEC3(int, int3)
CUDA_EMU_VEC4(int, int4, 16)
CUDA_EMU_VEC2(unsigned int, uint2, 8)
CUDA_EMU_VEC3(unsigned int, uint3)
CUDA_EMU_VEC4(unsigned int, uint4, 16)
CUDA_EMU_VEC2(long long, longlong2, 16)
CUDA_EMU_VEC2(unsigned long long, ulonglong2, 16)
CUDA_EMU_VEC2(float, float2, 8)
CUDA_EMU_VEC3(float, float3)
CUDA_EMU_VEC4(float, float4, 16)
CUDA_EMU_VEC2(double, double2, 16)
#undef CUDA_EMU_VEC2
#undef CUDA_EMU_VEC3
#undef CUDA_EMU_VEC4

static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4");
static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2");
static_assert(sizeof(int4) == 16 && alignof(int4) == 16, "int4");
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16, "uint4");
static_assert(sizeof(uint2) == 8 && alignof(uint2) == 8, "uint2");
static_assert(sizeof(double2) == 16 && alignof(double2) == 16, "double2");
static_assert(sizeof(uint3) == 12 && alignof(uint3) == 4, "uint3");

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

constexpr int warpSize = 32;

__extension__ typedef unsigned __int128 cuda_emu_u128;

// ---- half types: raw bits, bit-exact round-to-nearest-even conversions ------------

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
};
struct alignas(2) __half {
  unsigned short __x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct alignas(4) __half2 {
  __half x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { __nv_bfloat16 h; h.__x = bits; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __half __ushort_as_half(unsigned short bits) { __half h; h.__x = bits; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(sltrain::to_bf16(f).bits); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return sltrain::to_float(sltrain::bf16{h.__x}); }
inline __half __float2half_rn(float f) { return __ushort_as_half(sltrain::to_fp16(f).bits); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return sltrain::to_float(sltrain::fp16{h.__x}); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }

// ---- runtime types ---------------------------------------------------------------

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

// ---- the emulator ----------------------------------------------------------------

namespace cuda_emu {

constexpr int kExitCode = 70;
constexpr size_t kDefaultSharedLimit = 48 << 10;
constexpr size_t kMaxSharedLimit = 227 << 10;
constexpr unsigned kMaxThreads = 1024;

namespace detail {

enum class Schedule { Forward, Reverse, Random };

enum class Kind : uint8_t {
  SyncThreads,
  SyncThreadsCount,
  SyncThreadsAnd,
  SyncThreadsOr,  // the block-wide kinds come first
  SyncWarp,
  ShflIdx,
  ShflUp,
  ShflDown,
  ShflXor,
  Ballot,
  Any,
  All,
  ReduceAdd,
  ReduceMinU,
  ReduceMaxU,
  ReduceMinI,
  ReduceMaxI,
  ReduceAnd,
  ReduceOr,
  ReduceXor,
};

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::SyncThreads: return "__syncthreads";
    case Kind::SyncThreadsCount: return "__syncthreads_count";
    case Kind::SyncThreadsAnd: return "__syncthreads_and";
    case Kind::SyncThreadsOr: return "__syncthreads_or";
    case Kind::SyncWarp: return "__syncwarp";
    case Kind::ShflIdx: return "__shfl_sync";
    case Kind::ShflUp: return "__shfl_up_sync";
    case Kind::ShflDown: return "__shfl_down_sync";
    case Kind::ShflXor: return "__shfl_xor_sync";
    case Kind::Ballot: return "__ballot_sync";
    case Kind::Any: return "__any_sync";
    case Kind::All: return "__all_sync";
    case Kind::ReduceAdd: return "__reduce_add_sync";
    case Kind::ReduceMinU:
    case Kind::ReduceMinI: return "__reduce_min_sync";
    case Kind::ReduceMaxU:
    case Kind::ReduceMaxI: return "__reduce_max_sync";
    case Kind::ReduceAnd: return "__reduce_and_sync";
    case Kind::ReduceOr: return "__reduce_or_sync";
    case Kind::ReduceXor: return "__reduce_xor_sync";
  }
  return "?";
}

inline bool is_block_kind(Kind k) { return k <= Kind::SyncThreadsOr; }
inline bool is_shuffle(Kind k) { return k >= Kind::ShflIdx && k <= Kind::ShflXor; }

enum class State : uint8_t { NotStarted, Running, Waiting, Released, Done };
enum class Event : uint8_t { None, Arrive, Exit };

struct Stack {
  char* base;
  size_t size;
};

// One pending instance of a barrier or collective.
struct Rendezvous {
  Kind kind;
  const char* file;
  int line;
  unsigned mask;  // lanes (warp collectives); unused for block barriers
  unsigned warp;
  unsigned arrived_mask;
  unsigned arrived;
  void* syncs[33];  // TSan: the objects its participants released into
  int nsyncs;
};

struct Thread {
  ucontext_t ctx;  // the ucontext switch
  void* sp;        // the fast switch: the saved stack pointer
  uint3 idx;
  unsigned linear, warp, lane;
  State state;
  Event event;
  // What the thread arrived at (written by the fiber before it switches out).
  Kind kind;
  const char* file;
  int line;
  unsigned mask;
  int arg;
  int width;
  uint64_t value;
  Rendezvous* rdv;  // while Waiting
  uint64_t result;  // set when its rendezvous resolves
  Stack* stack;
  void* fake_stack;  // ASan
  void* tsan_fiber;  // TSan: one fiber per thread slot, reused by every block
  void* arrival_sync;
  void* acquire[33];
  int n_acquire;
};

struct LaunchBase {
  void (*invoke)(const LaunchBase*);
  const void* kernel;
  const char* file;
  int line;
};

using SwapFn = int (*)(ucontext_t*, const ucontext_t*);

}  // namespace detail
}  // namespace cuda_emu

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__ELF__)
#define CUDA_EMU_HAVE_FAST_SWITCH 1
// cuda_emu_fast_switch(save, load): pushes the callee-saved registers and the
// x87/SSE control words (all the System V ABI asks a call to preserve) on the
// current stack, stores the stack pointer in *save and resumes the context
// saved at `load`. swapcontext does the same plus a sigprocmask system call
// and a full FPU environment, which made it most of the emulator's time.
// Weak and hidden: one copy per program, whichever translation units include this.
__asm__(
    ".pushsection .text\n"
    ".weak cuda_emu_fast_switch\n"
    ".hidden cuda_emu_fast_switch\n"
    ".type cuda_emu_fast_switch, @function\n"
    "cuda_emu_fast_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $16, %rsp\n"
    "  stmxcsr 8(%rsp)\n"
    "  fnstcw (%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr 8(%rsp)\n"
    "  fldcw (%rsp)\n"
    "  addq $16, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size cuda_emu_fast_switch, .-cuda_emu_fast_switch\n"
    ".popsection\n");
extern "C" void cuda_emu_fast_switch(void** save, void* load);
#else
#define CUDA_EMU_HAVE_FAST_SWITCH 0
#endif

namespace cuda_emu {
namespace detail {

struct Emu {
  bool initialised = false;
  Schedule schedule = Schedule::Forward;
  uint64_t rng = 0;
  size_t stack_size = 0;
  SwapFn swap = nullptr;
  bool fast_switch = false;
  void* host_sp = nullptr;
  ucontext_t host_ctx;
  ucontext_t ctx_template;
  void* host_fake_stack = nullptr;
  const void* host_stack_bottom = nullptr;
  size_t host_stack_size = 0;
  void* host_tsan_fiber = nullptr;
  uint64_t block_start_sync = 0, block_end_sync = 0;  // TSan sync addresses
  // The launch in progress.
  bool in_launch = false;
  const LaunchBase* launch = nullptr;
  dim3 grid_dim, block_dim;
  uint3 block_idx{0, 0, 0};
  unsigned char* dyn_shared = nullptr;
  size_t dyn_bytes = 0;
  // The block in progress.
  Thread* threads = nullptr;  // kMaxThreads of them, never freed
  unsigned nthreads = 0;
  Thread* current = nullptr;
  unsigned done = 0;
  Thread* first_exited = nullptr;
  Rendezvous* pending_bar = nullptr;
  std::vector<Thread*> round, next;
  std::vector<std::unique_ptr<Rendezvous>> rdv_storage;
  std::vector<Rendezvous*> rdv_free;
  std::vector<Stack*> free_stacks;
  std::vector<std::unique_ptr<uint64_t[]>> sync_chunks;
  size_t sync_next = 0;
  void* block_open = nullptr;
  void* warp_open[kMaxThreads / 32] = {};
  // Per warp: lanes that exist, have exited, wait at a warp collective, wait at the block barrier.
  uint32_t present[kMaxThreads / 32] = {}, exited[kMaxThreads / 32] = {};
  uint32_t waiting[kMaxThreads / 32] = {}, at_barrier[kMaxThreads / 32] = {};
  std::unordered_map<const void*, size_t> shared_limit;
  cudaError_t last_error = cudaSuccess;
};

// Never destroyed: LeakSanitizer checks after static destructors have run,
// and a kernel may be launched from another object's destructor.
inline Emu& g_emu = *new Emu;

// ---- messages ---------------------------------------------------------------

[[noreturn]] inline void vdie(const char* fmt, va_list ap) {
  std::fflush(stdout);
  std::fputs("cuda_emulator: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  std::_Exit(kExitCode);
}

[[noreturn]] __attribute__((format(printf, 1, 2))) inline void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vdie(fmt, ap);
}

inline const char* launch_file() { return g_emu.launch ? g_emu.launch->file : "?"; }
inline int launch_line() { return g_emu.launch ? g_emu.launch->line : 0; }

// "file:line: block (..) thread (..) [warp w lane l] of the kernel launched at f:l: message"
[[noreturn]] __attribute__((format(printf, 4, 5))) inline void die_thread(const Thread* t, const char* file,
                                                                         int line, const char* fmt, ...) {
  char message[3072];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  const Emu& E = g_emu;
  die("%s:%d: block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u] of the kernel launched at %s:%d: %s",
      file ? file : launch_file(), file ? line : launch_line(), E.block_idx.x, E.block_idx.y, E.block_idx.z,
      t->idx.x, t->idx.y, t->idx.z, t->warp, t->lane, launch_file(), launch_line(), message);
}

// "thread (x,y,z)" of another thread, for messages.
struct Name {
  char text[64];
  explicit Name(const Thread* t) {
    std::snprintf(text, sizeof text, "thread (%u,%u,%u) [warp %u lane %u]", t->idx.x, t->idx.y, t->idx.z, t->warp,
                  t->lane);
  }
};

// "__shfl_sync at file:line with mask 0x..."
struct Where {
  char text[512];
  Where(Kind kind, const char* file, int line, unsigned mask) {
    if (is_block_kind(kind)) {
      std::snprintf(text, sizeof text, "%s() at %s:%d", kind_name(kind), file, line);
    } else {
      std::snprintf(text, sizeof text, "%s at %s:%d with mask 0x%08x", kind_name(kind), file, line, mask);
    }
  }
  explicit Where(const Rendezvous* r) : Where(r->kind, r->file, r->line, r->mask) {}
  explicit Where(const Thread* t) : Where(t->kind, t->file, t->line, t->mask) {}
};

// ---- set-up --------------------------------------------------------------------

inline uint64_t next_random() {
  uint64_t z = (g_emu.rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline SwapFn resolve_swapcontext() {
#if CUDA_EMU_ASAN
  // ASan's swapcontext interceptor clears the shadow of the target stack on
  // every switch and warns; the switches are annotated instead, so call libc.
  if (void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD)) {
    if (void* fn = dlsym(libc, "swapcontext")) return reinterpret_cast<SwapFn>(fn);
  }
#endif
  return &::swapcontext;
}

#if !CUDA_EMU_ASAN && !CUDA_EMU_TSAN
// Plain builds: a fault inside a kernel (a wild or misaligned vector access,
// a fiber stack overflow, an integer division by zero) names the CUDA thread
// instead of killing the process silently. The sanitizers have their own.
inline struct sigaction g_previous_action[32];

inline void on_fault(int sig, siginfo_t* info, void*) {
  const Emu& E = g_emu;
  const Thread* t = E.current;
  if (t == nullptr || !E.in_launch) {  // not ours: let the previous handler or the default action have it
    sigaction(sig, &g_previous_action[sig], nullptr);
    return;
  }
  const char* what = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE" : "SIGILL";
  const char* hint = "an out-of-bounds access?";
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  if (sig == SIGFPE) {
    hint = "an integer division by zero?";
  } else if (sig == SIGSEGV && a == 0) {
    hint = "a general-protection fault: a misaligned float4/int4 access, or a null pointer?";
  } else if (t->stack && a + 4096 >= reinterpret_cast<uintptr_t>(t->stack->base) &&
             a < reinterpret_cast<uintptr_t>(t->stack->base)) {
    hint = "the fiber stack overflowed: raise SLTRAIN_EMU_STACK_KB";
  }
  char text[1024];
  const int n = std::snprintf(text, sizeof text,
                              "cuda_emulator: %s:%d: block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u]: %s at "
                              "address %p in the kernel (%s)\n",
                              launch_file(), launch_line(), E.block_idx.x, E.block_idx.y, E.block_idx.z, t->idx.x,
                              t->idx.y, t->idx.z, t->warp, t->lane, what, info->si_addr, hint);
  if (n > 0) {
    ssize_t ignored = write(2, text, size_t(n) < sizeof text ? size_t(n) : sizeof text - 1);
    (void)ignored;
  }
  _exit(kExitCode);
}

inline void install_fault_handler() {
  static unsigned char alternate_stack[64 << 10];
  stack_t ss{};
  ss.ss_sp = alternate_stack;
  ss.ss_size = sizeof alternate_stack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigaction(sig, &sa, &g_previous_action[sig]);
}
#endif

inline void init() {
  Emu& E = g_emu;
  if (E.initialised) return;
  const char* s = std::getenv("SLTRAIN_EMU_SCHEDULE");
  uint64_t seed = 1;
  if (s == nullptr || *s == 0 || std::strcmp(s, "forward") == 0) {
    E.schedule = Schedule::Forward;
  } else if (std::strcmp(s, "reverse") == 0) {
    E.schedule = Schedule::Reverse;
  } else if (std::strncmp(s, "random", 6) == 0 && (s[6] == 0 || s[6] == ':')) {
    E.schedule = Schedule::Random;
    if (s[6] == ':') {
      char* end = nullptr;
      seed = std::strtoull(s + 7, &end, 0);
      if (end == s + 7 || *end != 0) die("SLTRAIN_EMU_SCHEDULE=%s: the seed is not a number", s);
    }
  } else {
    die("SLTRAIN_EMU_SCHEDULE=%s: expected forward, reverse, random or random:<seed>", s);
  }
  E.rng = seed;
  E.stack_size = (CUDA_EMU_ASAN || CUDA_EMU_TSAN) ? (256u << 10) : (64u << 10);
  if (const char* kb = std::getenv("SLTRAIN_EMU_STACK_KB")) {
    const long v = std::atol(kb);
    if (v < 16) die("SLTRAIN_EMU_STACK_KB=%s: expected a size in KiB, at least 16", kb);
    E.stack_size = size_t(v) << 10;
  }
  E.stack_size = (E.stack_size + 4095) & ~size_t(4095);
  E.swap = resolve_swapcontext();
  const char* how = std::getenv("SLTRAIN_EMU_SWITCH");
  if (how == nullptr || *how == 0 || std::strcmp(how, "fast") == 0) {
    E.fast_switch = CUDA_EMU_HAVE_FAST_SWITCH;
  } else if (std::strcmp(how, "ucontext") == 0) {
    E.fast_switch = false;
  } else {
    die("SLTRAIN_EMU_SWITCH=%s: expected fast or ucontext", how);
  }
#if !CUDA_EMU_ASAN && !CUDA_EMU_TSAN
  install_fault_handler();
#endif
  if (getcontext(&E.ctx_template) != 0) die("getcontext failed");
  E.threads = new Thread[kMaxThreads];
  for (unsigned i = 0; i < kMaxThreads; ++i) {
    Thread& t = E.threads[i];
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.stack = nullptr;
    t.fake_stack = nullptr;
    t.tsan_fiber = nullptr;
    t.state = State::Done;
  }
#if CUDA_EMU_TSAN
  E.host_tsan_fiber = __tsan_get_current_fiber();
  // TSan sleeps a second at exit while other threads (our fibers) live.
  std::atexit([] {
    Emu& e = g_emu;
    if (e.in_launch) return;
    for (unsigned i = 0; i < kMaxThreads; ++i) {
      if (e.threads[i].tsan_fiber) __tsan_destroy_fiber(e.threads[i].tsan_fiber);
      e.threads[i].tsan_fiber = nullptr;
    }
  });
#endif
  E.initialised = true;
}

// ---- fiber stacks ----------------------------------------------------------------

inline Stack* new_stack() {
  Emu& E = g_emu;
  const size_t guard = 4096;
#if CUDA_EMU_TSAN
  __tsan_ignore_thread_begin();  // TSan then resets the shadow instead of imitating a write
#endif
  void* m = mmap(nullptr, E.stack_size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
#if CUDA_EMU_TSAN
  __tsan_ignore_thread_end();
#endif
  if (m == MAP_FAILED) die("cannot map a %zu-byte fiber stack", E.stack_size);
  mprotect(m, guard, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
  return new Stack{static_cast<char*>(m) + guard, E.stack_size};
}

CUDA_EMU_NO_TSAN inline Stack* take_stack(Thread* t) {
#if CUDA_EMU_TSAN
  // Under TSan each thread slot keeps its own stack: two fibers of one block
  // must never share stack memory, or their frames would look like races.
  if (!t->stack) t->stack = new_stack();
  return t->stack;
#else
  (void)t;
  Emu& E = g_emu;
  if (E.free_stacks.empty()) return new_stack();
  Stack* s = E.free_stacks.back();
  E.free_stacks.pop_back();
  return s;
#endif
}

CUDA_EMU_NO_TSAN inline void give_back_stack(Thread* t) {
#if !CUDA_EMU_TSAN
  g_emu.free_stacks.push_back(t->stack);
  t->stack = nullptr;
#else
  (void)t;
#endif
}

// ---- TSan synchronisation objects -------------------------------------------------
//
// Threads release into the "open" object of their scope (the block for block
// barriers, their warp for warp collectives) when they arrive, and acquire
// the objects of all participants when the rendezvous resolves; the scope
// then gets a fresh object, so a thread that runs ahead to the next barrier
// cannot leak its later writes to a slower one. Objects are recycled per
// block (blocks are ordered anyway).

CUDA_EMU_NO_TSAN inline void* new_sync_object() {
  Emu& E = g_emu;
  const size_t per_chunk = 1024;
  const size_t chunk = E.sync_next / per_chunk;
  if (chunk == E.sync_chunks.size()) E.sync_chunks.emplace_back(new uint64_t[per_chunk]);
  return &E.sync_chunks[chunk][E.sync_next++ % per_chunk];
}

// ---- switching ------------------------------------------------------------------

// Host -> thread t; returns when t arrives at a rendezvous or exits.
CUDA_EMU_NO_TSAN inline void switch_to_thread(Thread* t) {
  Emu& E = g_emu;
  E.current = t;
#if CUDA_EMU_TSAN
  __tsan_switch_to_fiber(t->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(&E.host_fake_stack, t->stack->base, t->stack->size);
#endif
#if CUDA_EMU_HAVE_FAST_SWITCH
  if (E.fast_switch) {
    cuda_emu_fast_switch(&E.host_sp, t->sp);
  } else
#endif
  {
    E.swap(&E.host_ctx, &t->ctx);
  }
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(E.host_fake_stack, nullptr, nullptr);
#endif
  E.current = nullptr;
}

// Thread t -> host (dying: t never runs again).
CUDA_EMU_NO_TSAN CUDA_EMU_NO_ASAN inline void switch_to_host(Thread* t, bool dying) {
  Emu& E = g_emu;
#if CUDA_EMU_TSAN
  __tsan_switch_to_fiber(E.host_tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &t->fake_stack, E.host_stack_bottom, E.host_stack_size);
#else
  (void)dying;
#endif
#if CUDA_EMU_HAVE_FAST_SWITCH
  if (E.fast_switch) {
    cuda_emu_fast_switch(&t->sp, E.host_sp);
  } else
#endif
  {
    E.swap(&t->ctx, &E.host_ctx);
  }
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(t->fake_stack, nullptr, nullptr);
#endif
}

// Where every CUDA thread starts.
CUDA_EMU_NO_TSAN CUDA_EMU_NO_ASAN inline void fiber_entry() {
  Emu& E = g_emu;
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &E.host_stack_bottom, &E.host_stack_size);
#endif
#if CUDA_EMU_TSAN
  __tsan_acquire(&E.block_start_sync);
#endif
  E.launch->invoke(E.launch);
  Thread* t = E.current;
#if CUDA_EMU_TSAN
  __tsan_release(&E.block_end_sync);
#endif
  t->event = Event::Exit;
  switch_to_host(t, true);
  std::abort();  // never resumed
}

CUDA_EMU_NO_TSAN inline void prepare_tsan_fiber(Thread* t);

CUDA_EMU_NO_TSAN inline void prepare_thread(Thread* t) {
  Emu& E = g_emu;
  t->stack = take_stack(t);
  t->fake_stack = nullptr;
#if CUDA_EMU_HAVE_FAST_SWITCH
  if (E.fast_switch) {
    // What cuda_emu_fast_switch pops: control words, six registers, then it
    // "returns" into fiber_entry, which sees a null return address.
    uint64_t* sp = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(t->stack->base) + t->stack->size) &
                                               ~uintptr_t(15));
    *--sp = 0;
    *--sp = reinterpret_cast<uint64_t>(&fiber_entry);
    for (int i = 0; i < 6; ++i) *--sp = 0;
    sp -= 2;
    uint16_t fpu_control;
    uint32_t mxcsr;
    __asm__ __volatile__("fnstcw %0" : "=m"(fpu_control));
    __asm__ __volatile__("stmxcsr %0" : "=m"(mxcsr));
    sp[0] = fpu_control;
    sp[1] = mxcsr;
    t->sp = sp;
    return prepare_tsan_fiber(t);
  }
#endif
  // A copy of a getcontext() result is as good as a fresh one for
  // makecontext and saves a system call per thread.
  std::memcpy(static_cast<void*>(&t->ctx), &E.ctx_template, sizeof(ucontext_t));
  t->ctx.uc_stack.ss_sp = t->stack->base;
  t->ctx.uc_stack.ss_size = t->stack->size;
  t->ctx.uc_link = nullptr;
  makecontext(&t->ctx, &fiber_entry, 0);
  t->ctx.uc_stack.ss_sp = nullptr;  // already used; keeps a swapcontext interceptor off it
  t->ctx.uc_stack.ss_size = 0;
  prepare_tsan_fiber(t);
}

CUDA_EMU_NO_TSAN inline void prepare_tsan_fiber(Thread* t) {
#if CUDA_EMU_TSAN
  const Emu& E = g_emu;
  if (!t->tsan_fiber) t->tsan_fiber = __tsan_create_fiber(0);
  char name[96];  // shows in race reports
  std::snprintf(name, sizeof name, "CUDA block (%u,%u,%u) thread (%u,%u,%u)", E.block_idx.x, E.block_idx.y,
                E.block_idx.z, t->idx.x, t->idx.y, t->idx.z);
  __tsan_set_fiber_name(t->tsan_fiber, name);
#else
  (void)t;
#endif
}

// ---- the fiber side of a rendezvous -------------------------------------------------

CUDA_EMU_NO_TSAN __attribute__((noinline)) inline uint64_t arrive(Kind kind, const char* file, int line,
                                                                    unsigned mask, uint64_t value, int arg,
                                                                    int width) {
#if CUDA_EMU_TSAN
  __tsan_ignore_thread_begin();
#endif
  Emu& E = g_emu;
  Thread* t = E.current;
  if (t == nullptr) die("%s:%d: %s called outside a kernel launch", file, line, kind_name(kind));
  t->event = Event::Arrive;
  t->kind = kind;
  t->file = file;
  t->line = line;
  t->mask = mask;
  t->value = value;
  t->arg = arg;
  t->width = width;
#if CUDA_EMU_TSAN
  void* obj = is_block_kind(kind) ? E.block_open : E.warp_open[t->warp];
  t->arrival_sync = obj;
  __tsan_release(obj);
#endif
  switch_to_host(t, false);
  const uint64_t result = t->result;
#if CUDA_EMU_TSAN
  for (int i = 0; i < t->n_acquire; ++i) __tsan_acquire(t->acquire[i]);
  __tsan_ignore_thread_end();
#endif
  return result;
}

// ---- the host side: rendezvous bookkeeping ---------------------------------------------
//
// Under TSan these host-only functions are not instrumented: fibers touch the
// same records only inside ignored regions, so there is nothing to check,
// and the instrumentation would only cost time.

CUDA_EMU_NO_TSAN inline Rendezvous* new_rendezvous(const Thread* t) {
  Emu& E = g_emu;
  Rendezvous* r;
  if (E.rdv_free.empty()) {
    E.rdv_storage.emplace_back(new Rendezvous);
    r = E.rdv_storage.back().get();
  } else {
    r = E.rdv_free.back();
    E.rdv_free.pop_back();
  }
  r->kind = t->kind;
  r->file = t->file;
  r->line = t->line;
  r->mask = is_block_kind(t->kind) ? 0u : t->mask;
  r->warp = t->warp;
  r->arrived_mask = 0;
  r->arrived = 0;
  r->nsyncs = 0;
  return r;
}

CUDA_EMU_NO_TSAN inline bool same_point(const Rendezvous* r, const Thread* t) {
  return r->kind == t->kind && r->line == t->line && (r->file == t->file || std::strcmp(r->file, t->file) == 0) &&
         (is_block_kind(t->kind) || r->mask == t->mask);
}

CUDA_EMU_NO_TSAN inline void join(Rendezvous* r, Thread* t) {
  t->state = State::Waiting;
  t->rdv = r;
  (is_block_kind(r->kind) ? g_emu.at_barrier : g_emu.waiting)[t->warp] |= 1u << t->lane;
  r->arrived_mask |= 1u << t->lane;
  ++r->arrived;
#if CUDA_EMU_TSAN
  for (int i = 0; i < r->nsyncs; ++i) {
    if (r->syncs[i] == t->arrival_sync) return;
  }
  if (r->nsyncs < 33) r->syncs[r->nsyncs++] = t->arrival_sync;
#endif
}

CUDA_EMU_NO_TSAN inline void release(Thread* t, const Rendezvous* r, uint64_t result) {
  (is_block_kind(r->kind) ? g_emu.at_barrier : g_emu.waiting)[t->warp] &= ~(1u << t->lane);
  t->state = State::Released;
  t->rdv = nullptr;
  t->result = result;
#if CUDA_EMU_TSAN
  t->n_acquire = r->nsyncs;
  for (int i = 0; i < r->nsyncs; ++i) t->acquire[i] = r->syncs[i];
#else
  (void)r;
#endif
  g_emu.next.push_back(t);
}

CUDA_EMU_NO_TSAN inline unsigned present_lanes(unsigned warp) {
  const unsigned n = g_emu.nthreads - warp * 32;
  return n >= 32 ? 0xffffffffu : (1u << n) - 1u;
}

inline unsigned lowest_lane(uint32_t lanes) { return unsigned(__builtin_ctz(lanes)); }

CUDA_EMU_NO_TSAN inline Thread* lane_thread(unsigned warp, unsigned lane) { return &g_emu.threads[warp * 32 + lane]; }

// The lane a shuffle reads, as PTX's shfl.sync defines it (c = ((32 - width) << 8) | 31,
// or (32 - width) << 8 for .up); out-of-segment sources read the lane itself.
CUDA_EMU_NO_TSAN inline unsigned shuffle_source(Kind kind, unsigned lane, int arg, int width) {
  const int seg = (32 - width) & 31;
  const int c = kind == Kind::ShflUp ? 0 : 31;
  const int l = int(lane);
  const int max_lane = (l & seg) | (c & ~seg);
  const int min_lane = l & seg;
  const int b = arg & 31;
  int j;
  bool ok;
  switch (kind) {
    case Kind::ShflUp: j = l - b; ok = j >= max_lane; break;
    case Kind::ShflDown: j = l + b; ok = j <= max_lane; break;
    case Kind::ShflXor: j = l ^ b; ok = j <= max_lane; break;
    default: j = min_lane | (b & ~seg & 31); ok = j <= max_lane; break;
  }
  return ok ? unsigned(j) : lane;
}

CUDA_EMU_NO_TSAN inline void rotate_block_sync() {
#if CUDA_EMU_TSAN
  g_emu.block_open = new_sync_object();
#endif
}

CUDA_EMU_NO_TSAN inline void rotate_warp_sync(unsigned warp) {
#if CUDA_EMU_TSAN
  g_emu.warp_open[warp] = new_sync_object();
#else
  (void)warp;
#endif
}

CUDA_EMU_NO_TSAN inline void free_rendezvous(Rendezvous* r) { g_emu.rdv_free.push_back(r); }

CUDA_EMU_NO_TSAN inline void resolve_block_barrier(Rendezvous* r) {
  Emu& E = g_emu;
  uint64_t count = 0;
  for (unsigned i = 0; i < E.nthreads; ++i) count += E.threads[i].value != 0;
  uint64_t result = 0;
  switch (r->kind) {
    case Kind::SyncThreadsCount: result = count; break;
    case Kind::SyncThreadsAnd: result = count == E.nthreads; break;
    case Kind::SyncThreadsOr: result = count != 0; break;
    default: break;
  }
  for (unsigned i = 0; i < E.nthreads; ++i) release(&E.threads[i], r, result);
  E.pending_bar = nullptr;
  rotate_block_sync();
  free_rendezvous(r);
}

CUDA_EMU_NO_TSAN inline void resolve_warp_collective(Rendezvous* r) {
  const unsigned mask = r->mask;
  uint32_t ballot = 0, sum = 0, umin = 0xffffffffu, umax = 0, band = 0xffffffffu, bor = 0, bxor = 0;
  int32_t imin = INT32_MAX, imax = INT32_MIN;
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    const uint64_t v = lane_thread(r->warp, lane)->value;
    const uint32_t u = uint32_t(v);
    const int32_t s = int32_t(u);
    ballot |= uint32_t(v != 0) << lane;
    sum += u;
    umin = std::min(umin, u);
    umax = std::max(umax, u);
    imin = std::min(imin, s);
    imax = std::max(imax, s);
    band &= u;
    bor |= u;
    bxor ^= u;
  }
  // Every result first, then release: a released lane may run ahead.
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    Thread* t = lane_thread(r->warp, lane);
    uint64_t result = 0;
    switch (r->kind) {
      case Kind::ShflIdx:
      case Kind::ShflUp:
      case Kind::ShflDown:
      case Kind::ShflXor: {
        const unsigned src = shuffle_source(r->kind, lane, t->arg, t->width);
        if (!(mask >> src & 1u)) {
          die_thread(t, r->file, r->line,
                     "%s reads lane %u, which is not in the mask 0x%08x (its value is undefined on a GPU)",
                     kind_name(r->kind), src, mask);
        }
        result = lane_thread(r->warp, src)->value;
        break;
      }
      case Kind::Ballot: result = ballot; break;
      case Kind::Any: result = ballot != 0; break;
      case Kind::All: result = ballot == mask; break;
      case Kind::ReduceAdd: result = sum; break;
      case Kind::ReduceMinU: result = umin; break;
      case Kind::ReduceMaxU: result = umax; break;
      case Kind::ReduceMinI: result = uint32_t(imin); break;
      case Kind::ReduceMaxI: result = uint32_t(imax); break;
      case Kind::ReduceAnd: result = band; break;
      case Kind::ReduceOr: result = bor; break;
      case Kind::ReduceXor: result = bxor; break;
      default: break;
    }
    t->result = result;
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (mask >> lane & 1u) {
      Thread* t = lane_thread(r->warp, lane);
      release(t, r, t->result);
    }
  }
  rotate_warp_sync(r->warp);
  free_rendezvous(r);
}

// The checks below look at the other lanes of the warp through the per-warp
// lane masks, one rendezvous at a time (its arrived_mask covers its lanes),
// so an arrival costs O(rendezvous pending in the warp), not O(lanes).
CUDA_EMU_NO_TSAN inline void on_arrive(Thread* t) {
  Emu& E = g_emu;
  const unsigned w = t->warp;
  const uint32_t bit = 1u << t->lane;
  if (is_block_kind(t->kind)) {
    if (E.first_exited) {
      die_thread(t, t->file, t->line,
                 "%s() reached after %s of this block exited; every thread of a block must reach the same "
                 "barrier (an early return before a barrier?)",
                 kind_name(t->kind), Name(E.first_exited).text);
    }
    if (E.pending_bar && !same_point(E.pending_bar, t)) {
      const Rendezvous* r = E.pending_bar;
      die_thread(t, t->file, t->line,
                 "threads of the block wait at different barriers: this thread at %s, %u other thread(s) at %s",
                 Where(t).text, r->arrived, Where(r).text);
    }
    for (uint32_t lanes = E.waiting[w]; lanes;) {
      const Thread* k = lane_thread(w, lowest_lane(lanes));
      const Rendezvous* q = k->rdv;
      if (q->mask & bit) {
        die_thread(t, t->file, t->line, "this thread waits at %s while %s waits for it at %s", Where(t).text,
                   Name(k).text, Where(q).text);
      }
      lanes &= ~q->arrived_mask;
    }
    if (!E.pending_bar) E.pending_bar = new_rendezvous(t);
    join(E.pending_bar, t);
    if (E.pending_bar->arrived == E.nthreads) resolve_block_barrier(E.pending_bar);
    return;
  }
  // A warp collective.
  const uint32_t mask = t->mask, present = E.present[w];
  if (!(mask & bit)) {
    die_thread(t, t->file, t->line, "%s: the calling lane %u is not in its mask 0x%08x", kind_name(t->kind), t->lane,
               mask);
  }
  if (mask & ~present) {
    die_thread(t, t->file, t->line,
               "%s: the mask 0x%08x names lanes that do not exist (the block has %u threads, this warp has lanes "
               "0x%08x)",
               kind_name(t->kind), mask, E.nthreads, present);
  }
  if (is_shuffle(t->kind) && (t->width < 1 || t->width > 32 || (t->width & (t->width - 1)) != 0)) {
    die_thread(t, t->file, t->line, "%s: width %d is not a power of two in [1, 32]", kind_name(t->kind), t->width);
  }
  if (mask & E.exited[w]) {
    die_thread(t, t->file, t->line, "%s: the mask 0x%08x names lane %u, which has already exited", kind_name(t->kind),
               mask, lowest_lane(mask & E.exited[w]));
  }
  if (mask & E.at_barrier[w]) {
    const unsigned lane = lowest_lane(mask & E.at_barrier[w]);
    die_thread(t, t->file, t->line, "lanes of a warp reached different barriers: this lane at %s, lane %u at %s",
               Where(t).text, lane, Where(lane_thread(w, lane)->rdv).text);
  }
  Rendezvous* r = nullptr;
  for (uint32_t lanes = E.waiting[w]; lanes;) {
    const unsigned lane = lowest_lane(lanes);
    Rendezvous* q = lane_thread(w, lane)->rdv;
    lanes &= ~q->arrived_mask;
    if (same_point(q, t)) {
      r = q;
      continue;
    }
    // Lanes that wait for each other at two different collectives, or at one
    // call site with two masks, disagree about the collective. (A lane of
    // ours waiting at a collective without us may still come: fine.)
    const bool same_site = q->line == t->line && (q->file == t->file || !std::strcmp(q->file, t->file));
    const uint32_t ours = mask & q->arrived_mask;
    if (((q->mask & bit) && (ours || same_site)) || (ours && same_site)) {
      const unsigned other = lowest_lane(ours ? ours : q->arrived_mask);
      die_thread(t, t->file, t->line, "lanes of a warp reached different collectives: this lane at %s, lane %u at %s",
                 Where(t).text, other, Where(q).text);
    }
  }
  if (!r) r = new_rendezvous(t);
  join(r, t);
  if (r->arrived_mask == r->mask) resolve_warp_collective(r);
}

CUDA_EMU_NO_TSAN inline void on_exit(Thread* t) {
  Emu& E = g_emu;
  t->state = State::Done;
  ++E.done;
  if (!E.first_exited) E.first_exited = t;
  E.exited[t->warp] |= 1u << t->lane;
  give_back_stack(t);
  if (E.pending_bar) {
    const Rendezvous* r = E.pending_bar;
    die_thread(t, nullptr, 0, "this thread exited while %u thread(s) of its block wait at %s", r->arrived,
               Where(r).text);
  }
  const uint32_t bit = 1u << t->lane;
  for (uint32_t lanes = E.waiting[t->warp]; lanes;) {
    const unsigned lane = lowest_lane(lanes);
    const Rendezvous* q = lane_thread(t->warp, lane)->rdv;
    if (q->mask & bit) {
      die_thread(t, nullptr, 0,
                 "this lane exited while lane %u waits for it at %s (a lane named in the mask must reach the "
                 "collective)",
                 lane, Where(q).text);
    }
    lanes &= ~q->arrived_mask;
  }
}

[[noreturn]] inline void report_deadlock() {
  Emu& E = g_emu;
  std::fflush(stdout);
  std::fprintf(stderr,
               "cuda_emulator: %s:%d: deadlock in block (%u,%u,%u): no thread can make progress (%u of %u threads "
               "exited); waiting:\n",
               launch_file(), launch_line(), E.block_idx.x, E.block_idx.y, E.block_idx.z, E.done, E.nthreads);
  std::vector<const Rendezvous*> shown;
  for (unsigned i = 0; i < E.nthreads && shown.size() < 16; ++i) {
    const Thread* t = &E.threads[i];
    if (t->state != State::Waiting || std::find(shown.begin(), shown.end(), t->rdv) != shown.end()) continue;
    const Rendezvous* r = t->rdv;
    shown.push_back(r);
    if (is_block_kind(r->kind)) {
      std::fprintf(stderr, "  %u thread(s) at %s (first: %s)\n", r->arrived, Where(r).text, Name(t).text);
    } else {
      std::fprintf(stderr, "  warp %u lanes 0x%08x at %s; lanes still missing: 0x%08x\n", r->warp, r->arrived_mask,
                   Where(r).text, r->mask & ~r->arrived_mask);
    }
  }
  std::fflush(stderr);
  std::_Exit(kExitCode);
}

CUDA_EMU_NO_TSAN inline void order(std::vector<Thread*>& v) {
  Emu& E = g_emu;
  switch (E.schedule) {
    case Schedule::Forward:
      std::sort(v.begin(), v.end(), [](const Thread* a, const Thread* b) { return a->linear < b->linear; });
      break;
    case Schedule::Reverse:
      std::sort(v.begin(), v.end(), [](const Thread* a, const Thread* b) { return a->linear > b->linear; });
      break;
    case Schedule::Random:
      for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_random() % i]);
      break;
  }
}

CUDA_EMU_NO_TSAN inline void run_block() {
  Emu& E = g_emu;
  E.done = 0;
  E.first_exited = nullptr;
  E.pending_bar = nullptr;
#if CUDA_EMU_TSAN
  E.sync_next = 0;
  E.block_open = new_sync_object();
  for (unsigned w = 0; w < (E.nthreads + 31) / 32; ++w) E.warp_open[w] = new_sync_object();
#endif
  for (unsigned w = 0; w < (E.nthreads + 31) / 32; ++w) {
    E.present[w] = present_lanes(w);
    E.exited[w] = E.waiting[w] = E.at_barrier[w] = 0;
  }
  E.round.clear();
  for (unsigned i = 0; i < E.nthreads; ++i) {
    Thread* t = &E.threads[i];
    t->state = State::NotStarted;
    t->event = Event::None;
    t->rdv = nullptr;
    t->n_acquire = 0;
    t->value = 0;
    E.round.push_back(t);
  }
  order(E.round);
  while (!E.round.empty()) {
    E.next.clear();
    for (Thread* t : E.round) {
      if (t->state == State::NotStarted) prepare_thread(t);
      t->state = State::Running;
      t->event = Event::None;
      switch_to_thread(t);
      if (t->event == Event::Exit) {
        on_exit(t);
      } else if (t->event == Event::Arrive) {
        on_arrive(t);
      } else {
        die("internal error: a fiber switched back without an event");
      }
    }
    if (E.next.empty()) {
      if (E.done != E.nthreads) report_deadlock();
      break;
    }
    order(E.next);
    E.round.swap(E.next);
  }
}

// ---- launches ---------------------------------------------------------------------

// The linker's bounds of the static __shared__ section (null where a program has none).
extern "C" unsigned char __start_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" unsigned char __stop_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));

// Byte by byte and unsanitised: the section's variables are real globals to the
// sanitizers, and this is the hardware's garbage, not an access of the program.
CUDA_EMU_NO_TSAN CUDA_EMU_NO_ASAN inline void poison_static_shared() {
  for (volatile unsigned char* p = __start_cuda_emu_shared; p < __stop_cuda_emu_shared; ++p) *p = 0xFF;
}

constexpr size_t kCanaryBytes = CUDA_EMU_ASAN ? 0 : 64;
constexpr unsigned char kCanary = 0xA5;

inline void run_one_block(size_t shared_bytes) {
  Emu& E = g_emu;
  void* shared = nullptr;
  if (posix_memalign(&shared, 16, shared_bytes + kCanaryBytes) != 0) {
    die("cannot allocate %zu bytes of dynamic shared memory", shared_bytes);
  }
  if (shared_bytes) std::memset(shared, 0xFF, shared_bytes);
  if (kCanaryBytes) std::memset(static_cast<unsigned char*>(shared) + shared_bytes, kCanary, kCanaryBytes);
  E.dyn_shared = static_cast<unsigned char*>(shared);
  E.dyn_bytes = shared_bytes;
  poison_static_shared();
#if CUDA_EMU_TSAN
  __tsan_release(&E.block_start_sync);
#endif
  run_block();
#if CUDA_EMU_TSAN
  __tsan_acquire(&E.block_end_sync);
#endif
  for (size_t i = 0; i < kCanaryBytes; ++i) {
    if (E.dyn_shared[shared_bytes + i] != kCanary) {
      die("%s:%d: block (%u,%u,%u) wrote past the end of its %zu bytes of dynamic shared memory (byte %zu)",
          launch_file(), launch_line(), E.block_idx.x, E.block_idx.y, E.block_idx.z, shared_bytes,
          shared_bytes + i);
    }
  }
  E.dyn_shared = nullptr;
  E.dyn_bytes = 0;
  std::free(shared);
}

inline void launch_kernel(const LaunchBase& l, dim3 grid, dim3 block, size_t shared_bytes) {
  Emu& E = g_emu;
  init();
  if (E.in_launch) {
    die("%s:%d: a kernel launched from inside a kernel (the kernel launched at %s:%d): not emulated", l.file, l.line,
        launch_file(), launch_line());
  }
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64) {
    die("%s:%d: invalid launch: block (%u,%u,%u) = %llu threads; CUDA allows 1 to 1024 threads per block, "
        "block.x and block.y up to 1024, block.z up to 64",
        l.file, l.line, block.x, block.y, block.z, static_cast<unsigned long long>(threads));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    die("%s:%d: invalid launch: grid (%u,%u,%u); CUDA allows grid.x in [1, 2^31-1], grid.y and grid.z in "
        "[1, 65535]",
        l.file, l.line, grid.x, grid.y, grid.z);
  }
  const auto limit_it = E.shared_limit.find(l.kernel);
  const size_t limit = limit_it == E.shared_limit.end() ? kDefaultSharedLimit : limit_it->second;
  if (shared_bytes > limit) {
    die("%s:%d: invalid launch: %zu bytes of dynamic shared memory; the limit is %zu bytes (48 KiB unless raised "
        "with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), at most 227 KiB)",
        l.file, l.line, shared_bytes, limit);
  }
  E.in_launch = true;
  E.launch = &l;
  E.grid_dim = grid;
  E.block_dim = block;
  E.nthreads = unsigned(threads);
  for (unsigned i = 0; i < E.nthreads; ++i) {
    E.threads[i].idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
  }
  const uint64_t gx = grid.x, gxy = uint64_t(grid.x) * grid.y;
  const uint64_t nblocks = gxy * grid.z;
  auto run = [&](uint64_t b) {
    E.block_idx = uint3{unsigned(b % gx), unsigned(b / gx % grid.y), unsigned(b / gxy)};
    run_one_block(shared_bytes);
  };
  if (E.schedule != Schedule::Random) {
    for (uint64_t b = 0; b < nblocks; ++b) run(b);
  } else if (nblocks <= (uint64_t(1) << 22)) {
    std::vector<uint32_t> perm(nblocks);
    for (uint64_t b = 0; b < nblocks; ++b) perm[b] = uint32_t(b);
    for (uint64_t i = nblocks; i > 1; --i) std::swap(perm[i - 1], perm[next_random() % i]);
    for (uint32_t b : perm) run(b);
  } else {
    // Too many blocks for a table: an affine permutation b -> (a b + c) mod n.
    uint64_t a = next_random() % nblocks;
    auto gcd = [](uint64_t x, uint64_t y) {
      while (y) std::swap(x %= y, y);
      return x;
    };
    while (a == 0 || gcd(a, nblocks) != 1) a = (a + 1) % nblocks;
    const uint64_t c = next_random() % nblocks;
    for (uint64_t i = 0; i < nblocks; ++i) {
      run(uint64_t((static_cast<cuda_emu_u128>(a) * i + c) % nblocks));
    }
  }
  E.launch = nullptr;
  E.in_launch = false;
}

template <class... P>
struct LaunchImpl final : LaunchBase {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> args;
  LaunchImpl(void (*f)(P...), const char* file, int line, std::decay_t<P>... a)
      : LaunchBase{&run, reinterpret_cast<const void*>(f), file, line}, fn(f), args(std::move(a)...) {}
  static void run(const LaunchBase* base) {
    const LaunchImpl* self = static_cast<const LaunchImpl*>(base);
    call(self, std::index_sequence_for<P...>{});
  }
  template <size_t... I>
  static void call(const LaunchImpl* self, std::index_sequence<I...>) {
    self->fn(std::get<I>(self->args)...);  // every thread gets its own copies
  }
};

template <class... P>
struct Launcher {
  void (*fn)(P...);
  dim3 grid, block;
  size_t shared_bytes;
  const char* file;
  int line;
  // Arguments convert to the kernel's parameter types as in a plain call (once, on the host).
  void operator()(std::decay_t<P>... a) const {
    const LaunchImpl<P...> l(fn, file, line, std::move(a)...);
    launch_kernel(l, grid, block, shared_bytes);
  }
};

// A grid or block given as dim3 or as an integer (negative ones are refused).
struct DimArg {
  dim3 value;
  long long negative = 0;
  DimArg(dim3 d) : value(d) {}
  DimArg(uint3 d) : value(d) {}
  template <class I, std::enable_if_t<std::is_integral<I>::value, int> = 0>
  DimArg(I v) : value(static_cast<unsigned>(v)) {
    if constexpr (std::is_signed<I>::value) {
      if (v < 0) negative = static_cast<long long>(v);
    }
    if (static_cast<unsigned long long>(v) > UINT_MAX && !negative) value.x = 0;  // refused below
  }
};

template <class... P, class S>
Launcher<P...> make_launcher(void (*fn)(P...), DimArg grid, DimArg block, S shared_bytes, cudaStream_t stream,
                             const char* file, int line) {
  static_assert(std::is_integral<S>::value, "SLTRAIN_LAUNCH: shared_bytes must be an integer");
  (void)stream;  // launches are synchronous
  if (grid.negative || block.negative) {
    die("%s:%d: invalid launch: negative %s dimension %lld", file, line, grid.negative ? "grid" : "block",
        grid.negative ? grid.negative : block.negative);
  }
  if constexpr (std::is_signed<S>::value) {
    if (shared_bytes < 0) die("%s:%d: invalid launch: negative dynamic shared memory size", file, line);
  }
  return Launcher<P...>{fn, grid.value, block.value, static_cast<size_t>(shared_bytes), file, line};
}

// ---- the fiber side: indices, shared memory, collectives ------------------------------------

CUDA_EMU_NO_TSAN inline const Thread* self(const char* what) {
  const Thread* t = g_emu.current;
  if (__builtin_expect(t == nullptr, 0)) die("%s used outside a kernel launch", what);
  return t;
}
CUDA_EMU_NO_TSAN inline uint3 thread_idx() { return self("threadIdx")->idx; }
CUDA_EMU_NO_TSAN inline uint3 block_idx() { return self("blockIdx"), g_emu.block_idx; }
CUDA_EMU_NO_TSAN inline dim3 block_dim() { return self("blockDim"), g_emu.block_dim; }
CUDA_EMU_NO_TSAN inline dim3 grid_dim() { return self("gridDim"), g_emu.grid_dim; }
CUDA_EMU_NO_TSAN inline void* dynamic_shared() { return self("SLTRAIN_DYNAMIC_SHARED"), g_emu.dyn_shared; }

inline int sync_block(Kind kind, int pred, const char* file, int line) {
  return int(arrive(kind, file, line, 0, pred != 0, 0, 32));
}

// __syncwarp(...) expands to SyncWarpAt{file, line}(...), so the mask may be omitted.
struct SyncWarpAt {
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { arrive(Kind::SyncWarp, file, line, mask, 0, 0, 32); }
};

template <class T>
T shuffle(Kind kind, const char* file, int line, unsigned mask, T var, int arg, int width = warpSize) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "shuffles move trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  const uint64_t r = arrive(kind, file, line, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}

inline unsigned vote(Kind kind, const char* file, int line, unsigned mask, int pred) {
  return unsigned(arrive(kind, file, line, mask, pred != 0, 0, 32));
}

inline unsigned reduce(Kind kind, const char* file, int line, unsigned mask, unsigned value) {
  return unsigned(arrive(kind, file, line, mask, value, 0, 32));
}
inline unsigned reduce_bits(Kind kind, const char* file, int line, unsigned mask, unsigned value) {
  return unsigned(arrive(kind, file, line, mask, value, 0, 32));
}
inline int reduce(Kind kind, const char* file, int line, unsigned mask, int value) {
  if (kind == Kind::ReduceMinU) kind = Kind::ReduceMinI;
  if (kind == Kind::ReduceMaxU) kind = Kind::ReduceMaxI;
  return int(arrive(kind, file, line, mask, uint32_t(value), 0, 32));
}

template <class T>
inline const T* checked_pointer(const T* p, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    const Thread* t = g_emu.current;
    if (t) {
      die_thread(t, file, line, "%s of a misaligned address %p (needs %zu-byte alignment)", what,
                 static_cast<const void*>(p), alignof(T));
    }
    die("%s:%d: %s of a misaligned address %p", file, line, what, static_cast<const void*>(p));
  }
  return p;
}

template <class T>
inline T load(const char* what, const char* file, int line, const T* p) {
  return *checked_pointer(p, what, file, line);
}

template <class T, class V>
inline void store(const char* what, const char* file, int line, T* p, V v) {
  *const_cast<T*>(checked_pointer(static_cast<const T*>(p), what, file, line)) = v;
}

}  // namespace detail
}  // namespace cuda_emu

// ---- kernel-side names ------------------------------------------------------------

#define threadIdx (::cuda_emu::detail::thread_idx())
#define blockIdx (::cuda_emu::detail::block_idx())
#define blockDim (::cuda_emu::detail::block_dim())
#define gridDim (::cuda_emu::detail::grid_dim())

#define SLTRAIN_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::cuda_emu::detail::make_launcher((kernel), (grid), (block), (shared_bytes), (stream), __FILE__, __LINE__)
#define SLTRAIN_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::cuda_emu::detail::dynamic_shared())

#define CUDA_EMU_KIND(k) ::cuda_emu::detail::Kind::k
#define __syncthreads() ((void)::cuda_emu::detail::sync_block(CUDA_EMU_KIND(SyncThreads), 0, __FILE__, __LINE__))
#define __syncthreads_count(...) ::cuda_emu::detail::sync_block(CUDA_EMU_KIND(SyncThreadsCount), (__VA_ARGS__), __FILE__, __LINE__)
#define __syncthreads_and(...) ::cuda_emu::detail::sync_block(CUDA_EMU_KIND(SyncThreadsAnd), (__VA_ARGS__), __FILE__, __LINE__)
#define __syncthreads_or(...) ::cuda_emu::detail::sync_block(CUDA_EMU_KIND(SyncThreadsOr), (__VA_ARGS__), __FILE__, __LINE__)
#define __syncwarp(...) (::cuda_emu::detail::SyncWarpAt{__FILE__, __LINE__}(__VA_ARGS__))
#define __shfl_sync(...) ::cuda_emu::detail::shuffle(CUDA_EMU_KIND(ShflIdx), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::detail::shuffle(CUDA_EMU_KIND(ShflUp), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::detail::shuffle(CUDA_EMU_KIND(ShflDown), __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::detail::shuffle(CUDA_EMU_KIND(ShflXor), __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(...) ::cuda_emu::detail::vote(CUDA_EMU_KIND(Ballot), __FILE__, __LINE__, __VA_ARGS__)
#define __any_sync(...) int(::cuda_emu::detail::vote(CUDA_EMU_KIND(Any), __FILE__, __LINE__, __VA_ARGS__))
#define __all_sync(...) int(::cuda_emu::detail::vote(CUDA_EMU_KIND(All), __FILE__, __LINE__, __VA_ARGS__))
#define __reduce_add_sync(...) ::cuda_emu::detail::reduce(CUDA_EMU_KIND(ReduceAdd), __FILE__, __LINE__, __VA_ARGS__)
#define __reduce_min_sync(...) ::cuda_emu::detail::reduce(CUDA_EMU_KIND(ReduceMinU), __FILE__, __LINE__, __VA_ARGS__)
#define __reduce_max_sync(...) ::cuda_emu::detail::reduce(CUDA_EMU_KIND(ReduceMaxU), __FILE__, __LINE__, __VA_ARGS__)
#define __reduce_and_sync(...) ::cuda_emu::detail::reduce_bits(CUDA_EMU_KIND(ReduceAnd), __FILE__, __LINE__, __VA_ARGS__)
#define __reduce_or_sync(...) ::cuda_emu::detail::reduce_bits(CUDA_EMU_KIND(ReduceOr), __FILE__, __LINE__, __VA_ARGS__)
#define __reduce_xor_sync(...) ::cuda_emu::detail::reduce_bits(CUDA_EMU_KIND(ReduceXor), __FILE__, __LINE__, __VA_ARGS__)

// One block runs at a time on one host thread: fences only need to stop the compiler.
inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_system() { __asm__ __volatile__("" ::: "memory"); }

// Cache-hinted loads and stores: plain accesses with CUDA's alignment check.
#define __ldg(...) ::cuda_emu::detail::load("__ldg", __FILE__, __LINE__, __VA_ARGS__)
#define __ldca(...) ::cuda_emu::detail::load("__ldca", __FILE__, __LINE__, __VA_ARGS__)
#define __ldcg(...) ::cuda_emu::detail::load("__ldcg", __FILE__, __LINE__, __VA_ARGS__)
#define __ldcs(...) ::cuda_emu::detail::load("__ldcs", __FILE__, __LINE__, __VA_ARGS__)
#define __ldlu(...) ::cuda_emu::detail::load("__ldlu", __FILE__, __LINE__, __VA_ARGS__)
#define __ldcv(...) ::cuda_emu::detail::load("__ldcv", __FILE__, __LINE__, __VA_ARGS__)
#define __stcg(...) ::cuda_emu::detail::store("__stcg", __FILE__, __LINE__, __VA_ARGS__)
#define __stcs(...) ::cuda_emu::detail::store("__stcs", __FILE__, __LINE__, __VA_ARGS__)
#define __stwb(...) ::cuda_emu::detail::store("__stwb", __FILE__, __LINE__, __VA_ARGS__)
#define __stwt(...) ::cuda_emu::detail::store("__stwt", __FILE__, __LINE__, __VA_ARGS__)

// ---- atomics: real __atomic builtins (TSan sees them), sequentially consistent ---------

namespace cuda_emu {
namespace detail {
template <class T, class F>
inline T atomic_update(T* p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = f(old);
  } while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
  return old;
}
}  // namespace detail
}  // namespace cuda_emu

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* p, float v) {
  return cuda_emu::detail::atomic_update(p, [v](float old) { return old + v; });
}
inline double atomicAdd(double* p, double v) {
  return cuda_emu::detail::atomic_update(p, [v](double old) { return old + v; });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return cuda_emu::detail::atomic_update(
      p, [v](__nv_bfloat16 old) { return __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(v)); });
}
inline __half atomicAdd(__half* p, __half v) {
  return cuda_emu::detail::atomic_update(
      p, [v](__half old) { return __float2half_rn(__half2float(old) + __half2float(v)); });
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
#define CUDA_EMU_MINMAX(T)                                                                        \
  inline T atomicMax(T* p, T v) {                                                                 \
    return cuda_emu::detail::atomic_update(p, [v](T old) { return old < v ? v : old; });         \
  }                                                                                               \
  inline T atomicMin(T* p, T v) {                                                                 \
    return cuda_emu::detail::atomic_update(p, [v](T old) { return v < old ? v : old; });         \
  }
CUDA_EMU_MINMAX(int)
CUDA_EMU_MINMAX(unsigned)
CUDA_EMU_MINMAX(long long)
CUDA_EMU_MINMAX(unsigned long long)
#undef CUDA_EMU_MINMAX
#define CUDA_EMU_CAS_EXCH(T)                                                                      \
  inline T atomicCAS(T* p, T compare, T v) {                                                      \
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
    return compare;                                                                               \
  }                                                                                               \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
CUDA_EMU_CAS_EXCH(int)
CUDA_EMU_CAS_EXCH(unsigned)
CUDA_EMU_CAS_EXCH(unsigned long long)
CUDA_EMU_CAS_EXCH(unsigned short)
#undef CUDA_EMU_CAS_EXCH
inline float atomicExch(float* p, float v) {
  float old;
  __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
  return old;
}
#define CUDA_EMU_BITWISE(T)                                                                         \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }              \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }                \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
CUDA_EMU_BITWISE(int)
CUDA_EMU_BITWISE(unsigned)
CUDA_EMU_BITWISE(unsigned long long)
#undef CUDA_EMU_BITWISE
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return cuda_emu::detail::atomic_update(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return cuda_emu::detail::atomic_update(
      p, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}

// ---- integer intrinsics ---------------------------------------------------------------

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(unsigned(x))) << 32) | __brev(unsigned(x >> 32));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<cuda_emu_u128>(a) * b) >> 64);
}

// ---- float intrinsics (<cmath> provides sqrtf, fabsf, fmaxf, fminf, fmaf, expf, ...) ---

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }

namespace cuda_emu {
namespace detail {
// CUDA's float -> integer conversions saturate and send NaN to 0.
template <class I>
inline I saturate(double r) {
  if (r != r) return 0;
  if (r <= double(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (r >= double(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return static_cast<I>(r);
}
}  // namespace detail
}  // namespace cuda_emu
inline int __float2int_rn(float x) { return cuda_emu::detail::saturate<int>(std::nearbyint(double(x))); }
inline int __float2int_rz(float x) { return cuda_emu::detail::saturate<int>(std::trunc(double(x))); }
inline int __float2int_rd(float x) { return cuda_emu::detail::saturate<int>(std::floor(double(x))); }
inline int __float2int_ru(float x) { return cuda_emu::detail::saturate<int>(std::ceil(double(x))); }
inline unsigned __float2uint_rn(float x) { return cuda_emu::detail::saturate<unsigned>(std::nearbyint(double(x))); }
inline unsigned __float2uint_rz(float x) { return cuda_emu::detail::saturate<unsigned>(std::trunc(double(x))); }
inline long long __float2ll_rn(float x) { return cuda_emu::detail::saturate<long long>(std::nearbyint(double(x))); }
inline float __int2float_rn(int i) { return float(i); }
inline float __uint2float_rn(unsigned i) { return float(i); }
inline float __ll2float_rn(long long i) { return float(i); }

// CUDA's global min/max overloads.
#define CUDA_EMU_MINMAX_FN(R, A, B)                         \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
CUDA_EMU_MINMAX_FN(int, int, int)
CUDA_EMU_MINMAX_FN(unsigned, unsigned, unsigned)
CUDA_EMU_MINMAX_FN(unsigned, int, unsigned)
CUDA_EMU_MINMAX_FN(unsigned, unsigned, int)
CUDA_EMU_MINMAX_FN(long, long, long)
CUDA_EMU_MINMAX_FN(unsigned long, unsigned long, unsigned long)
CUDA_EMU_MINMAX_FN(long long, long long, long long)
CUDA_EMU_MINMAX_FN(unsigned long long, unsigned long long, unsigned long long)
CUDA_EMU_MINMAX_FN(float, float, float)
CUDA_EMU_MINMAX_FN(double, double, double)
CUDA_EMU_MINMAX_FN(double, float, double)
CUDA_EMU_MINMAX_FN(double, double, float)
#undef CUDA_EMU_MINMAX_FN

// ---- runtime API ------------------------------------------------------------------

namespace cuda_emu {
namespace detail {
inline cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) g_emu.last_error = e;
  return e;
}
}  // namespace detail
}  // namespace cuda_emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::detail::g_emu.last_error;
  cuda_emu::detail::g_emu.last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return cuda_emu::detail::g_emu.last_error; }

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "unrecognized error code";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unrecognized error code";
}

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  void* m = nullptr;
  if (p == nullptr) return cuda_emu::detail::set_error(cudaErrorInvalidValue);
  if (posix_memalign(&m, 256, bytes) != 0) {
    *p = nullptr;
    return cuda_emu::detail::set_error(cudaErrorMemoryAllocation);
  }
  if (bytes) std::memset(m, 0xFF, bytes);  // like unset device memory: garbage (NaN as float)
  *p = m;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
template <class T>
inline cudaError_t cudaMallocAsync(T** p, size_t bytes, cudaStream_t s) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), bytes, s);
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (p == nullptr) return cuda_emu::detail::set_error(cudaErrorInvalidValue);
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  return cudaMemset(p, value, bytes);
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (unsigned(kind) > 4u || (bytes && (dst == nullptr || src == nullptr))) {
    return cuda_emu::detail::set_error(cudaErrorInvalidValue);
  }
  if (bytes == 0) return cudaSuccess;
  std::memcpy(dst, src, bytes);  // overlapping ranges are an error in CUDA too (ASan reports them)
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cuda_emu::detail::set_error(cudaErrorInvalidDevice);
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cuda_emu::detail::set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(cuda_emu::kDefaultSharedLimit); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;  // H100 SXM
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(cuda_emu::kMaxSharedLimit); break;
    default: return cuda_emu::detail::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > cuda_emu::kMaxSharedLimit) {
      return cuda_emu::detail::set_error(cudaErrorInvalidValue);
    }
    cuda_emu::detail::g_emu.shared_limit[kernel] = size_t(value);
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    return (value < -1 || value > 100) ? cuda_emu::detail::set_error(cudaErrorInvalidValue) : cudaSuccess;
  }
  return cuda_emu::detail::set_error(cudaErrorInvalidValue);
}
template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- CUB: DeviceRadixSort as a stable host sort -----------------------------------------

namespace cub {

struct DeviceRadixSort {
  template <class KeyT, class NumItemsT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                              KeyT* d_keys_out, NumItemsT num_items, int begin_bit = 0,
                              int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = nullptr) {
    (void)stream;
    return sort<KeyT, char>("SortKeys", d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, nullptr, nullptr,
                            static_cast<long long>(num_items), begin_bit, end_bit);
  }

  template <class KeyT, class ValueT, class NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                               KeyT* d_keys_out, const ValueT* d_values_in, ValueT* d_values_out,
                               NumItemsT num_items, int begin_bit = 0, int end_bit = sizeof(KeyT) * 8,
                               cudaStream_t stream = nullptr) {
    (void)stream;
    return sort<KeyT, ValueT>("SortPairs", d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                              d_values_out, static_cast<long long>(num_items), begin_bit, end_bit);
  }

 private:
  static bool overlap(const void* a, size_t an, const void* b, size_t bn) {
    const uintptr_t x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
    return an && bn && x < y + bn && y < x + an;
  }

  template <class KeyT, class ValueT>
  static cudaError_t sort(const char* what, void* temp, size_t& temp_bytes, const KeyT* keys_in, KeyT* keys_out,
                          const ValueT* values_in, ValueT* values_out, long long n, int begin_bit, int end_bit) {
    static_assert(std::is_integral<KeyT>::value && std::is_unsigned<KeyT>::value,
                  "the emulator's cub::DeviceRadixSort shim sorts unsigned integer keys");
    const bool pairs = values_in != nullptr || values_out != nullptr;
    if (n < 0 || begin_bit < 0 || end_bit > int(sizeof(KeyT) * 8) || begin_bit > end_bit) {
      return cuda_emu::detail::set_error(cudaErrorInvalidValue);
    }
    const size_t count = size_t(n);
    const size_t needed = 1024 + count * (sizeof(KeyT) + (pairs ? sizeof(ValueT) : 0));
    if (temp == nullptr) {
      temp_bytes = needed;
      return cudaSuccess;
    }
    if (temp_bytes < needed) {
      cuda_emu::detail::die("cub::DeviceRadixSort::%s: %zu bytes of temporary storage given for %lld items; the "
                            "size query asked for %zu",
                            what, temp_bytes, n, needed);
    }
    const size_t kb = count * sizeof(KeyT), vb = pairs ? count * sizeof(ValueT) : 0;
    if (overlap(keys_in, kb, keys_out, kb) || (pairs && overlap(values_in, vb, values_out, vb)) ||
        overlap(temp, temp_bytes, keys_in, kb) || overlap(temp, temp_bytes, keys_out, kb) ||
        (pairs && (overlap(temp, temp_bytes, values_in, vb) || overlap(temp, temp_bytes, values_out, vb) ||
                   overlap(keys_out, kb, values_out, vb) || overlap(keys_out, kb, values_in, vb) ||
                   overlap(keys_in, kb, values_out, vb)))) {
      cuda_emu::detail::die("cub::DeviceRadixSort::%s: input, output and temporary ranges must not overlap", what);
    }
    if (count == 0) return cudaSuccess;
    if (pairs && (values_in == nullptr || values_out == nullptr)) {
      return cuda_emu::detail::set_error(cudaErrorInvalidValue);
    }
    const int bits = end_bit - begin_bit;
    const KeyT field = bits >= int(sizeof(KeyT) * 8) ? KeyT(~KeyT(0)) : KeyT((KeyT(1) << bits) - 1);
    auto digit = [&](KeyT k) { return KeyT(KeyT(k >> begin_bit) & field); };
    std::vector<size_t> index(count);
    for (size_t i = 0; i < count; ++i) index[i] = i;
    std::stable_sort(index.begin(), index.end(),
                     [&](size_t a, size_t b) { return digit(keys_in[a]) < digit(keys_in[b]); });
    std::memset(temp, 0xFF, temp_bytes);  // whatever the caller kept there is gone
    for (size_t i = 0; i < count; ++i) keys_out[i] = keys_in[index[i]];
    if (pairs) {
      for (size_t i = 0; i < count; ++i) values_out[i] = values_in[index[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub
