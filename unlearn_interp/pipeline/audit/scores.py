"""The audit's accuracy: every variant of the pair scored question by question (the base and
unlearned models, the unlearned model with the junk direction and subspace ablated and their
random controls, the base model under the same ablations), accuracy and gap recovered with 95%
bootstrap intervals over items, their figures, metrics entries and report section.

    >>> PairScores(n_boot=2000)                                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from unlearn_interp import plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.pipeline.steps.accuracy import evaluate_per_item
from unlearn_interp.pipeline.steps.intervals import (
    gap_intervals,
    gap_rows,
    headline_gaps,
    interval_metrics,
    interval_section,
)

FIGURES = ("accuracy_bars", "gap_recovered")
# The ablations scored, of the unlearned model and (after "base_") of the base model.
ABLATIONS = ("ablated", "random_ablated", "subspace_ablated", "random_subspace_ablated")
BASE_ABLATIONS = ("base_ablated", "base_subspace_ablated")


def variant_names(unlearned: str) -> tuple[str, ...]:
    """Every variant the audit scores, base and the unlearned model first."""
    return ("base", unlearned, *(f"{unlearned}_{a}" for a in ABLATIONS), *BASE_ABLATIONS)


@dataclasses.dataclass(frozen=True)
class PairScores:
    """Per-item scores of :func:`variant_names` (random controls on the forget tasks only, as
    the subject says), ``tables/accuracy.csv`` and ``tables/gap_recovered.csv`` with intervals
    over items (``n_boot`` replicates)."""

    n_boot: int = 2000
    name: str = "accuracy"

    def files(self, run: Run) -> list[str]:
        tables = [RunFiles.MCQ_PER_ITEM, RunFiles.ACCURACY, RunFiles.table("gap_recovered")]
        return tables + figure_files(FIGURES)

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        names = variant_names(subject.unlearned)
        chosen = list(run.variants.variants(names).values())
        per_item = evaluate_per_item(
            subject.model, chosen, subject.tasks_for, subject.batch_size, run.progress
        ).assign(seed=float("nan"))  # one unlearned model: intervals resample items only
        accuracy = stats.accuracy_intervals(per_item, n_boot=self.n_boot)
        gaps = gap_intervals(per_item, subject.unlearned, names, subject.gap_tasks, self.n_boot)
        figures = {
            "accuracy_bars": plotting.plot_accuracy_bars(
                accuracy,
                unlearned=subject.unlearned,
                title=f"{subject.title}: accuracy by task (95% intervals over items)",
            ),
            "gap_recovered": plotting.plot_gap_recovered(gap_rows(gaps)),
        }
        tables = {"mcq_per_item": per_item, "accuracy": accuracy, "gap_recovered": gaps}
        return StepOutput(tables=tables, figures=figures)

    def summary(self, run: Run) -> StepSummary:
        subject = run.subject
        accuracy, gaps = run.dir.table("accuracy"), run.dir.table("gap_recovered")
        metrics = interval_metrics(accuracy, gaps, headline_gaps(gaps))
        section = interval_section(
            accuracy,
            gaps,
            variant_names(subject.unlearned),
            list(subject.tasks),
            subject.gap_tasks,
            "items resampled",
        )
        links = ", ".join(
            f"[{n}]({f})" for n, f in zip(FIGURES, figure_files(FIGURES), strict=True)
        )
        return StepSummary(metrics=metrics, section=f"{section}\n\nFigures: {links}.")
