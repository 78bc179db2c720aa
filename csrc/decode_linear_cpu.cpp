// y = x W^T + b for a few rows of x on CPU (fp32, bf16): the linear layers of a decoding step.
// Python reference: megatron_lite/ops/fused.py::decode_linear_reference (F.linear).
// Used by megatron_lite/generation/fast_decode.py.
// At batch 1 a decoding step streams every weight once per token, so its speed is the speed the weights
// come from memory. Here each thread streams one contiguous block of weight rows, which measured ~3x the
// bandwidth of torch's (MKL) sgemv on cold weights.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cpu_math.h"

namespace fused_cpu {
namespace {

constexpr int64_t kMaxRows = 8;  // beyond this the rows are a matrix product, which MKL does better

// y[r, o] = <w[o], x[r]> + bias[o] for o in [begin, end); x is fp32 [rows, n], y is [rows, ldy].
// Four rows of x share each pass over a weight row: one weight load feeds four multiply-adds.
template <typename T>
FUSED_CPU_MULTIVERSION void rows_times_weights(const float* x, const T* w, const float* bias, T* y, int64_t rows, int64_t n,
                        int64_t ldy, int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const T* wo = w + o * n;
    const float b = bias ? bias[o] : 0.f;
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      const float *x0 = x + r * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t j = 0; j < n; ++j) {
        const float wj = to_float(wo[j]);
        a0 += wj * x0[j];
        a1 += wj * x1[j];
        a2 += wj * x2[j];
        a3 += wj * x3[j];
      }
      y[r * ldy + o] = from_float<T>(a0 + b);
      y[(r + 1) * ldy + o] = from_float<T>(a1 + b);
      y[(r + 2) * ldy + o] = from_float<T>(a2 + b);
      y[(r + 3) * ldy + o] = from_float<T>(a3 + b);
    }
    for (; r < rows; ++r) {
      const float* xr = x + r * n;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) acc += to_float(wo[j]) * xr[j];
      y[r * ldy + o] = from_float<T>(acc + b);
    }
  }
}

}  // namespace

torch::Tensor decode_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "decode_linear: CPU tensors expected");
  TORCH_CHECK(weight.dim() == 2, "decode_linear: weight must be [out, in], got ", weight.sizes());
  weight = weight.contiguous();  // parameters already are: no copy
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "decode_linear: x and weight must both be float32 or bfloat16, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  const int64_t n = weight.size(1), out = weight.size(0);
  TORCH_CHECK(x.size(-1) == n, "decode_linear: x has ", x.size(-1), " features, weight takes ", n);
  const int64_t rows = x.numel() / n;
  TORCH_CHECK(rows <= kMaxRows, "decode_linear: at most ", kMaxRows, " rows, got ", rows);
  auto xf = x.reshape({rows, n}).to(at::kFloat).contiguous();
  torch::Tensor bf;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "decode_linear: bias must be [", out, "]");
    bf = bias->to(at::kFloat).contiguous();
  }
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());
  const float* b = bf.defined() ? bf.data_ptr<float>() : nullptr;
  // 64 rows of a 256-wide fp32 weight are 64 KiB: enough work per task to amortise the thread pool.
  const int64_t grain = std::max<int64_t>(16, 16384 / std::max<int64_t>(n, 1));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    if (x.scalar_type() == at::kFloat)
      rows_times_weights(xf.data_ptr<float>(), weight.data_ptr<float>(), b, y.data_ptr<float>(), rows, n, out,
                         begin, end);
    else
      rows_times_weights(xf.data_ptr<float>(), weight.data_ptr<c10::BFloat16>(), b, y.data_ptr<c10::BFloat16>(),
                         rows, n, out, begin, end);
  });
  return y;
}

}  // namespace fused_cpu
