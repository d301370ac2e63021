"""What happens when the compiled extension cannot be used (jkofast/_extension.py, _backend.py):
a torch that does not match the build is a clear ImportError naming the torch needed; a missing
or broken _C, or a CPU without the build's instruction set, leaves jkofast working on the
pure-torch engine with one CompiledExtensionWarning; JKOFAST_COMPILED=0 switches it off quietly.

The import-time paths run in a subprocess (a process that has loaded _C cannot unload it),
from a scratch directory so that the installed package is the one imported."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from jkofast import _backend, _cpu_target, _extension, _torch_abi

# Prepended to a subprocess's code: make `import jkofast._C` fail the way the case needs.
BLOCK_C = """
import importlib.abc, importlib.machinery, sys
class _BlockC(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, error): self.error = error
    def find_spec(self, name, path=None, target=None):
        if name == "jkofast._C":
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec): raise self.error
    def exec_module(self, module): pass
sys.meta_path.insert(0, _BlockC({error}))
"""
MISSING = "ModuleNotFoundError(\"No module named 'jkofast._C'\", name='jkofast._C')"
BROKEN = "ImportError('_C.so: undefined symbol: _ZN3c1019UndefinedTensorImpl10_singletonE')"

# Prepended to a subprocess's code: pretend the installed build was made for another torch.
FAKE_BUILD = """
import sys, types
fake = types.ModuleType("jkofast._build_info")
fake.BUILD_INFO = dict(version="0.1.0+torch2.99cu130", torch_version="2.99.1+cu130", torch_cuda="13.0",
                       torch_hip=None, cuda_archs=["8.0", "9.0"], cpu_target="x86-64-v3", compiler="GNU 12")
sys.modules["jkofast._build_info"] = fake  # found before the real one when jkofast imports it
"""

# Runs the engine a few times with every warning recorded, then reports what it saw.
USE_ENGINE = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    import torch, jkofast
    field = jkofast.VelocityField(2, hidden=8, layers=2)
    x = torch.randn(16, 2)
    auto = [jkofast.rk4(field, x, 0.0, 1.0, 2)[0] for _ in range(2)]
    f, div = jkofast.divergence(field, x, 0.5)
    flow = jkofast.train(x, blocks=1, iters=2, batch=8, hidden=8, layers=1, progress=False)
    assert torch.isfinite(flow.log_prob(x)).all()
    torch.testing.assert_close(auto[0], jkofast.rk4(field, x, 0.0, 1.0, 2, backend="torch")[0])
try:
    jkofast.rk4(field, x, 0.0, 1.0, 2, backend="compiled")
    print("COMPILED RAN")
except RuntimeError as exc:
    print("COMPILED REFUSED:", exc)
for w in seen:
    print(f"WARNING {w.category.__name__}: {w.message}")
"""


# Stands in for importlib in jkofast._extension where nothing may be loaded.
_NO_IMPORTS = types.SimpleNamespace(import_module=lambda name: pytest.fail(f"{name} was imported"))


def run_python(code: str, tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def _warnings(out: str, category: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"WARNING {category}")]


@pytest.mark.parametrize("error, reason", [(MISSING, "installed without its compiled extension"),
                                           (BROKEN, "failed to load (ImportError: _C.so: undefined symbol")],
                         ids=["missing", "broken"])
def test_without_the_extension_the_torch_engine_runs_and_warns_once(tmp_path, error, reason):
    out = run_python(BLOCK_C.format(error=error) + USE_ENGINE, tmp_path)
    assert out.returncode == 0, out.stderr
    warned = _warnings(out.stdout, "CompiledExtensionWarning")
    assert len(warned) == 1, out.stdout  # once, though the engine ran many times
    assert reason in warned[0] and "pip install --no-build-isolation" in warned[0]
    refused = [line for line in out.stdout.splitlines() if line.startswith("COMPILED")]
    assert refused and refused[0].startswith("COMPILED REFUSED") and reason in refused[0], out.stdout


