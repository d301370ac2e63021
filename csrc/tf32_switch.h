// Whether torch runs float32 matmuls on TF32 tensor cores now, by torch's own cuBLAS rule
// (aten/src/ATen/cuda/CUDABlas.cpp, torch 2.11-2.14): the CUDA matmul entry of the fp32_precision
// settings, which the legacy setters (torch.backends.cuda.matmul.allow_tf32,
// torch.set_float32_matmul_precision) also write, unless a NoTF32Guard is alive. Not
// Context::allowTF32CuBLAS(): it raises once the new API (torch.backends.cuda.matmul.fp32_precision
// = "tf32") has been used. One definition for the CUDA kernels' switch (cuda/cuda_glue.cpp) and
// for jkofast._C.tf32_matmul_allowed(), which the Python side keys its kernel check on.
#pragma once

#include <ATen/Context.h>

namespace jkofast {

inline bool tf32_matmul_allowed() {
  return !at::NoTF32Guard::should_disable_tf32() &&
         at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
             at::Float32Precision::TF32;
}

}  // namespace jkofast
