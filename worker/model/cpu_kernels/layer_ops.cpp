// The small per-token ops of a decoder layer, each one call instead of the 5-25 tensor ops torch
// runs for it (see worker/model/decode_step.py): RMSNorm, the residual add with the norms around
// it, q/k norm with rotary on the fused q/k/v output, and the gated MLP activation. float32,
// contiguous, rows independent (a row's result never depends on the rows beside it).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "spin_pool.h"

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.0f;
  for (float lane : lanes) sum += lane;
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// 1 / RMS(x) over n values, summed in 8 lanes then across (as a vectorized torch mean would).
inline float inv_rms(const float* x, int64_t n, float eps) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = 0.0f;
  for (float lane : lanes) sum += lane;
  for (; i < n; ++i) sum += x[i] * x[i];
  return 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
}

inline void norm_row(const float* x, const float* w, float eps, int64_t n, float* out) {
  const float r = inv_rms(x, n, eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

// rotate_half rotary on one head, in place: out[i] = x[i] cos[i] - x[i + h] sin[i] (first half),
// x[i] cos[i] + x[i - h] sin[i] (second half).
inline void rope_head(float* x, const float* cos, const float* sin, int64_t d) {
  const int64_t h = d / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float a = x[i], b = x[i + h];
    x[i] = a * cos[i] - b * sin[i];
    x[i + h] = b * cos[i + h] + a * sin[i + h];
  }
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous float32 CPU tensor");
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  check(x, "x");
  check(w, "w");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  TORCH_CHECK(w.numel() == n, "w must match x's last dimension");
  auto out = torch::empty_like(x);
  for (int64_t r = 0; r < rows; ++r)
    norm_row(x.data_ptr<float>() + r * n, w.data_ptr<float>(), static_cast<float>(eps), n,
             out.data_ptr<float>() + r * n);
  return out;
}

// h + (post_w given ? norm(out, post_w) : out), then that sum normed by next_w: {sum, normed}.
std::vector<torch::Tensor> residual_norm(torch::Tensor h, torch::Tensor out, torch::Tensor post_w,
                                         torch::Tensor next_w, double eps) {
  check(h, "h");
  check(out, "out");
  check(next_w, "next_w");
  const int64_t n = h.size(-1), rows = h.numel() / n;
  TORCH_CHECK(out.numel() == h.numel(), "out must match h");
  const bool post = post_w.numel() > 0;
  if (post) check(post_w, "post_w");
  auto sum = torch::empty_like(h);
  auto normed = torch::empty_like(h);
  std::vector<float> tmp(n);
  const float e = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* hr = h.data_ptr<float>() + r * n;
    const float* o = out.data_ptr<float>() + r * n;
    float* s = sum.data_ptr<float>() + r * n;
    if (post) {
      norm_row(o, post_w.data_ptr<float>(), e, n, tmp.data());
      for (int64_t i = 0; i < n; ++i) s[i] = hr[i] + tmp[i];
    } else {
      for (int64_t i = 0; i < n; ++i) s[i] = hr[i] + o[i];
    }
    norm_row(s, next_w.data_ptr<float>(), e, n, normed.data_ptr<float>() + r * n);
  }
  return {sum, normed};
}

// The fused q/k/v output [rows, (hq + 2 hkv) d] -> q [rows, hq, 1, d], k and v [rows, hkv, 1, d]:
// q and k normed per head where their weights are given, then rotated by cos/sin [rows, d].
std::vector<torch::Tensor> qkv_heads(torch::Tensor qkv, torch::Tensor q_w, torch::Tensor k_w, double eps,
                                     torch::Tensor cos, torch::Tensor sin, int64_t hq, int64_t hkv, int64_t d) {
  check(qkv, "qkv");
  check(cos, "cos");
  check(sin, "sin");
  const int64_t width = (hq + 2 * hkv) * d, rows = qkv.numel() / width;
  TORCH_CHECK(qkv.size(-1) == width, "qkv's last dimension must be (hq + 2 hkv) d");
  TORCH_CHECK(cos.numel() == rows * d && sin.numel() == rows * d, "cos/sin must be [rows, d]");
  const bool qn = q_w.numel() > 0, kn = k_w.numel() > 0;
  if (qn) check(q_w, "q_w");
  if (kn) check(k_w, "k_w");
  auto q = torch::empty({rows, hq, 1, d}, qkv.options());
  auto k = torch::empty({rows, hkv, 1, d}, qkv.options());
  auto v = torch::empty({rows, hkv, 1, d}, qkv.options());
  const float e = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = qkv.data_ptr<float>() + r * width;
    const float* c = cos.data_ptr<float>() + r * d;
    const float* s = sin.data_ptr<float>() + r * d;
    float* qr = q.data_ptr<float>() + r * hq * d;
    float* kr = k.data_ptr<float>() + r * hkv * d;
    for (int64_t h = 0; h < hq; ++h) {
      if (qn) norm_row(src + h * d, q_w.data_ptr<float>(), e, d, qr + h * d);
      else std::memcpy(qr + h * d, src + h * d, d * sizeof(float));
      rope_head(qr + h * d, c, s, d);
    }
    for (int64_t h = 0; h < hkv; ++h) {
      const float* ks = src + (hq + h) * d;
      if (kn) norm_row(ks, k_w.data_ptr<float>(), e, d, kr + h * d);
      else std::memcpy(kr + h * d, ks, d * sizeof(float));
      rope_head(kr + h * d, c, s, d);
    }
    std::memcpy(v.data_ptr<float>() + r * hkv * d, src + (hq + hkv) * d, hkv * d * sizeof(float));
  }
  return {q, k, v};
}

