"""report.md: a run's story on one page, for the organism demo and for the real-model study,
and the short summary the command line prints after the study.

    >>> write_demo_report(run, ("hazardous",), layer=2, title="...", targets={})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from unlearn_interp import artifacts, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.figures import FIGURE_NAMES, STUDY_FIGURES, gap_rows
from unlearn_interp.pipeline.metrics import demo_metrics, profile_summary, study_metrics
from unlearn_interp.pipeline.rundir import FIGURES, RunDir
from unlearn_interp.pipeline.study_config import FULL_VARIANTS, Study

DEMO_VARIANTS = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (floats rounded to ``digits``)."""

    def cell(value: Any) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _items(mapping: Mapping[str, Any], fmt: str = "") -> list[str]:
    return [f"- {k}: {v:{fmt}}" for k, v in mapping.items()]


def write_demo_report(
    run: RunDir, forget_tasks: Sequence[str], layer: int, title: str, targets: Mapping[str, str]
) -> dict:
    """metrics.json and report.md of a one-model run; always rewritten (cheap)."""
    metrics = demo_metrics(run, forget_tasks, layer)
    artifacts.write_json(run.path(RunFiles.METRICS), metrics)
    artifacts.write_text(run.path(RunFiles.REPORT), render_report(run, metrics, title, targets))
    return metrics


def render_report(
    run: RunDir, metrics: Mapping[str, Any], title: str, targets: Mapping[str, str]
) -> str:
    """report.md of a one-model run (the organism demo or ``run``)."""
    acc = run.table("accuracy").pivot(index="variant", columns="task", values="accuracy")
    acc = acc.reindex([v for v in DEMO_VARIANTS if v in acc.index])
    gaps, junk = metrics["gap_recovered"], metrics["junk_direction"]
    lines = [
        f"# {title}",
        "",
        "RMU was applied, the junk direction was read at layer "
        f"{junk['layer']} (residual stream after that block) as mean(rmu) - "
        "mean(base) at the last token of forget prompts, and projected out of every block input, "
        "attention output and MLP output. A norm-matched random direction is the control.",
        "",
        "## Accuracy",
        "",
        markdown_table(acc.reset_index()),
        "",
        f"Gap recovered (ablated - rmu) / (base - rmu): junk {gaps['junk']:.2f}, "
        f"random {gaps['random']:.2f}.",
        "",
        "## Layer profile",
        "",
        *_items(metrics["layer_profile"], ".3f"),
        f"- cos(junk direction, control vector): {junk['cos_with_control_vector']:.3f}",
        "",
        "## Figures",
        "",
        *[f"- [{name}]({FIGURES}/{name}.html)" for name in FIGURE_NAMES],
        "",
        "## Generations on forget prompts",
        "",
        plotting.generations_markdown(run.table("generations")),
        "",
        "## Timing (seconds)",
        "",
        *_items(metrics["seconds"]),
    ]
    if targets:
        lines += ["", "## Targets", "", *_items(targets)]
    return "\n".join(lines) + "\n"


def write_study_report(run: RunDir, study: Study, tables: Mapping[str, pd.DataFrame]) -> dict:
    """metrics.json and report.md of the study; always rewritten (cheap)."""
    metrics = study_metrics(run, study, tables)
    artifacts.write_json(run.path(RunFiles.METRICS), metrics)
    artifacts.write_text(run.path(RunFiles.REPORT), render_study_report(run, study, metrics))
    return metrics


def render_study_report(run: RunDir, study: Study, metrics: Mapping[str, Any]) -> str:
    """report.md: the study on one page."""
    cfg = study.headline.config
    lines = [
        f"# Is RMU shallow on a real model? {study.title} on real data",
        "",
        f"Model: {study.title}. {study.model_note} RMU at layer "
        f"{cfg.layer} (residual stream after block {cfg.layer}), update layers "
        f"{list(cfg.update_layers)}, c = {cfg.steering_coef}, alpha = {cfg.alpha}, lr = {cfg.lr}, "
        f"{cfg.steps} steps, seeds {list(study.headline.seeds)}. Forget topic: "
        f"{study.data.topic}; forget tasks: {', '.join(study.data.forget_tasks)}.",
        "",
        "Every figure is the mean over seeds with a 95% bootstrap interval (items and seeds "
        "resampled, paired across variants).",
        "",
        "## Accuracy",
        "",
        markdown_table(_interval_grid(run.table("accuracy"), study)),
        "",
        f"## Gap recovered (mean of {', '.join(study.gap_tasks)})",
        "",
        markdown_table(_gap_grid(run.table("gap_recovered"))),
        "",
        "## Junk direction and subspace",
        "",
        *_items(metrics["junk_direction"]),
        *_items(profile_summary(run.table("layer_profile"), cfg.layer), ".3f"),
        "",
        "## Figures",
        "",
        *[f"- [{name}]({FIGURES}/{name}.html)" for name in STUDY_FIGURES],
        "",
        "## Generations on forget-topic prompts (first seed)",
        "",
        plotting.generations_markdown(run.table("generations")),
        "",
        "## Data",
        "",
        *_items(study.data.provenance),
        "",
        "## Timing (seconds)",
        "",
        *_items(metrics["seconds"]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _interval_grid(accuracy: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Variants as rows, tasks as columns, cells ``0.62 [0.55, 0.69]``."""
    cells = accuracy.assign(
        cell=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
              zip(accuracy["accuracy"], accuracy["ci_low"], accuracy["ci_high"], strict=True)]
    )  # fmt: skip
    grid = cells.pivot(index="variant", columns="task", values="cell").fillna("-")
    order = [v for v in ("base", *FULL_VARIANTS) if v in grid.index]
    order += [v for v in grid.index if v not in order]
    return grid.reindex(order)[list(study.tasks)].reset_index()


def _gap_grid(gaps: pd.DataFrame) -> pd.DataFrame:
    rows = gap_rows(gaps)
    return pd.DataFrame({
        "ablation": rows["label"],
        "gap recovered": [f"{g:.2f}" for g in rows["gap_recovered"]],
        "95% interval": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in
                         zip(rows["ci_low"], rows["ci_high"], strict=True)],
    })  # fmt: skip


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def summary_text(metrics: Mapping[str, Any], out: str | os.PathLike) -> str:
    """The short table the command line prints at the end: accuracy per variant and task (mean
    over seeds) and gap recovered with 95% intervals."""
    accuracy = metrics["accuracy"]
    tasks = [*metrics["forget_tasks"], *metrics["retain_tasks"]]
    width = max(len(t) for t in tasks) + 2
    lines = [f"{'variant':<30}" + "".join(f"{t:>{width}}" for t in tasks)]
    for variant in ("base", *FULL_VARIANTS):
        if variant in accuracy:
            cells = "".join(_cell(accuracy[variant].get(t), width) for t in tasks)
            lines.append(f"{variant:<30}" + cells)
    lines.append(
        f"gap recovered (mean of {', '.join(metrics['gap_tasks'])}; 95% interval, items and seeds):"
    )
    for name, value in metrics["gap_recovered"].items():
        ci = metrics["gap_recovered_ci"][name]
        lines.append(f"  {name:<26} {value:6.2f}  [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]")
    lines.append(f"total {metrics['seconds']['total']:.0f} s; report: {out}/report.md")
    return "\n".join(lines) + "\n"
