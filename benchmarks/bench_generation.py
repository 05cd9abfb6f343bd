"""Generation: ``evaluation.generate`` against HuggingFace ``transformers``' ``generate`` on the
same checkpoint, prompts and settings, in tokens per second.

Usage:
    python benchmarks/bench_generation.py                      # SmolLM2-135M, CPU, 1 thread (~3 min idle)
    python benchmarks/bench_generation.py --repeats 3 --new-tokens 16
    python benchmarks/bench_generation.py --device cuda --dtype bfloat16 --threads 0

Setup: SmolLM2-135M's real weights (the ``smollm2-135m`` asset), loaded twice: ours through
``models.load_model`` (a TransformerLens model), HF's through ``AutoModelForCausalLM`` from the
same checkpoint directory. Both sides get the same prompts, rendered through the tokenizer's
chat template and left-padded (HF is given our token ids and attention mask, so tokenising is
the same work on both sides), and make ``--new-tokens`` new tokens per prompt, never stopping at
EOS (ours: ``stop_at_eos=False``; HF: no EOS id), so both do the same number of steps. Four
settings: batch 1 (``--prompts-b1`` prompts one at a time) and batch 8 (eight prompts in one
batch), each greedy and sampled. Sampled does the same work on both sides: temperature 1,
top-k and top-p off (HF is passed ``top_k=0, top_p=1.0`` explicitly; SmolLM2's
generation_config.json sets neither, and older transformers default to top-k 50), so each step
is a softmax and one ``torch.multinomial`` draw (an exponential per vocabulary entry, ~1 ms per
row at 49k on one thread) on either side. Ours also records the largest logit and the entropy
of every step, which HF does not: that work is timed. Ours decodes through the toolkit's own
decode path (``backend_components``' attention running ``backend_decode``: rotated keys cached,
grouped-query attention unrepeated); ``own_decode_path`` in the results says whether it was
active.

After one warm-up each, the two sides take turns for ``--repeats`` rounds (so load from other
processes falls on both alike); the medians of wall-clock and process CPU time are reported as
generated tokens per second, with their ratio (ours over HF; target >= 0.8). In float32 the
greedy tokens must be identical to HF's, and a sampled run repeated with the same seed must give
the same tokens (both checked; the run fails otherwise). Writes
benchmarks/results/generation_<device>.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from unlearn_interp import backend_components, data, evaluation, models, sources
from unlearn_interp.artifacts import library_versions, write_json
from unlearn_interp.evaluation.generation import chat_prompt

PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about rain on a tin roof.",
    "How do vaccines train the immune system?",
    "Give me three tips for learning to play the guitar.",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.",
    "What does a compiler do?",
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed(fn, device: str) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds of ``fn()``, and its result."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def hf_runner(hf, tokenizer, prompts: list[str], batch_size: int, args, greedy: bool):
    """HF ``generate`` on ``prompts`` in batches of ``batch_size``, from our token ids."""
    texts = [chat_prompt(tokenizer, p, None) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=special)["input_ids"] for t, special in texts]
    pad = data.pad_token_id(tokenizer)
    batches = [
        data.left_pad(ids[i : i + batch_size], pad).to(args.device)
        for i in range(0, len(ids), batch_size)
    ]
    options = dict(max_new_tokens=args.new_tokens, pad_token_id=pad, eos_token_id=None)
    if greedy:
        options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        options.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def run() -> list[list[int]]:
        torch.manual_seed(0)
        tokens = []
        with torch.no_grad():
            for b in batches:
                out = hf.generate(input_ids=b.tokens, attention_mask=b.attention_mask, **options)
                tokens.extend(out[:, b.tokens.shape[1] :].tolist())
        return tokens

    return run


def ours_runner(model, prompts: list[str], batch_size: int, args, greedy: bool):
    def run() -> list[list[int]]:
        return evaluation.generate(
            model, prompts, args.new_tokens, greedy=greedy, temperature=1.0, seed=0,
            batch_size=batch_size, stop_at_eos=False, progress=False,
        ).tokens  # fmt: skip

    return run


def interleaved(runners: dict, device: str, repeats: int) -> tuple[dict, dict, dict]:
    """Median wall and CPU seconds of each runner over ``repeats`` rounds, taking turns after a
    warm-up each; and each runner's last result."""
    outs = {name: fn() for name, fn in runners.items()}
    walls, cpus = ({name: [] for name in runners} for _ in range(2))
    for _ in range(repeats):
        for name, fn in runners.items():
            wall, cpu, outs[name] = timed(fn, device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    median = {name: statistics.median(v) for name, v in walls.items()}
    median_cpu = {name: statistics.median(v) for name, v in cpus.items()}
    return median, median_cpu, outs


def bench_setting(model, hf, batch_size: int, greedy: bool, args) -> dict:
    prompts = PROMPTS[: args.prompts_b1] if batch_size == 1 else PROMPTS[:batch_size]
    runners = {
        "ours": ours_runner(model, prompts, batch_size, args, greedy),
        "hf": hf_runner(hf, model.tokenizer, prompts, batch_size, args, greedy),
    }
    wall, cpu, outs = interleaved(runners, args.device, args.repeats)
    n_tokens = len(prompts) * args.new_tokens
    assert all(len(t) == args.new_tokens for out in outs.values() for t in out)
    result = {
        "batch_size": batch_size,
        "greedy": greedy,
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "tokens_per_s_wall_median": {k: n_tokens / v for k, v in wall.items()},
        "tokens_per_s_cpu_median": {k: n_tokens / v for k, v in cpu.items()},
        "ratio_wall": wall["hf"] / wall["ours"],
        "ratio_cpu": cpu["hf"] / cpu["ours"],
    }
    if greedy:
        result["greedy_tokens_equal_hf"] = outs["ours"] == outs["hf"]
    else:
        result["sampled_reproducible"] = outs["ours"] == runners["ours"]()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model asset name")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts-b1", type=int, default=2, help="prompts run at batch 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")  # HookedTransformer's deprecation notice
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[args.dtype]
    model = models.load_model(args.model, device=args.device, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(sources.asset_dir(args.model), dtype=dtype)
    hf = hf.to(args.device).eval()
    result = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "own_decode_path": backend_components.uses_toolkit_decoding(model),
        "sampling": "temperature 1, top-k and top-p off on both sides (softmax + multinomial)",
        "settings": [],
        "versions": library_versions(),
    }
    failed = False
    for batch_size in (1, 8):
        for greedy in (True, False):
            r = bench_setting(model, hf, batch_size, greedy, args)
            result["settings"].append(r)
            tps = r["tokens_per_s_wall_median"]
            check = (
                f"greedy equal to HF {r['greedy_tokens_equal_hf']}"
                if greedy
                else f"sampled reproducible {r['sampled_reproducible']}"
            )
            print(
                f"batch {batch_size} {'greedy ' if greedy else 'sampled'}: ours "
                f"{tps['ours']:.1f} tok/s, HF {tps['hf']:.1f} tok/s, x{r['ratio_wall']:.2f} "
                f"wall, x{r['ratio_cpu']:.2f} CPU; {check}"
            )
            failed |= not r.get("sampled_reproducible", True)
            failed |= args.dtype == "float32" and not r.get("greedy_tokens_equal_hf", True)
    device = args.device.split(":")[0]
    out = Path(__file__).parent / "results" / f"generation_{device}.json"
    if args.dtype != "float32":
        out = out.with_name(f"generation_{device}_{args.dtype}.json")
    write_json(out, result)
    print(f"wrote {out}")
    if failed:
        sys.exit("greedy tokens differ from HF's, or a sampled run is not reproducible")


if __name__ == "__main__":
    main()
