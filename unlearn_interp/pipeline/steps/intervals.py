"""Accuracy and gap recovered with 95% bootstrap intervals (:mod:`unlearn_interp.stats`): which
gaps are measured (:data:`GAP_ROLES`), their table from per-item rows, and how they read in
metrics.json, report.md and figures. The real-model study's headline (intervals over items and
seeds) and the audit of a pair (over items) are both made of these.

Gap recovered by a variant ``v`` of the unlearned model ``u``: ``(v - u) / (ref - u)``, with
``ref`` the base model, or the base model under the same ablation (what the base itself keeps).

    >>> gaps = gap_intervals(per_item, "unlearned", present, ("sciq_chem",), n_boot=1000)  # doctest: +SKIP
    >>> gap_rows(gaps)[["label", "gap_recovered", "ci_low", "ci_high"]]    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import pandas as pd

from unlearn_interp import stats
from unlearn_interp.pipeline.report import interval_cell, markdown_table

# gap recovered: name -> (the ablation of the unlearned model, the reference it is measured
# against: "base" itself or the base model under the same ablation)
GAP_ROLES = {
    "junk": ("ablated", "base"),
    "random": ("random_ablated", "base"),
    "subspace": ("subspace_ablated", "base"),
    "random_subspace": ("random_subspace_ablated", "base"),
    "junk_vs_ablated_base": ("ablated", "base_ablated"),
    "subspace_vs_ablated_base": ("subspace_ablated", "base_subspace_ablated"),
}
GAP_LABELS = {
    "junk": "junk direction (vs base)",
    "random": "random direction (vs base)",
    "subspace": "junk subspace (vs base)",
    "random_subspace": "random subspace (vs base)",
    "junk_vs_ablated_base": "junk direction (vs base, same ablation)",
    "subspace_vs_ablated_base": "junk subspace (vs base, same ablation)",
}


def ablated(unlearned: str, suffix: str) -> str:
    """The name of an ablation of the unlearned model: ``ablated("rmu", "ablated")`` is
    ``"rmu_ablated"``."""
    return f"{unlearned}_{suffix}"


def gap_intervals(
    per_item: pd.DataFrame,
    unlearned: str,
    present: Collection[str],
    gap_tasks: Sequence[str],
    n_boot: int,
    label: Callable[[str], str] = str,
) -> pd.DataFrame:
    """Every gap of :data:`GAP_ROLES` whose variants are ``present``, per gap task and their
    mean (``task == "mean"``), with paired intervals; column ``gap`` names the entry. ``label``
    maps a variant name to its name in ``per_item`` (the study labels its arms' variants)."""
    wanted = [
        (name, ablated(unlearned, suffix), ref)
        for name, (suffix, ref) in GAP_ROLES.items()
        if ablated(unlearned, suffix) in present and (ref == "base" or ref in present)
    ]
    table = stats.gap_recovered_intervals(
        per_item,
        unlearned=label(unlearned),
        variants=[label(v) for _, v, ref in wanted if ref == "base"],
        reference={label(v): label(ref) for _, v, ref in wanted if ref != "base"},
        forget_tasks=list(gap_tasks),
        n_boot=n_boot,
    )
    names = {(label(v), "base" if ref == "base" else label(ref)): name for name, v, ref in wanted}
    table["gap"] = [names[(v, a)] for v, a in zip(table["variant"], table["against"], strict=True)]
    return table


def gap_rows(gaps: pd.DataFrame, headline_arm: str | None = None) -> pd.DataFrame:
    """The mean-over-gap-tasks rows, labelled for a figure or table (rows of another arm than
    ``headline_arm`` carry its name)."""
    rows = gaps[gaps["task"] == stats.MEAN_TASK].copy()
    arms = rows["arm"] if "arm" in rows else [headline_arm] * len(rows)
    rows["label"] = [
        GAP_LABELS[g] if a == headline_arm else f"{a}: {GAP_LABELS[g]}"
        for a, g in zip(arms, rows["gap"], strict=True)
    ]
    rows["group"] = ["random control" if "random" in g else "junk" for g in rows["gap"]]
    return rows


def nested(table: pd.DataFrame, columns: str | list[str]) -> dict[str, dict[str, Any]]:
    """``{variant: {task: value}}`` of one column, or of several as a dict."""
    out: dict[str, dict[str, Any]] = {}
    for row in table.itertuples(index=False):
        if isinstance(columns, str):
            value: Any = float(getattr(row, columns))
        else:
            value = {c: _number(getattr(row, c)) for c in columns}
        out.setdefault(row.variant, {})[row.task] = value
    return out


def _number(value: Any) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) > 1 else float(value)


