#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../../common/quant8.h"
#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {
namespace {

template <class S, class P>
S load(P x) {
  if constexpr (std::is_same_v<P, bf16> || std::is_same_v<P, fp16>) {
    return S(to_float(x));
  } else {
    return S(x);
  }
}

// The decay kind is a template argument: with no branch left in the loop it vectorises.
template <bool kDecoupled, class P, class S>
SLTRAIN_SIMD_CLONES void adam_range(int64_t begin, int64_t end, P* __restrict param,
                                    const P* __restrict grad, S* __restrict exp_avg,
                                    S* __restrict exp_avg_sq, const AdamScalars<S>& scalars) {
  for (int64_t i = begin; i < end; ++i) {
    S p = load<S>(param[i]);
    scalars.template update_as<kDecoupled>(p, load<S>(grad[i]), exp_avg[i], exp_avg_sq[i]);
    param[i] = from_float<P>(p);
  }
}

// decode_signed8 / decode_unsigned8 of every code at absmax 1, so that
// decoding is one load and one multiply.
struct DecodeTables {
  float signed_code[256];  // indexed by the code's bits as uint8
  float unsigned_code[256];
  DecodeTables() {
    for (int q = 0; q < 256; ++q) {
      signed_code[q] = q == 128 ? 0.0f : decode_signed8(int8_t(uint8_t(q)), 1.0f);
      unsigned_code[q] = decode_unsigned8(uint8_t(q), 1.0f);
    }
  }
};

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// The absmaxes of a block's new moments, and the scales the encoders take.
struct BlockAbsmaxes {
  float m, sqrt_v;
};

float encoder_scale(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }

// The update of a block whose moments were decoded at absmax 1 into m and
// sqrt_v: the moments are scaled by the old absmaxes, updated with the
// parameters, and left in m and sqrt_v for the encoder. The loop sees only
// 32-bit types, so it vectorises without spilling; the absmaxes are integer
// maxima of the float bits (the same order for non-negative floats; a NaN
// moment wins and makes its block's absmax NaN instead of vanishing from it).
// Inlined into each block kernel, whose trip count and SIMD target it takes.
template <bool kDecoupled, class P>
__attribute__((always_inline)) inline BlockAbsmaxes update_block(int64_t count, P* __restrict param,
                                                                 const P* __restrict grad, float* __restrict m,
                                                                 float* __restrict sqrt_v, BlockAbsmaxes old,
                                                                 const AdamScalars<float>& scalars) {
  uint32_t m_absmax_bits = 0, sqrt_v_absmax_bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    float m_j = old.m * m[j];
    const float old_sqrt_v = old.sqrt_v * sqrt_v[j];
    float v_j = old_sqrt_v * old_sqrt_v;
    float p = load<float>(param[j]);
    scalars.template update_as<kDecoupled>(p, load<float>(grad[j]), m_j, v_j);
    param[j] = from_float<P>(p);
    m[j] = m_j;
    sqrt_v[j] = std::sqrt(v_j);
    m_absmax_bits = std::max(m_absmax_bits, bits_of(std::fabs(m_j)));
    sqrt_v_absmax_bits = std::max(sqrt_v_absmax_bits, bits_of(sqrt_v[j]));
  }
  return {from_bits(m_absmax_bits), from_bits(sqrt_v_absmax_bits)};
}

// The decoded moments of a block at absmax 1: table loads, kept out of the
// vector loops (vectorised, each load becomes an extract and an insert).
__attribute__((noinline, optimize("no-tree-vectorize"))) void decode_block_portable(
    int64_t count, const int8_t* __restrict exp_avg, const uint8_t* __restrict sqrt_exp_avg_sq,
    float* __restrict m, float* __restrict sqrt_v) {
  static const DecodeTables tables;
  for (int64_t j = 0; j < count; ++j) {
    m[j] = tables.signed_code[uint8_t(exp_avg[j])];
    sqrt_v[j] = tables.unsigned_code[sqrt_exp_avg_sq[j]];
  }
}

