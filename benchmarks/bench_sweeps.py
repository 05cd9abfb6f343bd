"""Sweep wall time: a 6-point coefficient sweep on the demo organism, serially vs on Ray (2 workers).

Usage:
    python benchmarks/bench_sweeps.py                 # 1 round, ~5 min on 2 quiet cores
    python benchmarks/bench_sweeps.py --rounds 3      # medians of 3 interleaved rounds
    python benchmarks/bench_sweeps.py --size test --out /tmp/s.json  # smoke run, test organism

The sweep is the one ``unlearn-interp figures`` runs for the demo organism (cached; built on
first use): ``analysis.coefficient_sweep`` at the base and c = 30, 100, 300, 1000, 3000, RMU
trained in place for 100 steps at each point (the gallery's demo settings), then accuracy,
cos(u, h), MaxLogit and forget norms. Each method runs in its own fresh process, the order
rotating from round to round:

* ``serial``: ``executor=None`` with torch's default thread count (what a user gets; the
  process's OMP/MKL thread variables are removed);
* ``serial_1thread``: the same with one torch thread;
* ``ray``: ``RayExecutor(workers=2, threads_per_worker=1)`` on a local Ray it starts: the time
  INCLUDES starting Ray, its workers importing the library, shipping the model once through the
  object store, and shutting Ray down.

Loading the organism is excluded. Times: wall seconds, and CPU seconds of every process involved
(for Ray: the driver plus Ray's processes, raylet and workers, read with psutil just before
shutdown). The parent checks the Ray tables equal the 1-thread serial tables exactly (same seeds,
one thread per worker), prints ratios (ray / serial) and writes benchmarks/results/sweeps_cpu.json.
Target: Ray wall <= 0.6x serial on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("serial", "serial_1thread", "ray")
COEFS = (30.0, 100.0, 300.0, 1000.0, 3000.0)  # GALLERY["demo"].coefs, plus the base: 6 points


def sweep(executor, size: str = "demo"):
    """The gallery's coefficient sweep of ``size`` on the cached organism (loaded outside)."""
    from unlearn_interp import analysis, rmu
    from unlearn_interp.pipeline.gallery import GALLERY
    from unlearn_interp.pipeline.organism_demo import organism_rmu_config

    org = ORGANISM
    settings = GALLERY[size]
    cfg = organism_rmu_config(org, 0)
    cfg = rmu.RMUConfig.from_dict({**cfg.to_dict(), "steps": settings.steps})
    setup = analysis.MCQSetup(mode=org.mcq_mode, prompt_template=org.qa_template, batch_size=32)
    return analysis.coefficient_sweep(
        org.model, [org.forget_corpus], [org.retain_corpus], org.mcq, cfg, coefs=list(COEFS),
        cos_prompts=[org.hazardous_prompts],
        maxlogit_items=org.hazardous_mcq[: settings.maxlogit_items],
        maxlogit_tokens=settings.maxlogit_tokens, setup=setup, progress=False, executor=executor,
    )  # fmt: skip


ORGANISM = None


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and every live descendant (Ray's raylet and workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker(method: str, out: Path, size: str) -> None:
    global ORGANISM
    import torch

    from unlearn_interp import organism
    from unlearn_interp.executors import RayExecutor

    if method != "serial":
        torch.set_num_threads(1)
    ORGANISM = organism.load_organism(size, progress=False)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if method == "ray":
        with RayExecutor(workers=2, threads_per_worker=1, gpus_per_task=0.0) as executor:
            tables = sweep(executor, size)
            cpu = tree_cpu_seconds() - cpu0
    else:
        tables = sweep(None, size)
        cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    result = {"wall_seconds": wall, "cpu_seconds": cpu, "threads": torch.get_num_threads()}
    (out / f"{method}.json").write_text(json.dumps(result))
    (out / f"{method}.pkl").write_bytes(pickle.dumps(tables))


def run_method(method: str, work: Path, size: str) -> dict:
    env = dict(os.environ)
    if method == "serial":
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    command = [sys.executable, __file__, "--worker", method, "--work", str(work), "--size", size]
    subprocess.run(command, check=True, env=env)
    return json.loads((work / f"{method}.json").read_text())


def tables_equal(work: Path, a: str, b: str) -> bool:
    import pandas as pd

    left = pickle.loads((work / f"{a}.pkl").read_bytes())
    right = pickle.loads((work / f"{b}.pkl").read_bytes())
    if set(left) != set(right):
        return False
    for name in left:
        try:
            pd.testing.assert_frame_equal(left[name], right[name], check_exact=True)
        except AssertionError:
            return False
    return True


def run(args: argparse.Namespace) -> None:
    from unlearn_interp import organism
    from unlearn_interp.artifacts import library_versions, write_json

    organism.load_organism(args.size, progress=True)  # build the cache outside the timings
    measured: dict[str, list[dict]] = {m: [] for m in METHODS}
    equal = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for round_ in range(args.rounds):
            order = METHODS[round_ % 3 :] + METHODS[: round_ % 3]  # interleaved
            for method in order:
                measured[method].append(run_method(method, work, args.size))
                print(f"round {round_ + 1} {method}: {measured[method][-1]}", flush=True)
            equal.append(tables_equal(work, "ray", "serial_1thread"))
    medians = {
        m: {k: statistics.median(r[k] for r in runs) for k in ("wall_seconds", "cpu_seconds")}
        | {"threads": runs[0]["threads"], "runs": runs}
        for m, runs in measured.items()
    }
    ratios = {
        f"ray_over_{base}_{kind}": medians["ray"][f"{kind}_seconds"]
        / medians[base][f"{kind}_seconds"]
        for base in ("serial", "serial_1thread")
        for kind in ("wall", "cpu")
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"ray tables equal to serial_1thread tables: {all(equal)}")
    out = args.out or Path(__file__).parent / "results" / "sweeps_cpu.json"
    write_json(out, {
        "benchmark": "6-point coefficient sweep on the demo organism, serial vs Ray (2 workers)",
        "organism": args.size, "points": 1 + len(COEFS), "rounds": args.rounds, "cpu_count": os.cpu_count(),
        "ray_time_includes": "ray.init, worker imports, object store transfer, shutdown",
        "methods": medians, "ratios": ratios, "ray_tables_equal_serial_1thread": all(equal),
        "versions": library_versions(),
    })  # fmt: skip
    print(f"wrote {out}")
    if not all(equal):
        sys.exit("Ray tables differ from the 1-thread serial tables")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    parser.add_argument("--out", type=Path, help="results JSON (default: results/sweeps_cpu.json)")
    parser.add_argument("--size", choices=("demo", "test"), default="demo", help="organism")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.work, args.size)
    else:
        run(args)


if __name__ == "__main__":
    main()
