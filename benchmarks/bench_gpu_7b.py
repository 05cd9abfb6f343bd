"""A 7B-shaped model on a GPU: RMU steps/s, letter scoring questions/s, generation tokens/s and
peak GPU memory, ours next to HuggingFace ``transformers`` on the same checkpoint.

Usage:
    python benchmarks/bench_gpu_7b.py                             # CUDA: Mistral-7B shape, bfloat16
    python benchmarks/bench_gpu_7b.py --shape tiny --device cpu   # the same code, small, on CPU

Model: Mistral-7B's architecture (``bench_rmu.SHAPES["7b"]``: d_model 4096, 32 blocks, 32 / 8
heads, d_mlp 14336, vocabulary 32000) with seeded random weights, built on the device in the
benchmark's dtype and saved as safetensors (~14.5 GB in bfloat16) with a tokenizer trained on the
corpora; ``tiny`` is the same architecture at d_model 64, 8 blocks (what the test runs). Without
CUDA only ``--shape tiny`` runs; anything else exits 2 with one sentence.

Each side loads the checkpoint once (ours: ``models.load_model``; HF: ``AutoModelForCausalLM``),
then, in its own process on CUDA (so each peak is its own; in the parent on CPU):

* letter scoring: ``--questions`` WMDP-like questions; ours ``evaluation.mcq_accuracy`` (letter
  mode), HF one forward of the same prompt per question (left-padded batches), the log-softmax of
  the last position at the four letters; median of ``--rounds`` rounds after a warm-up;
* generation: ``--new-tokens`` greedy tokens after each of 4 prompts in one batch; ours
  ``evaluation.generate``, HF ``generate`` from the same token ids; median of ``--rounds``;
* RMU: ``--steps`` steps at layer 7 updating blocks 5-7, batch 4 x ``--max-len`` tokens; ours
  ``rmu.train_rmu``, HF the WMDP reference loop ported in ``bench_rmu.reference_loop`` (which
  loads two more HF copies, as the reference does; the scoring copy is freed first); the median
  step time.

Peak GPU memory: ``torch.cuda.max_memory_allocated`` after each scoring round, generation round
and RMU step (reset before each), the largest over the rounds/steps; null on CPU. The benchmark
reports how often ours and HF agree (letter predictions, greedy tokens; bfloat16 may flip near
ties) and writes benchmarks/results/gpu_7b.json with ``torch.cuda.get_device_name()``.
"""

from __future__ import annotations

import argparse
import json
import random
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
import bench_rmu  # noqa: E402  (the 7b shape, corpora, the reference loop)

from unlearn_interp import data, evaluation, models, rmu  # noqa: E402
from unlearn_interp.artifacts import library_versions, write_json  # noqa: E402
from unlearn_interp.evaluation.generation import chat_prompt  # noqa: E402
from unlearn_interp.rmu.train import RMUTrainer  # noqa: E402

SHAPES = {
    "7b": {**bench_rmu.SHAPES["7b"], "n_layers": 32},
    "tiny": {"d_model": 64, "n_heads": 4, "n_kv": 2, "d_mlp": 224, "d_vocab": 2000, "n_layers": 8},
}
DEFAULTS = {  # questions, new tokens, RMU steps, max_len
    "7b": {"questions": 64, "new_tokens": 64, "steps": 6, "max_len": 512},
    "tiny": {"questions": 8, "new_tokens": 8, "steps": 4, "max_len": 64},
}
SIDES = ("ours", "hf")
PROMPTS = ["The history of", "In the laboratory we", "A protein folds when", "Rivers carry"]
SUBJECT = "biology"


def make_questions(n: int) -> list[data.MCQItem]:
    """WMDP-like questions of 10-60 random words with 1-8-word choices."""
    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(500)
    ]

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [
        data.MCQItem(text(10, 60) + "?", [text(1, 8) for _ in range(4)], rng.randrange(4))
        for _ in range(n)
    ]


# --- timing and memory --------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def rounds(fn, device: str, n: int) -> tuple[float, float | None, object]:
    """Median seconds of ``fn()`` over ``n`` rounds after a warm-up, the largest per-round peak
    GPU memory, and the last result."""
    out = fn()
    seconds, peaks = [], []
    for _ in range(n):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_mib(device))
    return statistics.median(seconds), None if peaks[0] is None else max(peaks), out


# --- the two sides ------------------------------------------------------------------------------


def ours_scoring(model, items, batch_size: int):
    cols = [f"logprob_{x}" for x in "ABCD"]

    def run():
        res = evaluation.mcq_accuracy(
            model, items, batch_size=batch_size, subject=SUBJECT, progress=False
        )
        return res.per_item[cols].to_numpy().argmax(1).tolist()

    return run


