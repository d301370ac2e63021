"""Check a built jkofast wheel against the torch of the environment that built it:

* the file name and version carry +torch<major.minor><flavour> (cpu, cu130, ...);
* its metadata requires exactly that torch series (torch==<major.minor>.*);
* it holds the compiled extension and the build record, and the record names the same torch
  and portable CPU code (a wheel must not be built with -march=native).

The expectations are written out here independently of build_hooks/torch_pin.py, so a bug there
cannot confirm itself.

    python .ci/wheel_inspect.py dist/jkofast-0.1.0+torch2.13cpu-cp311-cp311-linux_x86_64.whl
"""
from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import torch


def main(path: str) -> None:
    wheel = Path(path)
    major, minor = torch.__version__.split(".")[:2]
    cuda = torch.version.cuda
    flavour = f"cu{cuda.replace('.', '')}" if cuda else "cpu"
    label = f"torch{major}.{minor}{flavour}"
    problems = []
    if f"+{label}-" not in wheel.name:
        problems.append(f"file name {wheel.name} lacks +{label}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        record = z.read("jkofast/_build_info.py").decode() if "jkofast/_build_info.py" in names else None
    requires = [ln.split(": ", 1)[1] for ln in metadata.splitlines() if ln.startswith("Requires-Dist: torch")]
    if requires != [f"torch=={major}.{minor}.*"]:
        problems.append(f"torch requirement {requires}, expected ['torch=={major}.{minor}.*']")
    if not any(n.startswith("jkofast/_C.") and n.endswith((".so", ".pyd")) for n in names):
        problems.append("no compiled extension jkofast/_C.*")
    if record is None:
        problems.append("no build record jkofast/_build_info.py")
    else:
        info = ast.literal_eval(record.split("BUILD_INFO = ", 1)[1])
        if info["torch_version"] != torch.__version__:
            problems.append(f"build record says torch {info['torch_version']}, built with {torch.__version__}")
        if info["cpu_target"] == "native":
            problems.append("CPU code built with -march=native (build wheels with -C cmake.define.JKOFAST_NATIVE=OFF)")
        if not info["version"] or not info["version"].endswith(label):
            problems.append(f"build record version {info['version']!r} lacks {label}")
    if problems:
        sys.exit("wheel_inspect: " + "; ".join(problems))
    print(f"wheel_inspect: {wheel.name}: label +{label}, requires {requires[0]}, CPU code "
          f"{info['cpu_target'] or 'compiler default'}, CUDA archs {info['cuda_archs'] or 'none'}")


if __name__ == "__main__":
    main(sys.argv[1])
