"""scikit-build-core dynamic-metadata provider: tie the wheel to the torch it is built against.

pyproject.toml runs it after the version provider. For a wheel it

* appends the local label ``torch<series><flavour>`` to the version (``0.1.0+torch2.13cpu``,
  ``0.1.0+torch2.14cu130``), so builds for different torches never share a file name;
* adds ``torch==<series>.*`` to the dependencies, so pip keeps a torch whose C++ ABI matches.

Both come from the torch installed in the build environment: jkofast builds with
``--no-build-isolation``, so that is the torch CMake compiles against. The rule itself (series,
flavour, pin) lives in ``jkofast/_torch_abi.py``, shared with the import-time check; it is loaded
by path because importing the jkofast package would need the extension being built.

An sdist is not tied to any torch: it keeps the plain version and leaves torch unpinned, and
says so by marking its dependencies Dynamic (the wheel built from it adds the label and the pin).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_ABI_RULES = Path(__file__).resolve().parents[1] / "jkofast" / "_torch_abi.py"


def _load_abi_rules():
    spec = importlib.util.spec_from_file_location("_jkofast_torch_abi", _ABI_RULES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_torch() -> tuple[str, str | None, str | None]:
    """(torch.__version__, torch.version.cuda, torch.version.hip) of the build environment."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "jkofast builds against the torch already installed, and none is importable here "
            f"({exc}). Install the torch to build for (e.g. pip install torch==2.13.0), then build "
            "with --no-build-isolation (pip wheel --no-build-isolation . -w dist)") from exc
    return torch.__version__, torch.version.cuda, torch.version.hip


def wheel_metadata(version: str, torch_version: str, cuda: str | None, hip: str | None) -> dict:
    """The [project] fragment for a wheel built from ``version`` against the given torch."""
    abi = _load_abi_rules()
    label = abi.local_label(torch_version, cuda, hip)
    # A version that already has a local label gets ours appended as one more segment.
    return {"version": f"{version}{'.' if '+' in version else '+'}{label}",
            "dependencies": [abi.torch_requirement(torch_version)]}


class Provider:
    """The dynamic-metadata 0.3 provider (see scikit-build-core's ``[[tool.dynamic-metadata]]``)."""

    def __init__(self) -> None:
        self.state = "wheel"

    def build_state(self, state: str) -> None:
        self.state = state

    def dynamic_wheel(self, settings) -> dict[str, bool]:
        return {"dependencies": True}

    def dynamic_metadata(self, settings, project) -> dict:
        if self.state == "sdist":
            return {}
        return wheel_metadata(project["version"], *_build_torch())
