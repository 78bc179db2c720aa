// Fused softmax cross-entropy on CUDA over fp32 / fp16 / bf16 logits, forward and backward.
// Python reference: megatron_lite/ops/fused.py::softmax_cross_entropy_reference. One block per row:
// loss = logsumexp(x) - x[label] in fp32; backward writes (softmax - onehot) * grad in the logits' dtype.
#include "cuda_common.cuh"
#include "fused_cuda.h"

namespace fused_cuda {
namespace {

template <typename T>
__global__ void ce_forward(const T* __restrict__ x, const int64_t* __restrict__ labels, float* __restrict__ loss,
                           float* __restrict__ lse, int64_t v) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * v;
  float m = -INFINITY, s = 0.f;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) merge(m, s, load(xr + j), 1.f);
  block_max_sum(m, s);
  if (threadIdx.x == 0) {
    lse[row] = m + logf(s);
    const int64_t label = labels[row];  // checked here, not on the host: a host check syncs every micro step
    loss[row] = (label >= 0 && label < v) ? lse[row] - load(xr + label) : __int_as_float(0x7fc00000);  // NaN
  }
}

template <typename T>
__global__ void ce_backward(const float* __restrict__ grad, const T* __restrict__ x,
                            const int64_t* __restrict__ labels, const float* __restrict__ lse, T* __restrict__ dx,
                            int64_t v) {
  const int64_t row = blockIdx.x;
  const float g = grad[row], l = lse[row];
  const int64_t label = labels[row];
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x)
    store(dx + row * v + j, (__expf(load(x + row * v + j) - l) - (j == label ? 1.f : 0.f)) * g);
}

}  // namespace
}  // namespace fused_cuda

using namespace fused_cuda;

extern "C" int ml_softmax_cross_entropy_forward(const void* logits, const int64_t* labels, float* loss, float* lse,
                                                int64_t n, int64_t v, int dtype, void* stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ce_forward<T><<<n, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(logits), labels,
                                                                         loss, lse, v);
  });
}

extern "C" int ml_softmax_cross_entropy_backward(const float* grad, const void* logits, const int64_t* labels,
                                                 const float* lse, void* dx, int64_t n, int64_t v, int dtype,
                                                 void* stream) {
  if (n == 0) return 0;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ce_backward<T><<<n, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(grad, static_cast<const T*>(logits),
                                                                          labels, lse, static_cast<T*>(dx), v);
  });
}
