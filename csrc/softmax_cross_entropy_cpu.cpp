// Fused softmax cross-entropy on CPU over fp32 or bf16 logits, forward and backward.
// Python reference: megatron_lite/ops/fused.py::softmax_cross_entropy_reference.
// loss[n] = logsumexp(x[n]) - x[n, label[n]], in fp32 without an fp32 copy of the logits; backward writes
// (softmax - onehot) * grad straight into the logits' dtype, from the saved logsumexp.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu_math.h"

namespace fused_cpu {
namespace {

template <typename T>
FUSED_CPU_MULTIVERSION float row_logsumexp(const T* x, int64_t v) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < v; ++j) m = to_float(x[j]) > m ? to_float(x[j]) : m;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < v; ++j) sum += fast_exp(to_float(x[j]) - m);
  return m + std::log(sum);
}

template <typename T>
FUSED_CPU_MULTIVERSION void row_grad(const T* x, float lse, float g, T* dx, int64_t v) {
#pragma omp simd
  for (int64_t j = 0; j < v; ++j) dx[j] = from_float<T>(fast_exp(to_float(x[j]) - lse) * g);
}

template <typename T>
void forward_rows(const T* x, const int64_t* labels, float* loss, float* lse, int64_t n, int64_t v) {
  at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      lse[r] = row_logsumexp(x + r * v, v);
      loss[r] = lse[r] - to_float(x[r * v + labels[r]]);
    }
  });
}

template <typename T>
void backward_rows(const float* grad, const T* x, const int64_t* labels, const float* lse, T* dx, int64_t n,
                   int64_t v) {
  at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      row_grad(x + r * v, lse[r], grad[r], dx + r * v, v);
      const int64_t k = r * v + labels[r];  // the onehot term, on the label's entry only
      dx[k] = from_float<T>((fast_exp(to_float(x[k]) - lse[r]) - 1.f) * grad[r]);
    }
  });
}

void check(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(logits.device().is_cpu() && labels.device().is_cpu(), "softmax_cross_entropy: CPU tensors expected");
  TORCH_CHECK(logits.dim() == 2, "softmax_cross_entropy: logits must be [n, vocab], got ", logits.dim(), " dims");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "softmax_cross_entropy: logits must be float32 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), "softmax_cross_entropy: labels must be [",
              logits.size(0), "], got ", labels.sizes());
  if (labels.numel())
    TORCH_CHECK(labels.min().item<int64_t>() >= 0 && labels.max().item<int64_t>() < logits.size(1),
                "softmax_cross_entropy: labels must lie in [0, ", logits.size(1), ")");
}

}  // namespace

std::vector<torch::Tensor> softmax_cross_entropy_forward(torch::Tensor logits, torch::Tensor labels) {
  logits = logits.contiguous();
  labels = labels.to(at::kLong).contiguous();
  check(logits, labels);
  const int64_t n = logits.size(0), v = logits.size(1);
  auto loss = torch::empty({n}, logits.options().dtype(at::kFloat));
  auto lse = torch::empty({n}, logits.options().dtype(at::kFloat));
  if (logits.scalar_type() == at::kFloat)
    forward_rows(logits.data_ptr<float>(), labels.data_ptr<int64_t>(), loss.data_ptr<float>(), lse.data_ptr<float>(),
                 n, v);
  else
    forward_rows(logits.data_ptr<at::BFloat16>(), labels.data_ptr<int64_t>(), loss.data_ptr<float>(),
                 lse.data_ptr<float>(), n, v);
  return {loss, lse};
}

torch::Tensor softmax_cross_entropy_backward(torch::Tensor grad, torch::Tensor logits, torch::Tensor labels,
                                             torch::Tensor lse) {
  logits = logits.contiguous();
  labels = labels.to(at::kLong).contiguous();
  grad = grad.to(at::kFloat).contiguous();
  lse = lse.contiguous();
  check(logits, labels);
  const int64_t n = logits.size(0), v = logits.size(1);
  TORCH_CHECK(grad.numel() == n && lse.numel() == n, "softmax_cross_entropy: grad and lse must be [", n, "]");
  auto dx = torch::empty_like(logits);
  if (logits.scalar_type() == at::kFloat)
    backward_rows(grad.data_ptr<float>(), logits.data_ptr<float>(), labels.data_ptr<int64_t>(), lse.data_ptr<float>(),
                  dx.data_ptr<float>(), n, v);
  else
    backward_rows(grad.data_ptr<float>(), logits.data_ptr<at::BFloat16>(), labels.data_ptr<int64_t>(),
                  lse.data_ptr<float>(), dx.data_ptr<at::BFloat16>(), n, v);
  return dx;
}

}  // namespace fused_cpu
