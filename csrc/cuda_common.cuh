// Shared device helpers of the CUDA kernels: dtype conversion, dispatch, block-wide reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

namespace fused_cuda {

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// Calls f with a null pointer of the element type named by the dtype code (0 fp32, 1 fp16, 2 bf16).
template <typename F>
int dispatch(int dtype, F f) {
  switch (dtype) {
    case 0: f(static_cast<float*>(nullptr)); break;
    case 1: f(static_cast<__half*>(nullptr)); break;
    case 2: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

constexpr int kThreads = 256;  // threads per block of the row kernels (8 warps)

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x == kThreads); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[kThreads / 32];
  __syncthreads();  // the buffer may still be read by a previous call
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  v = 0.f;  // every warp adds up all partials, in the same order: each thread holds the same total
  for (int w = 0; w < kThreads / 32; ++w) v += partial[w];
  return v;
}

// Online-softmax state (running max m, sum of exp(x - m)) merged across the block.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

__device__ __forceinline__ void block_max_sum(float& m, float& s) {
  __shared__ float pm[kThreads / 32], ps[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    pm[threadIdx.x / 32] = m;
    ps[threadIdx.x / 32] = s;
  }
  __syncthreads();
  m = -INFINITY;
  s = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) merge(m, s, pm[w], ps[w]);
}

}  // namespace fused_cuda
