"""RMU cost: ``rmu.train_rmu`` against a loop written the way the WMDP reference is.

Usage:
    python benchmarks/bench_rmu.py                      # CPU, Zephyr-proportioned small model
    python benchmarks/bench_rmu.py --shape 7b --device cuda --dtype bfloat16 --steps 6

The reference-style loop keeps two full copies of the model (``frozen`` is a deep copy, as the
reference loads the checkpoint twice), runs every forward pass through all blocks and the
unembedding, captures the residual stream after block ``layer`` with a hook, leaves every
parameter requiring grad (as ``from_pretrained`` does) and back-propagates
``mse(h, c*u) + alpha * mse(h_R, h_frz_R)`` once per step. ``train_rmu`` runs the same
algorithm with ``mask_padding=False`` (the reference's unmasked loss), from the same seed,
control vectors, batches and optimiser (AdamW, no weight decay, eps ``cfg.adam_eps``: 1e-6,
the reference's ``transformers.AdamW`` default).

Model ("zephyr-small", default): Zephyr-7B proportions at d_model 256 -- 32 blocks, gated SiLU
MLP (d_mlp 896 = 3.5 d_model), RMSNorm, rotary, 8 heads / 2 key-value heads, vocabulary 2000;
RMU at layer 7 updating blocks 5..7, batch 4, 256 tokens, two topics. "7b" is Zephyr-7B's shape
(d_model 4096, d_mlp 14336, 32/8 heads, vocabulary 32000) with random weights.

Each method runs in its own fresh subprocess, so each peak is its own:
* time: the median wall-clock seconds of one training step (tokenising, forward passes, loss,
  backward, optimiser step; train_rmu's history metrics included), robust to load spikes on a
  shared machine; the total time of the training call, one-off costs included, is reported too;
* memory on CPU: peak resident set size of the process (``ru_maxrss``) minus its resident size
  just before the model is built, i.e. model copies + optimiser + activations + gradients
  (tracemalloc cannot see torch's allocations); on CUDA: ``torch.cuda.max_memory_allocated``.
The parent checks both ended on the same weights (float32 tolerance, and far below the size of
the update itself), prints a table and writes benchmarks/results/rmu_<shape>_<device>.json.
Targets (issue 3): time-per-step ratio >= 3.5x, peak-memory ratio <= 0.55x.
"""

from __future__ import annotations

import argparse
import copy
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

from unlearn_interp import data, models, rmu
from unlearn_interp.artifacts import library_versions, write_json
from unlearn_interp.rmu.train import RMUTrainer

SHAPES = {
    "zephyr-small": {"d_model": 256, "n_heads": 8, "n_kv": 2, "d_mlp": 896, "d_vocab": 2000},
    "7b": {"d_model": 4096, "n_heads": 32, "n_kv": 8, "d_mlp": 14336, "d_vocab": 32000},
}
METHODS = ("reference", "train_rmu")