def hf_scoring(hf, tokenizer, items, batch_size: int, device: str):
    """One forward per question of lm-eval's prompt; the last position's log-softmax at the
    tokens " A" .. " D"."""
    prompts = [data.mcq_prompt(item, SUBJECT) for item in items]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    letters = [[tokenizer(p + " " + x)["input_ids"][-1] for x in "ABCD"] for p in prompts]
    if any(len(tokenizer(" " + x, add_special_tokens=False)["input_ids"]) != 1 for x in "ABCD"):
        raise SystemExit("The tokenizer splits ' A' .. ' D'; HF's side would score other tokens.")
    pad = data.pad_token_id(tokenizer)

    def run():
        preds = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                b = data.left_pad(ids[i : i + batch_size], pad).to(device)
                logits = hf(input_ids=b.tokens, attention_mask=b.attention_mask).logits[:, -1]
                lp = logits.float().log_softmax(-1)
                choice = torch.tensor(letters[i : i + batch_size], device=device)
                preds += lp.gather(1, choice).argmax(1).tolist()
        return preds

    return run


def ours_generation(model, new_tokens: int):
    def run():
        return evaluation.generate(
            model, PROMPTS, new_tokens, greedy=True, batch_size=len(PROMPTS), stop_at_eos=False,
            progress=False,
        ).tokens  # fmt: skip

    return run


def hf_generation(hf, tokenizer, new_tokens: int, device: str):
    texts = [chat_prompt(tokenizer, p, None) for p in PROMPTS]
    ids = [tokenizer(t, add_special_tokens=special)["input_ids"] for t, special in texts]
    pad = data.pad_token_id(tokenizer)
    b = data.left_pad(ids, pad).to(device)
    options = dict(max_new_tokens=new_tokens, pad_token_id=pad, eos_token_id=None, do_sample=False)
    options.update(temperature=None, top_k=None, top_p=None)

    def run():
        with torch.no_grad():
            out = hf.generate(input_ids=b.tokens, attention_mask=b.attention_mask, **options)
        return out[:, b.tokens.shape[1] :].tolist()

    return run


def rmu_config(args: argparse.Namespace) -> rmu.RMUConfig:
    return rmu.RMUConfig(
        layer=7, update_layers=(5, 6, 7), steering_coef=20.0, alpha=1200.0, lr=5e-5,
        batch_size=4, steps=args.steps, max_len=args.max_len, mask_padding=False, seed=42,
    )  # fmt: skip


def timed_steps(args, run_steps) -> dict:
    """Run ``run_steps(record)``; ``record(start)`` is called at the end of each step."""
    seconds, peaks = [], []

    def record(start: float) -> None:
        sync(args.device)
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_mib(args.device))
        reset_peak(args.device)

    reset_peak(args.device)
    run_steps(record)
    return {
        "seconds_per_step": statistics.median(seconds),
        "steps_per_s": 1 / statistics.median(seconds),
        "peak_gpu_mib": None if peaks[0] is None else max(peaks),
    }


def ours_rmu(model, forget, retain, args) -> dict:
    step = RMUTrainer.step

    def run_steps(record):
        def timed(self, optimizer, i):
            start = time.perf_counter()
            out = step(self, optimizer, i)
            record(start)
            return out

        RMUTrainer.step = timed
        try:
            rmu.train_rmu(model, forget, retain, rmu_config(args), progress=False)
        finally:
            RMUTrainer.step = step

    return timed_steps(args, run_steps)


def hf_rmu(ckpt: Path, forget, retain, args) -> dict:
    """``bench_rmu.reference_loop`` with its ``lap`` also recording each step's peak."""
    lap = bench_rmu.lap

    def run_steps(record):
        bench_rmu.lap = lambda step_seconds, start: record(start[0])
        try:
            dtype = getattr(torch, args.dtype)
            bench_rmu.reference_loop(
                ckpt, forget, retain, rmu_config(args), args.device, dtype, {"wall": [], "cpu": []}
            )
        finally:
            bench_rmu.lap = lap

    return timed_steps(args, run_steps)


def load_side(side: str, ckpt: Path, args):
    dtype = getattr(torch, args.dtype)
    if side == "ours":
        return models.load_model(ckpt, device=args.device, dtype=dtype)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, local_files_only=True).to(
        args.device
    )