// The codes of a block's new moments; the scales are 1 / the new absmaxes.
SLTRAIN_SIMD_CLONES_WITH_AVX512 void encode_block_portable(int64_t count, const float* __restrict m,
                                                           const float* __restrict sqrt_v, float m_scale,
                                                           float sqrt_v_scale, int8_t* __restrict exp_avg,
                                                           uint8_t* __restrict sqrt_exp_avg_sq) {
  int32_t m_code[kQuantBlock], sqrt_v_code[kQuantBlock];
  for (int64_t j = 0; j < count; ++j) {
    m_code[j] = encode_signed8(m[j], m_scale);
    sqrt_v_code[j] = encode_unsigned8(sqrt_v[j], sqrt_v_scale);
  }
  for (int64_t j = 0; j < count; ++j) {
    exp_avg[j] = int8_t(m_code[j]);
    sqrt_exp_avg_sq[j] = uint8_t(sqrt_v_code[j]);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512 decode and encode: every table of the codes held in registers, so a
// lookup is an in-register permute instead of a scalar load (the decode) or
// a gather (the encode, which GCC otherwise emits for quant8.h's bin[]).
// The same codes and values as quant8.h bit for bit: test_cpu_kernels sweeps
// every mantissa through the kernel's encoder and re-encodes decoded moments.
#define SLTRAIN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
// GCC 12's own AVX-512 headers start masked intrinsics from an undefined
// register and then warn that it is, or may be, used uninitialised: a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// The table of one octave's steps, padded to 16 lanes, as float bits.
template <int Steps>
SLTRAIN_AVX512 __m512i octave_steps() {
  alignas(64) uint32_t padded[16] = {};
  for (int k = 0; k < Steps; ++k) padded[k] = bits_of(quant8_detail::kHostTable<Steps>.step[k]);
  return _mm512_load_si512(padded);
}

// 2^(-steps / Steps) * 1 for 0 <= steps, as quant8_detail::two_to_minus:
// the step of the octave from a permute, the octave subtracted from the exponent.
template <int Steps>
SLTRAIN_AVX512 __m512 two_to_minus(__m512i steps, __m512i octave_step_bits) {
  // octaves = ceil(steps / Steps); for Steps = 12 a multiply and shift
  // (exact for steps + 11 < 2^15: floor(x * 43691 / 2^19) = floor(x / 12)).
  const __m512i rounded_up = _mm512_add_epi32(steps, _mm512_set1_epi32(Steps - 1));
  const __m512i octaves = Steps == 16 ? _mm512_srli_epi32(rounded_up, 4)
                                      : _mm512_srli_epi32(_mm512_mullo_epi32(rounded_up, _mm512_set1_epi32(43691)), 19);
  const __m512i k = _mm512_sub_epi32(_mm512_mullo_epi32(octaves, _mm512_set1_epi32(Steps)), steps);
  const __m512i step = _mm512_permutexvar_epi32(k, octave_step_bits);
  return _mm512_castsi512_ps(_mm512_sub_epi32(step, _mm512_slli_epi32(octaves, 23)));
}

// Stores of 16 lanes, masked only in a block's tail (masked stores are slow
// on some CPUs): the floats, and 16 codes narrowed to bytes.
SLTRAIN_AVX512 void store_floats(float* values, __mmask16 lanes, __m512 value) {
  if (lanes == 0xffff) {
    _mm512_storeu_ps(values, value);
  } else {
    _mm512_mask_storeu_ps(values, lanes, value);
  }
}

SLTRAIN_AVX512 void store_codes(void* codes, __mmask16 lanes, __m128i bytes) {
  if (lanes == 0xffff) {
    _mm_storeu_si128(static_cast<__m128i*>(codes), bytes);
  } else {
    _mm_mask_storeu_epi8(codes, lanes, bytes);
  }
}

SLTRAIN_AVX512 void decode_block_avx512(int64_t count, const int8_t* __restrict exp_avg,
                                        const uint8_t* __restrict sqrt_exp_avg_sq, float* __restrict m,
                                        float* __restrict sqrt_v) {
  const __m512i steps12 = octave_steps<12>(), steps16 = octave_steps<16>();
  const __m512i sign_bit = _mm512_set1_epi32(int32_t(0x80000000u));
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 lanes = count - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - j)) - 1);
    const __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, exp_avg + j));
    const __m512i magnitude = _mm512_abs_epi32(q);
    // Codes 0 and -128 (never written) decode to 0, as in DecodeTables.
    const __mmask16 nonzero = _mm512_cmpneq_epi32_mask(q, _mm512_setzero_si512()) &
                              _mm512_cmpneq_epi32_mask(q, _mm512_set1_epi32(-128));
    const __m512i m_bits = _mm512_castps_si512(
        two_to_minus<12>(_mm512_sub_epi32(_mm512_set1_epi32(127), magnitude), steps12));
    const __m512i signed_bits = _mm512_or_si512(m_bits, _mm512_and_si512(q, sign_bit));
    store_floats(m + j, lanes, _mm512_maskz_mov_ps(nonzero, _mm512_castsi512_ps(signed_bits)));
    const __m512i u = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, sqrt_exp_avg_sq + j));
    const __m512 v = two_to_minus<16>(_mm512_sub_epi32(_mm512_set1_epi32(255), u), steps16);
    store_floats(sqrt_v + j, lanes, _mm512_maskz_mov_ps(_mm512_cmpneq_epi32_mask(u, _mm512_setzero_si512()), v));
  }
}

