// JKO_HOST_DEVICE: one spelling for functions that both the C++ CPU kernels and the CUDA kernels
// call. Headers under csrc/ops/ include nothing from torch, so nvcc can compile them quickly.
#pragma once

#if defined(__CUDACC__)
#define JKO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JKO_HOST_DEVICE inline
#endif
