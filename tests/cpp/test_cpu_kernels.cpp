// ctest for the torch-free CPU kernels, without libtorch: each kernel against
// a plain triple loop in double on random data, outputs poisoned first.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <type_traits>
#include <vector>

#include "common/quant8.h"
#include "cpu/torch_free_kernels/kernels.h"
#include "expect.h"

using namespace sltrain;
using namespace sltrain::cpu;

namespace {

void expect_close(const std::vector<float>& got, const std::vector<double>& want, const char* what) {
  double error = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    error = std::max(error, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  expect(got.size() == want.size() && error <= 1e-5 * scale, what);
}

struct Case {
  int64_t m, n, b, nnz;
  std::vector<int32_t> row_ptr, col_idx;
  std::vector<float> values, x_t, g_t;  // x_t [n, b], g_t [m, b]
};

Case make_case(int64_t m, int64_t n, int64_t b, int64_t nnz, uint64_t seed) {
  Case c{m, n, b, nnz, std::vector<int32_t>(m + 1), std::vector<int32_t>(nnz), {}, {}, {}};
  random_support(m, n, nnz, seed, c.row_ptr.data(), c.col_idx.data());
  std::mt19937 gen{unsigned(seed)};
  std::normal_distribution<float> normal;
  for (auto* v : {&c.values, &c.x_t, &c.g_t}) v->clear();
  for (int64_t i = 0; i < nnz; ++i) c.values.push_back(normal(gen));
  for (int64_t i = 0; i < n * b; ++i) c.x_t.push_back(normal(gen));
  for (int64_t i = 0; i < m * b; ++i) c.g_t.push_back(normal(gen));
  return c;
}

void test_support(int64_t m, int64_t n, int64_t nnz) {
  std::vector<int32_t> row_ptr(m + 1), col_idx(nnz, -1);
  random_support(m, n, nnz, 42, row_ptr.data(), col_idx.data());
  expect(check_row_ptr(m, nnz, row_ptr.data()).kind == RowPtrCheck::kValid, "support row_ptr valid");
  expect(first_bad_col_idx(m, n, row_ptr.data(), col_idx.data()) == -1, "support columns sorted, in range");
  std::vector<int32_t> again_rows(m + 1), again_cols(nnz);
  random_support(m, n, nnz, 42, again_rows.data(), again_cols.data());
  expect(again_rows == row_ptr && again_cols == col_idx, "support deterministic");
}

void test_sparse_products(int64_t m, int64_t n, int64_t b, int64_t nnz) {
  const float poison = std::numeric_limits<float>::quiet_NaN();
  Case c = make_case(m, n, b, nnz, uint64_t(m * 131 + n));
  std::vector<double> y_want(m * b, 0), dx_want(n * b, 0), dv_want(nnz, 0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = c.row_ptr[i]; k < c.row_ptr[i + 1]; ++k) {
      const int64_t j = c.col_idx[k];
      for (int64_t t = 0; t < b; ++t) {
        y_want[i * b + t] += double(c.values[k]) * c.x_t[j * b + t];
        dx_want[j * b + t] += double(c.values[k]) * c.g_t[i * b + t];
        dv_want[k] += double(c.g_t[i * b + t]) * c.x_t[j * b + t];
      }
    }
  }
  std::vector<float> y(m * b, poison), dx(n * b, poison), dv(nnz, poison);
  expect(csr_spmm<float>(m, n, b, c.row_ptr.data(), c.col_idx.data(), c.values.data(), c.x_t.data(), b,
                         y.data(), b), "csr_spmm ok");
  expect_close(y, y_want, "csr_spmm");
  expect(csr_spmm_transposed<float>(m, n, b, c.row_ptr.data(), c.col_idx.data(), c.values.data(),
                                    c.g_t.data(), b, dx.data(), b), "csr_spmm_transposed ok");
  expect_close(dx, dx_want, "csr_spmm_transposed");
  expect(csr_sddmm<float>(m, n, b, c.row_ptr.data(), c.col_idx.data(), c.g_t.data(), b, c.x_t.data(), b,
                          dv.data()), "csr_sddmm ok");
  expect_close(dv, dv_want, "csr_sddmm");

  // Scatter into rows [1, m) of a dense matrix, then gather back.
  if (m < 2) return;
  std::vector<float> w((m - 1) * n, 0.0f), gathered(nnz, poison);
  expect(csr_scatter_add_rows<float>(1, m, n, c.row_ptr.data(), c.col_idx.data(), c.values.data(), w.data(), n),
         "csr_scatter_add_rows ok");
  expect(csr_gather_rows<float>(1, m, n, c.row_ptr.data(), c.col_idx.data(), w.data(), n, gathered.data()),
         "csr_gather_rows ok");
  bool round_trip = true;
  for (int64_t k = c.row_ptr[1]; k < nnz; ++k) round_trip &= gathered[k] == c.values[k];
  expect(round_trip, "scatter then gather returns the values");

  // An out-of-range column is reported, and nothing outside y is written.
  if (nnz == 0 || b == 0) return;
  c.col_idx[nnz - 1] = int32_t(n);
  expect(!csr_spmm<float>(m, n, b, c.row_ptr.data(), c.col_idx.data(), c.values.data(), c.x_t.data(), b,
                          y.data(), b), "csr_spmm reports a bad column");
}

void test_adam() {
  const AdamHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.1, 3, true};
  std::vector<float> p{1.0f, -2.0f, 0.5f}, g{0.1f, 0.2f, -0.3f}, m{0.01f, 0.0f, 0.02f}, v{1e-4f, 2e-4f, 0.0f};
  std::vector<double> want(3);
  for (int i = 0; i < 3; ++i) {
    double pi = p[i] * (1 - 1e-2 * 0.1);
    const double mi = 0.9 * m[i] + 0.1 * g[i], vi = 0.999 * v[i] + 0.001 * double(g[i]) * g[i];
    pi -= 1e-2 * (mi / (1 - std::pow(0.9, 3))) / (std::sqrt(vi / (1 - std::pow(0.999, 3))) + 1e-8);
    want[i] = pi;
  }
  adam_step<float, float>(3, p.data(), g.data(), m.data(), v.data(), hyper);
  expect_close(p, want, "adam_step");
}