def run_side(side: str, work: Path, args) -> dict:
    """Load, score, generate, train RMU: one side's measurements (and its predictions)."""
    from transformers import AutoTokenizer

    ckpt = work / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    if not bench_rmu.TOKENIZER:
        bench_rmu.TOKENIZER.append(tokenizer)
    corpora = json.loads((work / "corpora.json").read_text())
    items = make_questions(args.questions)
    start = time.perf_counter()
    model = load_side(side, ckpt, args)
    sync(args.device)
    result = {"load_seconds": time.perf_counter() - start}
    if side == "ours":
        score, gen = ours_scoring(model, items, 8), ours_generation(model, args.new_tokens)
    else:
        score = hf_scoring(model, tokenizer, items, 8, args.device)
        gen = hf_generation(model, tokenizer, args.new_tokens, args.device)
    seconds, peak, preds = rounds(score, args.device, args.rounds)
    result["scoring"] = {"questions_per_s": len(items) / seconds, "peak_gpu_mib": peak}
    seconds, peak, tokens = rounds(gen, args.device, args.rounds)
    n_tokens = len(PROMPTS) * args.new_tokens
    result["generation"] = {"tokens_per_s": n_tokens / seconds, "peak_gpu_mib": peak}
    result["predictions"], result["tokens"] = preds, tokens
    forget, retain = corpora["forget"], [corpora["retain"]] * 2
    if side == "ours":
        result["rmu"] = ours_rmu(model, forget, retain, args)
    else:
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        result["rmu"] = hf_rmu(ckpt, forget, retain, args)
    return result


# --- the parent ---------------------------------------------------------------------------------


def write_inputs(args, work: Path) -> None:
    cfg = rmu_config(args)
    forget, retain = bench_rmu.make_corpora(cfg.steps, cfg.batch_size)
    # every real tokenizer has " A" .. " D" as single tokens; so must this one (letter scoring)
    answers = [" ".join(f"Answer: {x}" for x in "ABCD")] * 50
    tokenizer = data.train_tokenizer(forget[0] + forget[1] + retain + answers, vocab_size=2000)
    (work / "corpora.json").write_text(json.dumps({"forget": forget, "retain": retain}))
    dtype = getattr(torch, args.dtype)
    bench_rmu.build_checkpoint(
        SHAPES[args.shape], tokenizer, work / "checkpoint", dtype, args.device, max_positions=2048
    )


def measure(args, work: Path) -> dict:
    """Each side in its own process on CUDA (its own peak), in this one on CPU."""
    if not args.device.startswith("cuda"):
        return {side: run_side(side, work, args) for side in SIDES}
    results = {}
    for side in SIDES:
        command = [sys.executable, __file__, "--worker", side, "--work", str(work)]
        command += ["--shape", args.shape, "--device", args.device, "--dtype", args.dtype]
        command += ["--questions", str(args.questions), "--new-tokens", str(args.new_tokens)]
        command += ["--steps", str(args.steps), "--max-len", str(args.max_len)]
        command += ["--rounds", str(args.rounds)]
        subprocess.run(command, check=True)
        results[side] = json.loads((work / f"{side}.json").read_text())
    return results


def summary(args, results: dict) -> dict:
    ours, hf = results["ours"], results["hf"]
    agree = [a == b for a, b in zip(ours.pop("predictions"), hf.pop("predictions"), strict=True)]
    tokens = [a == b for a, b in zip(ours.pop("tokens"), hf.pop("tokens"), strict=True)]
    cuda = args.device.startswith("cuda")
    return {
        "benchmark": "bench_gpu_7b",
        "command": "python benchmarks/bench_gpu_7b.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu (no CUDA device)",
        "dtype": args.dtype,
        "shape": {"name": args.shape, **SHAPES[args.shape]},
        "settings": {
            k: getattr(args, k) for k in ("questions", "new_tokens", "steps", "max_len", "rounds")
        },
        "methods": {"ours": ours, "hf": hf},
        "ratios_ours_over_hf": {
            "rmu_steps_per_s": ours["rmu"]["steps_per_s"] / hf["rmu"]["steps_per_s"],
            "scoring_questions_per_s": ours["scoring"]["questions_per_s"]
            / hf["scoring"]["questions_per_s"],
            "generation_tokens_per_s": ours["generation"]["tokens_per_s"]
            / hf["generation"]["tokens_per_s"],
        },
        "agreement": {
            "letter_predictions": sum(agree) / len(agree),
            "greedy_rows_identical": sum(tokens) / len(tokens),
        },
        "versions": library_versions(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    for name in ("questions", "new-tokens", "steps", "max-len"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in DEFAULTS[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def unrunnable(args: argparse.Namespace) -> str | None:
    """One sentence when this machine cannot run ``args`` (no CUDA, or a large shape on CPU)."""
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return f"No CUDA device here ({args.device} was asked for); --shape tiny --device cpu runs."
    if not cuda and args.shape != "tiny":
        return f"The {args.shape} shape runs on a CUDA device only; --shape tiny runs on CPU."
    return None


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    if args.worker:
        result = run_side(args.worker, args.work, args)
        (args.work / f"{args.worker}.json").write_text(json.dumps(result))
        return
    problem = unrunnable(args)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    if args.device == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(args, Path(tmp))
        record = summary(args, measure(args, Path(tmp)))
    out = args.out or Path(__file__).parent / "results" / f"gpu_{args.shape}.json"
    write_json(out, record)
    print(json.dumps({k: record[k] for k in ("device_name", "ratios_ours_over_hf", "agreement")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
