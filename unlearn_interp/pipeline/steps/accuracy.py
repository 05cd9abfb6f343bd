"""MCQ accuracy of a run's variants on its tasks, and gap recovered: the step that scores one
unlearned model (:class:`Accuracy`), and :func:`accuracy_tables`, the scoring call every step
and attack goes through (each task with its own mode and template, per-item rows kept).

Gap recovered = ``(acc_variant - acc_rmu) / (acc_base - acc_rmu)`` on each forget task.

    >>> Accuracy(("base", "rmu", "rmu_ablated", "rmu_random_ablated"))       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from unlearn_interp import evaluation, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.models import Model
from unlearn_interp.pipeline.report import markdown_table
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.pipeline.subject import TasksOf
from unlearn_interp.variants import Variant

# gap recovered: name -> the ablation of the unlearned model measured between it and base
GAPS = (("junk", "ablated"), ("random", "random_ablated"))
FIGURE = "accuracy_bars"


def accuracy_tables(
    model: Model,
    variants: Sequence[Variant],
    tasks: TasksOf,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(accuracy, per_item)`` of every variant on each of its tasks, each task scored with its
    own mode and template: :func:`evaluation.accuracy_table` (the one loop) on ``Task``s.
    ``tasks`` is one mapping for all variants or a function of a variant's name. ``progress``
    shows one bar counting tasks."""
    tasks_of = tasks if callable(tasks) else (lambda name: tasks)
    chosen = {v.name: tasks_of(v.name) for v in variants}
    settings = {
        name: {"mode": t.mode, "prompt_template": t.prompt_template, "progress": False}
        for each in chosen.values()
        for name, t in each.items()
    }
    return evaluation.accuracy_table(
        model,
        variants,
        lambda name: {n: t.items for n, t in chosen[name].items()},
        batch_size=batch_size,
        progress=progress,
        task_kwargs=settings,
        per_item=True,
    )


ITEM_COLUMNS = ["variant", "task", "item", "correct", "predicted", "answer"]


def evaluate_per_item(
    model: Model,
    variants: Sequence[Variant],
    tasks: TasksOf,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Correctness of every item of every task under every variant: columns ``variant``,
    ``task``, ``item``, ``correct`` (0/1), ``predicted``, ``answer``. ``tasks`` is one mapping
    for all variants or a function of the variant's name (e.g. :meth:`Subject.tasks_for`).

    >>> evaluate_per_item(model, [base, rmu], subject.tasks)                   # doctest: +SKIP
    """
    _, per_item = accuracy_tables(model, variants, tasks, batch_size, progress)
    per_item["correct"] = per_item["correct"].astype(int)
    return per_item[ITEM_COLUMNS]


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Accuracy of the run's ``variants`` on every task, per item kept; metrics: accuracy per
    variant and task, gap recovered by the junk direction and its random control."""

    variants: tuple[str, ...]
    name: str = "accuracy"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.ACCURACY, RunFiles.MCQ_PER_ITEM, *figure_files([FIGURE])]

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        chosen = list(run.variants.variants(self.variants).values())
        table, per_item = accuracy_tables(
            subject.model, chosen, subject.tasks_for, subject.batch_size, progress=False
        )
        return StepOutput(
            tables={"mcq_per_item": per_item, "accuracy": table},
            figures={FIGURE: plotting.plot_accuracy_bars(table)},
        )

    def summary(self, run: Run) -> StepSummary:
        table = run.dir.table("accuracy")
        metrics = accuracy_metrics(table, run.subject.forget_tasks, run.subject.unlearned)
        return StepSummary(metrics=metrics, section=accuracy_section(table, metrics, self.variants))


def accuracy_metrics(
    table: pd.DataFrame, forget_tasks: Sequence[str], unlearned: str = "rmu"
) -> dict[str, Any]:
    """``accuracy`` (variant -> task -> accuracy), ``gap_recovered`` (junk and random, the mean
    over forget tasks) and ``gap_recovered_per_task``."""
    accuracy = {
        variant: {row.task: float(row.accuracy) for row in group.itertuples()}
        for variant, group in table.groupby("variant", sort=False)
    }
    gaps = {
        name: {
            task: _gap(accuracy, unlearned, f"{unlearned}_{suffix}", task) for task in forget_tasks
        }
        for name, suffix in GAPS
    }
    return {
        "accuracy": accuracy,
        "gap_recovered": {k: _mean_or_only(v) for k, v in gaps.items()},
        "gap_recovered_per_task": gaps,
    }


def _gap(
    accuracy: Mapping[str, Mapping[str, float]], unlearned: str, variant: str, task: str
) -> float:
    return evaluation.gap_recovered(
        accuracy["base"][task], accuracy[unlearned][task], accuracy[variant][task]
    )


def _mean_or_only(per_task: Mapping[str, float]) -> float:
    values = list(per_task.values())
    return values[0] if len(values) == 1 else float(sum(values) / len(values))


def accuracy_section(table: pd.DataFrame, metrics: Mapping[str, Any], order: Sequence[str]) -> str:
    """The report's accuracy table (variants as rows, tasks as columns) and gap recovered."""
    grid = table.pivot(index="variant", columns="task", values="accuracy")
    grid = grid.reindex([v for v in order if v in grid.index])
    gaps = metrics["gap_recovered"]
    return "\n".join(
        [
            "## Accuracy",
            "",
            "The junk direction projected out of every block input, attention output and MLP "
            "output (`rmu_ablated`), against a norm-matched random direction (`rmu_random_ablated`).",
            "",
            markdown_table(grid.reset_index()),
            "",
            f"Gap recovered (ablated - rmu) / (base - rmu): junk {gaps['junk']:.2f}, "
            f"random {gaps['random']:.2f}. Figure: [{FIGURE}]({figure_files([FIGURE])[0]}).",
        ]
    )