// With AVX-512 VBMI, 64 codes at a time: each byte of the decoded floats
// from DecodeTables' 256 entries as four 64-byte tables (two two-register
// byte permutes, one blend on the code's top bit), and the four byte planes
// interleaved into floats. About 0.4 instructions a code against 2 above.
struct BytePlanes {
  alignas(64) uint8_t plane[2][4][256];  // [signed, unsigned][byte of the float][code]
  BytePlanes() {
    static const DecodeTables tables;
    for (int q = 0; q < 256; ++q) {
      const uint32_t values[2] = {bits_of(tables.signed_code[q]), bits_of(tables.unsigned_code[q])};
      for (int kind = 0; kind < 2; ++kind) {
        for (int byte = 0; byte < 4; ++byte) plane[kind][byte][q] = uint8_t(values[kind] >> (8 * byte));
      }
    }
  }
};

#define SLTRAIN_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

SLTRAIN_AVX512_VBMI __m512i byte_lookup(__m512i codes, const uint8_t* table) {
  const __m512i low = _mm512_permutex2var_epi8(_mm512_load_si512(table), codes, _mm512_load_si512(table + 64));
  const __m512i high =
      _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), codes, _mm512_load_si512(table + 192));
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(codes), low, high);
}

// Decodes 64 codes into out[0, 64). The unpacks interleave within 128-bit
// lanes, so the codes are first reordered: position 16 L + 4 s + t takes code
// 16 s + 4 L + t, which the unpacks put back at 16 s + 4 L + t.
SLTRAIN_AVX512_VBMI void decode_64(const void* codes, const uint8_t (*planes)[256], float* out) {
  alignas(64) static const uint8_t lane_transpose[64] = {
      0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51, 4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
      8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  const __m512i q = _mm512_permutexvar_epi8(_mm512_load_si512(lane_transpose), _mm512_loadu_si512(codes));
  const __m512i byte0 = byte_lookup(q, planes[0]), byte1 = byte_lookup(q, planes[1]);
  const __m512i byte2 = byte_lookup(q, planes[2]), byte3 = byte_lookup(q, planes[3]);
  const __m512i low01 = _mm512_unpacklo_epi8(byte0, byte1), high01 = _mm512_unpackhi_epi8(byte0, byte1);
  const __m512i low23 = _mm512_unpacklo_epi8(byte2, byte3), high23 = _mm512_unpackhi_epi8(byte2, byte3);
  _mm512_storeu_si512(out, _mm512_unpacklo_epi16(low01, low23));
  _mm512_storeu_si512(out + 16, _mm512_unpackhi_epi16(low01, low23));
  _mm512_storeu_si512(out + 32, _mm512_unpacklo_epi16(high01, high23));
  _mm512_storeu_si512(out + 48, _mm512_unpackhi_epi16(high01, high23));
}

const BytePlanes& byte_planes() {
  static const BytePlanes tables;
  return tables;
}

SLTRAIN_AVX512_VBMI void decode_block_avx512_vbmi(int64_t count, const int8_t* __restrict exp_avg,
                                                  const uint8_t* __restrict sqrt_exp_avg_sq, float* __restrict m,
                                                  float* __restrict sqrt_v) {
  const BytePlanes& tables = byte_planes();
  const int64_t whole = count - count % 64;
  for (int64_t j = 0; j < whole; j += 64) {
    decode_64(exp_avg + j, tables.plane[0], m + j);
    decode_64(sqrt_exp_avg_sq + j, tables.plane[1], sqrt_v + j);
  }
  if (whole < count) decode_block_avx512(count - whole, exp_avg + whole, sqrt_exp_avg_sq + whole, m + whole, sqrt_v + whole);
}

// Steps * exponent field + steps within the octave of 16 lanes, which is
// Steps * 127 - quant8_detail::steps_below_one (the callers fold the
// constants of the codes into the table): the number of midpoints at or
// below a mantissa, looked up in 32 equal bins of the mantissa range by the
// top five mantissa bits. Consecutive midpoints are over 1/32 apart (the
// closest, at Steps = 16, by 0.045), so a bin holds at most one and one
// integer comparison with it finishes the count, as quant8.h does with its
// 128 bins. Both tables are two registers each, read by two-register
// permutes that look only at the index's low five bits: bits >> 18 needs no mask.
struct BinTable {
  __m512i below[2];  // midpoints at or below the bin's start, plus the caller's offset
  __m512i next[2];   // the 23-bit mantissa field of the bin's next midpoint (2^23: none)
};

// Both tables of one encoder in memory, computed once.
template <int Steps, int Offset>
struct BinTableEntries {
  alignas(64) int32_t below[32];
  alignas(64) int32_t next[32];
  BinTableEntries() {
    for (int bin = 0; bin < 32; ++bin) {
      const uint32_t start = uint32_t(bin) << 18;  // the bin's first mantissa field
      int count = 0;
      for (int j = 0; j < Steps; ++j) count += quant8_detail::midpoint_field<Steps>(j) <= start ? 1 : 0;
      below[bin] = count + Offset;
      next[bin] = int32_t(count < Steps ? quant8_detail::midpoint_field<Steps>(count) : 1u << 23);
    }
  }
};

template <int Steps, int Offset>
SLTRAIN_AVX512 BinTable bin_table() {
  static const BinTableEntries<Steps, Offset> entries;
  return {{_mm512_load_si512(entries.below), _mm512_load_si512(entries.below + 16)},
          {_mm512_load_si512(entries.next), _mm512_load_si512(entries.next + 16)}};
}

template <int Steps>
SLTRAIN_AVX512 __m512i steps_above_zero(__m512 r, const BinTable& table) {
  const __m512i bits = _mm512_castps_si512(r);
  const __m512i bin = _mm512_srli_epi32(bits, 18);
  const __m512i below = _mm512_permutex2var_epi32(table.below[0], bin, table.below[1]);
  const __m512i next = _mm512_permutex2var_epi32(table.next[0], bin, table.next[1]);
  const __mmask16 past_next = _mm512_cmpge_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffff)), next);
  const __m512i exponent = _mm512_srli_epi32(bits, 23);
  const __m512i octaves = Steps == 16 ? _mm512_slli_epi32(exponent, 4) : _mm512_mullo_epi32(exponent, _mm512_set1_epi32(Steps));
  const __m512i steps = _mm512_add_epi32(octaves, below);
  return _mm512_mask_sub_epi32(steps, past_next, steps, _mm512_set1_epi32(-1));
}