void test_quant8_codes() {
  // Every code decodes to a value that encodes back to itself, and any value
  // in the code's range encodes within the stated relative error.
  bool signed_ok = true, unsigned_ok = true, error_ok = true;
  for (int q = -127; q <= 127; ++q) signed_ok &= encode_signed8(decode_signed8(int8_t(q), 2.0f), 0.5f) == q;
  for (int q = 0; q <= 255; ++q) unsigned_ok &= encode_unsigned8(decode_unsigned8(uint8_t(q), 4.0f), 0.25f) == q;
  for (double x = 1.0; x > 1e-3; x *= 0.97) {
    error_ok &= std::abs(decode_signed8(encode_signed8(float(-x), 1.0f), 1.0f) + x) <= 0.03 * x;
    error_ok &= std::abs(decode_unsigned8(encode_unsigned8(float(x), 1.0f), 1.0f) - x) <= 0.022 * x;
  }
  expect(signed_ok, "signed 8-bit codes round-trip");
  expect(unsigned_ok, "unsigned 8-bit codes round-trip");
  expect(error_ok, "8-bit codes within their stated relative error");
  expect(encode_unsigned8(1e-30f, 1.0f) == 1, "a positive sqrt(v) never encodes to 0");
  expect(encode_signed8(1e-30f, 1.0f) == 0, "a negligible moment flushes to 0");
}

