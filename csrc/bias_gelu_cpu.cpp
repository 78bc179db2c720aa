// Fused bias + GeLU (tanh form, as GPT-NeoX's bias_gelu_impl) on CPU, fp32 and bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::bias_gelu_reference.
// y = gelu(x + bias), x [..., h], bias [h]; the bias is fp32 (an autocast master weight) for either dtype.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "cpu_math.h"

namespace fused_cpu {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// One row; the pointers are function arguments so that GCC sees affine accesses and vectorises the loop
// (through a lambda's captures it does not).
template <typename T>
FUSED_CPU_MULTIVERSION void forward_row(const T* x, const float* bias, T* y, int64_t h) {
#pragma omp simd
  for (int64_t j = 0; j < h; ++j) {
    const float u = to_float(x[j]) + bias[j];
    const float t = fast_tanh(kSqrt2OverPi * u * (1.f + kCubic * u * u));
    y[j] = from_float<T>(0.5f * u * (1.f + t));
  }
}

// dx = g * gelu'(x + bias), and dx added into the fp32 bias-gradient accumulator.
template <typename T>
FUSED_CPU_MULTIVERSION void backward_row(const T* g, const T* x, const float* bias, T* dx, float* acc, int64_t h) {
#pragma omp simd
  for (int64_t j = 0; j < h; ++j) {
    const float u = to_float(x[j]) + bias[j];
    const float t = fast_tanh(kSqrt2OverPi * u * (1.f + kCubic * u * u));
    const float dt = kSqrt2OverPi * (1.f + 3.f * kCubic * u * u) * (1.f - t * t);
    const float d = to_float(g[j]) * (0.5f * (1.f + t) + 0.5f * u * dt);
    dx[j] = from_float<T>(d);
    acc[j] += d;
  }
}

template <typename T>
void forward_rows(const T* x, const float* bias, T* y, int64_t rows, int64_t h) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) forward_row(x + r * h, bias, y + r * h, h);
  });
}

// dbias = sum of dx over rows, from fp32 partial sums per thread.
template <typename T>
void backward_rows(const T* g, const T* x, const float* bias, T* dx, float* dbias, int64_t rows, int64_t h) {
  std::vector<float> partial(static_cast<size_t>(at::get_num_threads()) * h, 0.f);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    float* acc = partial.data() + at::get_thread_num() * h;
    for (int64_t r = begin; r < end; ++r) backward_row(g + r * h, x + r * h, bias, dx + r * h, acc, h);
  });
  for (size_t t = 0; t < partial.size() / h; ++t)
    for (int64_t j = 0; j < h; ++j) dbias[j] += partial[t * h + j];
}

void check(const torch::Tensor& x, const torch::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && bias.device().is_cpu(), "bias_gelu: CPU tensors expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "bias_gelu: input must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(bias.dim() == 1 && x.size(-1) == bias.size(0), "bias_gelu: bias must be [", x.size(-1), "], got ",
              bias.sizes());
}

}  // namespace

torch::Tensor bias_gelu_forward(torch::Tensor x, torch::Tensor bias) {
  check(x, bias);
  x = x.contiguous();
  auto b = bias.to(at::kFloat).contiguous();
  auto y = torch::empty_like(x);
  const int64_t h = x.size(-1), rows = x.numel() / h;
  if (x.scalar_type() == at::kFloat)
    forward_rows(x.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), rows, h);
  else
    forward_rows(x.data_ptr<at::BFloat16>(), b.data_ptr<float>(), y.data_ptr<at::BFloat16>(), rows, h);
  return y;
}

std::vector<torch::Tensor> bias_gelu_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor bias) {
  check(x, bias);
  x = x.contiguous();
  grad = grad.contiguous().to(x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "bias_gelu: gradient and input shapes differ");
  auto b = bias.to(at::kFloat).contiguous();
  auto dx = torch::empty_like(x);
  auto dbias = torch::zeros({x.size(-1)}, x.options().dtype(at::kFloat));
  const int64_t h = x.size(-1), rows = x.numel() / h;
  if (x.scalar_type() == at::kFloat)
    backward_rows(grad.data_ptr<float>(), x.data_ptr<float>(), b.data_ptr<float>(), dx.data_ptr<float>(),
                  dbias.data_ptr<float>(), rows, h);
  else
    backward_rows(grad.data_ptr<at::BFloat16>(), x.data_ptr<at::BFloat16>(), b.data_ptr<float>(),
                  dx.data_ptr<at::BFloat16>(), dbias.data_ptr<float>(), rows, h);
  return {dx, dbias.to(bias.scalar_type())};
}

}  // namespace fused_cpu