// One new token's attention per row and query head over the cache's keys and values [rows, hkv, L, d]
// (any strides but the last), grouped-query heads sharing a kv head; `mask` [rows, W] (0: a pad),
// its last L columns being the keys' (empty: no pads). Parallel over rows x heads.
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask,
                               double scale) {
  check(q, "q");
  TORCH_CHECK(k.scalar_type() == torch::kFloat32 && v.scalar_type() == torch::kFloat32 && k.stride(3) == 1 &&
                  v.stride(3) == 1 && k.sizes() == v.sizes(),
              "k and v must be float32 [rows, hkv, L, d] with contiguous rows");
  const int64_t rows = q.size(0), hq = q.size(1), d = q.size(3), hkv = k.size(1), len = k.size(2);
  TORCH_CHECK(k.size(0) == rows && k.size(3) == d && hq % hkv == 0, "q, k and v disagree in shape");
  const bool masked = mask.numel() > 0;
  if (masked)
    TORCH_CHECK(mask.scalar_type() == torch::kLong && mask.is_contiguous() && mask.size(0) == rows &&
                    mask.size(1) >= len, "mask must be int64 [rows, >= L]");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const int64_t* mp = masked ? mask.data_ptr<int64_t>() : nullptr;
  const int64_t width = masked ? mask.size(1) : 0;
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  dukat::SpinPool::with(at::get_num_threads()).run(rows * hq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(len);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t r = unit / hq, h = unit % hq, g = h / (hq / hkv);
      const float* qv = qp + unit * d;
      const float* kb = kp + r * k.stride(0) + g * k.stride(1);
      const float* vb = vp + r * v.stride(0) + g * v.stride(1);
      const int64_t* m = masked ? mp + r * width + (width - len) : nullptr;
      float top = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = (m != nullptr && m[j] == 0) ? -INFINITY : sc * dot(qv, kb + j * k.stride(2), d);
        top = std::max(top, p[j]);
      }
      float total = 0.0f;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = p[j] == -INFINITY ? 0.0f : std::exp(p[j] - top);
        total += p[j];
      }
      float* o = op + unit * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t j = 0; j < len; ++j) {
        if (p[j] == 0.0f) continue;
        const float w = p[j] / total;
        const float* vr = vb + j * v.stride(2);
        for (int64_t i = 0; i < d; ++i) o[i] += w * vr[i];
      }
    }
  });
  return out;
}

// [rows, 2 n] (gate, then up) -> act(gate) * up [rows, n]; kind 0: SiLU, 1: GELU (tanh), 2: GELU (erf).
torch::Tensor gated(torch::Tensor gate_up, int64_t kind) {
  check(gate_up, "gate_up");
  const int64_t n = gate_up.size(-1) / 2, rows = gate_up.numel() / (2 * n);
  std::vector<int64_t> shape(gate_up.sizes().begin(), gate_up.sizes().end());
  shape.back() = n;
  auto out = torch::empty(shape, gate_up.options());
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up.data_ptr<float>() + r * 2 * n;
    const float* u = g + n;
    float* o = out.data_ptr<float>() + r * n;
    for (int64_t i = 0; i < n; ++i) {
      const float x = g[i];
      float a;
      if (kind == 0) a = x / (1.0f + std::exp(-x));
      // 0.5 (1 + tanh(z)) = sigmoid(2 z): one exp instead of a tanh (half the time here)
      else if (kind == 1) a = x / (1.0f + std::exp(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
      else a = 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
      o[i] = a * u[i];
    }
  }
  return out;
}
