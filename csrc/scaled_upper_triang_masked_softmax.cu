// Causal (upper-triangular masked) scaled softmax on CUDA, fp32 / fp16 / bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::causal_softmax_reference. One block per row; row r of
// a [batch, sq, sk] tensor sees keys 0 .. r % sq + (sk - sq); masked keys are written as 0, never read.
#include "cuda_common.cuh"
#include "fused_cuda.h"

namespace fused_cuda {
namespace {

template <typename T>
__global__ void causal_forward(const T* __restrict__ x, T* __restrict__ y, int64_t sq, int64_t sk, float scale) {
  const int64_t row = blockIdx.x;
  const int64_t valid = row % sq + 1 + (sk - sq);
  const T* xr = x + row * sk;
  T* yr = y + row * sk;
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) {
    const float v = load(xr + j) * scale;
    merge(m, s, v, 1.f);
  }
  block_max_sum(m, s);
  const float inv = 1.f / s;
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
    store(yr + j, j < valid ? __expf(load(xr + j) * scale - m) * inv : 0.f);
}

template <typename T>
__global__ void causal_backward(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int64_t sq,
                                int64_t sk, float scale) {
  const int64_t row = blockIdx.x;
  const int64_t valid = row % sq + 1 + (sk - sq);
  const T* gr = g + row * sk;
  const T* yr = y + row * sk;
  T* dr = dx + row * sk;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) dot += load(gr + j) * load(yr + j);
  dot = block_sum(dot);
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
    store(dr + j, j < valid ? scale * load(yr + j) * (load(gr + j) - dot) : 0.f);
}

}  // namespace
}  // namespace fused_cuda

using namespace fused_cuda;

extern "C" int ml_causal_softmax_forward(const void* x, void* y, int64_t batch, int64_t sq, int64_t sk, float scale,
                                         int dtype, void* stream) {
  if (sq > sk || batch * sq == 0) return batch * sq == 0 ? 0 : static_cast<int>(cudaErrorInvalidValue);
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    causal_forward<T><<<batch * sq, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(y), sq, sk, scale);
  });
}

extern "C" int ml_causal_softmax_backward(const void* grad, const void* y, void* dx, int64_t batch, int64_t sq,
                                          int64_t sk, float scale, int dtype, void* stream) {
  if (sq > sk || batch * sq == 0) return batch * sq == 0 ? 0 : static_cast<int>(cudaErrorInvalidValue);
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    causal_backward<T><<<batch * sq, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad), static_cast<const T*>(y), static_cast<T*>(dx), sq, sk, scale);
  });
}
