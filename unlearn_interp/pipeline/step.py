"""The step contract: what every step of every pipeline is, and how a run executes a list of them.

A **step** takes the run (:class:`Run`: its directory and its :class:`~.subject.Subject`, the
model, data and settings) and

* ``compute(run)`` returns its :class:`StepOutput`: tables, figures and other files, which the
  run writes atomically (a step may write resumable parts of its own while it computes);
* ``summary(run)`` returns its :class:`StepSummary`, read back from what it wrote: its entries of
  ``metrics.json`` and its section of ``report.md``, so a finished step skipped on a resumed run
  tells the same story as a fresh one.

A **pipeline** is an ordered list of steps. :func:`run_steps` runs those not finished before
(their files exist and their time is recorded, :meth:`RunDir.step`); :func:`run_pipeline` then
writes ``metrics.json`` and ``report.md`` once, the sections in the steps' order. The organism
demo, the real-model study and the run on a checkpoint pair are such lists over the same steps.

    >>> run = Run(RunDir("runs/demo"), subject)                            # doctest: +SKIP
    >>> metrics = run_pipeline(run, [Directions(...), Accuracy(...)], Report("A title"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from unlearn_interp import artifacts, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import render_report, seconds_summary
from unlearn_interp.pipeline.rundir import FIGURES, RunDir
from unlearn_interp.pipeline.subject import Subject
from unlearn_interp.pipeline.variants import RunVariants


@dataclasses.dataclass
class StepOutput:
    """What a step computed, for the run to write: ``tables`` (``tables/<name>.csv``),
    ``figures`` (``figures/<name>.html``, and PNG where static export works) and ``files``
    (run-relative name -> a function writing that file at the path it is given)."""

    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, Callable[[Path], Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepSummary:
    """A step's part of the story: its ``metrics.json`` entries and its ``report.md`` section."""

    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    section: str = ""


@dataclasses.dataclass
class Run:
    """What every step receives: the run directory and its subject. ``variants`` are read from
    the files the unlearning step wrote (in ``subject.variants_folder``), once per run."""

    dir: RunDir
    subject: Subject
    progress: bool = True

    @functools.cached_property
    def variants(self) -> RunVariants:
        folder = RunDir(self.dir.path(self.subject.variants_folder))
        return RunVariants(folder, self.subject.unlearned)


@runtime_checkable
class Step(Protocol):
    """One unit of a run (see the module docstring)."""

    name: str  # its record in tables/step_seconds.json

    def files(self, run: Run) -> list[str]:
        """The run-relative files whose presence (with the time recorded) means it finished."""

    def compute(self, run: Run) -> StepOutput:
        """Its tables, figures and files, for the run to write."""

    def summary(self, run: Run) -> StepSummary:
        """Its metrics entries and report section, from what it wrote."""


def figure_files(names: Sequence[str]) -> list[str]:
    """``figures/<name>.html`` of each figure name: what marks a step's figures as written."""
    return [f"{FIGURES}/{name}.html" for name in names]


def write_output(run_dir: RunDir, output: StepOutput) -> None:
    """Write a step's output into the run, each file atomically (figures last)."""
    for name, writer in output.files.items():
        with artifacts.atomic_path(run_dir.path(name)) as tmp:
            writer(tmp)
    for name, table in output.tables.items():
        run_dir.write_table(name, table)
    for name, fig in output.figures.items():
        plotting.save_figure(fig, run_dir.path(f"{FIGURES}/{name}.html"))


def run_steps(run: Run, steps: Sequence[Step]) -> None:
    """Run every step not finished before, in order (a finished one is skipped)."""
    for step in steps:
        run.dir.step(
            step.name, step.files(run), lambda step=step: write_output(run.dir, step.compute(run))
        )


@dataclasses.dataclass(frozen=True)
class Report:
    """How a run's report.md opens and closes around the steps' sections: its ``title``, an
    ``intro`` paragraph, the ``facts`` every run records besides the steps' entries (put first
    in metrics.json) and ``closing`` sections (e.g. the targets)."""

    title: str
    intro: str = ""
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    closing: str = ""


def run_pipeline(run: Run, steps: Sequence[Step], report: Report) -> dict[str, Any]:
    """Run the unfinished ``steps``, then write ``metrics.json`` and ``report.md`` once from every
    step's summary, in order; returns the metrics."""
    run_steps(run, steps)
    summaries = [step.summary(run) for step in steps]
    metrics = {**report.facts}
    for summary in summaries:
        metrics.update(summary.metrics)
    metrics["seconds"] = seconds_summary(run.dir.seconds(), run.dir.root)
    artifacts.write_json(run.dir.path(RunFiles.METRICS), metrics)
    sections = [s.section for s in summaries if s.section]
    text = render_report(report.title, report.intro, sections, metrics["seconds"], report.closing)
    artifacts.write_text(run.dir.path(RunFiles.REPORT), text)
    return metrics
