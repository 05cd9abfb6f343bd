"""The figures of a run directory, drawn from its tables (nothing is recomputed): the organism
demo's set (:func:`demo_figures`) and the real-model study's (:func:`study_figures`).

    >>> figs = demo_figures("runs/demo", rmu_layer=2)                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from unlearn_interp import plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.study_config import Study

FIGURE_NAMES = (
    "layer_cosines_rmu", "layer_norms_rmu", "layer_cosines_ablated", "layer_norms_ablated",
    "accuracy_bars", "training_curves",
)  # fmt: skip
STUDY_FIGURES = (
    "layer_cosines_rmu", "layer_norms_rmu", "layer_cosines_ablated", "layer_norms_ablated",
    "accuracy_bars", "accuracy_all_tasks", "gap_recovered", "training_curves", "generations",
)  # fmt: skip
BAR_VARIANTS = (
    "base", "rmu", "rmu_ablated", "rmu_random_ablated", "rmu_subspace_ablated",
    "rmu_random_subspace_ablated", "base_subspace_ablated",
)  # fmt: skip
GAP_LABELS = {
    "junk": "junk direction (vs base)",
    "random": "random direction (vs base)",
    "subspace": "junk subspace (vs base)",
    "random_subspace": "random subspace (vs base)",
    "junk_vs_ablated_base": "junk direction (vs base, same ablation)",
    "subspace_vs_ablated_base": "junk subspace (vs base, same ablation)",
}


def demo_figures(root: str | os.PathLike, rmu_layer: int) -> dict[str, Any]:
    """Plotly figures drawn from a run directory's tables (nothing is recomputed)."""
    run = RunDir(root)
    profile = run.table("layer_profile")
    before = profile[profile["variant"].isin(["base", "rmu"])]
    after = profile[profile["variant"].isin(["base", "rmu", "rmu_ablated"])]
    figures = {
        "layer_cosines_rmu": plotting.plot_layer_cosines(before, rmu_layer=rmu_layer),
        "layer_norms_rmu": plotting.plot_layer_norms(before, rmu_layer=rmu_layer),
        "layer_cosines_ablated": plotting.plot_layer_cosines(
            after, rmu_layer=rmu_layer, title="After ablating the junk direction: cosine to base"
        ),
        "layer_norms_ablated": plotting.plot_layer_norms(
            after, rmu_layer=rmu_layer, title="After ablating the junk direction: residual norm"
        ),
        "accuracy_bars": plotting.plot_accuracy_bars(run.table("accuracy")),
    }
    history = run.path(RunFiles.RMU_HISTORY)
    if history.is_file():
        figures["training_curves"] = plotting.plot_training_curves(pd.read_csv(history))
    else:
        figures["training_curves"] = plotting.generations_table(run.table("generations"))
    return figures


def study_figures(run: RunDir, study: Study) -> dict[str, Any]:
    """The study's figures, drawn from its tables (nothing is recomputed)."""
    layer = study.headline.config.layer
    profile = run.table("layer_profile")
    before = profile[profile["variant"].isin(["base", "rmu"])]
    accuracy = run.table("accuracy")
    core = ~accuracy["task"].isin(study.report_only)
    bars = accuracy[accuracy["variant"].isin(BAR_VARIANTS) & core]
    plain = accuracy[accuracy["variant"].isin(["base", "rmu"])]
    first = run.path(study.headline.seed_dir(study.headline.seeds[0]))
    note = f"{study.title}, first seed; layer l = residual stream after block l"
    return {
        "layer_cosines_rmu": plotting.plot_layer_cosines(before, rmu_layer=layer,
            title=f"RMU splits from base at its layer: cosine to base ({note})"),
        "layer_norms_rmu": plotting.plot_layer_norms(before, rmu_layer=layer,
            title=f"RMU's junk: residual norm by layer ({note})"),
        "layer_cosines_ablated": plotting.plot_layer_cosines(profile, rmu_layer=layer,
            title="After ablation (single direction, subspace, random subspace): cosine to base"),
        "layer_norms_ablated": plotting.plot_layer_norms(profile, rmu_layer=layer,
            title="After ablation (single direction, subspace, random subspace): residual norm"),
        "accuracy_bars": plotting.plot_accuracy_bars(bars, title=_bars_title(study)),
        "accuracy_all_tasks": plotting.plot_accuracy_bars(plain, title=(
            f"{study.title}: base and RMU on every task (letter = lm-evaluation-harness MMLU "
            "prompt; cont = continuation scoring)")),
        "gap_recovered": plotting.plot_gap_recovered(gap_rows(run.table("gap_recovered"))),
        "training_curves": plotting.plot_training_curves(
            pd.read_csv(first / RunFiles.RMU_HISTORY)),
        "generations": plotting.generations_table(run.table("generations")),
    }  # fmt: skip


def _bars_title(study: Study) -> str:
    seeds = len(study.headline.seeds)
    return (f"{study.title} accuracy by task: base, RMU and ablations (mean of {seeds} seeds, "
            "95% intervals over items and seeds)")  # fmt: skip


def gap_rows(gaps: pd.DataFrame) -> pd.DataFrame:
    """The mean-over-forget-tasks rows, labelled for a figure or table."""
    rows = gaps[gaps["task"] == stats.MEAN_TASK].copy()
    rows["label"] = [
        (GAP_LABELS[g] if a == "rmu" else f"{a}: {GAP_LABELS[g]}")
        for a, g in zip(rows["arm"], rows["gap"], strict=True)
    ]
    rows["group"] = ["random control" if "random" in g else "junk" for g in rows["gap"]]
    return rows
