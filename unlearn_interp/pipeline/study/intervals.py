"""The study's headline with its intervals: every scored item of every seed in one table, accuracy
and gap recovered with 95% bootstrap intervals over items and seeds (each arm over its own
seeds, paired across variants), their figures, metrics.json's ``accuracy``/``gap_recovered``
entries (with ``*_ci`` beside them) and the report's tables.

    >>> Intervals(study, n_boot=2000)                                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from unlearn_interp import plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import interval_cell, markdown_table
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.pipeline.study.config import FULL_VARIANTS, GAPS, Arm, Study
from unlearn_interp.pipeline.subject import Subject

FIGURES = ("accuracy_bars", "accuracy_all_tasks", "gap_recovered")
BAR_VARIANTS = (
    "base",
    "rmu",
    "rmu_ablated",
    "rmu_random_ablated",
    "rmu_subspace_ablated",
    "rmu_random_subspace_ablated",
    "base_subspace_ablated",
)
GAP_LABELS = {
    "junk": "junk direction (vs base)",
    "random": "random direction (vs base)",
    "subspace": "junk subspace (vs base)",
    "random_subspace": "random subspace (vs base)",
    "junk_vs_ablated_base": "junk direction (vs base, same ablation)",
    "subspace_vs_ablated_base": "junk subspace (vs base, same ablation)",
}


@dataclasses.dataclass(frozen=True)
class Intervals:
    """``tables/per_item.csv`` (everything scored), ``tables/accuracy.csv`` and
    ``tables/gap_recovered.csv`` with bootstrap 95% intervals (``n_boot`` replicates)."""

    study: Study
    n_boot: int = 2000
    name: str = "intervals"

    def files(self, run: Run) -> list[str]:
        tables = [RunFiles.table(n) for n in ("per_item", "accuracy", "gap_recovered")]
        return tables + figure_files(FIGURES)

    def compute(self, run: Run) -> StepOutput:
        per_item = per_item_table(run, self.study)
        accuracy = pd.concat(
            [
                stats.accuracy_intervals(arm_items(per_item, arm), n_boot=self.n_boot)
                for arm in self.study.arms
            ]
        ).drop_duplicates(subset=["variant", "task"], ignore_index=True)
        gaps = pd.concat(
            [arm_gaps(per_item, arm, run.subject, self.n_boot) for arm in self.study.arms],
            ignore_index=True,
        )
        tables = {"per_item": per_item, "accuracy": accuracy, "gap_recovered": gaps}
        return StepOutput(tables=tables, figures=interval_figures(self.study, run.subject, tables))

    def summary(self, run: Run) -> StepSummary:
        accuracy, gaps = run.dir.table("accuracy"), run.dir.table("gap_recovered")
        metrics = interval_metrics(self.study, accuracy, gaps)
        section = interval_section(run.subject, accuracy, gaps)
        return StepSummary(metrics=metrics, section=section)


def per_item_table(run: Run, study: Study) -> pd.DataFrame:
    """Every scored item of the study: ``arm``, ``seed``, ``variant`` (arm-labelled), ``task``,
    ``item``, ``correct``; plain base once with no seed (it does not depend on the seed)."""
    frames = [run.dir.table("base_per_item").assign(arm="base", seed=float("nan"))]
    for arm in study.arms:
        for seed in arm.seeds:
            table = pd.read_csv(run.dir.path(arm.seed_dir(seed)) / RunFiles.MCQ_PER_ITEM)
            table["variant"] = table["variant"].map(arm.label)
            frames.append(table.assign(arm=arm.name, seed=seed))
    columns = ["arm", "seed", "variant", "task", "item", "correct"]
    return pd.concat(frames, ignore_index=True)[columns]


def arm_items(per_item: pd.DataFrame, arm: Arm) -> pd.DataFrame:
    """The rows of plain base and of one arm: what one bootstrap resamples together."""
    return per_item[per_item["arm"].isin(["base", arm.name])]


def arm_gaps(per_item: pd.DataFrame, arm: Arm, subject: Subject, n_boot: int) -> pd.DataFrame:
    """Every entry of :data:`GAPS` the arm has both variants for, per gap task and their mean
    (``task == "mean"``), with intervals; column ``gap`` names the entry."""
    wanted = [
        (name, v, ref)
        for name, (v, ref) in GAPS.items()
        if v in arm.variants and (ref == "base" or ref in arm.variants)
    ]
    table = stats.gap_recovered_intervals(
        arm_items(per_item, arm),
        unlearned=arm.label("rmu"),
        variants=[arm.label(v) for _, v, ref in wanted if ref == "base"],
        reference={arm.label(v): arm.label(ref) for _, v, ref in wanted if ref != "base"},
        forget_tasks=subject.gap_tasks,
        n_boot=n_boot,
    )
    names = {
        (arm.label(v), "base" if ref == "base" else arm.label(ref)): name for name, v, ref in wanted
    }
    table["gap"] = [names[(v, a)] for v, a in zip(table["variant"], table["against"], strict=True)]
    return table.assign(arm=arm.name)


def gap_rows(gaps: pd.DataFrame) -> pd.DataFrame:
    """The mean-over-forget-tasks rows, labelled for a figure or table."""
    rows = gaps[gaps["task"] == stats.MEAN_TASK].copy()
    rows["label"] = [
        (GAP_LABELS[g] if a == "rmu" else f"{a}: {GAP_LABELS[g]}")
        for a, g in zip(rows["arm"], rows["gap"], strict=True)
    ]
    rows["group"] = ["random control" if "random" in g else "junk" for g in rows["gap"]]
    return rows


def interval_figures(study: Study, subject: Subject, tables: dict[str, pd.DataFrame]) -> dict:
    """Accuracy bars (core tasks, the ablations), every task for base and RMU, gap recovered."""
    accuracy = tables["accuracy"]
    core = ~accuracy["task"].isin(subject.report_only)
    bars = accuracy[accuracy["variant"].isin(BAR_VARIANTS) & core]
    plain = accuracy[accuracy["variant"].isin(["base", "rmu"])]
    seeds = len(study.headline.seeds)
    return {
        "accuracy_bars": plotting.plot_accuracy_bars(
            bars,
            title=(
                f"{study.title} accuracy by task: base, RMU and ablations (mean of {seeds} seeds, "
                "95% intervals over items and seeds)"
            ),
        ),
        "accuracy_all_tasks": plotting.plot_accuracy_bars(
            plain,
            title=(
                f"{study.title}: base and RMU on every task (letter = lm-evaluation-harness MMLU "
                "prompt; cont = continuation scoring)"
            ),
        ),
        "gap_recovered": plotting.plot_gap_recovered(gap_rows(tables["gap_recovered"])),
    }


def interval_metrics(study: Study, accuracy: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, Any]:
    """``accuracy`` and ``gap_recovered`` (headline arm, mean over gap tasks) with their
    intervals beside them (``*_ci``), gap recovered per task, and each arm's gaps."""
    means = gaps[gaps["task"] == stats.MEAN_TASK]
    headline = means[means["arm"] == study.headline.name].set_index("gap")
    return {
        "accuracy": _nested(accuracy, "accuracy"),
        "accuracy_ci": _nested(accuracy, ["ci_low", "ci_high", "n_items", "n_seeds"]),
        "gap_recovered": {name: float(row.gap_recovered) for name, row in headline.iterrows()},
        "gap_recovered_ci": {name: _interval(row) for name, row in headline.iterrows()},
        "gap_recovered_per_task": _per_task_gaps(gaps, study.headline),
        "arms": _arm_summaries(means, study),
    }


