"""benchmarks/bench_gpu_7b.py end to end on CPU (``--shape tiny``): the code the GPU run uses,
its JSON fields, and the agreement of ours and HF on a tiny float32 model. No timing asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_7b.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_tiny_shape_on_cpu_writes_every_field(tmp_path):
    out = tmp_path / "gpu.json"
    done = run("--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--rounds", "1",
               "--questions", "4", "--steps", "2", "--new-tokens", "4", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["device_name"] == "cpu (no CUDA device)"
    assert record["shape"]["name"] == "tiny" and record["dtype"] == "float32"
    for side in ("ours", "hf"):
        m = record["methods"][side]
        assert m["rmu"]["steps_per_s"] > 0 and m["rmu"]["peak_gpu_mib"] is None
        assert m["scoring"]["questions_per_s"] > 0 and m["generation"]["tokens_per_s"] > 0
    assert set(record["ratios_ours_over_hf"]) == {
        "rmu_steps_per_s", "scoring_questions_per_s", "generation_tokens_per_s"
    }  # fmt: skip
    # float32: the same letters and the same greedy tokens as HF (bfloat16 may flip near ties)
    assert record["agreement"] == {"letter_predictions": 1.0, "greedy_rows_identical": 1.0}
    assert record["versions"]


def test_without_cuda_the_7b_shape_exits_2_with_one_sentence():
    done = run("--shape", "7b", "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "CUDA" in done.stderr
