// Python bindings of the CUDA kernels: megatron_lite._fused_cuda (built by setup.py when a CUDA torch and
// nvcc exist). Only torch's CPU-side headers are used: the caller passes the CUDA stream as an integer
// (torch.cuda.current_stream().cuda_stream), so this file compiles against any torch.
#include <torch/extension.h>

#include <vector>

#include "fused_cuda.h"

namespace {

int dtype_code(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "fused CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_status(int status, const char* op) { TORCH_CHECK(status == 0, op, " failed: CUDA error ", status); }

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(stream); }

torch::Tensor causal_softmax_forward(torch::Tensor x, double scale, int64_t stream) {
  x = x.contiguous();
  check_cuda(x, "input");
  TORCH_CHECK(x.dim() == 3, "input must be [batch, sq, sk]");
  auto y = torch::empty_like(x);
  check_status(ml_causal_softmax_forward(x.data_ptr(), y.data_ptr(), x.size(0), x.size(1), x.size(2), float(scale),
                                         dtype_code(x), as_stream(stream)),
               "causal_softmax_forward");
  return y;
}

torch::Tensor causal_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale, int64_t stream) {
  grad = grad.contiguous().to(y.scalar_type());
  y = y.contiguous();
  check_cuda(y, "softmax output");
  TORCH_CHECK(grad.sizes() == y.sizes() && y.dim() == 3, "gradient and softmax output must be equal [batch, sq, sk]");
  auto dx = torch::empty_like(y);
  check_status(ml_causal_softmax_backward(grad.data_ptr(), y.data_ptr(), dx.data_ptr(), y.size(0), y.size(1),
                                          y.size(2), float(scale), dtype_code(y), as_stream(stream)),
               "causal_softmax_backward");
  return dx;
}

torch::Tensor masked_softmax_forward(torch::Tensor x, torch::Tensor mask, double scale, int64_t stream) {
  x = x.contiguous();
  check_cuda(x, "input");
  TORCH_CHECK(x.dim() == 4, "input must be [b, np, sq, sk]");
  const int64_t b = x.size(0), sq = x.size(2), sk = x.size(3);
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == sq && mask.size(3) == sk &&
                  (mask.size(0) == 1 || mask.size(0) == b),
              "mask must be [", b, " or 1, 1, ", sq, ", ", sk, "], got ", mask.sizes());
  mask = mask.to(at::kByte).contiguous();
  check_cuda(mask, "mask");
  auto y = torch::empty_like(x);
  check_status(ml_masked_softmax_forward(x.data_ptr(), mask.data_ptr<uint8_t>(), y.data_ptr(), b, x.size(1), sq, sk,
                                         mask.size(0) == b && b > 1, float(scale), dtype_code(x), as_stream(stream)),
               "masked_softmax_forward");
  return y;
}

torch::Tensor masked_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale, int64_t stream) {
  grad = grad.contiguous().to(y.scalar_type());
  y = y.contiguous();
  check_cuda(y, "softmax output");
  TORCH_CHECK(grad.sizes() == y.sizes(), "gradient and softmax output shapes differ");
  auto dx = torch::empty_like(y);
  const int64_t sk = y.size(-1);
  check_status(ml_masked_softmax_backward(grad.data_ptr(), y.data_ptr(), dx.data_ptr(), y.numel() / sk, sk,
                                          float(scale), dtype_code(y), as_stream(stream)),
               "masked_softmax_backward");
  return dx;
}

torch::Tensor bias_gelu_forward(torch::Tensor x, torch::Tensor bias, int64_t stream) {
  x = x.contiguous();
  check_cuda(x, "input");
  auto b = bias.to(at::kFloat).contiguous();
  const int64_t h = x.size(-1);
  TORCH_CHECK(b.dim() == 1 && b.size(0) == h, "bias must be [", h, "]");
  auto y = torch::empty_like(x);
  check_status(ml_bias_gelu_forward(x.data_ptr(), b.data_ptr<float>(), y.data_ptr(), x.numel() / h, h, dtype_code(x),
                                    as_stream(stream)),
               "bias_gelu_forward");
  return y;
}

std::vector<torch::Tensor> bias_gelu_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor bias,
                                              int64_t stream) {
  x = x.contiguous();
  grad = grad.contiguous().to(x.scalar_type());
  check_cuda(x, "input");
  auto b = bias.to(at::kFloat).contiguous();
  const int64_t h = x.size(-1);
  auto dx = torch::empty_like(x);
  auto dbias = torch::empty({h}, x.options().dtype(at::kFloat));
  check_status(ml_bias_gelu_backward(grad.data_ptr(), x.data_ptr(), b.data_ptr<float>(), dx.data_ptr(),
                                     dbias.data_ptr<float>(), x.numel() / h, h, dtype_code(x), as_stream(stream)),
               "bias_gelu_backward");
  return {dx, dbias.to(bias.scalar_type())};
}

std::vector<torch::Tensor> softmax_cross_entropy_forward(torch::Tensor logits, torch::Tensor labels, int64_t stream) {
  logits = logits.contiguous();
  labels = labels.to(at::kLong).contiguous();
  check_cuda(logits, "logits");
  check_cuda(labels, "labels");
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
              "softmax_cross_entropy: logits must be [n, vocab] and labels [n]");
  const int64_t n = logits.size(0), v = logits.size(1);
  // A label outside [0, v) gets a NaN loss from the kernel (no host-side check: it would sync each micro step).
  auto loss = torch::empty({n}, logits.options().dtype(at::kFloat));
  auto lse = torch::empty({n}, logits.options().dtype(at::kFloat));
  check_status(ml_softmax_cross_entropy_forward(logits.data_ptr(), labels.data_ptr<int64_t>(), loss.data_ptr<float>(),
                                                lse.data_ptr<float>(), n, v, dtype_code(logits), as_stream(stream)),
               "softmax_cross_entropy_forward");
  return {loss, lse};
}

torch::Tensor softmax_cross_entropy_backward(torch::Tensor grad, torch::Tensor logits, torch::Tensor labels,
                                             torch::Tensor lse, int64_t stream) {
  logits = logits.contiguous();
  labels = labels.to(at::kLong).contiguous();
  grad = grad.to(at::kFloat).contiguous();
  lse = lse.contiguous();
  check_cuda(logits, "logits");
  const int64_t n = logits.size(0), v = logits.size(1);
  auto dx = torch::empty_like(logits);
  check_status(ml_softmax_cross_entropy_backward(grad.data_ptr<float>(), logits.data_ptr(), labels.data_ptr<int64_t>(),
                                                 lse.data_ptr<float>(), dx.data_ptr(), n, v, dtype_code(logits),
                                                 as_stream(stream)),
               "softmax_cross_entropy_backward");
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megatron_lite fused CUDA kernels (fp32, fp16, bf16)";
  m.def("causal_softmax_forward", &causal_softmax_forward);
  m.def("causal_softmax_backward", &causal_softmax_backward);
  m.def("masked_softmax_forward", &masked_softmax_forward);
  m.def("masked_softmax_backward", &masked_softmax_backward);
  m.def("bias_gelu_forward", &bias_gelu_forward);
  m.def("bias_gelu_backward", &bias_gelu_backward);
  m.def("softmax_cross_entropy_forward", &softmax_cross_entropy_forward);
  m.def("softmax_cross_entropy_backward", &softmax_cross_entropy_backward);
}
