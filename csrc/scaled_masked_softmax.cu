// Scaled softmax with an arbitrary boolean mask on CUDA, fp32 / fp16 / bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::masked_softmax_reference. Scores [b, np, sq, sk], mask
// [b or 1, 1, sq, sk] with nonzero = masked out; masked entries get 0, a fully masked row is all zeros.
#include "cuda_common.cuh"
#include "fused_cuda.h"

namespace fused_cuda {
namespace {

template <typename T>
__global__ void masked_forward(const T* __restrict__ x, const uint8_t* __restrict__ mask, T* __restrict__ y,
                               int64_t np, int64_t sq, int64_t sk, int mask_per_batch, float scale) {
  const int64_t row = blockIdx.x;
  const int64_t batch = row / (np * sq), q = row % sq;
  const uint8_t* mr = mask + ((mask_per_batch ? batch : 0) * sq + q) * sk;
  const T* xr = x + row * sk;
  T* yr = y + row * sk;
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
    if (!mr[j]) merge(m, s, load(xr + j) * scale, 1.f);
  block_max_sum(m, s);
  const float inv = s > 0.f ? 1.f / s : 0.f;  // s == 0: every entry masked
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x)
    store(yr + j, mr[j] ? 0.f : __expf(load(xr + j) * scale - m) * inv);
}

template <typename T>
__global__ void masked_backward(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int64_t sk,
                                float scale) {
  const int64_t row = blockIdx.x;
  const T* gr = g + row * sk;
  const T* yr = y + row * sk;
  T* dr = dx + row * sk;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x) dot += load(gr + j) * load(yr + j);
  dot = block_sum(dot);
  for (int64_t j = threadIdx.x; j < sk; j += blockDim.x) store(dr + j, scale * load(yr + j) * (load(gr + j) - dot));
}

}  // namespace
}  // namespace fused_cuda

using namespace fused_cuda;

extern "C" int ml_masked_softmax_forward(const void* x, const uint8_t* mask, void* y, int64_t b, int64_t np,
                                         int64_t sq, int64_t sk, int mask_per_batch, float scale, int dtype,
                                         void* stream) {
  if (b * np * sq == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    masked_forward<T><<<b * np * sq, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), mask, static_cast<T*>(y), np, sq, sk, mask_per_batch, scale);
  });
}

extern "C" int ml_masked_softmax_backward(const void* grad, const void* y, void* dx, int64_t rows, int64_t sk,
                                          float scale, int dtype, void* stream) {
  if (rows == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    masked_backward<T><<<rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad), static_cast<const T*>(y), static_cast<T*>(dx), sk, scale);
  });
}
