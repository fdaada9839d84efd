// Block-quantized matmuls for x86 CPUs with AVX2 (see worker/model/cpu_kernels/__init__.py for why
// they are ours): weights in blocks of 32 along K, each block one float16 scale and 32 signed
// values (4-bit: 16 bytes, low nibbles first; 8-bit: 32 bytes). Activations are quantized per
// block to int8 on the fly, so each block's dot product is integer SIMD (maddubs) and the weights
// are read once per step for every row of the batch: decode is bound by the bytes of the weights.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "spin_pool.h"
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t QK = 32;   // values per block

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// x: [M, K] float -> xq: [M, K/32, 32] int8 and xd: [M, K/32] float scales (round to nearest).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xd) {
  const int64_t nb = K / QK;
  dukat::SpinPool::with(at::get_num_threads()).run(M * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* src = x + (i / nb) * K + (i % nb) * QK;
      __m256 maxabs = _mm256_setzero_ps();
      const __m256 sign = _mm256_set1_ps(-0.0f);
      for (int j = 0; j < QK; j += 8) maxabs = _mm256_max_ps(maxabs, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + j)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(maxabs), _mm256_extractf128_ps(maxabs, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f;
      xd[i] = d;
      const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
      __m256i v[4];
      for (int j = 0; j < 4; ++j)
        v[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(src + 8 * j), id),
                                                  _MM_ROUND_NEAREST | _MM_FROUND_NO_EXC));
      // pack 4x8 int32 -> 32 int8 in order
      __m256i p01 = _mm256_packs_epi32(v[0], v[1]);
      __m256i p23 = _mm256_packs_epi32(v[2], v[3]);
      __m256i p = _mm256_packs_epi16(p01, p23);
      const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      p = _mm256_permutevar8x32_epi32(p, perm);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + i * QK), p);
    }
  });
}

// 32 signed weights of a 4-bit block: bytes hold value j (low nibble) and j + 16 (high nibble),
// stored as q + 8.
inline __m256i unpack4(const uint8_t* q) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
  const __m256i w = _mm256_set_m128i(hi, lo);
  return _mm256_sub_epi8(w, _mm256_set1_epi8(8));
}

// sum over pairs of |w| * (x with w's sign): integer products of one block, as 8 floats.
inline __m256 dot_block(__m256i abs_w, __m256i w, const int8_t* xq) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
  const __m256i dot16 = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(dot16, _mm256_set1_epi16(1)));
}

// Two 4-bit blocks of a row at once: one 32-byte load holds both blocks' nibbles; the low
// nibbles are values 0-15 of each block, the high ones values 16-31, stored as w + 8 (0..15), which
// is maddubs' unsigned operand as it is. `xp` holds the activation's matching pair:
// [b0 0-15 | b1 0-15], then [b0 16-31 | b1 16-31]; `bias` is the pair's 8 * sum(x) in the same
// lanes, so dot(w, x) = dot(w + 8, x) - bias. Lanes 0-3 of the result sum block 0, 4-7 block 1.
inline __m256i pair_dot(__m256i lo, __m256i hi, const int8_t* xp, const int32_t* bias) {
  const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
  const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32));
  const __m256i sum16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
  const __m256i sum32 = _mm256_madd_epi16(sum16, _mm256_set1_epi16(1));
  return _mm256_sub_epi32(sum32, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias)));
}

// [d0 x4, d1 x4] from two float16 scales.
inline __m256 pair_scales(const uint16_t* dw) {
  const __m128 w = _mm_cvtph_ps(_mm_cvtsi32_si128(*reinterpret_cast<const int32_t*>(dw)));
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(w), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// Per row and block pair of x: 8 * sum(x) as pair_dot's lanes see it, and [dx0 x4, dx1 x4].
void pair_terms(const int8_t* xp, const float* xd, int64_t rows, int64_t nb, int32_t* bias, float* dx) {
  const __m256i eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t b = 0; b + 1 < nb; b += 2) {
      const int8_t* x = xp + (m * nb + b) * QK;
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
      const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
      const __m256i s = _mm256_madd_epi16(
          _mm256_add_epi16(_mm256_maddubs_epi16(eight, xa), _mm256_maddubs_epi16(eight, xb)), ones);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(bias + (m * nb + b) * 4), s);
      const float* d = xd + m * nb + b;
      const __m256 v = _mm256_setr_ps(d[0], d[0], d[0], d[0], d[1], d[1], d[1], d[1]);
      _mm256_storeu_ps(dx + (m * nb + b) * 4, v);
    }
  }
}

