"""RMU cost: ``rmu.train_rmu`` against a port of the WMDP reference loop, on an HF checkpoint.

Usage:
    python benchmarks/bench_rmu.py                      # CPU, the issue-15 shape (zephyr-512)
    python benchmarks/bench_rmu.py --shape zephyr-small # d_model 256: quicker
    python benchmarks/bench_rmu.py --shape 7b --device cuda --dtype bfloat16 --steps 6

The parent writes a Mistral-architecture checkpoint (Zephyr-7B's architecture, seeded random
weights; safetensors plus a tokenizer trained on the corpora) and runs each method in its own
fresh subprocess, so each peak is its own:

* ``reference``: WMDP's ``run_rmu`` ported as it is -- the checkpoint loaded twice with
  ``AutoModelForCausalLM.from_pretrained`` (updated and frozen), full forward passes (every block
  and the unembedding) with a forward hook on decoder layer ``layer``, every parameter requiring
  grad, one backward of ``mse(h, c*u) + alpha * mse(h_R, h_frz_R)`` per step;
* ``train_rmu``: ``models.load_model`` of the same checkpoint, then ``rmu.train_rmu`` with its
  defaults (frozen-forget diagnostics every ``frozen_forget_every`` = 10 batches of a topic and
  on each topic's last step) and ``mask_padding=False`` (the reference's unmasked loss);
* ``train_rmu_every_step``: the same with ``frozen_forget_every=1`` (the diagnostics' cost).
All three use the same seed, control vectors, batches and optimiser (AdamW, no weight decay,
eps 1e-6, the reference's ``transformers.AdamW`` default).

Model ("zephyr-512", default): 32 blocks, d_model 512, gated SiLU MLP
(d_mlp 1792 = 3.5 d_model), RMSNorm, rotary, 8 heads / 2 key-value heads, vocabulary 2000; RMU at
layer 7 updating blocks 5..7, batch 4 x 256 tokens, two topics, 10 steps (batches 0..4 of each
topic; train_rmu diagnoses batches 0 and 4, i.e. 4 of the 10 steps). "zephyr-small" is the same
at d_model 256; "7b" is Zephyr-7B's shape (d_model 4096, d_mlp 14336, 32/8 heads, vocabulary
32000) with random weights.

* time: the median wall-clock seconds of one training step (tokenising, forward passes, loss,
  backward, optimiser step; train_rmu's history metrics included), robust to load spikes on a
  shared machine, and the median process CPU seconds (with one thread, robust to a busy machine;
  the methods run one after the other, not interleaved, each in its own process). With 6 of
  train_rmu's 10 steps undiagnosed its median is an undiagnosed step, as 132 of a default
  150-step, two-topic run's are. Loading and setup are excluded from the step time and included
  in ``total_seconds``.
* memory on CPU: peak resident set size of the process (``ru_maxrss``) minus its resident size
  after every import, just before loading: loading included (the reference's two model copies,
  train_rmu's one through ``models.load_model``), plus optimiser, activations and gradients;
  ``process_peak_mib`` is ``ru_maxrss`` itself (imports included). On CUDA:
  ``torch.cuda.max_memory_allocated``.
The parent checks train_rmu's final weights are bitwise equal in both diagnostics modes and
within float tolerance of the reference's (HF and TransformerLens order their arithmetic
differently; the discrepancy must be 100x below the update itself, so the check could fail),
prints a table and writes benchmarks/results/rmu_<shape>_<device>.json.
Targets: time-per-step ratio >= 3.5x, peak-memory ratio <= 0.4x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from unlearn_interp import data, models, rmu
from unlearn_interp.artifacts import library_versions, write_json
from unlearn_interp.rmu.train import RMUTrainer

SHAPES = {
    "zephyr-512": {"d_model": 512, "n_heads": 8, "n_kv": 2, "d_mlp": 1792, "d_vocab": 2000},
    "zephyr-small": {"d_model": 256, "n_heads": 8, "n_kv": 2, "d_mlp": 896, "d_vocab": 2000},
    "7b": {"d_model": 4096, "n_heads": 32, "n_kv": 8, "d_mlp": 14336, "d_vocab": 32000},
}
METHODS = ("reference", "train_rmu", "train_rmu_every_step")


def build_checkpoint(
    shape: str | dict,
    tokenizer,
    path: Path,
    dtype: torch.dtype,
    device: str = "cpu",
    max_positions: int = 512,
):
    """A Mistral-architecture checkpoint of ``shape`` (a name in :data:`SHAPES`, or such a dict,
    with ``n_layers`` when not 32; Zephyr-7B's architecture: gated SiLU MLP, RMSNorm, rotary,
    grouped-query attention), seeded random weights made on ``device`` in ``dtype`` (no float32
    copy of a 7B model on the host), saved with ``tokenizer``."""
    from transformers import MistralConfig, MistralForCausalLM

    s = SHAPES[shape] if isinstance(shape, str) else shape
    config = MistralConfig(
        hidden_size=s["d_model"],
        intermediate_size=s["d_mlp"],
        num_hidden_layers=s.get("n_layers", 32),
        num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_kv"],
        vocab_size=max(s["d_vocab"], len(tokenizer)),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def make_corpora(steps: int, batch_size: int) -> tuple[list[list[str]], list[str]]:
    """Two forget topics of long documents (always truncated to max_len) and a retain corpus of
    documents of 100-400 words, so retain batches carry left padding as wikitext's do."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(3000)]

    def doc(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    per_topic = (steps // 2 + 1) * batch_size
    forget = [[doc(400, 500) for _ in range(per_topic)] for _ in range(2)]
    retain = [doc(100, 400) for _ in range(per_topic)]
    return forget, retain


# --- the reference loop, ported -----------------------------------------------------------------


def forward_with_cache(model, batch: data.Batch, module, no_grad: bool) -> torch.Tensor:
    """The reference's ``forward_with_cache``: a full forward pass (every block and the
    unembedding); a forward hook on the decoder layer keeps its output."""
    cache = []

    def keep(_module, _inputs, output):
        cache.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(keep)
    with torch.set_grad_enabled(not no_grad):
        model(input_ids=batch.tokens, attention_mask=batch.attention_mask)
    handle.remove()
    return cache[0]


def load_hf(ckpt: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, local_files_only=True).to(device)


def reference_loop(
    ckpt: Path, forget, retain, cfg: rmu.RMUConfig, device: str, dtype: torch.dtype,
    step_seconds: dict[str, list[float]],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """WMDP's ``run_rmu``: two full HF models (loaded twice), every parameter requiring grad (as
    ``from_pretrained`` leaves them), AdamW over ``down_proj`` of the update layers, one backward
    of ``mse(h, c*u) + alpha * mse(h_R, h_frz_R)`` per step. Returns the final ``W_out`` tensors
    (``down_proj.weight`` transposed: TransformerLens's orientation)."""
    updated, frozen = load_hf(ckpt, device, dtype), load_hf(ckpt, device, dtype)
    updated.train()
    layers = updated.model.layers
    params = [layers[layer].mlp.down_proj.weight for layer in cfg.update_layers]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=0.0)
    vectors = rmu.make_control_vectors(2, updated.config.hidden_size, cfg.control_vector, cfg.seed)
    updated_module, frozen_module = layers[cfg.layer], frozen.model.layers[cfg.layer]
    for step in range(cfg.steps):
        start = clock()
        topic, index = step % len(forget), step // len(forget)
        control = (cfg.steering_coef * vectors[topic]).to(device, dtype).view(1, 1, -1)
        fb = encode(forget[topic], index, cfg, device)
        h_f = forward_with_cache(updated, fb, updated_module, no_grad=False)
        forget_loss = F.mse_loss(h_f, control)
        rb = encode(retain[topic], index, cfg, device)
        h_r = forward_with_cache(updated, rb, updated_module, no_grad=False)
        h_r_frozen = forward_with_cache(frozen, rb, frozen_module, no_grad=True)
        retain_loss = F.mse_loss(h_r, h_r_frozen) * cfg.alpha
        loss = forget_loss + retain_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        lap(step_seconds, start)
    return {
        models.mlp_out_param(layer): p.detach().T.contiguous()
        for layer, p in zip(cfg.update_layers, params, strict=True)
    }


def encode(corpus: list[str], index: int, cfg: rmu.RMUConfig, device: str) -> data.Batch:
    """The reference's tokenizer call: padded batch, truncated at ``max_len`` tokens."""
    texts = rmu.topic_batch(corpus, index, cfg.batch_size)
    return data.encode_batch(TOKENIZER[0], texts, cfg.max_len).to(device)


TOKENIZER: list = []  # the worker's tokenizer, loaded from the checkpoint


def progress(what: str) -> None:
    """One line on stderr as each method starts, so a run cut short shows how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def lap(step_seconds: dict[str, list[float]], start: tuple[float, float]) -> None:
    """Wall-clock and process CPU seconds since ``start`` (CPU time: robust to a busy machine)."""
    step_seconds["wall"].append(time.perf_counter() - start[0])
    step_seconds["cpu"].append(time.process_time() - start[1])


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed_train_rmu(
    ckpt: Path, forget, retain, cfg: rmu.RMUConfig, device: str, dtype: torch.dtype,
    step_seconds: dict[str, list[float]],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``models.load_model`` then train_rmu, untouched, with each of its steps timed (a wrapper
    around the trainer's step). Returns the final ``W_out`` tensors."""
    model = models.load_model(ckpt, device=device, dtype=dtype)
    step = RMUTrainer.step

    def timed(self, optimizer, i):
        start = clock()
        record = step(self, optimizer, i)  # ends in .item(): already synchronised
        lap(step_seconds, start)
        return record

    RMUTrainer.step = timed
    try:
        result = rmu.train_rmu(model, forget, retain, cfg, progress=False)
    finally:
        RMUTrainer.step = step
    return result.unlearned_weights


# --- one method in its own process --------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    """One method in this fresh process: load (included in the memory peak), train, time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (same baseline)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    work = Path(args.work)
    ckpt = work / "checkpoint"
    TOKENIZER.append(AutoTokenizer.from_pretrained(ckpt))
    corpora = json.loads((work / "corpora.json").read_text())
    forget, retain = corpora["forget"], [corpora["retain"]] * 2
    cfg = rmu.RMUConfig(**json.loads((work / "config.json").read_text()))
    if args.worker == "train_rmu_every_step":
        cfg = dataclasses.replace(cfg, frozen_forget_every=1)
    cuda, dtype = args.device.startswith("cuda"), getattr(torch, args.dtype)
    baseline = rss_kib()  # after every import: the memory the method itself takes
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_seconds: dict[str, list[float]] = {"wall": [], "cpu": []}
    start = time.perf_counter()
    train = reference_loop if args.worker == "reference" else timed_train_rmu
    final = train(ckpt, forget, retain, cfg, args.device, dtype, step_seconds)
    sync(args.device)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    models.save_weights(final, work / f"{args.worker}.safetensors")
    result = {
        "seconds_per_step": statistics.median(step_seconds["wall"]),
        "cpu_seconds_per_step": statistics.median(step_seconds["cpu"]),
        "step_seconds": step_seconds["wall"],
        "step_cpu_seconds": step_seconds["cpu"],
        "total_seconds": time.perf_counter() - start,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (peak_kib - baseline) / 1024,
        "process_peak_mib": peak_kib / 1024,
        "import_baseline_mib": baseline / 1024,
    }
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# --- the comparison -----------------------------------------------------------------------------


def compare_weights(work: Path, dtype: str) -> dict[str, float]:
    """train_rmu's final weights are bitwise those of its every-step-diagnostics mode, and within
    the float tolerance of HF vs TransformerLens arithmetic of the reference's; the discrepancy is
    far below the update itself, so the check could fail."""
    ref, ours, every = (models.load_weights(work / f"{m}.safetensors") for m in METHODS)
    base = models.load_weights(work / "base.safetensors")
    margin = 100.0 if dtype == "float32" else 2.0
    worst = {"max_abs_diff": 0.0, "max_abs_update": 0.0}
    for name, start in base.items():
        assert torch.equal(ours[name], every[name]), f"{name}: diagnostics changed training"
        a, b = ref[name].float(), ours[name].float()
        worst["max_abs_update"] = max(
            worst["max_abs_update"], (a - start.float()).abs().max().item()
        )
        worst["max_abs_diff"] = max(worst["max_abs_diff"], (a - b).abs().max().item())
    assert worst["max_abs_update"] > margin * worst["max_abs_diff"], (
        "weights differ between methods"
    )
    return worst


def write_inputs(args: argparse.Namespace, cfg: rmu.RMUConfig, work: Path) -> None:
    """Corpora, config, the checkpoint (with its tokenizer) and its base W_out tensors."""
    transformers.utils.logging.disable_progress_bar()
    forget, retain = make_corpora(cfg.steps, cfg.batch_size)
    tokenizer = data.train_tokenizer(forget[0] + forget[1] + retain, vocab_size=2000)
    (work / "corpora.json").write_text(json.dumps({"forget": forget, "retain": retain}))
    (work / "config.json").write_text(json.dumps(cfg.to_dict()))
    hf_model = build_checkpoint(
        args.shape, tokenizer, work / "checkpoint", getattr(torch, args.dtype)
    )
    layers = hf_model.model.layers
    base = {
        models.mlp_out_param(i): layers[i].mlp.down_proj.weight.detach().T.contiguous()
        for i in cfg.update_layers
    }
    models.save_weights(base, work / "base.safetensors")


def run(args: argparse.Namespace) -> None:
    cfg = rmu.RMUConfig(
        layer=7, update_layers=(5, 6, 7), steering_coef=args.coef, alpha=1200.0, lr=args.lr,
        batch_size=4, steps=args.steps, max_len=256, mask_padding=False, seed=42,
    )  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_inputs(args, cfg, work)
        for method in METHODS:
            progress(f"{method} (its own process)")
            command = [sys.executable, __file__, "--worker", method, "--work", tmp]
            command += ["--shape", args.shape, "--device", args.device, "--dtype", args.dtype]
            command += ["--threads", str(args.threads)]
            subprocess.run(command, check=True)
            results[method] = json.loads((work / f"{method}.json").read_text())
        weights = compare_weights(work, args.dtype)
    ref, ours = results["reference"], results["train_rmu"]
    ratios = {
        "speedup_time_per_step": ref["seconds_per_step"] / ours["seconds_per_step"],
        "speedup_cpu_time_per_step": ref["cpu_seconds_per_step"] / ours["cpu_seconds_per_step"],
        "speedup_every_step_diagnostics": ref["seconds_per_step"]
        / results["train_rmu_every_step"]["seconds_per_step"],
        "peak_memory_ratio": ours["peak_mib"] / ref["peak_mib"],
        "process_peak_memory_ratio": ours["process_peak_mib"] / ref["process_peak_mib"],
    }
    report(args, cfg, results, ratios, weights)


def report(args, cfg, results, ratios, weights) -> None:
    print(
        f"{args.shape} shape on {args.device} ({args.dtype}, {args.threads} threads): RMU at "
        f"layer {cfg.layer}, update {list(cfg.update_layers)}, batch {cfg.batch_size} x "
        f"{cfg.max_len} tokens, {cfg.steps} steps"
    )
    print(
        f"{'method':<22}{'median s/step':>15}{'CPU s/step':>12}{'total s':>10}{'peak MiB':>11}"
        f"{'process MiB':>13}"
    )
    for method in METHODS:
        r = results[method]
        print(
            f"{method:<22}{r['seconds_per_step']:>15.3f}{r['cpu_seconds_per_step']:>12.3f}"
            f"{r['total_seconds']:>10.1f}"
            f"{r['peak_mib']:>11.1f}{r['process_peak_mib']:>13.1f}"
        )
    print(
        f"speed-up {ratios['speedup_time_per_step']:.2f}x wall, "
        f"{ratios['speedup_cpu_time_per_step']:.2f}x CPU time (target >= 3.5x; every-step diagnostics "
        f"{ratios['speedup_every_step_diagnostics']:.2f}x), peak memory above the import baseline "
        f"{ratios['peak_memory_ratio']:.3f}x (target <= 0.4x; whole process "
        f"{ratios['process_peak_memory_ratio']:.3f}x); final weights max |diff| "
        f"{weights['max_abs_diff']:.2e} vs max |update| {weights['max_abs_update']:.2e}"
    )
    out = args.out or Path(__file__).parent / "results" / f"rmu_{args.shape}_{args.device}.json"
    write_json(
        out,
        {
            "methods": results,
            "ratios": ratios,
            "weights": weights,
            "config": cfg.to_dict(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "memory_measure": "cuda max_memory_allocated"
            if args.device.startswith("cuda")
            else "peak RSS (ru_maxrss) minus RSS after the imports, loading included, one process "
            "per method; process_peak_mib is ru_maxrss itself",
            "versions": library_versions(),
        },
    )
    print(f"wrote {out}")


def shared_parser(
    description: str, methods: tuple[str, ...], steps: int
) -> argparse.ArgumentParser:
    """The options of this benchmark and of bench_first_blocks (shape, device, dtype, steps,
    threads, out) and the hidden ones the parent passes a worker subprocess (--worker, --work)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="zephyr-512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: least noisy on shared CPUs)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=methods, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = shared_parser(__doc__.splitlines()[0], METHODS, steps=10)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--coef", type=float, default=20.0)
    args = parser.parse_args()
    (worker if args.worker else run)(args)


if __name__ == "__main__":
    main()
