"""Which torch a build of ``jkofast._C`` can run with: the one rule behind the wheel's name, its
torch pin and the check made before the extension is loaded.

The extension calls torch's C++ API, which has no stable ABI across torch minor releases: a
library built against torch 2.13 may fail under 2.14 with an undefined symbol, or load and misbehave
(shared/BUILD.md). Patch releases keep the ABI (they are cherry-picked fixes; PyG's per-minor
wheel indexes rely on the same), so a build serves one torch *series* (major.minor) and one
flavour (CPU, a CUDA major version, ROCm). This module is plain string logic, importable without
torch, because ``build_hooks/torch_pin.py`` loads it by path while pip prepares the metadata.

>>> local_label("2.14.1+cu130", cuda="13.0")
'torch2.14cu130'
>>> torch_requirement("2.13.0+cpu")
'torch==2.13.*'
"""
from __future__ import annotations

import re

__all__ = ["flavour", "local_label", "mismatch", "torch_requirement", "torch_series"]


def torch_series(version: str) -> str:
    """``"2.13"`` for ``"2.13.0+cpu"``: the major.minor that fixes torch's C++ ABI."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"torch version {version!r} does not start with major.minor")
    return f"{match[1]}.{match[2]}"


def flavour(cuda: str | None = None, hip: str | None = None) -> str:
    """torch's own name for its build flavour: ``"cpu"``, ``"cu130"`` (CUDA 13.0), ``"rocm6.2"``.

    Arguments:
        cuda: ``torch.version.cuda`` (``"13.0"``, or None for a build without CUDA).
        hip: ``torch.version.hip`` (``"6.2.41133-..."`` for a ROCm build, else None).
    """
    if cuda:
        major, minor = (cuda.split(".") + ["0"])[:2]
        return f"cu{int(major)}{int(minor)}"
    if hip:
        return "rocm" + ".".join(hip.split(".")[:2])
    return "cpu"


def local_label(version: str, cuda: str | None = None, hip: str | None = None) -> str:
    """The wheel's local version label (``0.1.0+torch2.13cpu``), so two builds never collide."""
    return f"torch{torch_series(version)}{flavour(cuda, hip)}"


def torch_requirement(version: str) -> str:
    """The wheel's torch pin: the series it was built against, any patch release of it."""
    return f"torch=={torch_series(version)}.*"


def _cuda_major(cuda: str | None) -> str | None:
    return cuda.split(".")[0] if cuda else None


def mismatch(built: dict, running_version: str, running_cuda: str | None, running_hip: str | None) -> str | None:
    """Why the running torch cannot load a ``_C`` built against ``built``, or None if it can.

    Arguments:
        built: the build record (``jkofast/_build_info.py``): ``torch_version``, ``torch_cuda``,
            ``torch_hip``.
        running_version, running_cuda, running_hip: ``torch.__version__``, ``torch.version.cuda``,
            ``torch.version.hip`` of the running torch.

    A CPU build runs under any flavour of its torch series (it links only libtorch_cpu, which
    every flavour ships); a CUDA build needs a CUDA torch with the same CUDA major version (the
    CUDA runtime library's soname changes with it), a ROCm build a ROCm torch.
    """
    want, have = built["torch_version"], running_version
    if torch_series(want) != torch_series(have):
        return f"torch {torch_series(want)}.x is needed, torch {have} is installed"
    if built.get("torch_cuda") and _cuda_major(built["torch_cuda"]) != _cuda_major(running_cuda):
        return (f"a torch built for CUDA {_cuda_major(built['torch_cuda'])}.x is needed, torch {have} is "
                f"{'built for CUDA ' + running_cuda if running_cuda else 'a build without CUDA'}")
    if built.get("torch_hip") and not running_hip:
        return f"a ROCm build of torch is needed, torch {have} is not one"
    return None