def test_a_source_checkout_shadowing_the_install_is_named(tmp_path):
    # Python started in a clone imports its jkofast/ (no _C) before the installed package: the
    # reason given names that, not only "build it", which the user has just done.
    import shutil
    import jkofast

    shutil.copytree(os.path.dirname(jkofast.__file__), tmp_path / "jkofast",
                    ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__"))  # (as a clone has)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'jkofast'\n")
    (tmp_path / "csrc").mkdir()
    out = run_python("import jkofast, jkofast._backend as b, jkofast.info as i; print('FILE', jkofast.__file__); "
                     "print('WHY', b.COMPILED_ERROR); print('INFO', i.report().splitlines()[1])", tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"FILE {tmp_path / 'jkofast'}" in out.stdout, out.stdout
    assert f"imported from the source checkout {tmp_path / 'jkofast'}" in out.stdout, out.stdout
    assert "hides the installed package at" in out.stdout and "start Python in another directory" in out.stdout
    # and `jkofast info` says it in its first line of facts, where it says what was built
    assert f"INFO built for:       (jkofast was imported from the source checkout {tmp_path / 'jkofast'}" in out.stdout


def test_switched_off_extension_runs_quietly_even_on_a_mismatched_build(tmp_path):
    out = run_python(FAKE_BUILD + USE_ENGINE, tmp_path, JKOFAST_COMPILED="0")
    assert out.returncode == 0, out.stderr
    assert not _warnings(out.stdout, "CompiledExtensionWarning"), out.stdout
    assert "COMPILED REFUSED" in out.stdout and "JKOFAST_COMPILED=0" in out.stdout


def test_import_with_another_torch_names_the_torch_needed(tmp_path):
    out = run_python(FAKE_BUILD + "import jkofast\n", tmp_path)
    assert out.returncode != 0
    error = out.stderr.strip().splitlines()
    start = next(i for i, line in enumerate(error) if "TorchMismatchError" in line)
    message = "\n".join(error[start:])
    assert "built against torch 2.99.1+cu130" in message
    assert f"torch 2.99.x is needed, torch {torch.__version__} is installed" in message
    assert 'pip install "torch==2.99.*"' in message and "JKOFAST_COMPILED=0" in message
    assert "undefined symbol" not in out.stderr


def test_mismatch_is_checked_before_loading(monkeypatch):
    # In-process: the record says another torch, so load() must refuse without touching _C.
    fake = dict(_extension.read_build_info(), torch_version="2.99.0+cpu", torch_cuda=None)
    monkeypatch.setattr(_extension, "read_build_info", lambda: fake)
    monkeypatch.setattr(_extension, "importlib", _NO_IMPORTS)
    with pytest.raises(_extension.TorchMismatchError, match=r"torch==2\.99\.\*") as info:
        _extension.load()
    assert isinstance(info.value, ImportError)


def test_cpu_without_the_build_instruction_set_falls_back(monkeypatch):
    fake = dict(_extension.read_build_info(), cpu_target="x86-64-v3")
    monkeypatch.setattr(_extension, "read_build_info", lambda: fake)
    monkeypatch.setattr(_cpu_target, "cpu_flags", lambda: {"sse2", "ssse3", "sse4_2", "popcnt", "avx"})
    monkeypatch.setattr(_extension, "importlib", _NO_IMPORTS)
    ext = _extension.load()
    assert ext.ops is None and not ext.disabled
    assert ext.error == ("this CPU lacks avx2, bmi1, bmi2, fma, which this build of jkofast._C needs "
                         "(compiled for x86-64-v3)")


def test_a_native_build_on_another_cpu_falls_back(monkeypatch):
    # -march=native code copied to a CPU without one of its builder's extensions would die of
    # SIGILL at its first such instruction: refused before loading, with the way to a portable build.
    fake = dict(_extension.read_build_info(), cpu_target="native", cpu_flags=["avx2", "avx512f", "fma"])
    monkeypatch.setattr(_extension, "read_build_info", lambda: fake)
    monkeypatch.setattr(_cpu_target, "cpu_flags", lambda: {"sse2", "avx", "avx2", "fma"})
    monkeypatch.setattr(_extension, "importlib", _NO_IMPORTS)
    ext = _extension.load()
    assert ext.ops is None and not ext.disabled
    assert ext.error == ("this CPU lacks avx512f, which this build of jkofast._C needs (compiled for native "
                         "(-march=native: the CPU that built it); a wheel for other machines is built with "
                         "-C cmake.define.JKOFAST_NATIVE=OFF)")


@pytest.mark.parametrize("built, capability, runs", [
    ("8.0", (8, 0), True), ("8.0", (8, 6), True), ("8.6", (8, 0), False),    # x.y runs on x.z, z >= y
    ("8.0", (9, 0), False), ("9.0", (8, 9), False), ("8.0;9.0", (9, 0), True),
    ("8.0+PTX", (9, 0), True), ("9.0+PTX", (8, 6), False),                  # PTX: on anything newer
    ("8.0 9.0a", (9, 0), True), ("", (8, 0), False)])
def test_the_kernels_run_on_the_gpus_the_build_has_code_for(monkeypatch, built, capability, runs):
    # a GPU without machine code for it would fail at the first launch instead of falling back
    _C = pytest.importorskip("jkofast._C")
    monkeypatch.setattr(_C, "CUDA_ARCH_LIST", built, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    why = _backend._cuda_arch_misfit(torch.device("cuda"))
    assert (why is None) == runs, why
    if not runs:
        assert why == f"a GPU of compute capability {capability[0]}.{capability[1]} (the CUDA kernels were built " \
                      f"for {built!r})"


def test_cpu_feature_levels():
    v3 = {"ssse3", "sse4_2", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma"}
    assert _cpu_target.missing_features("x86-64-v3", flags=v3) == []
    assert _cpu_target.missing_features("x86-64-v4", flags=v3) == ["avx512bw", "avx512cd", "avx512dq",
                                                                   "avx512f", "avx512vl"]
    assert _cpu_target.missing_features("x86-64-v2", flags={"ssse3", "popcnt"}) == ["sse4_2"]
    for target in ("native", None, "armv8-a"):  # nothing to check: no record of the builder's CPU, or the default
        assert _cpu_target.missing_features(target, flags=set()) == []
    # a native build: the instruction-set flags of the CPU that built it, against this one's
    built_on = _cpu_target.isa_flags({"avx2", "avx512f", "fma", "fpu", "hypervisor", "sse4_2"})
    assert built_on == ["avx2", "avx512f", "fma", "sse4_2"]   # (not fpu, hypervisor: not instructions)
    assert _cpu_target.missing_features("native", flags=v3 | {"sse4_2"}, built_on=built_on) == ["avx512f"]
    assert _cpu_target.missing_features("native", flags=v3 | {"avx512f"}, built_on=built_on) == []
    assert _cpu_target.missing_features("x86-64-v3", flags=None) in ([], _cpu_target.missing_features("x86-64-v3"))


def test_this_build_loaded_and_records_the_running_torch():
    # The CI build: the compiled engine is in, and its record matches the torch it runs with.
    info = _extension.read_build_info()
    assert _backend.compiled_available() and "cpu" in _backend.compiled_devices(), _backend.COMPILED_ERROR
    assert info is not None and _torch_abi.mismatch(info, torch.__version__, torch.version.cuda,
                                                    torch.version.hip) is None
    assert info["torch_version"] == torch.__version__
    assert _cpu_target.missing_features(info["cpu_target"], built_on=info.get("cpu_flags")) == []
    if info["cpu_target"] == "native":  # (a source build here: it records this CPU's extensions)
        assert info["cpu_flags"] and set(info["cpu_flags"]) <= _cpu_target.cpu_flags()


def test_info_reports_build_runtime_and_devices(capsys):
    from jkofast.cli import main

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    info = _extension.read_build_info()
    assert f"built for:       torch {info['torch_version']}" in text
    assert f"running torch:   {torch.__version__}" in text
    assert "compiled ops:    loaded; kernels for cpu" in text
    assert ("GPU visible:     yes" if torch.cuda.is_available() else "GPU visible:     no") in text
    if not info["cuda_archs"]:
        assert "CUDA kernels:    not built" in text


def test_info_without_a_compiled_build(monkeypatch):
    from jkofast.info import report

    why = "jkofast was installed without its compiled extension (no jkofast._C)"
    monkeypatch.setattr(_backend, "EXTENSION", _extension.Extension(None, why, None, False))
    monkeypatch.setattr(_backend, "COMPILED_ERROR", why)
    text = report()
    assert "built for:       (no compiled build installed)" in text
    assert f"compiled ops:    not available ({why}); the pure-torch engine runs everything" in text


def test_info_reports_a_builds_record_as_a_bug_report_needs_it(monkeypatch):
    # A ROCm torch, a native CUDA build for sm_80 and sm_90a without OpenMP: each said as such
    from jkofast import info

    record = dict(_extension.read_build_info(), torch_version="2.9.0", torch_cuda=None, torch_hip="6.4",
                  cpu_target="native", cpu_threads=False, cuda_archs=["8.0", "9.0a"])
    monkeypatch.setattr(_backend, "EXTENSION", _extension.Extension(_backend.EXTENSION.ops, None, record, False))
    text = info.report()
    assert "built for:       torch 2.9.0 (ROCm 6.4), " in text
    assert "CPU code -march=native (runs only on CPUs like the one that built it)" in text
    assert "CPU threads:     one per op call (built without OpenMP)" in text
    assert "CUDA kernels:    built for sm_80, sm_90a" in text
    monkeypatch.setattr(_backend, "EXTENSION", _extension.Extension(_backend.EXTENSION.ops, None,
                                                                  dict(record, cpu_threads=True), False))
    assert f"the ops split each batch over torch.get_num_threads() = {torch.get_num_threads()}" in info.report()
    older = {k: v for k, v in record.items() if k != "cpu_threads"}   # a build from before the record had it
    monkeypatch.setattr(_backend, "EXTENSION", _extension.Extension(_backend.EXTENSION.ops, None, older, False))
    assert "CPU threads:" not in info.report()


def test_info_says_why_the_kernel_check_did_not_run(monkeypatch):
    from jkofast import info

    # a GPU the build has no code for: not run, and why; the check's own failure: could not run
    monkeypatch.setattr(_backend, "cuda_misfit", lambda dim, hidden, weights: None)
    monkeypatch.setattr(_backend, "_cuda_arch_misfit", lambda device: "a GPU of compute capability 7.5")
    assert info.kernel_check("cuda:0") == "not run: the kernels do not take a GPU of compute capability 7.5"

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")
    from jkofast import _kernel_check
    monkeypatch.setattr(_kernel_check, "verdict_for", out_of_memory)
    assert info.kernel_check("cpu") == "could not run: OutOfMemoryError: CUDA out of memory"
