"""report.md and the ``seconds`` of metrics.json: the page a run assembles from its steps'
sections, and the Markdown pieces those sections are made of.

    >>> print(markdown_table(pd.DataFrame({"variant": ["base"], "accuracy": [0.9]})))
    | variant | accuracy |
    |---|---|
    | base | 0.900 |
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn_interp import artifacts
from unlearn_interp.artifacts import RunFiles

# Groups of step times in metrics.json's ``seconds``: name -> the steps summed into it. Every
# other step counts as analysis; a group appears only when one of its steps ran.
SECONDS_GROUPS = {
    "pretrain": ("organism",),
    "fetch": ("fetch",),
    "data": ("data",),
    "rmu": ("unlearn", "seeds_unlearn"),
}
ALWAYS_REPORTED = ("rmu",)
# Steps whose time is that of their parts (counted there: the sub-runs' steps as
# ``seeds_<step>``, the ledger's parts as ``ledger_<part>``).
CONTAINERS = ("seeds", "ledger")


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (floats rounded to ``digits``)."""

    def cell(value: Any) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def bullet_lines(mapping: Mapping[str, Any], fmt: str = "") -> list[str]:
    """``- key: value`` lines, each value formatted with ``fmt``."""
    return [f"- {k}: {v:{fmt}}" for k, v in mapping.items()]


def interval_cell(value: float, low: float, high: float, digits: int = 2) -> str:
    """``0.62 [0.55, 0.69]``: a figure with its interval."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def render_report(
    title: str, intro: str, sections: Sequence[str], seconds: Mapping[str, Any], closing: str = ""
) -> str:
    """report.md: the title, the intro, each step's section in order, the timing and the
    ``closing`` sections."""
    timing = {k: v for k, v in seconds.items() if k != "steps"}
    parts = [f"# {title}\n", *([f"{intro}\n"] if intro else [])]
    parts += [section.rstrip("\n") + "\n" for section in sections]
    parts.append("\n".join(["## Timing (seconds)", "", *bullet_lines(timing)]) + "\n")
    if closing:
        parts.append(closing.rstrip("\n") + "\n")
    return "\n".join(parts)


def seconds_summary(steps: Mapping[str, float], root: str | os.PathLike) -> dict[str, Any]:
    """metrics.json's ``seconds``: :data:`SECONDS_GROUPS` that ran (``rmu`` always), every other
    step as ``analysis``, their ``total``, and every step by name (the sub-runs' steps of
    ``seeds/*`` summed as ``seeds_<step>``; a step made of parts, :data:`CONTAINERS`, is listed
    but counted through its parts)."""
    every = {**steps, **_sub_run_seconds(root)}
    grouped = {name: [s for s in every if s in members] for name, members in SECONDS_GROUPS.items()}
    summary = {
        name: round(sum(every[s] for s in found), 3)
        for name, found in grouped.items()
        if found or name in ALWAYS_REPORTED
    }
    in_groups = {s for found in grouped.values() for s in found}
    counted = {k: v for k, v in every.items() if k not in CONTAINERS}
    summary["analysis"] = round(sum(v for k, v in counted.items() if k not in in_groups), 3)
    summary["total"] = round(sum(counted.values()), 3)
    summary["steps"] = {k: round(v, 3) for k, v in every.items()}
    return summary


def _sub_run_seconds(root: str | os.PathLike) -> dict[str, float]:
    """Step times of the sub-runs ``seeds/*``, summed per step as ``seeds_<step>``."""
    summed: dict[str, float] = {}
    for path in sorted(Path(root).glob(f"seeds/*/{RunFiles.STEP_SECONDS}")):
        for step, value in artifacts.read_json(path).items():
            summed[f"seeds_{step}"] = summed.get(f"seeds_{step}", 0.0) + value
    return summed
