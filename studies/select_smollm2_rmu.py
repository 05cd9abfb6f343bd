"""Choose the RMU settings of the SmolLM2-135M study by the unlearning objective alone.

Trains RMU (layer 7, update layers 5-7, alpha 1200, 150 steps, seed 0) at each point of a small
grid of steering coefficients, learning rates and Adaptive RMU betas, scores the study's forget
and retain tasks (SciQ and cloze facts, continuation mode: the tasks every variant of the study
is scored on), and picks the point with the lowest mean forget accuracy among those whose mean
retain accuracy stays within 0.03 of base. How much any ablation recovers is never computed here.

    python studies/select_smollm2_rmu.py            # resumes; writes studies/results/*.csv

The table (one row per point and task) is ``studies/results/smollm2_rmu_settings.csv``; the
choice is printed and recorded in ``unlearn_interp.pipeline.study.config.SMOLLM2_RMU``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from unlearn_interp import analysis, models, rmu
from unlearn_interp.pipeline.steps.accuracy import evaluate_per_item
from unlearn_interp.pipeline.study.config import (
    MAX_ITEMS_PER_TASK,
    Study,
    smollm2_rmu_config,
    with_changes,
)
from unlearn_interp.pipeline.study.data import asset_paths, build_study
from unlearn_interp.variants import Variant, restored_weights

RESULTS = Path(__file__).parent / "results"
COEFS = (150.0, 300.0, 600.0, 1200.0)
LRS = (1e-3,)  # lr <= 2e-4 barely moved the model in 150 steps (a throwaway run before)
BETAS = (2.0, 5.0)
RETAIN_TOLERANCE = 0.03
CORE_TASKS = ("sciq_chem", "cloze_elements", "sciq_other", "cloze_capitals")


def points() -> list[dict]:
    grid = [{"method": "rmu", "coef": c, "lr": lr} for lr in LRS for c in COEFS]
    return [{"method": "base", "coef": 0.0, "lr": 0.0}, *grid] + [
        {"method": "adaptive_rmu", "coef": b, "lr": 1e-3} for b in BETAS
    ]


def measure(loaded: Study, point: dict) -> pd.DataFrame:
    tasks = {name: loaded.tasks[name] for name in CORE_TASKS}
    base = Variant("base")
    if point["method"] == "base":
        return evaluate_per_item(loaded.model, [base], tasks, progress=False)
    cfg = smollm2_rmu_config(seed=0)
    changes = {"lr": point["lr"]}
    changes |= (
        {"adaptive_beta": point["coef"]}
        if point["method"] == "adaptive_rmu"
        else {"steering_coef": point["coef"]}
    )
    cfg = with_changes(cfg, **changes)
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    with restored_weights(loaded.model, names):
        result = rmu.train_rmu(
            loaded.model,
            [loaded.data.forget_corpus],
            [loaded.data.retain_corpus],
            cfg,
            progress=False,
        )
        table = evaluate_per_item(loaded.model, [base], tasks, progress=False)
    return table.assign(steering_coef_used=float(result.coefficients.mean()))


def choose(table: pd.DataFrame, forget_tasks: tuple[str, ...]) -> pd.DataFrame:
    acc = table.groupby(["method", "coef", "lr", "task"], as_index=False)["correct"].mean()
    acc["side"] = ["forget" if t in forget_tasks else "retain" for t in acc["task"]]
    summary = acc.pivot_table(index=["method", "coef", "lr"], columns="side", values="correct")
    base_retain = summary.loc[("base", 0.0, 0.0), "retain"]
    summary["retain_ok"] = summary["retain"] >= base_retain - RETAIN_TOLERANCE
    return summary.reset_index().sort_values(["retain_ok", "forget"], ascending=[False, True])


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    loaded = build_study(asset_paths(None, True), [0], "chemistry", "cpu")
    table = analysis.run_sweep(points(), lambda p: measure(loaded, p),
                               table_path=RESULTS / "smollm2_rmu_settings.csv",
                               settings={"tasks": CORE_TASKS, "items": MAX_ITEMS_PER_TASK},
                               desc="settings")  # fmt: skip
    summary = choose(table, loaded.data.forget_tasks)
    summary.to_csv(RESULTS / "smollm2_rmu_settings_summary.csv", index=False)
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
