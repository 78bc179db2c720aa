// Fused bias + GeLU (tanh form, as GPT-NeoX's bias_gelu_impl) on CUDA, fp32 / fp16 / bf16, forward and backward.
// Python reference: megatron_lite/ops/fused.py::bias_gelu_reference. x [rows, h], bias [h] in fp32.
#include "cuda_common.cuh"
#include "fused_cuda.h"

namespace fused_cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

template <typename T>
__global__ void gelu_forward(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ y, int64_t n,
                             int64_t h) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float u = load(x + i) + bias[i % h];
    store(y + i, 0.5f * u * (1.f + tanhf(kSqrt2OverPi * u * (1.f + kCubic * u * u))));
  }
}

// Block (32 columns x 8 row lanes) writes dx for its columns over a slice of rows and adds the slice's
// fp32 column sums into dbias (zeroed by the caller).
template <typename T>
__global__ void gelu_backward(const T* __restrict__ g, const T* __restrict__ x, const float* __restrict__ bias,
                              T* __restrict__ dx, float* __restrict__ dbias, int64_t rows, int64_t h) {
  __shared__ float partial[8][33];
  const int64_t col = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (col < h) {
    const float b = bias[col];
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += int64_t(gridDim.y) * 8) {
      const int64_t i = r * h + col;
      const float u = load(x + i) + b;
      const float t = tanhf(kSqrt2OverPi * u * (1.f + kCubic * u * u));
      const float dt = kSqrt2OverPi * (1.f + 3.f * kCubic * u * u) * (1.f - t * t);
      const float d = load(g + i) * (0.5f * (1.f + t) + 0.5f * u * dt);
      store(dx + i, d);
      acc += d;
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < h) {
    float total = 0.f;
    for (int k = 0; k < 8; ++k) total += partial[k][threadIdx.x];
    atomicAdd(dbias + col, total);
  }
}

}  // namespace
}  // namespace fused_cuda

using namespace fused_cuda;

extern "C" int ml_bias_gelu_forward(const void* x, const float* bias, void* y, int64_t rows, int64_t h, int dtype,
                                    void* stream) {
  const int64_t n = rows * h;
  if (n == 0) return 0;
  const int64_t blocks = (n + 255) / 256 < 65536 ? (n + 255) / 256 : 65536;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gelu_forward<T><<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(x), bias,
                                                                          static_cast<T*>(y), n, h);
  });
}

extern "C" int ml_bias_gelu_backward(const void* grad, const void* x, const float* bias, void* dx, float* dbias,
                                     int64_t rows, int64_t h, int dtype, void* stream) {
  if (rows * h == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaMemsetAsync(dbias, 0, h * sizeof(float), s);
  const int64_t row_blocks = (rows + 7) / 8 < 256 ? (rows + 7) / 8 : 256;  // enough blocks to fill the device
  const dim3 grid(static_cast<unsigned>((h + 31) / 32), static_cast<unsigned>(row_blocks));
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gelu_backward<T><<<grid, dim3(32, 8), 0, s>>>(static_cast<const T*>(grad), static_cast<const T*>(x), bias,
                                                  static_cast<T*>(dx), dbias, rows, h);
  });
}
