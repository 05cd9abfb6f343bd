"""A SmolLM2-135M pair unlearned by a method that is not RMU, for the audit: gradient difference
over the MLP matrices of ten blocks, on the real-model study's forget and retain corpora.

The settings were set before any audit ran, by the unlearning objective alone: every MLP matrix
of blocks 0-9, 4 texts cut to 64 tokens a step (the study's RMU shape), the forget loss capped at
ln(vocab). lr 2e-5 for 60 steps moved nothing (element symbols 1.00 -> 1.00, capitals 0.86 ->
0.86); lr 1e-4 for 80 steps, kept, gives element symbols 1.00 -> 0.29 and SciQ chemistry 0.59 ->
0.48 at a retain cost (capitals 0.86 -> 0.77, other SciQ 0.47 -> 0.43), measured on one CPU
thread. Forget and retain accuracy are printed, so the trade-off is visible. Writes a run
directory the audit reads (``unlearned_weights.safetensors``, ``config.json``, the history).

    python studies/smollm2_audit_files.py --out DIR
    python studies/smollm2_grad_diff.py --data DIR --out runs/smollm2_grad_diff
    unlearn-interp audit --base smollm2-135m --unlearned runs/smollm2_grad_diff ... (as for RMU)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unlearn_interp import data, evaluation, models
from unlearn_interp.grad_diff import GradDiffConfig, train_grad_diff
from unlearn_interp.variants import Variant, restore_weights

SETTINGS = GradDiffConfig(steps=80, lr=1e-4, batch_size=4, max_len=64, layers=tuple(range(10)))
FORGET = ("sciq_chem", "cloze_elements")
RETAIN = ("sciq_other", "cloze_capitals")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="smollm2_audit_files.py's --out")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    model = models.load_model("smollm2-135m", device="cpu")
    forget = data.load_corpus(args.data / "forget_corpus.jsonl")
    retain = data.load_corpus(args.data / "retain_corpus.jsonl")
    result = train_grad_diff(model, forget, retain, SETTINGS)
    restore_weights(model, result.base_weights)
    result.save(args.out)
    tasks = {name: data.load_mcq(args.data / f"{name}.jsonl") for name in (*FORGET, *RETAIN)}
    unlearned = Variant("grad_diff", weights=result.unlearned_weights)
    table = evaluation.evaluate_variants(
        model, [Variant("base"), unlearned], tasks, mode="continuation",
        prompt_template="{question}", progress=False,
    )  # fmt: skip
    print(evaluation.format_accuracy_table(table))


if __name__ == "__main__":
    main()