def build_model(shape: str, tokenizer, device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    s = SHAPES[shape]
    cfg = HookedTransformerConfig(
        n_layers=32,
        d_model=s["d_model"],
        d_head=s["d_model"] // s["n_heads"],
        n_heads=s["n_heads"],
        n_key_value_heads=s["n_kv"],
        d_mlp=s["d_mlp"],
        d_vocab=s["d_vocab"],
        n_ctx=512,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=s["d_model"] // s["n_heads"],
        seed=0,
        dtype=dtype,
        device=device,
        model_name=f"random-zephyr-shape-{shape}",
    )
    return models.attach_tokenizer(HookedTransformer(cfg), tokenizer)


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


# --- the reference-style loop -------------------------------------------------------------------


def forward_with_cache(model, batch: data.Batch, hook_name: str, no_grad: bool) -> torch.Tensor:
    """Full forward pass (all blocks and the unembedding); a hook keeps the layer's output."""
    cache = []

    def keep(activation, hook):
        cache.append(activation)
        return activation

    with model.hooks(fwd_hooks=[(hook_name, keep)]), torch.set_grad_enabled(not no_grad):
        model(batch.tokens, attention_mask=batch.attention_mask)
    return cache[0]


def reference_loop(
    model, forget, retain, cfg: rmu.RMUConfig, vectors: torch.Tensor, step_seconds: list[float]
) -> None:
    updated = model
    frozen = copy.deepcopy(model)  # the reference loads the checkpoint a second time
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    optimizer = torch.optim.AdamW(
        [models.get_param(updated, n) for n in names], lr=cfg.lr, eps=cfg.adam_eps, weight_decay=0.0
    )
    hook_name = models.resid_hook(cfg.layer)
    device = model.embed.W_E.device
    for step in range(cfg.steps):
        start = time.perf_counter()
        topic, index = step % len(forget), step // len(forget)
        control = (cfg.steering_coef * vectors[topic]).to(device).view(1, 1, -1)
        fb = data.encode_batch(
            model.tokenizer, rmu.topic_batch(forget[topic], index, cfg.batch_size), cfg.max_len
        ).to(device)
        h_f = forward_with_cache(updated, fb, hook_name, no_grad=False)
        forget_loss = F.mse_loss(h_f.float(), control.float())
        rb = data.encode_batch(
            model.tokenizer, rmu.topic_batch(retain[topic], index, cfg.batch_size), cfg.max_len
        ).to(device)
        h_r = forward_with_cache(updated, rb, hook_name, no_grad=False)
        h_r_frozen = forward_with_cache(frozen, rb, hook_name, no_grad=True)
        retain_loss = F.mse_loss(h_r.float(), h_r_frozen.float()) * cfg.alpha
        loss = forget_loss + retain_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        step_seconds.append(time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_train_rmu(model, forget, retain, cfg: rmu.RMUConfig, step_seconds: list[float]) -> None:
    """train_rmu, untouched, with each of its steps timed (a wrapper around the private step)."""
    step = RMUTrainer.step

    def timed(self, optimizer, i):
        start = time.perf_counter()
        record = step(self, optimizer, i)  # ends in .item(): already synchronised
        step_seconds.append(time.perf_counter() - start)
        return record

    RMUTrainer.step = timed
    try:
        rmu.train_rmu(model, forget, retain, cfg, progress=False)
    finally:
        RMUTrainer.step = step


# --- one method in its own process --------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    work = Path(args.work)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(work / "tokenizer")
    corpora = json.loads((work / "corpora.json").read_text())
    forget, retain = corpora["forget"], [corpora["retain"]] * 2
    cfg = rmu.RMUConfig(**json.loads((work / "config.json").read_text()))
    cuda = args.device.startswith("cuda")
    baseline = rss_kib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args.shape, tokenizer, args.device, getattr(torch, args.dtype))
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    base = models.snapshot_weights(model, names)
    step_seconds: list[float] = []
    start = time.perf_counter()
    if args.worker == "reference":
        vectors = rmu.make_control_vectors(2, model.cfg.d_model, cfg.control_vector, cfg.seed)
        reference_loop(model, forget, retain, cfg, vectors, step_seconds)
    else:
        timed_train_rmu(model, forget, retain, cfg, step_seconds)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    )
    final = models.snapshot_weights(model, names)
    models.save_weights(
        {
            **{f"final.{n}": t for n, t in final.items()},
            **{f"base.{n}": t for n, t in base.items()},
        },
        work / f"{args.worker}.safetensors",
    )
    result = {
        "seconds_per_step": statistics.median(step_seconds),
        "step_seconds": step_seconds,
        "total_seconds": seconds,
        "peak_mib": peak,
        "model_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
    }
    (work / f"{args.worker}.json").write_text(json.dumps(result))


# --- the comparison -----------------------------------------------------------------------------


