"""The study's headline with its intervals: every scored item of every seed in one table, accuracy
and gap recovered with 95% bootstrap intervals over items and seeds (each arm over its own
seeds, paired across variants), their figures, metrics.json's ``accuracy``/``gap_recovered``
entries (with ``*_ci`` beside them), each arm's gaps, and the report's tables.

    >>> Intervals(study, n_boot=2000)                                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from unlearn_interp import plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.pipeline.steps.intervals import (
    gap_intervals,
    gap_rows,
    headline_gaps,
    interval_metrics,
    interval_section,
    value_and_interval,
)
from unlearn_interp.pipeline.study.config import FULL_VARIANTS, Arm, Study
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
        headline = self.study.headline.name
        metrics = interval_metrics(
            accuracy, gaps[gaps["arm"] == headline], headline_gaps(gaps, headline)
        )
        metrics["arms"] = arm_summaries(gaps, self.study)
        subject = run.subject
        section = interval_section(
            accuracy,
            gaps,
            ("base", *FULL_VARIANTS),
            list(subject.tasks),
            subject.gap_tasks,
            "items and seeds resampled",
            headline,
        )
        links = ", ".join(
            f"[{n}]({f})" for n, f in zip(FIGURES, figure_files(FIGURES), strict=True)
        )
        return StepSummary(metrics=metrics, section=f"{section}\n\nFigures: {links}.")


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
    """The gaps of one arm (:func:`gap_intervals` over its own seeds); column ``arm``."""
    table = gap_intervals(
        arm_items(per_item, arm), "rmu", arm.variants, subject.gap_tasks, n_boot, label=arm.label
    )
    return table.assign(arm=arm.name)


def interval_figures(study: Study, subject: Subject, tables: dict[str, pd.DataFrame]) -> dict:
    """Accuracy bars (core tasks, the ablations), every task for base and RMU, gap recovered."""
    accuracy = tables["accuracy"]
    core = ~accuracy["task"].isin(subject.report_only)
    bars = accuracy[accuracy["variant"].isin(BAR_VARIANTS) & core]
    plain = accuracy[accuracy["variant"].isin(["base", "rmu"])]
    seeds = len(study.headline.seeds)
    rows = gap_rows(tables["gap_recovered"], study.headline.name)
    return {
        "accuracy_bars": plotting.plot_accuracy_bars(
            bars,
            title=f"{study.title} accuracy by task: base, RMU and ablations (mean of {seeds} "
            "seeds, 95% intervals over items and seeds)",
        ),
        "accuracy_all_tasks": plotting.plot_accuracy_bars(
            plain,
            title=f"{study.title}: base and RMU on every task (letter = lm-evaluation-harness "
            "MMLU prompt; cont = continuation scoring)",
        ),
        "gap_recovered": plotting.plot_gap_recovered(rows),
    }


def arm_summaries(gaps: pd.DataFrame, study: Study) -> dict[str, Any]:
    """Each arm's RMU settings, seeds and gaps (mean over gap tasks, with intervals)."""
    means = gaps[gaps["task"] == stats.MEAN_TASK]
    return {
        arm.name: {
            "rmu": arm.config.to_dict(),
            "seeds": list(arm.seeds),
            "gap_recovered": {
                r.gap: value_and_interval(r) for r in means[means["arm"] == arm.name].itertuples()
            },
        }
        for arm in study.arms
    }