// The encoders' definition, as the former scalar encoder computed it: the
// code nearest in the log domain, where "nearest" means the mantissa is at or
// above the float midpoint 2^((k + 0.5) / Steps) of one octave (a linear count
// here, no tables), with the same flush and floor rules.
template <int Steps>
int reference_steps_below_one(float r) {
  uint32_t bits;
  std::memcpy(&bits, &r, 4);
  const int exponent = int((bits >> 23) & 0xffu) - 127;
  if (exponent < -126) return 1 << 20;
  const uint32_t mantissa_bits = (bits & 0x7fffffu) | 0x3f800000u;
  float mantissa;
  std::memcpy(&mantissa, &mantissa_bits, 4);
  int k = 0;
  for (int j = 0; j < Steps; ++j) k += mantissa >= quant8_detail::Octave<Steps>::kMidpoint[j] ? 1 : 0;
  return -(exponent * Steps + k);
}

int8_t reference_encode_signed8(float x, float inv_absmax) {
  if (!(inv_absmax > 0.0f) || x == 0.0f) return 0;
  const float r = std::fabs(x) * inv_absmax;
  const int steps = r >= 1.0f ? 0 : reference_steps_below_one<12>(r);
  if (steps > 126) return 0;
  return int8_t(x < 0.0f ? steps - 127 : 127 - steps);
}

uint8_t reference_encode_unsigned8(float x, float inv_absmax) {
  if (!(x > 0.0f) || !(inv_absmax > 0.0f)) return 0;
  const float r = x * inv_absmax;
  const int steps = r >= 1.0f ? 0 : reference_steps_below_one<16>(r);
  return steps > 254 ? uint8_t(1) : uint8_t(255 - steps);
}

void test_quant8_encoders_match_definition() {
  // Every float from 2^-20 to 4, both signs, which covers every code with an
  // octave to spare (smaller moments flush or floor, larger ones saturate),
  // then every 61st float over the whole non-NaN range, zero, subnormals and inf included.
  int64_t mismatches = 0;
  const auto check = [&](uint32_t bits) {
    float x;
    std::memcpy(&x, &bits, 4);
    mismatches += encode_signed8(x, 1.0f) != reference_encode_signed8(x, 1.0f);
    mismatches += encode_signed8(-x, 1.0f) != reference_encode_signed8(-x, 1.0f);
    mismatches += encode_unsigned8(x, 1.0f) != reference_encode_unsigned8(x, 1.0f);
  };
  constexpr uint32_t kFrom = (127u - 20u) << 23, kTo = (127u + 2u) << 23, kInf = 0x7f800000u;
  for (uint32_t bits = kFrom; bits < kTo; ++bits) check(bits);
  for (uint32_t bits = 0; bits <= kInf - 61; bits += 61) check(bits);
  check(kInf);
  expect(mismatches == 0, "8-bit encoders equal their definition on every float near the codes");
  // Scales that are not 1: a product rounded once, then the same rule.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> log_uniform(-40.0f, 40.0f);
  int64_t scaled_mismatches = 0;
  for (int i = 0; i < 1000000; ++i) {
    const float x = std::exp2(log_uniform(rng)) * (i % 2 ? -1.0f : 1.0f);
    const float inv_absmax = std::exp2(log_uniform(rng));
    scaled_mismatches += encode_signed8(x, inv_absmax) != reference_encode_signed8(x, inv_absmax);
    scaled_mismatches += encode_unsigned8(std::fabs(x), inv_absmax) != reference_encode_unsigned8(std::fabs(x), inv_absmax);
  }
  const float inf = std::numeric_limits<float>::infinity();
  scaled_mismatches += encode_signed8(0.0f, inf) != 0;  // 0 * inf is NaN, still code 0
  scaled_mismatches += encode_unsigned8(0.0f, inf) != 0;
  scaled_mismatches += encode_signed8(1.0f, 0.0f) != 0;  // an all-zero block
  expect(scaled_mismatches == 0, "8-bit encoders equal their definition at any scale");
}

