"""RMU on the first l+1 blocks: peak memory of training on
``models.load_model(ckpt, first_blocks=layer + 1)`` against loading the whole model.

Usage:
    python benchmarks/bench_first_blocks.py                   # CPU, zephyr-512, float32
    python benchmarks/bench_first_blocks.py --dtype bfloat16 --rounds 1
    python benchmarks/bench_first_blocks.py --shape 7b --device cuda --dtype bfloat16  # untested
    python benchmarks/bench_first_blocks.py --shape 7b --dtype bfloat16 --threads 2 --steps 2 \
        --rounds 1 --methods load_whole,train_first_blocks_recompute,train_whole_recompute
        # 7B on a 24 GiB CPU host (~15 min, 14.5 GB of disk): what `unlearn` runs

The parent writes bench_rmu's Mistral-architecture checkpoint (``bench_rmu.build_checkpoint``;
"zephyr-512": 32 blocks, d_model 512, d_mlp 1792, 8 / 2 heads, vocabulary 2000, seeded random
weights) and runs each method in its own fresh subprocess, interleaved round by round:

* ``load_whole``: ``models.load_model(ckpt)``, nothing else (the issue's reference);
* ``load_first_blocks``: ``models.load_model(ckpt, first_blocks=8)`` (the loading part alone);
* ``train_first_blocks``: that, then ``rmu.train_rmu`` for ``--steps`` steps (RMU at layer 7,
  update 5..7, batch 4 x 256 tokens, two topics: bench_rmu's settings);
* ``train_whole``: the same training on the whole model (for reference);
* ``train_first_blocks_recompute`` / ``train_whole_recompute``: the same trainings with
  ``train_rmu(..., recompute_blocks=True)`` (the trained blocks 5..7 under activation
  checkpointing: only block inputs are kept, the backward pass rebuilds one block's graph at a
  time, one more forward pass of those blocks per term).

Memory on CPU: peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` after
every import, so the imports' transient peak is not counted; Linux) minus the resident size
then, loading included; on CUDA ``torch.cuda.max_memory_allocated``. Time: wall and process
CPU seconds of the whole method (loading + training), medians over rounds. ``loaded_mib`` is the
resident size right after loading (above the imports), so ``peak_mib - loaded_mib`` is what
training adds: activations, gradients and AdamW state of the trained tensors, one saved copy
of their base values (``trained_state_mib`` counts those four copies from the shape). The parent
checks that every training ends on weights bitwise identical to ``train_whole``'s (max |diff| 0),
prints a table and writes ``benchmarks/results/first_blocks_<shape>_<device>_<dtype>.json``.
``--methods`` runs a subset (``load_whole``, a first-blocks and a whole-model training at least;
the weights are then compared with the first whole-model training's), for shapes where each
method takes minutes.
Goal: training on the first blocks <= 0.35x the peak of loading the whole model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from bench_rmu import SHAPES, build_checkpoint, make_corpora, progress, shared_parser  # noqa: E402

from unlearn_interp import data, models, rmu  # noqa: E402
from unlearn_interp.artifacts import library_versions, write_json  # noqa: E402

METHODS = (
    "load_whole", "load_first_blocks", "train_first_blocks", "train_whole",
    "train_first_blocks_recompute", "train_whole_recompute",
)  # fmt: skip
FIRST_BLOCK_TRAININGS = ("train_first_blocks", "train_first_blocks_recompute")
WHOLE_TRAININGS = ("train_whole", "train_whole_recompute")
TRAINED_COPIES = 4  # gradient, AdamW exp_avg and exp_avg_sq, SplitForward.base (trainable's entry)


def rmu_config(steps: int) -> rmu.RMUConfig:
    """bench_rmu's settings: layer 7, update 5..7, batch 4 x 256, the reference's unmasked loss."""
    return rmu.RMUConfig(
        layer=7, update_layers=(5, 6, 7), steering_coef=20.0, alpha=1200.0, lr=5e-5,
        batch_size=4, steps=steps, max_len=256, mask_padding=False, seed=42,
    )  # fmt: skip


def run_method(method: str, work: Path, cfg: rmu.RMUConfig, device: str, dtype: torch.dtype):
    """Load (and train, for the train_* methods); returns (resident KiB after loading, the
    trained W_out tensors or None)."""
    first = cfg.layer + 1 if "first_blocks" in method else None
    model = models.load_model(work / "checkpoint", device=device, dtype=dtype, first_blocks=first)
    cuda = device.startswith("cuda")
    loaded = torch.cuda.memory_allocated() / 1024 if cuda else status_kib("VmRSS")
    if not method.startswith("train"):
        return loaded, None
    corpora = json.loads((work / "corpora.json").read_text())
    retain, recompute = [corpora["retain"]] * 2, method.endswith("_recompute")
    result = rmu.train_rmu(
        model, corpora["forget"], retain, cfg, progress=False, recompute_blocks=recompute
    )
    return loaded, result.unlearned_weights


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One method in this fresh process; writes its peak memory and times as JSON."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (same baseline)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    work, cuda = Path(args.work), args.device.startswith("cuda")
    cfg = rmu_config(args.steps)
    Path("/proc/self/clear_refs").write_text("5")  # peak (VmHWM) := now: the imports' own
    baseline = status_kib("VmRSS")  # transient peak is not the method's (ru_maxrss would keep it)
    start = time.perf_counter(), time.process_time()
    loaded, weights = run_method(args.worker, work, cfg, args.device, getattr(torch, args.dtype))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start[0], time.process_time() - start[1]
    peak_kib = status_kib("VmHWM")
    if weights is not None:
        models.save_weights(weights, work / f"{args.worker}.safetensors")
    result = {
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (peak_kib - baseline) / 1024,
        "process_peak_mib": peak_kib / 1024,
        "loaded_mib": (loaded - (0 if cuda else baseline)) / 1024,
        "import_baseline_mib": baseline / 1024,
        "seconds": seconds[0],
        "cpu_seconds": seconds[1],
    }
    (work / f"{args.worker}.json").write_text(json.dumps(result))


def write_inputs(args: argparse.Namespace, work: Path) -> None:
    transformers.utils.logging.disable_progress_bar()
    forget, retain = make_corpora(args.steps, 4)
    tokenizer = data.train_tokenizer(forget[0] + forget[1] + retain, vocab_size=2000)
    (work / "corpora.json").write_text(json.dumps({"forget": forget, "retain": retain}))
    build_checkpoint(args.shape, tokenizer, work / "checkpoint", getattr(torch, args.dtype))


def max_weight_diff(work: Path, methods: list[str]) -> dict[str, float]:
    """Max |diff| between each training's final weights and the first whole-model training's
    in ``methods`` (must be 0)."""
    trainings = [m for m in methods if m.startswith("train")]
    reference = next(m for m in trainings if m.startswith("train_whole"))
    whole = models.load_weights(work / f"{reference}.safetensors")
    diffs = {}
    for method in [m for m in trainings if m != reference]:
        other = models.load_weights(work / f"{method}.safetensors")
        assert sorted(other) == sorted(whole), f"{method} trained different tensors"
        diff = max((other[n].float() - whole[n].float()).abs().max().item() for n in whole)
        assert diff == 0.0, f"{method} changed the weights (max |diff| {diff} vs {reference})"
        diffs[method] = diff
    return {"reference": reference, "max_abs_diff": max(diffs.values()), "per_method": diffs}


def run(args: argparse.Namespace) -> None:
    methods = args.methods
    rounds: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        write_inputs(args, work)
        for _ in range(args.rounds):
            for method in methods:  # interleaved: each round runs every method once
                progress(f"round {len(rounds[method]) + 1}: {method} (its own process)")
                command = [sys.executable, __file__, "--worker", method, "--work", tmp]
                command += ["--shape", args.shape, "--device", args.device, "--dtype", args.dtype]
                command += ["--threads", str(args.threads), "--steps", str(args.steps)]
                subprocess.run(command, check=True)
                rounds[method].append(json.loads((work / f"{method}.json").read_text()))
        weights = max_weight_diff(work, methods)
    results = {m: medians(rows) for m, rows in rounds.items()}
    load_whole = results["load_whole"]["peak_mib"]
    ratios = {f"{m}_over_load_whole": results[m]["peak_mib"] / load_whole for m in methods[1:]}
    for method, whole in itertools.product(FIRST_BLOCK_TRAININGS, WHOLE_TRAININGS):
        if method in results and whole in results:
            ratios[f"{method}_over_{whole}"] = (
                results[method]["peak_mib"] / results[whole]["peak_mib"]
            )
    breakdown = {"added_by_training_mib": {
        m: round(results[m]["peak_mib"] - results[m]["loaded_mib"], 1)
        for m in methods if m.startswith("train")
    }, "trained_state_mib": trained_state_mib(args)}  # fmt: skip
    report(args, results, rounds, ratios, weights, breakdown)


def trained_state_mib(args: argparse.Namespace) -> float:
    """The trained W_out tensors' gradient, AdamW state and base copy, from the shape."""
    shape, cfg = SHAPES[args.shape], rmu_config(args.steps)
    numel = len(cfg.update_layers) * shape["d_mlp"] * shape["d_model"]
    return TRAINED_COPIES * numel * getattr(torch, args.dtype).itemsize / 2**20