// x's blocks in the pair layout (see pair_dot): block pairs reordered, a lone last block as is.
void to_pair_layout(const int8_t* xq, int64_t rows, int64_t nb, int8_t* xp) {
  for (int64_t m = 0; m < rows; ++m) {
    const int8_t* src = xq + m * nb * QK;
    int8_t* dst = xp + m * nb * QK;
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
      const int8_t* b0 = src + b * QK;
      const int8_t* b1 = b0 + QK;
      int8_t* d = dst + b * QK;
      std::memcpy(d, b0, 16); std::memcpy(d + 16, b1, 16);
      std::memcpy(d + 32, b0 + 16, 16); std::memcpy(d + 48, b1 + 16, 16);
    }
    if (b < nb) std::memcpy(dst + b * QK, src + b * QK, QK);
  }
}

// NR weight rows (from n) against MR rows of x, all accumulators in registers (the loops unroll):
// two weight rows share each load of x, and their sums are independent chains.
template <int NR, int MR>
inline void q4_tile(const int8_t* xp, const int32_t* bias, const float* dx, const float* xd, int64_t nb,
                    const uint8_t* wq, const uint16_t* wd, int64_t n, float* out, int64_t out_stride) {
  constexpr int64_t BYTES = QK / 2;
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    __m256i lo[NR], hi[NR];
    __m256 dw[NR];
    for (int r = 0; r < NR; ++r) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + ((n + r) * nb + b) * BYTES));
      lo[r] = _mm256_and_si256(bytes, mask);
      hi[r] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
      dw[r] = pair_scales(wd + (n + r) * nb + b);
    }
    for (int m = 0; m < MR; ++m) {
      const int64_t at = m * nb + b;
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + at * QK));
      const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + at * QK + 32));
      const __m256i bi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + at * 4));
      const __m256 dxv = _mm256_loadu_ps(dx + at * 4);
      for (int r = 0; r < NR; ++r) {
        const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[r], xa), _mm256_maddubs_epi16(hi[r], xb));
        const __m256i s = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), bi);
        acc[r][m] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dxv), _mm256_cvtepi32_ps(s), acc[r][m]);
      }
    }
  }
  if (b < nb) {  // a lone last block
    for (int r = 0; r < NR; ++r) {
      const __m256i w = unpack4(wq + ((n + r) * nb + b) * BYTES);
      const __m256i abs_w = _mm256_sign_epi8(w, w);
      const float d = half_to_float(wd[(n + r) * nb + b]);
      for (int m = 0; m < MR; ++m) {
        const __m256 dd = _mm256_set1_ps(d * xd[m * nb + b]);
        acc[r][m] = _mm256_fmadd_ps(dd, dot_block(abs_w, w, xp + (m * nb + b) * QK), acc[r][m]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) out[m * out_stride + n + r] = hsum(acc[r][m]);
}

template <int NR>
inline void q4_tiles(const int8_t* xp, const int32_t* bias, const float* dx, const float* xd, int64_t rows,
                     int64_t nb, const uint8_t* wq, const uint16_t* wd, int64_t n, float* out, int64_t out_stride) {
  constexpr int64_t MT = 4;  // rows of x per tile: 8 accumulators with NR = 2
  for (int64_t m0 = 0; m0 < rows; m0 += MT) {
    const int8_t* x = xp + m0 * nb * QK;
    const int32_t* bi = bias + m0 * nb * 4;
    const float* d = dx + m0 * nb * 4;
    const float* s = xd + m0 * nb;
    float* o = out + m0 * out_stride;
    switch (std::min(MT, rows - m0)) {
      case 1: q4_tile<NR, 1>(x, bi, d, s, nb, wq, wd, n, o, out_stride); break;
      case 2: q4_tile<NR, 2>(x, bi, d, s, nb, wq, wd, n, o, out_stride); break;
      case 3: q4_tile<NR, 3>(x, bi, d, s, nb, wq, wd, n, o, out_stride); break;
      default: q4_tile<NR, 4>(x, bi, d, s, nb, wq, wd, n, o, out_stride); break;
    }
  }
}

void q4_rows(const int8_t* xp, const float* xd, const int32_t* bias, const float* dx, int64_t rows, int64_t nb,
             const uint8_t* wq, const uint16_t* wd, float* out, int64_t out_stride, int64_t n_begin,
             int64_t n_end) {
  int64_t n = n_begin;
  for (; n + 1 < n_end; n += 2) q4_tiles<2>(xp, bias, dx, xd, rows, nb, wq, wd, n, out, out_stride);
  if (n < n_end) q4_tiles<1>(xp, bias, dx, xd, rows, nb, wq, wd, n, out, out_stride);
}

// The 8-bit counterpart of q4_tile: NR weight rows against MR rows of x, in registers. One weight
// row at a time measured fastest here (Gemma 3 270M's head, 2 threads: 4.2-4.4 ms against 8.0-9.2
// with two rows, and 6.8-7.1 before the accumulators left memory).
template <int NR, int MR>
inline void q8_tile(const int8_t* xq, const float* xd, int64_t nb, const uint8_t* wq, const uint16_t* wd,
                    int64_t n, float* out, int64_t out_stride) {
  __m256 acc[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i w[NR], abs_w[NR];
    float dw[NR];
    for (int r = 0; r < NR; ++r) {
      w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + ((n + r) * nb + b) * QK));
      abs_w[r] = _mm256_sign_epi8(w[r], w[r]);
      dw[r] = half_to_float(wd[(n + r) * nb + b]);
    }
    for (int m = 0; m < MR; ++m) {
      const float dx = xd[m * nb + b];
      for (int r = 0; r < NR; ++r)
        acc[r][m] = _mm256_fmadd_ps(_mm256_set1_ps(dw[r] * dx), dot_block(abs_w[r], w[r], xq + (m * nb + b) * QK),
                                    acc[r][m]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) out[m * out_stride + n + r] = hsum(acc[r][m]);
}

template <int NR>
inline void q8_tiles(const int8_t* xq, const float* xd, int64_t rows, int64_t nb, const uint8_t* wq,
                     const uint16_t* wd, int64_t n, float* out, int64_t out_stride) {
  constexpr int64_t MT = 4;
  for (int64_t m0 = 0; m0 < rows; m0 += MT) {
    const int8_t* x = xq + m0 * nb * QK;
    const float* s = xd + m0 * nb;
    float* o = out + m0 * out_stride;
    switch (std::min(MT, rows - m0)) {
      case 1: q8_tile<NR, 1>(x, s, nb, wq, wd, n, o, out_stride); break;
      case 2: q8_tile<NR, 2>(x, s, nb, wq, wd, n, o, out_stride); break;
      case 3: q8_tile<NR, 3>(x, s, nb, wq, wd, n, o, out_stride); break;
      default: q8_tile<NR, 4>(x, s, nb, wq, wd, n, o, out_stride); break;
    }
  }
}

void q8_rows(const int8_t* xq, const float* xd, int64_t rows, int64_t nb, const uint8_t* wq, const uint16_t* wd,
             float* out, int64_t out_stride, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) q8_tiles<1>(xq, xd, rows, nb, wq, wd, n, out, out_stride);
}

template <int BITS>
torch::Tensor matmul(torch::Tensor x, torch::Tensor wq, torch::Tensor wd, int64_t N) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "x must be float32");
  auto xc = x.contiguous();
  const int64_t K = xc.size(-1);
  TORCH_CHECK(K % QK == 0, "K must be a multiple of 32");
  const int64_t M = xc.numel() / K;
  const int64_t nb = K / QK;
  auto xq = torch::empty({M, nb, QK}, torch::kInt8);
  auto xd = torch::empty({M, nb}, torch::kFloat32);
  quantize_rows(xc.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), xd.data_ptr<float>());
  auto bias = torch::empty({BITS == 4 ? M * nb * 4 : 0}, torch::kInt32);
  auto dx = torch::empty({BITS == 4 ? M * nb * 4 : 0}, torch::kFloat32);
  if (BITS == 4) {
    auto xp = torch::empty_like(xq);
    to_pair_layout(xq.data_ptr<int8_t>(), M, nb, xp.data_ptr<int8_t>());
    xq = xp;
    pair_terms(xq.data_ptr<int8_t>(), xd.data_ptr<float>(), M, nb, bias.data_ptr<int32_t>(), dx.data_ptr<float>());
  }
  const int32_t* bi = bias.data_ptr<int32_t>();
  const float* dxp = dx.data_ptr<float>();
  std::vector<int64_t> shape(xc.sizes().begin(), xc.sizes().end());
  shape.back() = N;
  auto out = torch::empty(shape, torch::kFloat32);
  const uint8_t* w = wq.data_ptr<uint8_t>();
  const uint16_t* d = reinterpret_cast<const uint16_t*>(wd.data_ptr<at::Half>());
  float* o = out.data_ptr<float>();
  const int8_t* q = xq.data_ptr<int8_t>();
  const float* s = xd.data_ptr<float>();
  // Split the output columns over threads; each weight row is read once for all rows of x.
  dukat::SpinPool::with(at::get_num_threads()).run(N, 16, [&](int64_t begin, int64_t end) {
    if (BITS == 4)
      q4_rows(q, s, bi, dxp, M, nb, w, d, o, N, begin, end);
    else
      q8_rows(q, s, M, nb, w, d, o, N, begin, end);
  });
  return out;
}

}  // namespace

