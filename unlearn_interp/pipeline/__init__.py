"""The reproduction as named resumable steps writing a run directory (DESIGN.md "The run
directory"), for the model organism, a real checkpoint, and the multi-seed real-model study.

* :mod:`~unlearn_interp.pipeline.rundir`: :class:`RunDir`, the step runner and its records;
* :mod:`~unlearn_interp.pipeline.run_variants`: the run's variants, read from its files once;
* :mod:`~unlearn_interp.pipeline.steps`: the steps both pipelines run (unlearn, directions,
  scoring, layer profile, generations, figures);
* :mod:`~unlearn_interp.pipeline.demo`: :func:`run_demo` (the organism) and
  :func:`run_experiment` (a real checkpoint and the user's MCQ files);
* :mod:`~unlearn_interp.pipeline.study` (with ``study_config``): the multi-seed study;
* :mod:`~unlearn_interp.pipeline.metrics`, :mod:`~unlearn_interp.pipeline.report`,
  :mod:`~unlearn_interp.pipeline.figures`: metrics.json, report.md and figures from the tables;
* :mod:`~unlearn_interp.pipeline.gallery`: the committed figures; ``jobs``: what each command
  of the command line does.

    >>> metrics = run_demo("runs/demo")                                    # doctest: +SKIP
    >>> metrics["gap_recovered"]                                           # doctest: +SKIP
    {'junk': 0.9, 'random': 0.0}
"""

from __future__ import annotations

from unlearn_interp.pipeline.demo import (
    DEMO_TARGETS,
    ORGANISM_RMU,
    VARIANT_NAMES,
    Experiment,
    compute_metrics,
    organism_experiment,
    organism_rmu_config,
    run_analysis,
    run_demo,
    run_experiment,
    step_accuracy,
    step_direction,
    step_figures,
    step_generations,
    step_layer_profile,
    step_report,
    step_unlearned_checkpoint,
    unlearned_variants,
)
from unlearn_interp.pipeline.figures import FIGURE_NAMES, demo_figures
from unlearn_interp.pipeline.metrics import profile_summary
from unlearn_interp.pipeline.report import markdown_table, render_report
from unlearn_interp.pipeline.run_variants import RunVariants, control_vectors
from unlearn_interp.pipeline.rundir import FIGURES, STEP_TIMES, TABLES, RunDir
from unlearn_interp.pipeline.steps import step_unlearn

__all__ = [
    "DEMO_TARGETS",
    "FIGURES",
    "FIGURE_NAMES",
    "ORGANISM_RMU",
    "STEP_TIMES",
    "TABLES",
    "VARIANT_NAMES",
    "Experiment",
    "RunDir",
    "RunVariants",
    "compute_metrics",
    "control_vectors",
    "demo_figures",
    "markdown_table",
    "organism_experiment",
    "organism_rmu_config",
    "profile_summary",
    "render_report",
    "run_analysis",
    "run_demo",
    "run_experiment",
    "step_accuracy",
    "step_direction",
    "step_figures",
    "step_generations",
    "step_layer_profile",
    "step_report",
    "step_unlearn",
    "step_unlearned_checkpoint",
    "unlearned_variants",
]
