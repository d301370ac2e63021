// The op contracts of jkofast's compiled engine, in one place. Implementations register per
// device: csrc/cpu/*_cpu.cpp (CPU), csrc/cuda/*_cuda.cpp (CUDA). The Python side
// (jkofast/_ops/) adds the fake (meta) implementations and the autograd formulas, which call
// the *_backward ops. jkofast/reference.py is the same math in plain torch.
//
// Layouts: x (B, d); t (B,); weights[l] (H_out, H_in) as nn.Linear, layer 0 sees [x, t] when
// the field has a time input; probes (B, k, d) for one evaluation, (S, B, k, d) for S RK4 steps.
// Every op works on the caller's weight tensors and keeps nothing after it returns.
#include <Python.h>
#include <torch/library.h>

#include "launch_override.h"
#include "ops/tile_plan.h"
#include "tf32_switch.h"

// The GPU architectures the CUDA kernels were built for ("8.0 9.0"; empty without CUDA), from
// CMakeLists.txt, so that jkofast/_backend.py falls back on a GPU they cannot run on.
#ifndef JKOFAST_CUDA_ARCH_LIST
#define JKOFAST_CUDA_ARCH_LIST ""
#endif

extern "C" {
static PyObject* tf32_matmul_allowed(PyObject*, PyObject*) {
  return PyBool_FromLong(jkofast::tf32_matmul_allowed());
}

// _set_cuda_launch_override(rows, grid, stream) and _cuda_launch_override() -> (rows, grid, stream):
// the kernel check's private knob on the CUDA kernels' tile plan (launch_override.h), for launches
// on the CUDA stream `stream` (torch.cuda.Stream.cuda_stream); (0, 0, 0) is none.
static PyObject* set_cuda_launch_override(PyObject*, PyObject* args) {
  int rows = 0, grid = 0;
  unsigned long long stream = 0;
  if (!PyArg_ParseTuple(args, "iiK", &rows, &grid, &stream)) return nullptr;
  if (rows < 0 || grid < 0) {
    PyErr_SetString(PyExc_ValueError, "_set_cuda_launch_override: rows and grid must be >= 0 (0: the usual plan)");
    return nullptr;
  }
  jkofast::set_launch_override({rows, grid, uint64_t(stream)});
  Py_RETURN_NONE;
}

static PyObject* cuda_launch_override(PyObject*, PyObject*) {
  const jkofast::LaunchOverride o = jkofast::launch_override();
  return Py_BuildValue("(iiK)", o.rows, o.grid, (unsigned long long)o.stream);
}

// `import jkofast._C` only needs to load this library, which runs the registrations below. A
// plain C-API module (no pybind11, no libtorch_python) keeps the build small and ABI-stable. Its
// attributes are the CUDA kernels' limits (ops/tile_plan.h) and architectures, which
// jkofast/_backend.py reads so that its fit rule and the CUDA glue's check are one rule, and
// tf32_matmul_allowed(): whether the CUDA kernels would take TF32 products now (tf32_switch.h);
// and the kernel check's private launch override (launch_override.h).
PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"tf32_matmul_allowed", tf32_matmul_allowed, METH_NOARGS,
       "Whether float32 products run on TF32 tensor cores now (torch's cuBLAS rule)."},
      {"_set_cuda_launch_override", set_cuda_launch_override, METH_VARARGS,
       "Private (the kernel check's): force the CUDA kernels' stack rows and cap their grid on one stream; 0 for none."},
      {"_cuda_launch_override", cuda_launch_override, METH_NOARGS,
       "Private: the CUDA kernels' forced (stack rows, grid cap, stream); (0, 0, 0) when none."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      (PyModule_AddIntConstant(module, "CUDA_MAX_DIM", long(jkofast::tile::kMaxDim)) < 0 ||
       PyModule_AddIntConstant(module, "CUDA_MAX_HIDDEN", long(jkofast::tile::kMaxHidden)) < 0 ||
       PyModule_AddIntConstant(module, "CUDA_MAX_WEIGHTS", long(jkofast::tile::kMaxWeights)) < 0 ||
       PyModule_AddStringConstant(module, "CUDA_ARCH_LIST", JKOFAST_CUDA_ARCH_LIST) < 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(jkofast, m) {
  // f(x, t) of the MLP; t None for an autonomous field.
  m.def("mlp_field(Tensor x, Tensor? t, Tensor[] weights, Tensor[] biases, str activation, float beta) -> Tensor");
  // -> (grad_x, grad_t (B,) or (0,) without t, grad_weights, grad_biases)
  m.def("mlp_field_backward(Tensor grad_f, Tensor x, Tensor? t, Tensor[] weights, Tensor[] biases, "
        "str activation, float beta) -> (Tensor, Tensor, Tensor[], Tensor[])");
  // (f, div): exact trace with probes None, Hutchinson mean_i v_i^T J v_i with probes (B, k, d).
  m.def("mlp_field_div(Tensor x, Tensor? t, Tensor? probes, Tensor[] weights, Tensor[] biases, "
        "str activation, float beta) -> (Tensor, Tensor)");
  m.def("mlp_field_div_backward(Tensor grad_f, Tensor grad_div, Tensor x, Tensor? t, Tensor? probes, "
        "Tensor[] weights, Tensor[] biases, str activation, float beta) -> (Tensor, Tensor, Tensor[], Tensor[])");
  // steps RK4 steps from t0 to t1 (t1 < t0 runs backwards). divergence: "exact", "hutchinson"
  // (probes (steps, B, k, d), held for a step's 4 stages) or "none" (logdet stays 0).
  // -> (x1, logdet = int div dt, kinetic = int |f|^2 |dt|, states (steps, B, d): x at each step's
  // start, which the backward needs and nothing else should use).
  m.def("rk4_block(Tensor x, Tensor? probes, Tensor[] weights, Tensor[] biases, float t0, float t1, int steps, "
        "str tableau, str divergence, bool time, str activation, float beta) -> (Tensor, Tensor, Tensor, Tensor)");
  // -> (grad_x, grad_weights, grad_biases)
  m.def("rk4_block_backward(Tensor grad_x1, Tensor grad_logdet, Tensor grad_kinetic, Tensor states, Tensor x, "
        "Tensor? probes, Tensor[] weights, Tensor[] biases, float t0, float t1, int steps, str tableau, "
        "str divergence, bool time, str activation, float beta) -> (Tensor, Tensor[], Tensor[])");
  // One JKO-iFlow block's training loss with its gradients, in one pass (no autograd formula:
  // jkofast/_ops/jko_block_loss.py wraps it). With x1, logdet, kinetic from rk4_block over
  // [t0, t1], the loss is mean_i(|x1_i|^2 / 2 - logdet_i + endpoint_weight |x1_i - x0_i|^2
  // + path_weight kinetic_i). -> (terms (B, 4): |x1|^2 / 2, logdet, |x1 - x0|^2, kinetic per
  // sample; then the loss's gradients wrt x0, the weights and the biases)
  m.def("jko_block_loss(Tensor x0, Tensor? probes, Tensor[] weights, Tensor[] biases, float t0, float t1, "
        "int steps, str tableau, str divergence, bool time, str activation, float beta, float endpoint_weight, "
        "float path_weight) -> (Tensor, Tensor, Tensor[], Tensor[])");
}
