"""Loading cost: ``models.load_model`` (safetensors streamed into the model, tensor by tensor)
against the loader it replaced (the whole HuggingFace model built, converted, then copied in).

Usage:
    python benchmarks/bench_loading.py                  # CPU, about 4 minutes
    python benchmarks/bench_loading.py --rounds 1 --cases smollm2-135m:float32
    python benchmarks/bench_loading.py --device cuda    # host memory while loading onto a GPU

Cases: SmolLM2-135M's real checkpoint (float32 on disk, from the asset cache) loaded in float32
and in bfloat16, and a Zephyr-proportioned checkpoint ("zephyr-512": Mistral architecture, 32
blocks, d_model 512, gated SiLU MLP d_mlp 1792, RMSNorm, rotary, 8 heads / 2 key-value heads,
vocabulary 2000, untied unembedding; seeded random weights written in bfloat16 into a temporary
directory, as Zephyr-7B ships) loaded in bfloat16 and in float32.

Each load runs in its own fresh subprocess (the two loaders interleaved round by round), so each
peak is its own:
* memory: the process's peak resident set size while loading (``VmHWM``, reset after the imports
  through ``/proc/self/clear_refs`` where the kernel allows it, else ``ru_maxrss``) minus its
  resident size after the imports, against the bytes of the model's parameters: the goal
  is ``extra_over_params <= 0.25``, i.e. peak <= parameters + 25%;
* time: wall-clock and process CPU seconds of the load call (medians over rounds).
Every worker writes a digest of its model's state dict (each parameter and buffer: name, dtype,
shape, bytes) and its logits on a fixed prompt; the parent checks that both loaders produced
bitwise the same model and the same logits, prints a table and writes
benchmarks/results/loading_<device>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from unlearn_interp import data, models, sources
from unlearn_interp.artifacts import library_versions, write_json

LOADERS = ("before", "streamed")
CASES = (
    "smollm2-135m:float32",
    "smollm2-135m:bfloat16",
    "zephyr-512:bfloat16",
    "zephyr-512:float32",
)
ZEPHYR_512 = {"d_model": 512, "n_heads": 8, "n_kv": 2, "d_mlp": 1792, "d_vocab": 2000}
PROMPT = "The capital of France is Paris, and the capital of Italy is"


# --- the loader before streaming (the whole-model path load_model keeps for .bin checkpoints) ---


def load_before(path: Path, device: str, dtype: torch.dtype):
    """The loader before streaming: the whole HF model built, converted and copied in (the path
    ``load_model`` keeps for ``.bin`` checkpoints, ``hf_convert.model_through_transformers``),
    with the toolkit's components as ``load_model`` gives every model (in bfloat16 they round
    differently from TransformerLens' own)."""
    from transformers import AutoTokenizer

    from unlearn_interp import backend_components, hf_convert

    hf_config = hf_convert.read_hf_config(path, False)
    cfg = hf_convert.tl_config_from_hf(hf_config, model_name=path.name, dtype=dtype, device=device)
    model = hf_convert.model_through_transformers(path, cfg, False)
    model = backend_components.use_toolkit_components(model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return models.attach_tokenizer(model, tokenizer).to(device, print_details=False)


def load_streamed(path: Path, device: str, dtype: torch.dtype):
    return models.load_model(path, device=device, dtype=dtype)


# --- checkpoints ---------------------------------------------------------------------------------


def build_zephyr_512(path: Path) -> Path:
    """A Mistral-architecture checkpoint of Zephyr-7B's proportions at d_model 512 (bfloat16)."""
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = data.train_tokenizer([PROMPT, "Answer: A. B. C. D. the of and to"] * 8, 300)
    s = ZEPHYR_512
    config = MistralConfig(
        hidden_size=s["d_model"],
        intermediate_size=s["d_mlp"],
        num_hidden_layers=32,
        num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_kv"],
        vocab_size=s["d_vocab"],
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def checkpoint_path(name: str, work: Path) -> Path:
    if name == "smollm2-135m":
        return sources.asset_dir(name)
    path = work / name
    return path if (path / "config.json").is_file() else build_zephyr_512(path)


# --- one load in its own process -----------------------------------------------------------------


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def state_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def worker(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (same baseline)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    name, dtype_name = args.case.split(":")
    path, dtype = Path(args.path), getattr(torch, dtype_name)
    load = load_before if args.worker == "before" else load_streamed
    exact_peak = reset_peak()
    baseline = status_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    model = load(path, args.device, dtype)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = status_kib("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    tokens = torch.tensor([model.tokenizer(PROMPT).input_ids], device=args.device)
    with torch.no_grad():
        logits = model(tokens)[0, -1].float().cpu()
    result = {
        "loader": args.worker, "case": args.case, "wall_seconds": wall, "cpu_seconds": cpu,
        "baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
        "peak_over_baseline_mib": (peak - baseline) / 1024,
        "param_mib": param_bytes / 2**20, "buffer_mib": buffer_bytes / 2**20,
        "extra_over_params": (peak - baseline) * 1024 / param_bytes - 1,
        "peak_measure": "VmHWM reset after imports" if exact_peak else "ru_maxrss",
        "all_param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "state_digest": state_digest(model), "logits": logits.tolist(),
    }  # fmt: skip
    Path(args.result).write_text(json.dumps(result))


# --- the parent ----------------------------------------------------------------------------------


def run_one(args: argparse.Namespace, loader: str, case: str, path: Path, work: Path) -> dict:
    result = work / f"{loader}-{case.replace(':', '-')}.json"
    command = [sys.executable, __file__, "--worker", loader, "--case", case, "--path", str(path),
               "--result", str(result), "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def summarise(runs: list[dict]) -> dict:
    first = runs[0]
    keep = ("param_mib", "buffer_mib", "baseline_mib", "peak_measure", "all_param_dtypes")
    return {
        **{key: first[key] for key in keep},
        "peak_over_baseline_mib": statistics.median(r["peak_over_baseline_mib"] for r in runs),
        "extra_over_params": statistics.median(r["extra_over_params"] for r in runs),
        "extra_over_params_max": max(r["extra_over_params"] for r in runs),
        "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "rounds": len(runs),
    }


def compare(case: str, runs: dict[str, list[dict]]) -> dict:
    """Both loaders (every round) built bitwise the same model and the same logits."""
    digests = {r["state_digest"] for loader in LOADERS for r in runs[loader]}
    logits = [torch.tensor(r["logits"]) for loader in LOADERS for r in runs[loader]]
    worst = max((x - logits[0]).abs().max().item() for x in logits)
    if len(digests) != 1 or worst != 0.0:
        raise SystemExit(f"{case}: the loaders disagree (digests {digests}, logits diff {worst})")
    return {"state_dicts_identical": True, "max_abs_logit_diff": worst}


def run(args: argparse.Namespace) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        work = Path(tmp)
        for case in args.cases:
            path = checkpoint_path(case.split(":")[0], work)
            runs: dict[str, list[dict]] = {loader: [] for loader in LOADERS}
            for _ in range(args.rounds):  # interleaved: before, streamed, before, streamed, ...
                for loader in LOADERS:
                    runs[loader].append(run_one(args, loader, case, path, work))
            summary = {loader: summarise(runs[loader]) for loader in LOADERS}
            summary["equality"] = compare(case, runs)
            before, streamed = summary["before"], summary["streamed"]
            summary["peak_ratio_streamed_over_before"] = (
                streamed["peak_over_baseline_mib"] / before["peak_over_baseline_mib"]
            )
            summary["wall_ratio_before_over_streamed"] = (
                before["wall_seconds"] / streamed["wall_seconds"]
            )
            summary["cpu_ratio_before_over_streamed"] = (
                before["cpu_seconds"] / streamed["cpu_seconds"]
            )
            summary["goal_extra_over_params_le_0.25"] = streamed["extra_over_params_max"] <= 0.25
            results[case] = summary
    return results


def report(args: argparse.Namespace, results: dict) -> None:
    header = f"{'case':24} {'loader':9} {'params MiB':>10} {'peak-base':>10} {'extra':>7} {'wall s':>7} {'cpu s':>7}"
    lines = [header]
    for case, summary in results.items():
        for loader in LOADERS:
            s = summary[loader]
            lines.append(
                f"{case:24} {loader:9} {s['param_mib']:10.1f} {s['peak_over_baseline_mib']:10.1f} "
                f"{s['extra_over_params']:7.2f} {s['wall_seconds']:7.2f} {s['cpu_seconds']:7.2f}"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    out = (
        args.out or Path(__file__).parent / "results" / f"loading_{args.device.split(':')[0]}.json"
    )
    write_json(
        out,
        {
            "benchmark": "bench_loading",
            "command": " ".join(["python", "benchmarks/bench_loading.py", *sys.argv[1:]]),
            "device": args.device,
            "threads": args.threads,
            "rounds": args.rounds,
            "measure": "peak_over_baseline_mib: peak RSS while loading minus RSS after the "
            "imports, one fresh process per load; extra_over_params: that over the parameters' "
            "bytes, minus 1 (goal <= 0.25); medians over rounds, *_max the worst round",
            "zephyr_512_shape": ZEPHYR_512,
            "results": results,
            "versions": library_versions(),
        },
    )
    sys.stdout.write(f"wrote {out}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: least noisy on shared CPUs)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        report(args, run(args))


if __name__ == "__main__":
    main()
