// Scaled softmax with an arbitrary boolean mask on CPU, fp32 and bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::masked_softmax_reference.
// Scores [b, np, sq, sk]; mask [b or 1, 1, sq, sk], true = masked out (Megatron's convention).
// Masked entries get probability 0; a row with every entry masked is all zeros (not NaN).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <limits>
#include <vector>

#include "cpu_math.h"

namespace fused_cpu {
namespace {

// Rows [begin, end); f is an fp32 scratch row of sk entries.
template <typename T>
FUSED_CPU_MULTIVERSION void forward_range(const T* x, const bool* mask, T* y, float* f, int64_t begin, int64_t end,
                                          int64_t np, int64_t sq, int64_t sk, bool mask_per_batch, float scale) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = begin; r < end; ++r) {
    const int64_t batch = r / (np * sq), q = r % sq;
    const bool* mr = mask + ((mask_per_batch ? batch : 0) * sq + q) * sk;
    const T* xr = x + r * sk;
    T* yr = y + r * sk;
    float m = neg_inf;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < sk; ++j) {
      f[j] = mr[j] ? neg_inf : to_float(xr[j]) * scale;
      m = f[j] > m ? f[j] : m;
    }
    if (m == neg_inf) {  // fully masked row
      for (int64_t j = 0; j < sk; ++j) yr[j] = from_float<T>(0.f);
      continue;
    }
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < sk; ++j) {
      f[j] = mr[j] ? 0.f : fast_exp(f[j] - m);
      sum += f[j];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < sk; ++j) yr[j] = from_float<T>(f[j] * inv);
  }
}

template <typename T>
void forward_rows(const T* x, const bool* mask, T* y, int64_t b, int64_t np, int64_t sq, int64_t sk,
                  bool mask_per_batch, float scale) {
  at::parallel_for(0, b * np * sq, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(sk);
    forward_range(x, mask, y, buf.data(), begin, end, np, sq, sk, mask_per_batch, scale);
  });
}

// Masked entries have y = 0, so the softmax gradient needs no mask.
template <typename T>
void backward_rows(const T* g, const T* y, T* dx, int64_t rows, int64_t sk, float scale) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) softmax_backward_row(g + r * sk, y + r * sk, dx + r * sk, sk, scale);
  });
}

void check_scores(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be [b, np, sq, sk], got ", t.dim(), " dims");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

}  // namespace

torch::Tensor masked_softmax_forward(torch::Tensor x, torch::Tensor mask, double scale) {
  check_scores(x, "input");
  x = x.contiguous();
  const int64_t b = x.size(0), np = x.size(1), sq = x.size(2), sk = x.size(3);
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == sq && mask.size(3) == sk &&
                  (mask.size(0) == 1 || mask.size(0) == b),
              "mask must be [", b, " or 1, 1, ", sq, ", ", sk, "], got ", mask.sizes());
  mask = mask.to(at::kBool).contiguous();
  auto y = torch::empty_like(x);
  const bool per_batch = mask.size(0) == b && b > 1;
  if (x.scalar_type() == at::kFloat)
    forward_rows(x.data_ptr<float>(), mask.data_ptr<bool>(), y.data_ptr<float>(), b, np, sq, sk, per_batch,
                 float(scale));
  else
    forward_rows(x.data_ptr<at::BFloat16>(), mask.data_ptr<bool>(), y.data_ptr<at::BFloat16>(), b, np, sq, sk,
                 per_batch, float(scale));
  return y;
}

torch::Tensor masked_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale) {
  check_scores(y, "softmax output");
  grad = grad.contiguous().to(y.scalar_type());
  y = y.contiguous();
  TORCH_CHECK(grad.sizes() == y.sizes(), "gradient and softmax output shapes differ");
  auto dx = torch::empty_like(y);
  const int64_t rows = y.numel() / y.size(3), sk = y.size(3);
  if (y.scalar_type() == at::kFloat)
    backward_rows(grad.data_ptr<float>(), y.data_ptr<float>(), dx.data_ptr<float>(), rows, sk, float(scale));
  else
    backward_rows(grad.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), dx.data_ptr<at::BFloat16>(), rows,
                  sk, float(scale));
  return dx;
}

}  // namespace fused_cpu