// The codes of 16 lanes as 32-bit integers; lanes not kept are 0
// (encode_signed8 / encode_unsigned8, lane for lane).
struct Encoder {
  BinTable signed_bins, unsigned_bins;
  __m512 m_scale, sqrt_v_scale;
  __mmask16 m_block_nonzero, sqrt_v_block_nonzero;  // all-zero blocks encode to 0

  SLTRAIN_AVX512 Encoder(float m_scale_, float sqrt_v_scale_)
      // 127 - clamp(steps below one, 0, 127) = clamp(127 - 12 * 127 + steps above zero, 0, 127);
      // 255 - clamp(steps below one, 0, 254) = clamp(255 - 16 * 127 + steps above zero, 1, 255).
      : signed_bins(bin_table<12, 127 - 12 * 127>()),
        unsigned_bins(bin_table<16, 255 - 16 * 127>()),
        m_scale(_mm512_set1_ps(m_scale_)),
        sqrt_v_scale(_mm512_set1_ps(sqrt_v_scale_)),
        m_block_nonzero(m_scale_ > 0.0f ? 0xffff : 0),
        sqrt_v_block_nonzero(sqrt_v_scale_ > 0.0f ? 0xffff : 0) {}

  SLTRAIN_AVX512 __m512i signed_codes(__m512 x) const {
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 negative = _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ);
    const __mmask16 kept = m_block_nonzero & _mm512_cmp_ps_mask(x, zero, _CMP_NEQ_UQ);
    const __m512 magnitude_x = _mm512_mask_sub_ps(x, negative, zero, x);
    const __m512i steps = steps_above_zero<12>(_mm512_mul_ps(magnitude_x, m_scale), signed_bins);
    const __m512i magnitude = _mm512_maskz_min_epi32(kept, _mm512_max_epi32(steps, _mm512_setzero_si512()), _mm512_set1_epi32(127));
    return _mm512_mask_sub_epi32(magnitude, negative, _mm512_setzero_si512(), magnitude);
  }

  // The upper bound 255 is left to the saturating narrowing.
  SLTRAIN_AVX512 __m512i unsigned_codes(__m512 y) const {
    const __mmask16 kept = sqrt_v_block_nonzero & _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512i steps = steps_above_zero<16>(_mm512_mul_ps(y, sqrt_v_scale), unsigned_bins);
    return _mm512_maskz_max_epi32(kept, steps, _mm512_set1_epi32(1));
  }
};

