// C ABI of the CUDA kernels: plain pointers and sizes, no torch types, so each .cu compiles with nvcc
// alone (CI checks that) and cuda_module.cpp binds them to torch on a machine with a CUDA torch.
// dtype: 0 = float32, 1 = float16, 2 = bfloat16. stream: a cudaStream_t. Returns a cudaError_t (0 = success).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int ml_causal_softmax_forward(const void* x, void* y, int64_t batch, int64_t sq, int64_t sk, float scale,
                              int dtype, void* stream);
int ml_causal_softmax_backward(const void* grad, const void* y, void* dx, int64_t batch, int64_t sq, int64_t sk,
                               float scale, int dtype, void* stream);
int ml_masked_softmax_forward(const void* x, const uint8_t* mask, void* y, int64_t b, int64_t np, int64_t sq,
                              int64_t sk, int mask_per_batch, float scale, int dtype, void* stream);
int ml_masked_softmax_backward(const void* grad, const void* y, void* dx, int64_t rows, int64_t sk, float scale,
                               int dtype, void* stream);
int ml_bias_gelu_forward(const void* x, const float* bias, void* y, int64_t rows, int64_t h, int dtype,
                         void* stream);
int ml_bias_gelu_backward(const void* grad, const void* x, const float* bias, void* dx, float* dbias, int64_t rows,
                          int64_t h, int dtype, void* stream);
int ml_softmax_cross_entropy_forward(const void* logits, const int64_t* labels, float* loss, float* lse, int64_t n,
                                     int64_t v, int dtype, void* stream);
int ml_softmax_cross_entropy_backward(const float* grad, const void* logits, const int64_t* labels, const float* lse,
                                      void* dx, int64_t n, int64_t v, int dtype, void* stream);

#ifdef __cplusplus
}
#endif
