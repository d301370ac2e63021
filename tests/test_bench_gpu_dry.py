"""The GPU benchmarks' Python, run on the CPU through a stand-in for torch.cuda (_cuda_shim.py) at
tiny sizes: a name error, a wrong keyword or a broken table in a path only a GPU reaches would
otherwise surface in a lent GPU session's few minutes. It checks what runs and what is written,
not speed (the fused rows run jkofast's CPU ops; the graph rows replay nothing; the compile rows
fail where dynamo looks for CUDA)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCH = TESTS.parent / "bench"

SETUP = f"""
import sys
sys.path[:0] = [{str(TESTS)!r}, {str(BENCH)!r}]
import _cuda_shim  # noqa: F401  (before the benchmarks import torch.cuda's names)
import _harness as H
from pathlib import Path
H.RESULTS = Path(sys.argv[1])
import bench_gpu as G
G.BATCHES, G.GOAL_BATCHES, G.FLOP_BATCH, G.CHECK_BATCH, G.GOAL_CHECK_BATCH = [16, 32], [16, 32], 16, 32, 64
G.CASES, G.GOAL = [(2, 8), (6, 16)], (6, 16)
G.sync_time.__defaults__ = (0.01, 3)
G.matmul_ceilings = lambda: {{f"{{m}}_{{p}}_tflops": 1.0 for m in ("mm_8192", "mm_skinny") for p in ("fp32", "tf32")}}
"""


def _run(tmp_path, body: str, *args: str) -> str:
    script = SETUP + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), *args], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _strict(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path.name} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_bench_gpu_runs_every_row_kind_and_writes_its_table_and_json(tmp_path):
    out = _run(tmp_path, """
        sys.argv = ["bench_gpu.py", "--budget", "600"]
        G.main()
    """)
    result = _strict(next(tmp_path.glob("gpu-cuda-*.json")))
    rows = result["rows"]
    kinds = {(r["d"], r["implementation"], r["precision"]) for r in rows}
    assert {(6, impl, p) for impl in ("fused", "ops", "eager", "graph") for p in ("fp32", "tf32")} <= kinds
    assert (6, "compile", "tf32") in kinds and (2, "compile", "tf32") not in kinds   # (goal case only)
    # every row measured, but the compile rows: dynamo looks for the CUDA the stand-in only claims
    # (a CPU build of torch has none; a CUDA build, as on the GPU machine, finds no driver here)
    failed = [r for r in rows if r.get("error") or r.get("skipped")]
    assert all(r["implementation"] == "compile" and ("not compiled with CUDA" in r["error"]
                                                     or "no NVIDIA driver" in r["error"]) for r in failed), failed
    assert all(r["tflops"] > 0 and r["median_s"] > 0 for r in rows if r not in failed)
    # the table is by case and batch, though the compile rows ran after every case's other rows
    order = [(r["d"], r["batch"]) for r in rows]   # (cases and batches both ascend here)
    assert order == sorted(order), order
    assert out.index("d2-w8-l3-b32-s3") < out.index("compile") and "goals, d=6 width 128 training step" in out
    assert result["env"]["flops_per_sample"]["d6-w16"] > 0


def test_bench_gpu_goal_and_the_rows_sweep_run(tmp_path):
    _run(tmp_path, """
        sys.argv = ["bench_gpu.py", "--goal"]
        G.main()
        import sweep_gpu_rows as S
        S.CASES = [((6, 16), (32, 64))]
        sys.argv = ["sweep_gpu_rows.py", "--budget", "600"]
        S.main()
    """)
    goal = _strict(next(tmp_path.glob("gpu-goal-cuda-*.json")))
    assert {r["implementation"] for r in goal["rows"]} == {"fused", "ops", "eager", "graph", "compile"}
    assert "check_b64_fp32" in goal["env"]
    sweep = _strict(next(tmp_path.glob("gpu-rows-cuda-*.json")))
    assert {r["rows"] for r in sweep["rows"]} >= {"auto"} and all(r.get("median_s") for r in sweep["rows"])
