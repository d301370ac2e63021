"""Loading the compiled extension ``jkofast._C``, and saying why when it cannot be used.

The build record ``jkofast/_build_info.py`` (plain Python, written by CMake) is compared with
the running torch BEFORE ``_C`` is loaded: a library built against another torch series fails to
load with an undefined C++ symbol at best, and loads and misbehaves at worst. The outcomes:

* the torch does not match the build: ``import jkofast`` raises :class:`TorchMismatchError`,
  which names the torch the build needs and the ways out;
* ``_C`` is missing (a pure-Python install), fails to load, or was compiled for CPU features
  this CPU lacks (:mod:`jkofast._cpu_target`): jkofast runs on its pure-torch
  engine; :mod:`jkofast._backend` warns once (:class:`CompiledExtensionWarning`) when it first
  falls back, and ``backend="compiled"`` raises with the same reason;
* ``JKOFAST_COMPILED=0`` in the environment: neither checked nor loaded, the pure-torch engine
  runs and nothing warns (the user chose it; also the way past a mismatch without reinstalling).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from types import ModuleType

import torch

from . import _cpu_target, _torch_abi
from ._warn import JkofastWarning

SWITCH = "JKOFAST_COMPILED"  # "0": do not load the compiled extension

HOW_TO_BUILD = ("install the jkofast wheel built for your torch, or build jkofast against it from a checkout: "
                "pip install --no-build-isolation . (needs a C++ compiler, CMake >= 3.26, ninja and "
                "scikit-build-core)")


class CompiledExtensionWarning(JkofastWarning):
    """jkofast runs on its pure-torch engine because the compiled extension is not available."""


class TorchMismatchError(ImportError):
    """The installed torch is not one that jkofast's compiled extension can run with."""


@dataclasses.dataclass(frozen=True)
class Extension:
    """What :func:`load` found."""

    ops: ModuleType | None  # jkofast._ops (wrappers over the loaded ops), or None
    error: str | None  # why the compiled ops are not available, or None
    build_info: dict | None  # jkofast/_build_info.py's record, or None (no compiled build installed)
    disabled: bool  # by JKOFAST_COMPILED=0


def read_build_info() -> dict | None:
    """The record of the installed build (torch version, flavour, CUDA archs, flags), or None."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return None
    return dict(BUILD_INFO)


def mismatch_message(info: dict, why: str) -> str:
    """The text of :class:`TorchMismatchError` for a build ``info`` that cannot run, for reason ``why``."""
    series = _torch_abi.torch_series(info["torch_version"])
    flavour = _torch_abi.flavour(info.get("torch_cuda"), info.get("torch_hip"))
    name = f"jkofast {info['version']}" if info.get("version") else "jkofast"
    return (f"{name} was built against torch {info['torch_version']}; its compiled extension cannot run "
            f"with the installed torch ({why}). Either\n"
            f"  * install the torch it was built for: pip install \"torch=={series}.*\" (the {flavour} build: "
            f"--index-url https://download.pytorch.org/whl/{flavour}), or\n"
            f"  * {HOW_TO_BUILD}, or\n"
            f"  * set {SWITCH}=0 to run jkofast on its pure-torch engine without the compiled ops (slower)")


def load() -> Extension:
    """Check the build against the running torch, then load ``_C`` and its Python registrations.

    Raises:
        TorchMismatchError: the installed build of ``_C`` was made for another torch.
    """
    if os.environ.get(SWITCH, "").strip() == "0":
        return Extension(None, f"the compiled extension is switched off by {SWITCH}=0", read_build_info(), True)
    info = read_build_info()
    if info is not None:
        why = _torch_abi.mismatch(info, torch.__version__, torch.version.cuda, torch.version.hip)
        if why is not None:
            raise TorchMismatchError(mismatch_message(info, why))
        missing = _cpu_target.missing_features(info.get("cpu_target"), built_on=info.get("cpu_flags"))
        if missing:  # loading would die of an illegal instruction, uncatchably
            native = (" (-march=native: the CPU that built it); a wheel for other machines is built with "
                      "-C cmake.define.JKOFAST_NATIVE=OFF") if info["cpu_target"] == "native" else ""
            return Extension(None, f"this CPU lacks {', '.join(missing)}, which this build of jkofast._C "
                                   f"needs (compiled for {info['cpu_target']}{native})", info, False)
    try:  # loading registers the ops with torch (TORCH_LIBRARY)
        importlib.import_module("jkofast._C")
    except Exception as exc:  # noqa: BLE001 - any failure to load means: run the pure-torch engine
        # Not built (a pure-Python install), or an OSError/ImportError from the dynamic loader
        # (undefined symbol, missing libtorch) or a RuntimeError from the op registrations:
        # either way the ops are unusable, and jkofast is not.
        if isinstance(exc, ModuleNotFoundError) and exc.name == "jkofast._C":
            return Extension(None, _source_checkout_note() or
                             "jkofast was installed without its compiled extension (no jkofast._C)", info, False)
        return Extension(None, f"jkofast._C failed to load ({type(exc).__name__}: {exc})", info, False)
    return Extension(importlib.import_module("jkofast._ops"), None, info, False)


def _source_checkout_note() -> str | None:
    """Where jkofast was imported from a source checkout (Python started in the clone: its
    ``jkofast/`` comes before the installed package on ``sys.path``), the reason to give: the
    build advice alone would send a user who has just installed it round in a circle."""
    import importlib.metadata

    package = Path(__file__).resolve().parent
    if not ((package.parent / "pyproject.toml").is_file() and (package.parent / "csrc").is_dir()):
        return None
    try:  # an installed copy elsewhere: else the build advice is the right one
        installed = Path(importlib.metadata.distribution("jkofast").locate_file("jkofast")).resolve()
    except (importlib.metadata.PackageNotFoundError, OSError, TypeError):
        return None
    if installed == package or not installed.is_dir():
        return None
    return (f"jkofast was imported from the source checkout {package} (Python was started in "
            f"{package.parent}), which has no compiled extension and hides the installed package at {installed}; "
            "start Python in another directory to use that one")
