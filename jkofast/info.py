"""``python -m jkofast.info`` (or ``jkofast info``): what this jkofast installation is and can run.

It prints the jkofast version, the torch the compiled extension was built against (recorded
at build time in ``jkofast/_build_info.py``), the torch running now, which compiled backends
are in (CPU; CUDA and its architectures when built with CUDA) and whether a GPU is visible:
the first thing to paste into a bug report.

>>> from jkofast.info import report
>>> "running torch" in report()
True
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import _backend, _extension
from ._version import __version__


def _torch_name(version: str | None, cuda: str | None, hip: str | None) -> str:
    kind = f"CUDA {cuda}" if cuda else f"ROCm {hip}" if hip else "CPU only"
    return f"{version} ({kind})"


def _cpu_code(target: str | None) -> str:
    if target == "native":
        return "-march=native (runs only on CPUs like the one that built it)"
    return f"-march={target}" if target else "the compiler's default instruction set"


def _gpus() -> str:
    if not torch.cuda.is_available():
        return "no (torch.cuda.is_available() is False)"
    names = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        names.append(f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    return "yes: " + ", ".join(names)


def kernel_check(device: str) -> str:
    """The compiled kernels against the pure-torch engine on ``device``, for the default field
    (the check ``backend="auto"`` makes before first using them on a GPU: jkofast/_kernel_check.py),
    in float64 and in float32 with torch's TF32 switch as it is now."""
    from . import _C, _kernel_check
    from .field import VelocityField

    field = VelocityField(2)
    if device.startswith("cuda"):
        misfit = _backend.cuda_misfit(field.dim, field.hidden, len(field.weights)) or \
            _backend._cuda_arch_misfit(torch.device(device))
        if misfit:
            return f"not run: the kernels do not take {misfit}"
    tf32 = _C.tf32_matmul_allowed()
    try:  # (a float32 check runs the float64 one first: one call checks both)
        failed = _kernel_check.verdict_for(field, device, torch.float32, tf32)
    except Exception as e:  # (out of memory, or the check's own failure)
        return f"could not run: {type(e).__name__}: {e}"
    return "FAILED: " + failed if failed else \
        (f"passed on {device} (the default field, d=2: float64, and float32 with TF32 {'on' if tf32 else 'off'}; "
         "the same numbers as the pure-torch engine)")


def report() -> str:
    """The installation's description, one fact per line."""
    ext, build = _backend.EXTENSION, _backend.EXTENSION.build_info
    version = (build or {}).get("version") or __version__
    lines = [f"jkofast {version} at {Path(__file__).resolve().parent}"]
    if build is None:  # (imported from a source checkout: say so first, the reason and the way out)
        note = _extension._source_checkout_note()
        lines.append(f"built for:       ({note})" if note else "built for:       (no compiled build installed)")
    else:
        lines.append(f"built for:       torch {_torch_name(build['torch_version'], build['torch_cuda'], build['torch_hip'])}, "
                     f"{build['compiler']}, CPU code {_cpu_code(build.get('cpu_target'))}")
        threads = build.get("cpu_threads")  # absent in builds that predate the field
        if threads:
            lines.append(f"CPU threads:     the ops split each batch over torch.get_num_threads() = "
                         f"{torch.get_num_threads()}")
        elif threads is not None:
            lines.append("CPU threads:     one per op call (built without OpenMP)")
    lines.append(f"running torch:   {_torch_name(torch.__version__, torch.version.cuda, torch.version.hip)} "
                 f"at {Path(torch.__file__).resolve().parent}")
    if _backend.compiled_available():
        devices = _backend.compiled_devices()
        lines.append(f"compiled ops:    loaded; kernels for {', '.join(devices) or 'no device'}")
    else:
        lines.append(f"compiled ops:    not available ({ext.error}); the pure-torch engine runs everything")
    archs = (build or {}).get("cuda_archs") or []
    if archs:
        registered = "cuda" in _backend.compiled_devices()
        sm = ", ".join("sm_" + arch.replace(".", "") for arch in archs)  # "8.0" -> sm_80, "9.0a" -> sm_90a
        lines.append(f"CUDA kernels:    built for {sm}"
                     f"{'' if registered else ' (not registered: the extension did not load)'}")
    else:
        lines.append("CUDA kernels:    not built (a CPU build; CUDA tensors run on the pure-torch engine)")
    lines.append(f"GPU visible:     {_gpus()}")
    if "cuda" in _backend.compiled_devices() and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"kernel check:    {kernel_check(f'cuda:{i}')}")
    lines.append(f"python:          {sys.version.split()[0]} ({sys.executable})")
    return "\n".join(lines)


def main() -> int:
    """Print :func:`report`; exit status 0."""
    print(report())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