// 64 codes from four vectors of 16 (lanes 0-15, 16-31, ...), saturated to
// bytes: the packs work within 128-bit lanes, leaving in lane k the four
// elements 4k..4k+3 of each source, which one dword permute puts back in order.
SLTRAIN_AVX512 __m512i in_order(__m512i packed) {
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), packed);
}

SLTRAIN_AVX512 void store_64_signed(int8_t* codes, const __m512i (&code)[4]) {
  const __m512i words = _mm512_packs_epi16(_mm512_packs_epi32(code[0], code[1]), _mm512_packs_epi32(code[2], code[3]));
  _mm512_storeu_si512(codes, in_order(words));
}

SLTRAIN_AVX512 void store_64_unsigned(uint8_t* codes, const __m512i (&code)[4]) {
  const __m512i words = _mm512_packus_epi16(_mm512_packs_epi32(code[0], code[1]), _mm512_packs_epi32(code[2], code[3]));
  _mm512_storeu_si512(codes, in_order(words));
}

// Inlined, so that the encoder's tables stay in registers across a block.
SLTRAIN_AVX512 __attribute__((always_inline)) inline void encode_64(const Encoder& encoder, const float* m,
                                                                    const float* sqrt_v, int8_t* exp_avg,
                                                                    uint8_t* sqrt_exp_avg_sq) {
  __m512i m_code[4], sqrt_v_code[4];
  for (int part = 0; part < 4; ++part) {
    m_code[part] = encoder.signed_codes(_mm512_loadu_ps(m + 16 * part));
    sqrt_v_code[part] = encoder.unsigned_codes(_mm512_loadu_ps(sqrt_v + 16 * part));
  }
  store_64_signed(exp_avg, m_code);
  store_64_unsigned(sqrt_exp_avg_sq, sqrt_v_code);
}

