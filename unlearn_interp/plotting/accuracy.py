"""Accuracy figures: grouped bars per task and variant with the gap recovered written on them,
the gap-recovered table behind those labels, and horizontal gap-recovered bars with intervals.

Gap recovered is :func:`unlearn_interp.stats.gap_ratio`, ``(acc_v - acc_unlearned) /
(acc_baseline - acc_unlearned)``; this module only decides which tasks have a gap worth a ratio.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from unlearn_interp.plotting.style import (
    FIG_HEIGHT,
    FONT_SIZE,
    TASK_ORDER,
    VARIANT_COLORS,
    chance_line,
    check_columns,
    colors_for,
    ordered,
    style_figure,
    variant_label,
)
from unlearn_interp.stats import gap_ratio


def gap_recovered_table(
    accuracy: pd.DataFrame,
    *,
    baseline: str = "base",
    unlearned: str = "rmu",
    min_gap: float = 0.05,
) -> pd.DataFrame:
    """Gap recovered (:func:`stats.gap_ratio`) of every other variant, per task.

    ``(acc_v - acc_unlearned) / (acc_baseline - acc_unlearned)``, only for tasks where the
    unlearning gap ``acc_baseline - acc_unlearned`` is at least ``min_gap`` (on a retain task
    such as MMLU the ratio is noise over ~0), and only for the variants other than ``baseline``
    and ``unlearned``. Columns: ``variant``, ``task``, ``gap_recovered``.

    >>> acc = pd.DataFrame({"variant": ["base", "rmu", "rmu_ablated"], "task": ["bio"] * 3,
    ...                     "accuracy": [0.6, 0.3, 0.5]})
    >>> round(gap_recovered_table(acc)["gap_recovered"].item(), 3)
    0.667
    """
    check_columns(
        accuracy,
        required=("variant", "task", "accuracy"),
        numeric=("accuracy",),
        table="accuracy",
    )
    wide = accuracy.pivot_table(index="task", columns="variant", values="accuracy", aggfunc="mean")
    rows = []
    if baseline in wide.columns and unlearned in wide.columns:
        others = [v for v in wide.columns if v not in (baseline, unlearned)]
        with_gap = wide[wide[baseline] - wide[unlearned] >= min_gap]  # NaN gaps fail too
        for task, acc in with_gap.iterrows():
            ratios = gap_ratio(acc[others], acc[unlearned], acc[baseline])
            rows += [
                (v, task, float(r)) for v, r in zip(others, ratios, strict=True) if not np.isnan(r)
            ]
    return pd.DataFrame(rows, columns=["variant", "task", "gap_recovered"])


def plot_accuracy_bars(
    accuracy: pd.DataFrame,
    *,
    baseline: str = "base",
    unlearned: str = "rmu",
    chance: float | int | None = 0.25,
    min_gap: float = 0.05,
    title: str | None = None,
) -> go.Figure:
    """Grouped bars of accuracy per task and variant, gap recovered written on the bars.

    ``accuracy`` columns: ``variant`` (e.g. base, rmu, rmu_ablated, rmu_random_ablated -- keep
    the random-direction control in: recovery means nothing without it), ``task`` (hazardous /
    benign, or wmdp_bio / wmdp_cyber / mmlu), ``accuracy``; optional ``ci_low`` / ``ci_high``
    (a 95% interval, e.g. from ``stats.accuracy_intervals``: drawn as error bars) or ``n``
    (items per task: draws 95% binomial error bars) and ``gap_recovered`` (used as given instead of computing
    it with :func:`gap_recovered_table`). Bars of variants other than ``baseline`` and
    ``unlearned`` carry "NN% of gap" on tasks with a gap of at least ``min_gap``.

    >>> fig = plot_accuracy_bars(metrics_table)                          # doctest: +SKIP
    """
    check_columns(
        accuracy,
        required=("variant", "task", "accuracy"),
        numeric=("accuracy", "n", "gap_recovered", "ci_low", "ci_high"),
        table="accuracy",
    )
    gaps = _gap_lookup(accuracy, baseline=baseline, unlearned=unlearned, min_gap=min_gap)
    tasks = ordered(accuracy["task"], TASK_ORDER)
    variants = ordered(accuracy["variant"], tuple(VARIANT_COLORS))
    colors = colors_for(variants)
    fig = go.Figure()
    for variant in variants:
        fig.add_trace(_accuracy_bar(accuracy, variant, tasks, gaps, color=colors[variant]))
    chance_line(fig, chance)
    fig.update_layout(barmode="group", bargap=0.12, bargroupgap=0.03)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], dtick=0.25)
    fig.update_xaxes(title_text="task")
    if title is None:
        title = _accuracy_title(gaps, tasks)
    return style_figure(fig, title=title)


def _gap_lookup(
    accuracy: pd.DataFrame, *, baseline: str, unlearned: str, min_gap: float
) -> dict[tuple, float]:
    """``{(variant, task): gap recovered}`` from the table's own column or computed."""
    if "gap_recovered" in accuracy.columns:
        given = accuracy.dropna(subset=["gap_recovered"])
        return {(r.variant, r.task): float(r.gap_recovered) for r in given.itertuples()}
    table = gap_recovered_table(accuracy, baseline=baseline, unlearned=unlearned, min_gap=min_gap)
    return {(r.variant, r.task): float(r.gap_recovered) for r in table.itertuples()}


