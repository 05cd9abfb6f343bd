"""Forward pass: a TransformerLens model from ``models.load_model`` against the same checkpoint in
HuggingFace ``transformers``, with the toolkit's own components and with TransformerLens' own.

Usage:
    python benchmarks/bench_forward.py                   # all three checkpoints, 1 CPU thread (~3 min; 6 on a busy 2-core machine)
    python benchmarks/bench_forward.py --checkpoint smollm2-135m --repeats 9
    python benchmarks/bench_forward.py --device cuda --dtype bfloat16 --threads 0

Checkpoints (each loaded both ways from one HuggingFace directory):

* ``smollm2-135m``: the real SmolLM2-135M weights from the asset cache (Llama: rotary,
  grouped-query attention 9 heads over 3 K/V heads, RMSNorm, gated SiLU MLP, 49k vocabulary);
* ``gpt2-shaped``: random weights of GPT-2 small's shape (12 x 768, 12 heads, learned positions,
  LayerNorm, GELU MLP, 50,257 vocabulary; 124M parameters);
* ``mistral-shaped``: random weights of Mistral's proportions at a comparable size (6 blocks of
  d_model 1024, 16 heads over 4 K/V heads, d_mlp 3584, 32k vocabulary, untied; 147M parameters).

The random checkpoints are written to a temporary directory with a small tokenizer trained here
(the inputs are random ids, so any tokenizer serves), so they need no download: they run on a
GPU machine that reaches no package index.

Runners, on ``--batch`` x ``--seq`` random token ids, no grad: ``tl`` (the model as
``load_model`` returns it, with the toolkit's components: ``backend_components``), ``tl_own`` (a
deepcopy with ``backend_components.use_transformer_lens_components``: TransformerLens 3.9's own
components) and ``hf``. After one warm-up each they take turns for ``--repeats`` rounds (load
from other processes falls on all alike); the medians of wall-clock and process CPU time (which
waiting for a busy machine does not inflate; use ``--threads 1`` on a shared machine) and their
ratios to ``hf`` are reported. Target: ``tl`` / ``hf`` <= 1.10. In float32 the run fails
unless ``tl`` and ``tl_own`` agree within 1e-4 and ``tl`` and ``hf`` within 1e-3 (the max abs
logit differences are recorded; TransformerLens' attention and norms differ from HuggingFace's
by ~1e-4 on real weights, with either components, as HuggingFace's eager attention differs from
its sdpa; that difference is recorded too). Writes benchmarks/results/forward_<device>.json
(forward_<device>_<checkpoint>.json for a subset).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from bench_evaluation import interleaved  # the sibling benchmark's helper (scripts share a folder)

from unlearn_interp import backend_components, data, models, sources
from unlearn_interp.artifacts import library_versions, write_json

TARGET = 1.10
# what the random checkpoints' tokenizer is trained on (their inputs are random ids)
TOKENIZER_TEXT = " ".join(
    ["the residual stream of a transformer carries every layer's output"] * 20
)
CHECKPOINTS = ("smollm2-135m", "gpt2-shaped", "mistral-shaped")


def write_random_checkpoint(name: str, path: Path, tokenizer) -> Path:
    """A random-weight HuggingFace checkpoint of shape ``name`` with ``tokenizer``, saved to ``path``."""
    import transformers as tf

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if name == "gpt2-shaped":
        config = tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, **ids)
        cls = tf.GPT2LMHeadModel
    else:
        config = tf.MistralConfig(
            num_hidden_layers=6, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
            intermediate_size=3584, vocab_size=32000, max_position_embeddings=2048,
            sliding_window=None, tie_word_embeddings=False, **ids,
        )  # fmt: skip
        cls = tf.MistralForCausalLM
    torch.manual_seed(0)
    cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def checkpoint_dir(name: str, work: Path) -> Path:
    """The HuggingFace directory both sides load ``name`` from."""
    if name == "smollm2-135m":
        return sources.asset_dir("smollm2-135m")
    tokenizer = data.train_tokenizer([TOKENIZER_TEXT], vocab_size=512)
    return write_random_checkpoint(name, work / name, tokenizer)


def measure(name: str, path: Path, args: argparse.Namespace) -> dict:
    """Load ``path`` three ways, time the forwards interleaved, compare the logits."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    tl = models.load_model(path, device=args.device, dtype=dtype)
    tl_own = backend_components.use_transformer_lens_components(copy.deepcopy(tl))
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    hf = hf.to(args.device).eval()
    vocab = min(models.d_vocab(tl), len(tl.tokenizer))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(args.device)

    def forward(model):
        with torch.no_grad():
            out = model(tokens)
        return getattr(out, "logits", out).float()

    runners = {"tl": lambda: forward(tl), "tl_own": lambda: forward(tl_own),
               "hf": lambda: forward(hf)}  # fmt: skip
    wall, cpu, logits = interleaved(runners, args.device, args.repeats)
    on_cpu = args.device == "cpu"
    return {
        "checkpoint": name,
        "parameters": sum(p.numel() for p in hf.parameters()),
        "tl_uses_toolkit_components": backend_components.uses_toolkit_components(tl),
        "seconds_wall_median": wall,
        "seconds_cpu_median": cpu if on_cpu else None,
        "ratio_to_hf_wall": {k: wall[k] / wall["hf"] for k in ("tl", "tl_own")},
        "ratio_to_hf_cpu": {k: cpu[k] / cpu["hf"] for k in ("tl", "tl_own")} if on_cpu else None,
        "max_abs_logit_diff_tl_vs_tl_own": diff(logits["tl"], logits["tl_own"]),
        "max_abs_logit_diff_tl_vs_hf": diff(logits["tl"], logits["hf"]),
        "max_abs_logit_diff_tl_own_vs_hf": diff(logits["tl_own"], logits["hf"]),
        "max_abs_logit_hf": float(logits["hf"].abs().max()),
        # HuggingFace's own eager attention against its default (sdpa): the rounding floor
        "max_abs_logit_diff_hf_eager_vs_hf": diff(
            forward(eager_twin(path, dtype, args)), logits["hf"]
        ),
    }


