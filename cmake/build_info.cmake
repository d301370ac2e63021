# Writes jkofast/_build_info.py next to _C: what this build was made against. Python reads it
# BEFORE loading _C (jkofast/_extension.py), so a torch that does not match gets a clear error
# instead of an undefined symbol; `jkofast info` prints it.
#
# Include it after the targets are configured: it records the CPU target (JKOFAST_NATIVE, JKOFAST_CPU_BASELINE) and the CUDA
# architectures. A CUDA build sets JKOFAST_CUDA_ARCHS (a list such as "8.0;9.0") before this
# include; if it does not, the CUDA language being enabled records $ENV{TORCH_CUDA_ARCH_LIST},
# the list torch's CMake compiles for.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import torch; print(torch.__version__, torch.version.cuda or '', torch.version.hip or '', sep='|')"
  OUTPUT_VARIABLE _jko_torch OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
string(REPLACE "|" ";" _jko_torch "${_jko_torch}")  # keeps the empty fields: "2.13.0+cpu;;"
list(GET _jko_torch 0 _jko_torch_version)
list(GET _jko_torch 1 _jko_torch_cuda)
list(GET _jko_torch 2 _jko_torch_hip)

if(NOT DEFINED JKOFAST_CUDA_ARCHS AND CMAKE_CUDA_COMPILER_LOADED)
  string(REPLACE " " ";" JKOFAST_CUDA_ARCHS "$ENV{TORCH_CUDA_ARCH_LIST}")
endif()

# Python literals: "text" or None; a list of strings; True/False.
function(_jko_py_str out value)
  if("${value}" STREQUAL "")
    set(${out} "None" PARENT_SCOPE)
  else()
    set(${out} "\"${value}\"" PARENT_SCOPE)
  endif()
endfunction()
_jko_py_str(JKO_PY_VERSION "${SKBUILD_PROJECT_VERSION_FULL}")  # unset in a plain cmake build
_jko_py_str(JKO_PY_TORCH_VERSION "${_jko_torch_version}")
_jko_py_str(JKO_PY_TORCH_CUDA "${_jko_torch_cuda}")
_jko_py_str(JKO_PY_TORCH_HIP "${_jko_torch_hip}")
set(JKO_PY_CUDA_ARCHS "")
foreach(arch IN LISTS JKOFAST_CUDA_ARCHS)
  string(APPEND JKO_PY_CUDA_ARCHS "\"${arch}\", ")
endforeach()
set(JKO_PY_CPU_FLAGS "None")
if(JKOFAST_NATIVE)
  set(JKO_PY_CPU_TARGET "\"native\"")
  # The building CPU's instruction-set flags (jkofast/_cpu_target.py, loaded by path: the package
  # cannot be imported before _C exists): a copy on a CPU without one of them falls back instead of SIGILL.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import importlib.util as u, sys; s = u.spec_from_file_location('t', sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); f = m.cpu_flags(); print('None' if f is None else repr(m.isa_flags(f)))"
            "${CMAKE_CURRENT_SOURCE_DIR}/jkofast/_cpu_target.py"
    OUTPUT_VARIABLE JKO_PY_CPU_FLAGS OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
else()
  _jko_py_str(JKO_PY_CPU_TARGET "${JKOFAST_CPU_BASELINE}")
endif()

if(JKOFAST_OPENMP)
  set(JKO_PY_OPENMP True)
else()
  set(JKO_PY_OPENMP False)
endif()

file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/_build_info.py" @ONLY CONTENT [=[
"""Written by cmake/build_info.cmake when jkofast._C was built: what it was built against."""
BUILD_INFO = {
    "version": @JKO_PY_VERSION@,  # the jkofast version of the build (None: built outside pip)
    "torch_version": @JKO_PY_TORCH_VERSION@,  # torch.__version__ compiled against
    "torch_cuda": @JKO_PY_TORCH_CUDA@,  # its torch.version.cuda
    "torch_hip": @JKO_PY_TORCH_HIP@,  # its torch.version.hip
    "cuda_archs": [@JKO_PY_CUDA_ARCHS@],  # architectures the CUDA kernels were compiled for
    # -march of the CPU kernels: "native" (runs only on CPUs like the builder's), a portable
    # level such as "x86-64-v3" (checked before loading), or None (the compiler's default)
    "cpu_target": @JKO_PY_CPU_TARGET@,
    # a "native" build's record of the instruction-set flags of the CPU that built it (else None)
    "cpu_flags": @JKO_PY_CPU_FLAGS@,
    "compiler": "@CMAKE_CXX_COMPILER_ID@ @CMAKE_CXX_COMPILER_VERSION@",
    # the CPU ops split a batch over torch's intra-op threads (at::parallel_for built with OpenMP)
    "cpu_threads": @JKO_PY_OPENMP@,
}
]=])
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/_build_info.py" DESTINATION jkofast)
