"""Write the real-model study's data as the files ``unlearn-interp unlearn`` and ``audit`` read, so
a user's-eye audit of SmolLM2-135M can be set beside the study's own numbers.

The study's gap tasks (SciQ chemistry, element symbols) become the forget MCQ files, its retain
tasks scored for every variant (other SciQ, country capitals) the retain files; each question is
written as the whole context the study scores (so ``audit --mode continuation --prompt-template
'{question}'`` scores it exactly as the study does). The forget and retain corpora and prompts,
and the study's seed-0 RMU settings (``unlearn --rmu-config``), are written beside them.

    python studies/smollm2_audit_files.py --out studies/results/smollm2_audit_data
    unlearn-interp unlearn --model smollm2-135m --rmu-config DIR/rmu.json \\
        --forget DIR/forget_corpus.jsonl --retain DIR/retain_corpus.jsonl --out runs/smollm2_rmu
    unlearn-interp audit --base smollm2-135m --unlearned runs/smollm2_rmu \\
        --forget-mcq DIR/sciq_chem.jsonl DIR/cloze_elements.jsonl \\
        --retain-mcq DIR/sciq_other.jsonl DIR/cloze_capitals.jsonl \\
        --forget-corpus DIR/forget_corpus.jsonl --retain-corpus DIR/retain_corpus.jsonl \\
        --forget-prompts DIR/forget_prompts.jsonl --retain-prompts DIR/retain_prompts.jsonl \\
        --mode continuation --prompt-template '{question}' --out runs/smollm2_audit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearn_interp.evaluation.mcq import qa_prompt
from unlearn_interp.pipeline.study.config import smollm2_rmu_config
from unlearn_interp.pipeline.study.data import asset_paths, build_study


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    study = build_study(asset_paths(None, True), [0], "chemistry", "cpu")
    subject = study.subject()
    retain = [t for t in subject.tasks_for("rmu_ablated") if t not in subject.forget_tasks]
    for name in [*subject.gap_tasks, *retain]:
        task = subject.tasks[name]
        rows = [
            {**item.to_dict(), "question": qa_prompt(item, task.prompt_template)}
            for item in task.items
        ]
        write_jsonl(out / f"{name}.jsonl", rows)
    data = study.data
    write_jsonl(out / "forget_corpus.jsonl", [{"text": t} for t in data.forget_corpus])
    write_jsonl(out / "retain_corpus.jsonl", [{"text": t} for t in data.retain_corpus])
    write_jsonl(out / "forget_prompts.jsonl", [{"prompt": p} for p in data.forget_prompts])
    write_jsonl(out / "retain_prompts.jsonl", [{"prompt": p} for p in data.retain_prompts])
    (out / "rmu.json").write_text(json.dumps(smollm2_rmu_config(seed=0).to_dict(), indent=2))
    print(f"forget tasks {list(subject.gap_tasks)}, retain tasks {retain} -> {out}")


if __name__ == "__main__":
    main()