void test_adam8bit_first_step() {
  // From zero states the first step is exactly 32-bit Adam's.
  const AdamHyper hyper{1e-2, 0.9, 0.999, 1e-8, 0.0, 1, true};
  std::vector<float> p8(300), p32(300), g(300), m(300, 0.0f), v(300, 0.0f), absmax(2, 0.0f), sqrt_absmax(2, 0.0f);
  std::vector<int8_t> m_codes(300, 0);
  std::vector<uint8_t> v_codes(300, 0);
  for (int i = 0; i < 300; ++i) {
    p8[i] = p32[i] = std::sin(float(i));
    g[i] = std::cos(float(i) * 0.7f);
  }
  adam_step<float, float>(300, p32.data(), g.data(), m.data(), v.data(), hyper);
  adam8bit_step<float>(300, p8.data(), g.data(), m_codes.data(), absmax.data(), v_codes.data(),
                       sqrt_absmax.data(), hyper);
  expect(p8 == p32, "first 8-bit step equals the 32-bit step");
  expect(absmax[1] > 0.0f && sqrt_absmax[1] > 0.0f, "the partial last block is quantised");
}

void test_adam8bit_kernel_codes() {
  // The kernel's own decoder and encoder (in-register tables on AVX-512
  // machines) against quant8.h's, in steps whose moments are exact: with
  // beta1 = beta2 = 0 from zero states the new moments are g and sqrt(g * g) = |g|;
  // with beta1 = beta2 = 1 they are the decoded old moments, which must
  // re-encode to the same codes and absmaxes. (The parameters of that second
  // step are inf / NaN: its bias corrections are 0; they are not checked.)
  const int64_t n = 40 * kQuantBlock + 77;  // a partial last block
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> octave(-40.0f, 0.0f), block_scale(-30.0f, 30.0f);
  std::vector<float> param(n, 1.0f), grad(n), absmax(n / kQuantBlock + 1, 0.0f), sqrt_absmax(absmax.size(), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float scale = std::exp2(block_scale(gen) * float((i / kQuantBlock) % 7 != 3));  // one all-1-scale block in 7
    grad[i] = (i % 5 == 0 ? -1.0f : 1.0f) * scale * std::exp2(octave(gen));
  }
  for (int64_t i = 3 * kQuantBlock; i < 4 * kQuantBlock; ++i) grad[i] = 0.0f;  // an all-zero block
  for (int64_t i = 0; i < n; i += 13) grad[i] = 0.0f;
  std::vector<int8_t> m_codes(n, 0);
  std::vector<uint8_t> v_codes(n, 0);
  adam8bit_step<float>(n, param.data(), grad.data(), m_codes.data(), absmax.data(), v_codes.data(),
                       sqrt_absmax.data(), AdamHyper{1e-3, 0.0, 0.0, 1e-8, 0.0, 1, true});
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = i / kQuantBlock;
    const float m_scale = absmax[block] > 0.0f ? 1.0f / absmax[block] : 0.0f;
    const float v_scale = sqrt_absmax[block] > 0.0f ? 1.0f / sqrt_absmax[block] : 0.0f;
    mismatches += m_codes[i] != encode_signed8(grad[i], m_scale);
    mismatches += v_codes[i] != encode_unsigned8(std::fabs(grad[i]), v_scale);
  }
  for (size_t block = 0; block < absmax.size(); ++block) {
    float most = 0.0f;
    for (int64_t i = int64_t(block) * kQuantBlock; i < std::min(n, int64_t(block + 1) * kQuantBlock); ++i) {
      most = std::max(most, std::fabs(grad[i]));
    }
    mismatches += absmax[block] != most || sqrt_absmax[block] != most;
  }
  expect(mismatches == 0, "the 8-bit kernel encodes exact moments as quant8.h does");
  std::set<int> codes_seen(m_codes.begin(), m_codes.end());
  codes_seen.insert(v_codes.begin(), v_codes.end());
  expect(codes_seen.size() > 250, "the moments cover the codes");

  const std::vector<int8_t> m_codes_before = m_codes;
  const std::vector<uint8_t> v_codes_before = v_codes;
  const std::vector<float> absmax_before = absmax, sqrt_absmax_before = sqrt_absmax;
  adam8bit_step<float>(n, param.data(), grad.data(), m_codes.data(), absmax.data(), v_codes.data(),
                       sqrt_absmax.data(), AdamHyper{1e-3, 1.0, 1.0, 1e-8, 0.0, 2, true});
  expect(m_codes == m_codes_before && v_codes == v_codes_before, "decoded moments re-encode to their codes");
  expect(absmax == absmax_before && sqrt_absmax == sqrt_absmax_before, "and to their absmaxes");
}