torch::Tensor q4_matmul(torch::Tensor x, torch::Tensor wq, torch::Tensor wd, int64_t N) {
  return matmul<4>(x, wq, wd, N);
}

torch::Tensor q8_matmul(torch::Tensor x, torch::Tensor wq, torch::Tensor wd, int64_t N) {
  return matmul<8>(x, wq, wd, N);
}

// layer_ops.cpp
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps);
std::vector<torch::Tensor> residual_norm(torch::Tensor h, torch::Tensor out, torch::Tensor post_w,
                                         torch::Tensor next_w, double eps);
std::vector<torch::Tensor> qkv_heads(torch::Tensor qkv, torch::Tensor q_w, torch::Tensor k_w, double eps,
                                     torch::Tensor cos, torch::Tensor sin, int64_t hq, int64_t hkv, int64_t d);
torch::Tensor gated(torch::Tensor gate_up, int64_t kind);
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask,
                               double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("q4_matmul", &q4_matmul, "x [.., K] float32 @ 4-bit blocks [N, K/32, 16] (float16 scales [N, K/32])");
  m.def("rms_norm", &rms_norm, "RMSNorm over the last dimension, weight as given");
  m.def("residual_norm", &residual_norm, "{h + (post_w ? norm(out) : out), norm(that, next_w)}");
  m.def("qkv_heads", &qkv_heads, "fused q/k/v output -> q, k, v heads; q/k normed and rotated");
  m.def("decode_attention", &decode_attention, "one token's attention per row and head over the cache");
  m.def("gated", &gated, "act(gate) * up; 0 SiLU, 1 GELU tanh, 2 GELU erf");
  m.def("q8_matmul", &q8_matmul, "x [.., K] float32 @ 8-bit blocks [N, K/32, 32] (float16 scales [N, K/32])");
}