def _accuracy_bar(
    accuracy: pd.DataFrame, variant, tasks: list, gaps: dict, *, color: str
) -> go.Bar:
    """One variant's bars: accuracy on top, gap recovered beneath it where defined."""
    rows = accuracy[accuracy["variant"] == variant].groupby("task").mean(numeric_only=True)
    rows = rows.reindex(tasks)
    texts = []
    for task, acc in zip(tasks, rows["accuracy"], strict=True):
        text = "" if np.isnan(acc) else f"{acc:.2f}"
        if (variant, task) in gaps:
            text += f"<br>{gaps[(variant, task)]:.0%} of gap"
        texts.append(text)
    return go.Bar(
        x=tasks,
        y=rows["accuracy"],
        name=variant_label(variant),
        marker_color=color,
        text=texts,
        textposition="inside",
        insidetextanchor="start",  # at the bar's foot: clear of error bars and the chance line
        textangle=0,
        textfont={"size": FONT_SIZE - 1, "color": "white"},
        error_y=_error_bars(rows, "accuracy"),
        cliponaxis=False,
    )


def _error_bars(rows: pd.DataFrame, column: str) -> dict | None:
    """Plotly error bars from ``ci_low`` / ``ci_high`` columns (asymmetric), else a binomial
    95% interval from ``n``, else none."""
    value = rows[column].to_numpy(dtype=float)
    if {"ci_low", "ci_high"} <= set(rows.columns):
        return {
            "type": "data",
            "symmetric": False,
            "thickness": 1.2,
            "array": rows["ci_high"].to_numpy(dtype=float) - value,
            "arrayminus": value - rows["ci_low"].to_numpy(dtype=float),
        }
    if "n" in rows.columns:
        n = rows["n"].to_numpy(dtype=float)
        return {"type": "data", "array": 1.96 * np.sqrt(value * (1 - value) / n), "thickness": 1.2}
    return None


def _accuracy_title(gaps: dict, tasks: list) -> str:
    """'Ablating the junk direction recovers 88% of the hazardous gap; a random direction 1%'."""
    junk = [(t, gaps[("rmu_ablated", t)]) for t in tasks if ("rmu_ablated", t) in gaps]
    if not junk:
        return "Accuracy by task and variant"
    parts = ", ".join(f"{g:.0%} ({t})" for t, g in junk)
    title = f"Ablating the junk direction recovers {parts} of RMU's accuracy gap"
    rand = [gaps[("rmu_random_ablated", t)] for t, _ in junk if ("rmu_random_ablated", t) in gaps]
    if len(rand) == len(junk):
        title += "; a random direction " + ", ".join(f"{g:.0%}" for g in rand)
    return title


def plot_gap_recovered(gaps: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Horizontal bars of gap recovered with 95% intervals, one bar per row of ``gaps``.

    ``gaps`` columns: ``label`` (what was ablated, against which base), ``gap_recovered``,
    ``ci_low``, ``ci_high``; optional ``group`` (colours the bars, e.g. junk vs random
    control). 0 = nothing came back, 1 = all of RMU's accuracy gap came back.

    >>> fig = plot_gap_recovered(pd.DataFrame({"label": ["junk", "random"],
    ...     "gap_recovered": [0.6, 0.0], "ci_low": [0.4, -0.1], "ci_high": [0.8, 0.1]}))
    """
    check_columns(
        gaps,
        required=("label", "gap_recovered", "ci_low", "ci_high"),
        numeric=("gap_recovered", "ci_low", "ci_high"),
        table="gap recovered",
    )
    groups = gaps["group"] if "group" in gaps.columns else pd.Series(["gap"] * len(gaps))
    colors = colors_for(ordered(groups))
    fig = go.Figure()
    for group in ordered(groups):
        rows = gaps[groups.to_numpy() == group]
        fig.add_trace(
            go.Bar(
                y=rows["label"],
                x=rows["gap_recovered"],
                orientation="h",
                name=str(group),
                marker_color=colors[group],
                error_x=_error_bars(rows.rename(columns={"gap_recovered": "value"}), "value"),
                text=[f"{g:.0%}" for g in rows["gap_recovered"]],
                textposition="outside",
            )
        )
    for x in (0, 1):
        fig.add_vline(x=x, line={"dash": "dot", "color": "grey", "width": 1})
    fig.update_xaxes(title_text="gap recovered: (intervened - RMU) / (base - RMU)")
    fig.update_yaxes(autorange="reversed")
    height = max(FIG_HEIGHT, 90 + 34 * len(gaps))
    return style_figure(fig, title=title or "Gap recovered, with 95% intervals", height=height)
