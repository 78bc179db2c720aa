// Python bindings of the CPU kernels: megatron_lite._fused_cpu (built by setup.py).
#include <torch/extension.h>

#include <vector>

namespace fused_cpu {
torch::Tensor causal_softmax_forward(torch::Tensor x, double scale);
torch::Tensor causal_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale);
torch::Tensor masked_softmax_forward(torch::Tensor x, torch::Tensor mask, double scale);
torch::Tensor masked_softmax_backward(torch::Tensor grad, torch::Tensor y, double scale);
torch::Tensor bias_gelu_forward(torch::Tensor x, torch::Tensor bias);
std::vector<torch::Tensor> bias_gelu_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor bias);
std::vector<torch::Tensor> softmax_cross_entropy_forward(torch::Tensor logits, torch::Tensor labels);
torch::Tensor softmax_cross_entropy_backward(torch::Tensor grad, torch::Tensor logits, torch::Tensor labels,
                                             torch::Tensor lse);
torch::Tensor decode_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias);
}  // namespace fused_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megatron_lite fused CPU kernels (fp32, bf16)";
  m.def("causal_softmax_forward", &fused_cpu::causal_softmax_forward, "softmax(scale * x) under a causal mask");
  m.def("causal_softmax_backward", &fused_cpu::causal_softmax_backward, "its gradient from the output");
  m.def("masked_softmax_forward", &fused_cpu::masked_softmax_forward, "softmax(scale * x) under a boolean mask");
  m.def("masked_softmax_backward", &fused_cpu::masked_softmax_backward, "its gradient from the output");
  m.def("bias_gelu_forward", &fused_cpu::bias_gelu_forward, "gelu_tanh(x + bias)");
  m.def("bias_gelu_backward", &fused_cpu::bias_gelu_backward, "(grad x, grad bias)");
  m.def("softmax_cross_entropy_forward", &fused_cpu::softmax_cross_entropy_forward, "(loss, logsumexp) per row");
  m.def("softmax_cross_entropy_backward", &fused_cpu::softmax_cross_entropy_backward, "grad of the logits");
  m.def("decode_linear", &fused_cpu::decode_linear, "x W^T + b for at most 8 rows of x",
        py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
}
