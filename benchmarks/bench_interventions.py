"""Forward-pass cost of directional ablation: hooks vs none, orthogonalised weights vs none.

Usage:
    python benchmarks/bench_interventions.py [--batch 4] [--seq 128] [--repeats 15]

Model: GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257) with random weights.
The three settings are timed interleaved (ABCABC...) so machine load drifts hit all of them
alike; the ratio of medians is reported and written to benchmarks/results/interventions.json.
Targets: hooks <= 1.2x, orthogonalised weights <= 1.02x.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from unlearn_interp import interventions, models
from unlearn_interp.artifacts import library_versions, write_json
from unlearn_interp.interventions import Variant


def time_forward(model, tokens, variant: Variant) -> float:
    with torch.inference_mode(), variant.applied(model):
        start = time.perf_counter()
        model(tokens)
        return time.perf_counter() - start


def permanently_orthogonalised(model, direction):
    """A second model with the direction removed from its weights once, as a user would deploy
    it (swapping 300 MB of weights in and out per call would time the copy, not the forward)."""
    ortho = copy.deepcopy(model)
    interventions.orthogonalize_weights(ortho, direction)
    return ortho


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "interventions.json"
    )
    args = parser.parse_args()

    model = models.random_model(n_layers=12, d_model=768, n_heads=12, d_vocab=50257, n_ctx=1024)
    model.eval()
    direction = torch.randn(768)
    tokens = torch.randint(0, 50257, (args.batch, args.seq))
    ortho = permanently_orthogonalised(model, direction)
    settings = {
        "no hooks": (model, Variant("none")),
        "ablation hooks": (model, Variant("hooks", hooks=interventions.ablation_hooks(direction))),
        "orthogonalised weights": (ortho, Variant("none")),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for net, variant in settings.values():  # warm-up
        time_forward(net, tokens, variant)
    for _ in range(args.repeats):
        for name, (net, variant) in settings.items():
            times[name].append(time_forward(net, tokens, variant))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: median[name] / median["no hooks"] for name in settings}
    print(f"GPT-2-small shape, batch {args.batch} x {args.seq} tokens, {args.repeats} repeats")
    print(f"{'setting':<24}{'median s':>10}{'ratio':>8}")
    for name in settings:
        print(f"{name:<24}{median[name]:>10.4f}{ratios[name]:>8.3f}")
    write_json(
        args.out,
        {
            "median_seconds": median,
            "ratio_vs_no_hooks": ratios,
            "args": vars(args) | {"out": str(args.out)},
            "threads": torch.get_num_threads(),
            "versions": library_versions(),
        },
    )


if __name__ == "__main__":
    main()