def compare_weights(work: Path, update_layers, dtype: str) -> dict[str, float]:
    """Same start, same end within float32 tolerance (bfloat16: one rounding step), and the
    discrepancy far below the update itself, so the check could fail."""
    ref, ours = (models.load_weights(work / f"{m}.safetensors") for m in METHODS)
    rtol, atol, margin = (1e-4, 1e-6, 100.0) if dtype == "float32" else (2**-7, 0.0, 1.0)
    worst = {"max_abs_diff": 0.0, "max_abs_update": 0.0}
    for layer in update_layers:
        name = models.mlp_out_param(layer)
        assert torch.equal(ref[f"base.{name}"], ours[f"base.{name}"]), "different start weights"
        a, b = ref[f"final.{name}"].float(), ours[f"final.{name}"].float()
        update = (a - ref[f"base.{name}"].float()).abs().max().item()
        worst["max_abs_diff"] = max(worst["max_abs_diff"], (a - b).abs().max().item())
        worst["max_abs_update"] = max(worst["max_abs_update"], update)
        assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{name} differs between methods"
    assert worst["max_abs_update"] > margin * worst["max_abs_diff"], "weights barely moved"
    return worst


def run(args: argparse.Namespace) -> None:
    cfg = rmu.RMUConfig(
        layer=7, update_layers=(5, 6, 7), steering_coef=args.coef, alpha=1200.0, lr=args.lr,
        batch_size=4, steps=args.steps, max_len=256, mask_padding=False, seed=42,
    )  # fmt: skip
    forget, retain = make_corpora(cfg.steps, cfg.batch_size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = data.train_tokenizer(forget[0] + forget[1] + retain, vocab_size=2000)
        tokenizer.save_pretrained(work / "tokenizer")
        (work / "corpora.json").write_text(json.dumps({"forget": forget, "retain": retain}))
        (work / "config.json").write_text(json.dumps(cfg.to_dict()))
        for method in METHODS:
            command = [sys.executable, __file__, "--worker", method, "--work", tmp]
            command += ["--shape", args.shape, "--device", args.device, "--dtype", args.dtype]
            command += ["--threads", str(args.threads)]
            subprocess.run(command, check=True)
            results[method] = json.loads((work / f"{method}.json").read_text())
        weights = compare_weights(work, cfg.update_layers, args.dtype)
    ref, ours = results["reference"], results["train_rmu"]
    ratios = {
        "speedup_time_per_step": ref["seconds_per_step"] / ours["seconds_per_step"],
        "peak_memory_ratio": ours["peak_mib"] / ref["peak_mib"],
    }
    report(args, cfg, results, ratios, weights)


def report(args, cfg, results, ratios, weights) -> None:
    print(
        f"{args.shape} shape on {args.device} ({args.dtype}, {args.threads} threads): RMU at "
        f"layer {cfg.layer}, update {list(cfg.update_layers)}, batch {cfg.batch_size} x "
        f"{cfg.max_len} tokens, {cfg.steps} steps"
    )
    print(f"{'method':<12}{'median s/step':>15}{'total s':>10}{'peak MiB':>12}")
    for method in METHODS:
        r = results[method]
        print(
            f"{method:<12}{r['seconds_per_step']:>15.3f}{r['total_seconds']:>10.1f}"
            f"{r['peak_mib']:>12.1f}"
        )
    print(f"(one copy of the model's weights: {results['train_rmu']['model_mib']:.0f} MiB)")
    print(
        f"speed-up {ratios['speedup_time_per_step']:.2f}x (target >= 3.5x), peak memory "
        f"{ratios['peak_memory_ratio']:.3f}x (target <= 0.55x); final weights max |diff| "
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
            else "peak RSS (ru_maxrss) minus RSS before the model is built, one process per method",
            "versions": library_versions(),
        },
    )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="zephyr-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--coef", type=float, default=20.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: least noisy on shared CPUs)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
