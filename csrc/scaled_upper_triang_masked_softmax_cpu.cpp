// Causal (upper-triangular masked) scaled softmax on CPU, fp32 and bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::causal_softmax_reference.
// Row i of a [batch, sq, sk] score tensor sees keys 0..i + (sk - sq); the rest get probability 0
// and are never read, so masked work is skipped instead of filled with -inf.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <limits>
#include <vector>

#include "cpu_math.h"

namespace fused_cpu {
namespace {

// Rows [begin, end); b is an fp32 scratch row of sk entries.
template <typename T>
FUSED_CPU_MULTIVERSION void forward_range(const T* x, T* y, float* b, int64_t begin, int64_t end, int64_t sq,
                                          int64_t sk, float scale) {
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * sk;
    T* yr = y + r * sk;
    const int64_t valid = r % sq + 1 + (sk - sq);
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < valid; ++j) {
      b[j] = to_float(xr[j]) * scale;
      m = b[j] > m ? b[j] : m;
    }
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < valid; ++j) {
      b[j] = fast_exp(b[j] - m);
      sum += b[j];
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) yr[j] = from_float<T>(b[j] * inv);
    for (int64_t j = valid; j < sk; ++j) yr[j] = from_float<T>(0.f);
  }
}

template <typename T>
void forward_rows(const T* x, T* y, int64_t rows, int64_t sq, int64_t sk, float scale) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(sk);
    forward_range(x, y, buf.data(), begin, end, sq, sk, scale);
  });
}

template <typename T>
void backward_rows(const T* g, const T* y, T* dx, int64_t rows, int64_t sq, int64_t sk, float scale) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t valid = r % sq + 1 + (sk - sq);
      softmax_backward_row(g + r * sk, y + r * sk, dx + r * sk, valid, scale);
      for (int64_t j = valid; j < sk; ++j) dx[r * sk + j] = from_float<T>(0.f);
    }
  });
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 3, name, " must be [batch, sq, sk], got ", t.dim(), " dims");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", t.scalar_type());
}

}  // namespace

torch::Tensor causal_softmax_forward(torch::Tensor x, double scale) {
  check(x, "input");
  x = x.contiguous();
  const int64_t sq = x.size(1), sk = x.size(2);
  TORCH_CHECK(sq <= sk, "causal softmax needs sq <= sk, got ", sq, " > ", sk);
  auto y = torch::empty_like(x);
  if (x.scalar_type() == at::kFloat)
    forward_rows(x.data_ptr<float>(), y.data_ptr<float>(), x.size(0) * sq, sq, sk, float(scale));
  else
    forward_rows(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), x.size(0) * sq, sq, sk, float(scale));
  return y;
}

torch::Tensor causal_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale) {
  check(y, "softmax output");
  grad = grad.contiguous().to(y.scalar_type());
  y = y.contiguous();
  TORCH_CHECK(grad.sizes() == y.sizes(), "gradient and softmax output shapes differ");
  const int64_t sq = y.size(1), sk = y.size(2);
  auto dx = torch::empty_like(y);
  if (y.scalar_type() == at::kFloat)
    backward_rows(grad.data_ptr<float>(), y.data_ptr<float>(), dx.data_ptr<float>(), y.size(0) * sq, sq, sk,
                  float(scale));
  else
    backward_rows(grad.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), dx.data_ptr<at::BFloat16>(),
                  y.size(0) * sq, sq, sk, float(scale));
  return dx;
}

}  // namespace fused_cpu
