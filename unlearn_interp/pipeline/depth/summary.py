"""The depth profile in report.md and metrics.json: per variant, at the RMU layer and at the
last layer, the probes, the lenses and the similarity to base, with intervals.

    >>> section = depth_markdown(read_depth_tables(run), layer=2)           # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import markdown_table
from unlearn_interp.pipeline.rundir import FIGURES, RunDir

SECTION = "## Depth profile"
TABLES = ("depth_probes", "depth_lens", "depth_lens_kl", "depth_similarity")
FIGURE = "depth_profile"


def read_depth_tables(run_dir: RunDir) -> dict[str, pd.DataFrame]:
    """The depth step's tables in ``run_dir``, by name."""
    return {name: run_dir.table(name) for name in TABLES}


# measure -> (table, which rows, value column); the report's columns, in this order
MEASURES: dict[str, tuple[str, dict[str, str], str]] = {
    "own probe": ("depth_probes", {"label": "choice", "probe": "own"}, "accuracy"),
    "base probe": ("depth_probes", {"label": "choice", "probe": "reference"}, "accuracy"),
    "shuffled": ("depth_probes", {"label": "choice", "probe": "shuffled"}, "accuracy"),
    "logit lens": ("depth_lens", {"prompt_set": "forget", "lens": "logit"}, "choice_accuracy"),
    "tuned lens": ("depth_lens", {"prompt_set": "forget", "lens": "tuned"}, "choice_accuracy"),
    "CKA forget": ("depth_similarity", {"prompt_set": "forget"}, "cka"),
    "CKA retain": ("depth_similarity", {"prompt_set": "retain"}, "cka"),
}


def depth_summary(tables: Mapping[str, pd.DataFrame], layer: int) -> pd.DataFrame:
    """One row per variant, layer (the RMU ``layer`` and the last) and measure
    (:data:`MEASURES`): own and base-probe accuracy and the shuffled control (``choice``
    label), the logit and tuned lens's choice accuracy on forget questions, each with its
    interval, and CKA to base on forget and retain prompts. Columns ``variant, layer,
    measure, value, ci_low, ci_high``."""
    last = int(tables["depth_probes"]["layer"].max())
    rows = []
    for variant in dict.fromkeys(tables["depth_probes"]["variant"]):
        for at in dict.fromkeys((layer, last)):
            for name, (table, where, value) in MEASURES.items():
                row = _pick(tables[table], variant=variant, layer=at, **where)
                rows.append(_measure(variant, at, name, row, value))
    return pd.DataFrame(rows)


def _pick(table: pd.DataFrame, **where: Any) -> pd.Series | None:
    chosen = table
    for column, value in where.items():
        chosen = chosen[chosen[column] == value]
    return chosen.iloc[0] if len(chosen) else None


def _measure(variant: str, layer: int, name: str, row: pd.Series | None, value: str) -> dict:
    nan = float("nan")
    get = (lambda c: nan) if row is None else (lambda c: float(row[c]) if c in row else nan)
    return {
        "variant": variant,
        "layer": layer,
        "measure": name,
        "value": get(value),
        "ci_low": get("ci_low"),
        "ci_high": get("ci_high"),
    }


def _cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as the report's table: a column per measure, ``0.62 [0.55, 0.69]``."""

    def cell(row: pd.Series) -> str:
        if math.isnan(row["value"]):
            return "-"
        if math.isnan(row["ci_low"]):
            return f"{row['value']:.2f}"
        return f"{row['value']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"

    shown = summary.assign(cell=summary.apply(cell, axis=1))
    wide = shown.pivot(index=["variant", "layer"], columns="measure", values="cell")
    order = list(dict.fromkeys(summary["variant"]))
    wide = wide.reset_index().sort_values(
        "variant", key=lambda c: c.map(order.index), kind="stable"
    )
    return wide[["variant", "layer", *MEASURES]].reset_index(drop=True)


def lens_kl_summary(kl: pd.DataFrame) -> dict[str, float]:
    """Mean KL to the model's own output over layers, per lens (logit, tuned)."""
    return {str(k): float(v) for k, v in kl.groupby("lens")["kl"].mean().items()}


def depth_markdown(tables: Mapping[str, pd.DataFrame], layer: int, figure_png: bool = False) -> str:
    """The depth section of report.md."""
    kl = lens_kl_summary(tables["depth_lens_kl"])
    figure = f"{FIGURES}/{FIGURE}"
    lines = [
        SECTION,
        "",
        "Where the forgotten knowledge still is, by layer (layer l = the residual stream after "
        f"block l; RMU layer {layer} and the last layer shown). Probes read the answer among the "
        "question's choices from the residual stream, trained and tested on different entities "
        "(own: trained on this model; base probe: trained on the base model; shuffled: the "
        "control, trained on permuted answers); the lenses decode the residual stream through "
        "the final norm and unembedding (tuned: after an affine translator fitted on retain "
        "text); CKA compares each model's residual stream with the base model's. Accuracies "
        "on forget questions with 95% bootstrap intervals over questions.",
        "",
        markdown_table(_cells(depth_summary(tables, layer))),
        "",
        f"Mean KL to the model's own next-token distribution over layers, held-out retain text: "
        f"logit lens {kl.get('logit', float('nan')):.2f}, tuned lens "
        f"{kl.get('tuned', float('nan')):.2f} nats.",
        "",
        *([f"![depth profile]({figure}.png)", ""] if figure_png else []),
        f"Every layer: [{RunFiles.table('depth_probes')}]({RunFiles.table('depth_probes')}), "
        f"[{RunFiles.table('depth_lens')}]({RunFiles.table('depth_lens')}), "
        f"[{RunFiles.table('depth_similarity')}]({RunFiles.table('depth_similarity')}); "
        f"figure: [depth profile]({figure}.html).",
    ]
    return "\n".join(lines) + "\n"


def depth_metrics(tables: Mapping[str, pd.DataFrame], layer: int) -> dict[str, Any]:
    """metrics.json's ``"depth"`` entry: :func:`depth_summary` as ``{variant: {layer:
    {measure: {value, ci_low, ci_high}}}}`` (NaN as null), and the lenses' mean KL."""
    by_variant: dict[str, dict[str, Any]] = {}
    for row in depth_summary(tables, layer).to_dict("records"):
        numbers = {k: _number(row[k]) for k in ("value", "ci_low", "ci_high")}
        by_variant.setdefault(row["variant"], {}).setdefault(str(row["layer"]), {})[
            row["measure"]
        ] = numbers
    return {
        "rmu_layer": layer,
        "variants": by_variant,
        "lens_kl_mean": lens_kl_summary(tables["depth_lens_kl"]),
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value