def eager_twin(path: Path, dtype: torch.dtype, args: argparse.Namespace):
    """The HuggingFace model again with eager (not sdpa) attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype, attn_implementation="eager"
    )
    return model.to(args.device).eval()


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def report_line(r: dict, on_cpu: bool) -> str:
    wall, ratio = r["seconds_wall_median"], r["ratio_to_hf_wall"]
    line = (f"{r['checkpoint']:<16}{wall['hf']:>8.3f}{wall['tl']:>8.3f}{ratio['tl']:>8.2f}"
            f"{wall['tl_own']:>8.3f}{ratio['tl_own']:>8.2f}")  # fmt: skip
    if on_cpu:
        line += f"{r['ratio_to_hf_cpu']['tl']:>9.2f}{r['ratio_to_hf_cpu']['tl_own']:>9.2f}"
    return line + (f"{r['max_abs_logit_diff_tl_vs_tl_own']:>11.1e}"
                   f"{r['max_abs_logit_diff_tl_vs_hf']:>11.1e}"
                   f"{r['max_abs_logit_diff_hf_eager_vs_hf']:>11.1e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, action="append",
                        help="repeatable (default: all three)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    on_cpu = args.device == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            measure(name, checkpoint_dir(name, Path(tmp)), args)
            for name in args.checkpoint or CHECKPOINTS
        ]
    print(f"forward {args.batch} x {args.seq} tokens, {args.device} {args.dtype}, no grad, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved rounds")  # fmt: skip
    print(f"{'checkpoint':<16}{'hf s':>8}{'tl s':>8}{'tl/hf':>8}{'own s':>8}{'own/hf':>8}"
          + (f"{'cpu tl/hf':>9}{'own/hf':>9}" if on_cpu else "")
          + f"{'|tl-own|':>11}{'|tl-hf|':>11}{'|eager-hf|':>11}")  # fmt: skip
    for r in results:
        print(report_line(r, on_cpu))
    names = [r["checkpoint"] for r in results]
    subset = "" if set(names) == set(CHECKPOINTS) else "_" + "_".join(names)
    out = Path(__file__).parent / "results" / f"forward_{args.device.split(':')[0]}{subset}.json"
    write_json(out, {
        "batch": args.batch, "seq": args.seq, "device": args.device, "dtype": args.dtype,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "target_tl_over_hf": TARGET,
        "results": results, "versions": library_versions(),
    })  # fmt: skip
    print(f"wrote {out}")
    if args.dtype == "float32" and any(
        r["max_abs_logit_diff_tl_vs_tl_own"] > 1e-4 or r["max_abs_logit_diff_tl_vs_hf"] > 1e-3
        for r in results
    ):
        sys.exit("logits differ: the toolkit's components do not give TransformerLens' forward")


if __name__ == "__main__":
    main()