def _interval(row: Any) -> dict[str, float]:
    return {"ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}


def _value_and_interval(row: Any) -> dict[str, float]:
    return {"value": float(row.gap_recovered), **_interval(row)}


def _nested(table: pd.DataFrame, columns: str | list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in table.itertuples(index=False):
        value = (
            float(getattr(row, columns))
            if isinstance(columns, str)
            else {c: _number(getattr(row, c)) for c in columns}
        )
        out.setdefault(row.variant, {})[row.task] = value
    return out


def _number(value: Any) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) > 1 else float(value)


def _per_task_gaps(gaps: pd.DataFrame, arm: Arm) -> dict[str, dict[str, dict[str, float]]]:
    rows = gaps[(gaps["arm"] == arm.name) & (gaps["task"] != stats.MEAN_TASK)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows.itertuples():
        out.setdefault(r.gap, {})[r.task] = _value_and_interval(r)
    return out


def _arm_summaries(gaps: pd.DataFrame, study: Study) -> dict[str, Any]:
    return {
        arm.name: {
            "rmu": arm.config.to_dict(),
            "seeds": list(arm.seeds),
            "gap_recovered": {
                r.gap: _value_and_interval(r) for r in gaps[gaps["arm"] == arm.name].itertuples()
            },
        }
        for arm in study.arms
    }


def interval_section(subject: Subject, accuracy: pd.DataFrame, gaps: pd.DataFrame) -> str:
    """The report's accuracy grid and gap-recovered table, each figure with its interval."""
    rows = gap_rows(gaps)
    gap_table = pd.DataFrame(
        {
            "ablation": rows["label"],
            "gap recovered": [f"{g:.2f}" for g in rows["gap_recovered"]],
            "95% interval": [
                f"[{lo:.2f}, {hi:.2f}]"
                for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)
            ],
        }
    )
    return "\n".join(
        [
            "## Accuracy",
            "",
            "Every figure is the mean over seeds with a 95% bootstrap interval (items and seeds "
            "resampled, paired across variants).",
            "",
            markdown_table(_interval_grid(accuracy, subject)),
            "",
            f"## Gap recovered (mean of {', '.join(subject.gap_tasks)})",
            "",
            markdown_table(gap_table),
            "",
            "Figures: "
            + ", ".join(f"[{n}]({f})" for n, f in zip(FIGURES, figure_files(FIGURES), strict=True))
            + ".",
        ]
    )


def _interval_grid(accuracy: pd.DataFrame, subject: Subject) -> pd.DataFrame:
    """Variants as rows, tasks as columns, cells ``0.620 [0.550, 0.690]``."""
    cells = accuracy.assign(
        cell=[
            interval_cell(a, lo, hi, digits=3)
            for a, lo, hi in zip(
                accuracy["accuracy"], accuracy["ci_low"], accuracy["ci_high"], strict=True
            )
        ]
    )
    grid = cells.pivot(index="variant", columns="task", values="cell").fillna("-")
    order = [v for v in ("base", *FULL_VARIANTS) if v in grid.index]
    order += [v for v in grid.index if v not in order]
    return grid.reindex(order)[list(subject.tasks)].reset_index()