SLTRAIN_AVX512 void encode_block_avx512(int64_t count, const float* __restrict m, const float* __restrict sqrt_v,
                                        float m_scale, float sqrt_v_scale, int8_t* __restrict exp_avg,
                                        uint8_t* __restrict sqrt_exp_avg_sq) {
  const Encoder encoder(m_scale, sqrt_v_scale);
  const int64_t whole = count - count % 64;
  for (int64_t j = 0; j < whole; j += 64) encode_64(encoder, m + j, sqrt_v + j, exp_avg + j, sqrt_exp_avg_sq + j);
  for (int64_t j = whole; j < count; j += 16) {
    const __mmask16 lanes = count - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - j)) - 1);
    store_codes(exp_avg + j, lanes, _mm512_cvtepi32_epi8(encoder.signed_codes(_mm512_maskz_loadu_ps(lanes, m + j))));
    store_codes(sqrt_exp_avg_sq + j, lanes,
                _mm512_cvtusepi32_epi8(encoder.unsigned_codes(_mm512_maskz_loadu_ps(lanes, sqrt_v + j))));
  }
}

// Whole blocks on a VBMI machine, software-pipelined: adam8bit_block's
// decode, update and encode with the codecs inlined and every trip count
// known, and the encode of each block (which must wait for the block's
// absmaxes) done a quarter at a time between the quarters of the next
// block's update. The update streams the parameters and gradients from
// memory and waits on the divider; the encode is integer work on the
// moments in L1: interleaved, one hides the other. The same arithmetic and
// codes as adam8bit_block, bit for bit: the update is the same inlined loop
// (the absmaxes of the quarters combine by the same integer maximum), and
// the codecs are the ones CodecKernels picks on such a machine.
template <bool kDecoupled, class P>
SLTRAIN_AVX512_VBMI void adam8bit_whole_blocks_vbmi(int64_t blocks, P* __restrict param, const P* __restrict grad,
                                                    int8_t* __restrict exp_avg, float* exp_avg_absmax,
                                                    uint8_t* __restrict sqrt_exp_avg_sq,
                                                    float* sqrt_exp_avg_sq_absmax, const AdamScalars<float>& scalars) {
  constexpr int64_t kQuarter = kQuantBlock / 4;  // encode_64's width
  const BytePlanes& tables = byte_planes();
  alignas(64) float m[2][kQuantBlock], sqrt_v[2][kQuantBlock];  // this block's moments, and the last one's
  Encoder last_encoder(0.0f, 0.0f);
  for (int64_t block = 0; block < blocks; ++block) {
    float* const this_m = m[block % 2];
    float* const this_sqrt_v = sqrt_v[block % 2];
    const float* const last_m = m[1 - block % 2];
    const float* const last_sqrt_v = sqrt_v[1 - block % 2];
    const int64_t first = block * kQuantBlock, last_first = first - kQuantBlock;
    for (int64_t j = 0; j < kQuantBlock; j += kQuarter) {
      decode_64(exp_avg + first + j, tables.plane[0], this_m + j);
      decode_64(sqrt_exp_avg_sq + first + j, tables.plane[1], this_sqrt_v + j);
    }
    const BlockAbsmaxes old{exp_avg_absmax[block], sqrt_exp_avg_sq_absmax[block]};
    uint32_t m_absmax_bits = 0, sqrt_v_absmax_bits = 0;
    for (int64_t j = 0; j < kQuantBlock; j += kQuarter) {
      const BlockAbsmaxes quarter = update_block<kDecoupled>(kQuarter, param + first + j, grad + first + j,
                                                             this_m + j, this_sqrt_v + j, old, scalars);
      m_absmax_bits = std::max(m_absmax_bits, bits_of(quarter.m));
      sqrt_v_absmax_bits = std::max(sqrt_v_absmax_bits, bits_of(quarter.sqrt_v));
      if (block > 0) {
        encode_64(last_encoder, last_m + j, last_sqrt_v + j, exp_avg + last_first + j, sqrt_exp_avg_sq + last_first + j);
      }
    }
    exp_avg_absmax[block] = from_bits(m_absmax_bits);
    sqrt_exp_avg_sq_absmax[block] = from_bits(sqrt_v_absmax_bits);
    last_encoder = Encoder(encoder_scale(exp_avg_absmax[block]), encoder_scale(sqrt_exp_avg_sq_absmax[block]));
  }
  // The pipeline's drain: the last block's encode alone.
  const int64_t last = blocks - 1, last_first = last * kQuantBlock;
  for (int64_t j = 0; j < kQuantBlock; j += kQuarter) {
    encode_64(last_encoder, m[last % 2] + j, sqrt_v[last % 2] + j, exp_avg + last_first + j,
              sqrt_exp_avg_sq + last_first + j);
  }
}
#pragma GCC diagnostic pop
#undef SLTRAIN_AVX512_VBMI
#undef SLTRAIN_AVX512
#endif