def interval(row: Any) -> dict[str, float]:
    """``{"ci_low", "ci_high"}`` of a row."""
    return {"ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}


def value_and_interval(row: Any) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` of a gap row."""
    return {"value": float(row.gap_recovered), **interval(row)}


def interval_metrics(
    accuracy: pd.DataFrame, gaps: pd.DataFrame, headline: pd.DataFrame
) -> dict[str, Any]:
    """metrics.json's ``accuracy`` and ``gap_recovered`` (the ``headline`` rows: one arm's mean
    over gap tasks, indexed by gap) with their intervals beside them (``*_ci``), and gap
    recovered per task."""
    per_task = gaps[gaps["task"] != stats.MEAN_TASK]
    by_gap: dict[str, dict[str, dict[str, float]]] = {}
    for r in per_task.itertuples():
        by_gap.setdefault(r.gap, {})[r.task] = value_and_interval(r)
    return {
        "accuracy": nested(accuracy, "accuracy"),
        "accuracy_ci": nested(accuracy, ["ci_low", "ci_high", "n_items", "n_seeds"]),
        "gap_recovered": {name: float(row.gap_recovered) for name, row in headline.iterrows()},
        "gap_recovered_ci": {name: interval(row) for name, row in headline.iterrows()},
        "gap_recovered_per_task": by_gap,
    }


def interval_grid(
    accuracy: pd.DataFrame, order: Sequence[str], tasks: Sequence[str]
) -> pd.DataFrame:
    """Variants as rows (``order`` first), tasks as columns, cells ``0.620 [0.550, 0.690]``."""
    cells = accuracy.assign(
        cell=[
            interval_cell(a, lo, hi, digits=3)
            for a, lo, hi in zip(
                accuracy["accuracy"], accuracy["ci_low"], accuracy["ci_high"], strict=True
            )
        ]
    )
    grid = cells.pivot(index="variant", columns="task", values="cell").fillna("-")
    rows = [v for v in order if v in grid.index] + [v for v in grid.index if v not in order]
    return grid.reindex(rows)[[t for t in tasks if t in grid.columns]].reset_index()


def interval_section(
    accuracy: pd.DataFrame,
    gaps: pd.DataFrame,
    order: Sequence[str],
    tasks: Sequence[str],
    gap_tasks: Sequence[str],
    about: str,
    headline_arm: str | None = None,
) -> str:
    """The report's accuracy grid and gap-recovered table, each figure with its interval;
    ``about`` says what the intervals resample."""
    rows = gap_rows(gaps, headline_arm)
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
            f"Every figure with a 95% bootstrap interval ({about}, paired across variants).",
            "",
            markdown_table(interval_grid(accuracy, order, tasks)),
            "",
            f"## Gap recovered (mean of {', '.join(gap_tasks)})",
            "",
            markdown_table(gap_table),
        ]
    )


def headline_gaps(gaps: pd.DataFrame, arm: str | None = None) -> pd.DataFrame:
    """The mean-over-gap-tasks rows of one arm (all rows without arms), indexed by gap."""
    means = gaps[gaps["task"] == stats.MEAN_TASK]
    if arm is not None and "arm" in means:
        means = means[means["arm"] == arm]
    return means.set_index("gap")