def medians(rows: list[dict]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def report(args, results, rounds, ratios, weights, breakdown) -> None:
    cfg = rmu_config(args.steps)
    print(
        f"{args.shape} on {args.device} ({args.dtype}, {args.threads} threads, {args.rounds} "
        f"rounds): RMU at layer {cfg.layer}, update {list(cfg.update_layers)}, batch "
        f"{cfg.batch_size} x {cfg.max_len}, {cfg.steps} steps; first_blocks={cfg.layer + 1}"
    )
    print(
        f"{'method':<30}{'peak MiB':>9}{'x load_whole':>13}{'loaded':>8}{'wall s':>8}{'CPU s':>7}"
    )
    for method in results:
        r = results[method]
        ratio = r["peak_mib"] / results["load_whole"]["peak_mib"]
        print(
            f"{method:<30}{r['peak_mib']:>9.1f}{ratio:>13.3f}{r['loaded_mib']:>8.1f}"
            f"{r['seconds']:>8.1f}{r['cpu_seconds']:>7.1f}"
        )
    for method in [m for m in FIRST_BLOCK_TRAININGS if m in results]:
        against_whole = "".join(
            f"; / {whole} {ratios[f'{method}_over_{whole}']:.3f}x"
            for whole in WHOLE_TRAININGS if whole in results
        )  # fmt: skip
        print(
            f"{method} / load_whole {ratios[f'{method}_over_load_whole']:.3f}x (goal <= 0.35x)"
            f"{against_whole}"
        )
    print(
        f"training adds (peak - loaded) {breakdown['added_by_training_mib']}, of which the trained "
        f"tensors' {TRAINED_COPIES} copies (gradient, AdamW state, base values) are "
        f"{breakdown['trained_state_mib']:.1f} MiB; final weights max |diff| vs "
        f"{weights['reference']} {weights['max_abs_diff']:.1f}"
    )
    name = f"first_blocks_{args.shape}_{args.device.split(':')[0]}_{args.dtype}.json"
    out = args.out or Path(__file__).parent / "results" / name
    memory = "cuda max_memory_allocated" if args.device.startswith("cuda") else (
        "peak RSS (VmHWM, reset after the imports) minus RSS after the imports, loading "
        "included, one fresh process per method and round; process_peak_mib is VmHWM itself"
    )  # fmt: skip
    write_json(
        out,
        {
            "methods": results, "rounds": rounds, "ratios": ratios, "weights": weights,
            "breakdown": breakdown,
            "config": cfg.to_dict(), "first_blocks": cfg.layer + 1, "shape": SHAPES[args.shape],
            "args": {k: str(v) for k, v in vars(args).items()}, "memory_measure": memory,
            "library_versions": library_versions(),
        },
    )  # fmt: skip
    print(f"wrote {out}")


def method_list(text: str) -> list[str]:
    """``--methods``: known names, in METHODS' order; load_whole and a training of each kind."""
    names = set(text.split(","))
    if unknown := names - set(METHODS):
        raise argparse.ArgumentTypeError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
    if not ("load_whole" in names and names & set(WHOLE_TRAININGS)
            and names & set(FIRST_BLOCK_TRAININGS)):  # fmt: skip
        raise argparse.ArgumentTypeError(
            f"--methods needs load_whole, one of {FIRST_BLOCK_TRAININGS} and one of "
            f"{WHOLE_TRAININGS}"
        )
    return [m for m in METHODS if m in names]


def main() -> None:
    parser = shared_parser(__doc__.splitlines()[0], METHODS, steps=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--methods", type=method_list, default=list(METHODS),
        help="comma-separated subset (load_whole and one train_whole* always included)",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="where the checkpoint is written (/tmp)")
    args = parser.parse_args()
    (worker if args.worker else run)(args)


if __name__ == "__main__":
    main()