// SLTRAIN_PORTABLE_CODECS keeps the portable codecs on any machine (the
// ctest cpu_kernels_portable_codecs: what AVX2 machines run).
#if defined(SLTRAIN_PORTABLE_CODECS)
constexpr bool kPortableCodecsOnly = true;
#else
constexpr bool kPortableCodecsOnly = false;
#endif

// The decoder and encoder of this machine, chosen once, and whether whole
// blocks go to adam8bit_whole_blocks_vbmi.
struct CodecKernels {
  decltype(&decode_block_portable) decode = decode_block_portable;
  decltype(&encode_block_portable) encode = encode_block_portable;
  bool whole_blocks_vbmi = false;
  CodecKernels() {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!kPortableCodecsOnly && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      whole_blocks_vbmi = __builtin_cpu_supports("avx512vbmi");
      decode = whole_blocks_vbmi ? decode_block_avx512_vbmi : decode_block_avx512;
      encode = encode_block_avx512;
    }
#endif
  }
};

// Work per element (float32 parameters):
//   32-bit step: loads p, g, m, v (16 B), stores p, m, v (12 B); 8 multiplies
//     or adds, 2 divisions, 1 square root. Memory-bound on a quiet machine
//     (an AVX-512 clone of its loop measured no faster with aligned buffers).
//   8-bit step: loads p, g (8 B) and two codes (2 B), stores p (4 B) and two
//     codes (2 B), plus 8 B of absmaxes per 256 elements: 16 B. The same
//     arithmetic (its update loop: 27 AVX-512 instructions per 16 elements,
//     with the 2 divisions and the square root), and on top, per 16 elements
//     and for both moments: the decode, about 14 instructions (VBMI byte
//     permutes); the absmaxes, 2 (and a horizontal maximum per quarter
//     block); the encode, about 33 (two table permutes per code, the codes
//     narrowed by packs); the moments through L1 between the passes. About
//     5 vector instructions an element against the 32-bit step's 1.6, so
//     compute-bound: adam8bit_whole_blocks_vbmi overlaps the encode with the
//     next block's update, which waits on memory and the divider (interleaving
//     the decode too measured slower: its tables and the encoder's do not fit
//     in the registers together). On AVX2 machines: the portable codecs.
//   Measured (bench_cpu_adam, one thread, 8 M elements, process CPU time on
//   the shared VM, 2026-11-27): 32-bit 3.9-4.2 ms, 8-bit 4.1 ms (0.97-1.04x;
//   5.2 ms, 1.24-1.32x, before the pipelining and the table encoder).
// One code block of count <= kQuantBlock elements: decode against the old
// absmaxes, the 32-bit update, the new absmaxes, re-encode.
template <bool kDecoupled, class P>
SLTRAIN_SIMD_CLONES_WITH_AVX512 void adam8bit_block(int64_t count, P* __restrict param, const P* __restrict grad,
                                        int8_t* __restrict exp_avg, float* exp_avg_absmax,
                                        uint8_t* __restrict sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax,
                                        const AdamScalars<float>& scalars, const CodecKernels& codec) {
  float m[kQuantBlock], sqrt_v[kQuantBlock];
  codec.decode(count, exp_avg, sqrt_exp_avg_sq, m, sqrt_v);
  const BlockAbsmaxes absmax = update_block<kDecoupled>(count, param, grad, m, sqrt_v,
                                                        {*exp_avg_absmax, *sqrt_exp_avg_sq_absmax}, scalars);
  codec.encode(count, m, sqrt_v, encoder_scale(absmax.m), encoder_scale(absmax.sqrt_v), exp_avg, sqrt_exp_avg_sq);
  *exp_avg_absmax = absmax.m;
  *sqrt_exp_avg_sq_absmax = absmax.sqrt_v;
}

}  // namespace