void test_adam8bit_kernel_every_mantissa() {
  // Every 23-bit mantissa through the kernel's encoder: blocks of absmax 1
  // (their first moment is 1, so r = |g| exactly) whose other moments sweep
  // the mantissas over several octaves, signs alternating; beta1 = beta2 = 0
  // from zero states makes the new moments g and |g|.
  const int64_t mantissas = int64_t(1) << 23, per_block = kQuantBlock - 1;
  const int64_t blocks = (mantissas + per_block - 1) / per_block, n = blocks * kQuantBlock;
  std::vector<float> param(n, 1.0f), grad(n), absmax(blocks), sqrt_absmax(blocks);
  for (int64_t block = 0, field = 0; block < blocks; ++block) {
    grad[block * kQuantBlock] = 1.0f;
    for (int64_t j = 1; j < kQuantBlock; ++j, ++field) {
      const uint32_t bits = (uint32_t(126 - field % 23) << 23) | uint32_t(field % mantissas);
      float value;
      std::memcpy(&value, &bits, 4);
      grad[block * kQuantBlock + j] = field % 2 ? -value : value;
    }
  }
  std::vector<int8_t> m_codes(n);
  std::vector<uint8_t> v_codes(n);
  adam8bit_step<float>(n, param.data(), grad.data(), m_codes.data(), absmax.data(), v_codes.data(),
                       sqrt_absmax.data(), AdamHyper{1e-3, 0.0, 0.0, 1e-8, 0.0, 1, true});
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    mismatches += m_codes[i] != encode_signed8(grad[i], 1.0f);
    mismatches += v_codes[i] != encode_unsigned8(std::fabs(grad[i]), 1.0f);
  }
  expect(mismatches == 0, "the 8-bit kernel encodes every mantissa as quant8.h does");
}

// The 8-bit step over a whole tensor (the blocks of each thread's chunk
// software-pipelined, each block's encode overlapping the next one's update,
// then the partial last block) against the same step taken one block per
// call: the same parameters, codes and absmaxes, bit for bit, over several
// steps. A block encoded with a neighbour's absmaxes, or its moments mixed up
// with the block decoded after it, would differ.
template <class P>
void test_adam8bit_whole_tensor_equals_block_by_block(const char* what) {
  const int64_t n = 150 * kQuantBlock + 100, blocks = n / kQuantBlock + 1;  // two threads' chunks and a tail
  std::mt19937 gen(11);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> octave(-12.0f, 2.0f);
  std::vector<P> param_whole(n), param_blocks(n), grad(n);
  for (int64_t i = 0; i < n; ++i) param_whole[i] = param_blocks[i] = from_float<P>(normal(gen));
  std::vector<int8_t> m_whole(n, 0), m_blocks(n, 0);
  std::vector<uint8_t> v_whole(n, 0), v_blocks(n, 0);
  std::vector<float> m_absmax_whole(blocks, 0.0f), m_absmax_blocks(blocks, 0.0f);
  std::vector<float> v_absmax_whole(blocks, 0.0f), v_absmax_blocks(blocks, 0.0f);
  bool equal = true;
  for (int64_t step = 1; step <= 3; ++step) {
    // Gradients of very different sizes from block to block.
    for (int64_t i = 0; i < n; ++i) grad[i] = from_float<P>(normal(gen) * std::exp2(octave(gen) + float(i / kQuantBlock % 9)));
    const AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.1, step, step != 2};
    adam8bit_step<P>(n, param_whole.data(), grad.data(), m_whole.data(), m_absmax_whole.data(), v_whole.data(),
                     v_absmax_whole.data(), hyper);
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * kQuantBlock;
      adam8bit_step<P>(std::min(kQuantBlock, n - first), param_blocks.data() + first, grad.data() + first,
                       m_blocks.data() + first, m_absmax_blocks.data() + block, v_blocks.data() + first,
                       v_absmax_blocks.data() + block, hyper);
    }
    equal &= std::memcmp(param_whole.data(), param_blocks.data(), n * sizeof(P)) == 0;
    equal &= m_whole == m_blocks && v_whole == v_blocks;
    equal &= std::memcmp(m_absmax_whole.data(), m_absmax_blocks.data(), blocks * sizeof(float)) == 0;
    equal &= std::memcmp(v_absmax_whole.data(), v_absmax_blocks.data(), blocks * sizeof(float)) == 0;
  }
  std::set<int> codes_seen(m_whole.begin(), m_whole.end());
  expect(equal && codes_seen.size() > 100, what);
}

