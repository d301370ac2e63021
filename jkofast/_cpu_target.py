"""Can this CPU run a build of ``jkofast._C`` compiled for a given ``-march`` level?

A wheel's CPU kernels are compiled for a portable level (``x86-64-v3`` by default, see
CMakeLists.txt); on a CPU without it, the first AVX2 instruction kills the process with SIGILL,
which no ``try`` can catch, so the loader asks here before loading the library. The answer
comes from the kernel's CPU flags (Linux ``/proc/cpuinfo``); where those cannot be read, the
build is assumed to fit, as before this check existed.

>>> missing_features("x86-64-v3", flags={"ssse3", "sse4_2", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2"})
[]
>>> missing_features("x86-64-v3", flags={"sse4_2", "popcnt", "ssse3", "avx"})
['avx2', 'bmi1', 'bmi2', 'fma']
"""
from __future__ import annotations

from pathlib import Path

# The /proc/cpuinfo flags each x86-64 psABI level adds that compiled loops may use (the levels
# are cumulative). The compiler default needs no check: it runs on every x86-64 CPU. A "native"
# build is checked against the instruction-set flags of the CPU that built it (``built_on``,
# recorded in _build_info.py): copied to another machine, it would otherwise die of SIGILL.
_LEVEL_FLAGS = {
    "x86-64-v2": ("popcnt", "sse4_2", "ssse3"),
    "x86-64-v3": ("avx", "avx2", "bmi1", "bmi2", "fma"),
    "x86-64-v4": ("avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"),
}
_LEVELS = list(_LEVEL_FLAGS)


def cpu_flags() -> set[str] | None:
    """The running CPU's feature flags, or None where they cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


# /proc/cpuinfo flags of instruction-set extensions a compiler may use under -march=native
# (vector, bit-manipulation, crypto and matrix units); other flags (bugs, power states) are not
# the code's business and may differ between machines that run the same code.
_ISA_FLAG_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "bmi", "popcnt", "abm", "lzcnt", "movbe", "adx",
                      "aes", "pclmulqdq", "vpclmulqdq", "vaes", "sha_ni", "gfni", "amx", "cx16")


def isa_flags(flags) -> list[str]:
    """The instruction-set flags among ``flags`` (sorted): what a native build records."""
    return sorted(f for f in flags if f.startswith(_ISA_FLAG_PREFIXES))


def missing_features(target: str | None, flags: set[str] | None = None, built_on=None) -> list[str]:
    """CPU features that ``-march=target`` code may use and this CPU lacks (sorted; [] if none).

    Arguments:
        target: the build's ``cpu_target`` (``"x86-64-v3"``, ``"native"``, None, ...).
        flags: the CPU's flags; default: read from the running machine.
        built_on: for a ``"native"`` build, the instruction-set flags of the CPU that built it
            (None: not recorded, by builds before the record existed: nothing to check).
    """
    if target not in _LEVEL_FLAGS and not (target == "native" and built_on):
        return []
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return []
    if target == "native":
        return sorted(set(built_on) - set(flags))
    needed = {f for level in _LEVELS[:_LEVELS.index(target) + 1] for f in _LEVEL_FLAGS[level]}
    return sorted(needed - flags)