template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper) {
  const AdamScalars<S> scalars(hyper);
  parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    const auto run = scalars.decoupled ? adam_range<true, P, S> : adam_range<false, P, S>;
    run(begin, end, param, grad, exp_avg, exp_avg_sq, scalars);
  });
}

template <class P>
void adam8bit_step(int64_t numel, P* param, const P* grad, int8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper) {
  const AdamScalars<float> scalars(hyper);
  const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
  static const CodecKernels codec;
  const int64_t whole_blocks = numel / kQuantBlock;
  parallel_for(0, blocks, 64, [&](int64_t block_begin, int64_t block_end) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (codec.whole_blocks_vbmi && block_begin < whole_blocks) {
      const int64_t whole_end = std::min(block_end, whole_blocks), first = block_begin * kQuantBlock;
      const auto run = scalars.decoupled ? adam8bit_whole_blocks_vbmi<true, P> : adam8bit_whole_blocks_vbmi<false, P>;
      run(whole_end - block_begin, param + first, grad + first, exp_avg + first, exp_avg_absmax + block_begin,
          sqrt_exp_avg_sq + first, sqrt_exp_avg_sq_absmax + block_begin, scalars);
      block_begin = whole_end;
    }
#endif
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kQuantBlock;
      const auto run = scalars.decoupled ? adam8bit_block<true, P> : adam8bit_block<false, P>;
      run(std::min(kQuantBlock, numel - first), param + first, grad + first, exp_avg + first,
          exp_avg_absmax + block, sqrt_exp_avg_sq + first, sqrt_exp_avg_sq_absmax + block, scalars, codec);
    }
  });
}

template void adam_step<float, float>(int64_t, float*, const float*, float*, float*,
                                      const AdamHyper&);
template void adam_step<double, double>(int64_t, double*, const double*, double*, double*,
                                        const AdamHyper&);
template void adam_step<bf16, float>(int64_t, bf16*, const bf16*, float*, float*, const AdamHyper&);
template void adam_step<fp16, float>(int64_t, fp16*, const fp16*, float*, float*, const AdamHyper&);

#define SLTRAIN_INSTANTIATE_ADAM8BIT(P)                                                   \
  template void adam8bit_step<P>(int64_t, P*, const P*, int8_t*, float*, uint8_t*, float*, \
                                 const AdamHyper&);
SLTRAIN_INSTANTIATE_ADAM8BIT(float)
SLTRAIN_INSTANTIATE_ADAM8BIT(bf16)
SLTRAIN_INSTANTIATE_ADAM8BIT(fp16)

}  // namespace sltrain::cpu