void test_half_round_trips() {
  bool bf16_ok = true, fp16_ok = true;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const bf16 b{uint16_t(bits)};
    const fp16 h{uint16_t(bits)};
    if (!std::isnan(to_float(b))) bf16_ok &= to_bf16(to_float(b)).bits == b.bits;
    if (!std::isnan(to_float(h))) fp16_ok &= to_fp16(to_float(h)).bits == h.bits;
  }
  expect(bf16_ok, "every bf16 survives bf16 -> float -> bf16");
  expect(fp16_ok, "every fp16 survives fp16 -> float -> fp16");
  expect(to_bf16(1.0f + 1.0f / 256).bits == to_bf16(1.0f).bits, "bf16 rounds half to even");
  expect(to_fp16(65520.0f).bits == 0x7c00, "fp16 overflows to inf");
}

}  // namespace

// sl_decode_rows on int32 and uint16 columns against the triple loop, for
// the unrolled token counts and a runtime one; a bad column is reported.
void test_decode_rows(int64_t m, int64_t n, int64_t r, int64_t b, int64_t nnz) {
  const float poison = std::numeric_limits<float>::quiet_NaN();
  Case c = make_case(m, n, b, nnz, uint64_t(m * 7 + b));
  std::mt19937 gen{unsigned(r + b)};
  std::normal_distribution<float> normal;
  std::vector<float> B(m * r), t(b * r), bias(m);
  for (auto* v : {&B, &t, &bias})
    for (float& e : *v) e = normal(gen);
  const float scale = 0.75f;
  std::vector<double> y_want(b * m);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < b; ++j) {
      double low_rank = 0, sparse = 0;
      for (int64_t q = 0; q < r; ++q) low_rank += double(B[i * r + q]) * t[j * r + q];
      for (int64_t k = c.row_ptr[i]; k < c.row_ptr[i + 1]; ++k)
        sparse += double(c.values[k]) * c.x_t[c.col_idx[k] * b + j];
      y_want[j * m + i] = scale * low_rank + sparse + bias[i];
    }
  }
  std::vector<uint16_t> compact(c.col_idx.begin(), c.col_idx.end());
  std::vector<float> y(b * m, poison);
  expect(sl_decode_rows<float>(m, n, r, b, scale, B.data(), t.data(), c.row_ptr.data(), c.col_idx.data(),
                               c.values.data(), c.x_t.data(), bias.data(), y.data()), "sl_decode_rows ok");
  expect_close(y, y_want, "sl_decode_rows int32");
  std::fill(y.begin(), y.end(), poison);
  expect(sl_decode_rows<float>(m, n, r, b, scale, B.data(), t.data(), c.row_ptr.data(), compact.data(),
                               c.values.data(), c.x_t.data(), bias.data(), y.data()), "sl_decode_rows uint16 ok");
  expect_close(y, y_want, "sl_decode_rows uint16");
  compact[nnz - 1] = uint16_t(n);
  expect(!sl_decode_rows<float>(m, n, r, b, scale, B.data(), t.data(), c.row_ptr.data(), compact.data(),
                                c.values.data(), c.x_t.data(), bias.data(), y.data()),
         "sl_decode_rows reports a bad column");
}

