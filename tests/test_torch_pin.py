"""The wheel's torch pin and version label (build_hooks/torch_pin.py, jkofast/_torch_abi.py), fed
fake torch versions: the CUDA wheel (torch 2.14.1, CUDA 13.0) is built in another CI step, on
another torch, and must still get its name from this logic."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from jkofast import _torch_abi

REPO = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("torch_pin", REPO / "build_hooks" / "torch_pin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("torch_version, cuda, hip, label", [
    ("2.13.0+cpu", None, None, "torch2.13cpu"),
    ("2.14.1+cu130", "13.0", None, "torch2.14cu130"),
    ("2.14.1", "13.0", None, "torch2.14cu130"),  # PyPI's default CUDA wheel: no local label on torch
    ("2.14.0+cu128", "12.8", None, "torch2.14cu128"),
    ("2.9.1+cu126", "12.6", None, "torch2.9cu126"),
    ("2.13.0+rocm6.4", None, "6.4.43482-0f2d60242", "torch2.13rocm6.4"),
    ("2.15.0.dev20260101+cpu", None, None, "torch2.15cpu"),
])
def test_wheel_version_and_pin(torch_version, cuda, hip, label):
    meta = _hook().wheel_metadata("0.1.0", torch_version, cuda, hip)
    assert meta["version"] == f"0.1.0+{label}"
    version = Version(meta["version"])  # valid PEP 440, the label survives normalisation
    assert version.public == "0.1.0" and version.local == label
    series = _torch_abi.torch_series(torch_version)
    assert meta["dependencies"] == [f"torch=={series}.*"]


def test_pin_admits_the_series_only():
    pin = SpecifierSet(_hook().wheel_metadata("0.1.0", "2.14.1+cu130", "13.0", None)["dependencies"][0][5:])
    for ok in ("2.14.0", "2.14.1", "2.14.1+cu130", "2.14.2+cpu"):
        assert pin.contains(ok), ok
    for bad in ("2.13.0", "2.15.0", "2.140.0", "3.14.0"):
        assert not pin.contains(bad), bad


def test_existing_local_label_is_extended():
    assert _hook().wheel_metadata("0.2.0+g1234", "2.13.0+cpu", None, None)["version"] == "0.2.0+g1234.torch2.13cpu"


def test_provider_follows_the_build_state():
    # A wheel (and pip's metadata step) is tied to the torch of the build environment, here the
    # running one; an sdist is tied to none and says its dependencies are decided per wheel.
    import torch

    provider = _hook().Provider()
    for state in ("metadata_wheel", "wheel", "editable"):
        provider.build_state(state)
        meta = provider.dynamic_metadata({}, {"version": "0.1.0"})
        assert meta["version"] == "0.1.0+" + _torch_abi.local_label(torch.__version__, torch.version.cuda,
                                                                      torch.version.hip)
    provider.build_state("sdist")
    assert provider.dynamic_metadata({}, {"version": "0.1.0"}) == {}
    assert provider.dynamic_wheel({}) == {"dependencies": True}


def test_pyproject_metadata_carries_label_and_pin(tmp_path, monkeypatch):
    # What pip sees: the real pyproject.toml through scikit-build-core's metadata hook.
    import torch
    from scikit_build_core.build import prepare_metadata_for_build_wheel

    monkeypatch.chdir(REPO)
    dist_info = tmp_path / prepare_metadata_for_build_wheel(str(tmp_path))
    metadata = (dist_info / "METADATA").read_text()
    label = _torch_abi.local_label(torch.__version__, torch.version.cuda, torch.version.hip)
    assert f"\nVersion: {_read_version()}+{label}\n" in metadata
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert f"torch=={_torch_abi.torch_series(torch.__version__)}.*" in requires
    assert not [r for r in requires if r.startswith("torch") and "*" not in r], requires  # one torch pin only


def test_build_without_torch_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(RuntimeError, match="--no-build-isolation"):
        _hook()._build_torch()


def _read_version() -> str:
    scope: dict = {}
    exec((REPO / "jkofast" / "_version.py").read_text(), scope)
    return scope["__version__"]


@pytest.mark.parametrize("running, cuda, hip, problem", [
    ("2.13.1+cpu", None, None, None),  # another patch release: same ABI
    ("2.13.0+cu130", "13.0", None, None),  # a CPU build runs under the CUDA flavour of its series
    ("2.14.1+cpu", None, None, "torch 2.13.x is needed"),
    ("2.12.0+cpu", None, None, "torch 2.13.x is needed"),
])
def test_cpu_build_compatibility(running, cuda, hip, problem):
    built = {"torch_version": "2.13.0+cpu", "torch_cuda": None, "torch_hip": None}
    why = _torch_abi.mismatch(built, running, cuda, hip)
    assert why == problem if problem is None else problem in why


@pytest.mark.parametrize("running, cuda, problem", [
    ("2.14.1+cu130", "13.0", None),
    ("2.14.0+cu130", "13.0", None),
    ("2.14.1+cu132", "13.2", None),  # same CUDA major: same runtime library
    ("2.14.1+cu128", "12.8", "CUDA 13.x is needed"),
    ("2.14.1+cpu", None, "a build without CUDA"),
    ("2.15.0+cu130", "13.0", "torch 2.14.x is needed"),
])
def test_cuda_build_compatibility(running, cuda, problem):
    built = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "torch_hip": None}
    why = _torch_abi.mismatch(built, running, cuda, None)
    assert why == problem if problem is None else problem in why


def test_unparseable_torch_version_is_a_clear_error():
    with pytest.raises(ValueError, match="major.minor"):
        _torch_abi.torch_series("nightly")