template <class H>
H narrow_16(float value) {
  if constexpr (std::is_same_v<H, bf16>) return to_bf16(value);
  else return to_fp16(value);
}

// sl_decode_rows reading bf16 or fp16 operands as stored (float t): against
// float64 sums of the same rounded values, within one rounding of the output
// (2^-8 for bf16, 2^-11 for fp16) of the terms' magnitude.
template <class H>
void test_decode_rows_16_bit(int64_t m, int64_t n, int64_t r, int64_t b, int64_t nnz, double unit) {
  Case c = make_case(m, n, b, nnz, uint64_t(m + b));
  std::mt19937 gen{unsigned(r * 3 + b)};
  std::normal_distribution<float> normal;
  const auto rounded = [&](size_t count) {
    std::vector<H> out(count);
    for (H& e : out) e = narrow_16<H>(normal(gen));
    return out;
  };
  const std::vector<H> B = rounded(m * r), bias = rounded(m);
  std::vector<H> values(nnz), x_t(n * b);
  for (int64_t k = 0; k < nnz; ++k) values[k] = narrow_16<H>(c.values[k]);
  for (int64_t e = 0; e < n * b; ++e) x_t[e] = narrow_16<H>(c.x_t[e]);
  std::vector<float> t(b * r);
  for (float& e : t) e = normal(gen);
  const float scale = 0.75f;
  std::vector<H> y(b * m, narrow_16<H>(std::numeric_limits<float>::quiet_NaN()));
  const std::vector<uint16_t> compact(c.col_idx.begin(), c.col_idx.end());
  expect(sl_decode_rows<H>(m, n, r, b, scale, B.data(), t.data(), c.row_ptr.data(), compact.data(), values.data(),
                           x_t.data(), bias.data(), y.data()),
         "16-bit sl_decode_rows ok");
  bool close = true;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < b; ++j) {
      double want = to_float(bias[i]), size = std::abs(want);
      for (int64_t q = 0; q < r; ++q) {
        const double term = double(scale) * to_float(B[i * r + q]) * t[j * r + q];
        want += term;
        size += std::abs(term);
      }
      for (int64_t k = c.row_ptr[i]; k < c.row_ptr[i + 1]; ++k) {
        const double term = double(to_float(values[k])) * to_float(x_t[c.col_idx[k] * b + j]);
        want += term;
        size += std::abs(term);
      }
      close = close && std::abs(to_float(y[j * m + i]) - want) <= unit * (size + std::abs(want));
    }
  }
  expect(close, "16-bit sl_decode_rows matches float64");
}

int main() {
  test_support(1, 1, 1);
  test_support(37, 53, 100);
  test_support(300, 5461, 49149);
  test_support(5, 5, 0);
  test_sparse_products(1, 1, 1, 1);
  test_sparse_products(17, 23, 5, 40);
  test_sparse_products(64, 300, 700, 2000);  // several batch blocks
  test_sparse_products(9, 7, 0, 20);         // no tokens
  for (int64_t b : {1, 3, 16, 32}) test_decode_rows(40, 50, 9, b, 300);
  for (int64_t b : {1, 5, 16}) {
    test_decode_rows_16_bit<bf16>(40, 50, 9, b, 300, 1.0 / 256);
    test_decode_rows_16_bit<fp16>(33, 70, 17, b, 400, 1.0 / 2048);
  }
  test_adam();
  test_quant8_codes();
  test_quant8_encoders_match_definition();
  test_adam8bit_first_step();
  test_adam8bit_kernel_codes();
  test_adam8bit_kernel_every_mantissa();
  test_adam8bit_whole_tensor_equals_block_by_block<float>("8-bit step of a whole tensor equals it block by block, float");
  test_adam8bit_whole_tensor_equals_block_by_block<bf16>("8-bit step of a whole tensor equals it block by block, bf16");
  test_adam8bit_whole_tensor_equals_block_by_block<fp16>("8-bit step of a whole tensor equals it block by block, fp16");
  test_half_round_trips();
  return test_summary();
}
