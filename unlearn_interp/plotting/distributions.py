"""Distributions as overlaid histograms: cos(u, h) on forget prompts per steering coefficient,
and token confidence (MaxLogit) per variant and/or coefficient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.plotting.style import (
    check_columns,
    colors_for,
    fmt_coef,
    style_figure,
    variant_label,
)


def _overlaid_histograms(
    df: pd.DataFrame, value: str, by: Sequence[str], *, nbins: int, coef_label: str
) -> tuple[go.Figure, list[tuple]]:
    """One semi-transparent histogram per group on shared bins, each normalised to fractions.

    Groups are tuples over ``by`` (NaN -> None, so the base model's missing coef is kept);
    numeric coefficients come in increasing order, coef-less groups first.
    """
    grouped = {}
    for key, rows in df.groupby(list(by), dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)  # pandas < 2 gives scalars for one key
        grouped[tuple(None if pd.isna(k) else k for k in key)] = rows[value]
    groups = list(grouped)
    if "coef" in by and pd.api.types.is_numeric_dtype(df["coef"]):
        i = list(by).index("coef")
        groups.sort(key=lambda g: (g[i] is not None, g[i] if g[i] is not None else 0))
    lo, hi = float(df[value].min()), float(df[value].max())
    size = (hi - lo) / nbins if hi > lo else 1.0
    fig = go.Figure()
    for group, color in zip(groups, _histogram_colors(groups, by), strict=True):
        fig.add_trace(
            go.Histogram(
                x=grouped[group],
                name=_group_label(group, by, coef_label),
                histnorm="probability",
                xbins={"start": lo, "end": hi + size * 1e-6, "size": size},
                marker={"color": color, "line": {"width": 0}},
                opacity=0.55,
            )
        )
    fig.update_layout(barmode="overlay", bargap=0)
    fig.update_yaxes(title_text="fraction")
    return fig, groups


def _group_label(group: tuple, by: Sequence[str], coef_label: str) -> str:
    parts = []
    for column, value in zip(by, group, strict=True):
        if value is None:
            continue
        parts.append(variant_label(value) if column == "variant" else fmt_coef(value, coef_label))
    return ", ".join(parts) or "all"


def _histogram_colors(groups: list[tuple], by: Sequence[str]) -> list[str]:
    """Groups without a coefficient keep their variant colour; the others share a ramp.

    The ramp is Viridis when only coefficients vary, reds when a base variant is drawn beside
    RMU at several coefficients (so base stays blue).
    """
    i = list(by).index("coef") if "coef" in by else None
    v = list(by).index("variant") if "variant" in by else None
    ramped = [g for g in groups if i is not None and g[i] is not None]
    scale, lo = ("Viridis", 0.0) if v is None else ("Reds", 0.45)
    steps = np.linspace(lo, 0.9, len(ramped)) if len(ramped) > 1 else [0.75]
    ramp = dict(zip(ramped, sample_colorscale(scale, list(steps)), strict=True))
    fixed = colors_for([g[v] if v is not None else "all" for g in groups])
    return [ramp.get(g, fixed[g[v] if v is not None else "all"]) for g in groups]


def plot_cos_histograms(
    df: pd.DataFrame, *, nbins: int = 40, coef_label: str = "c", title: str | None = None
) -> go.Figure:
    """Distributions of cos(u, h) on forget prompts, one overlaid histogram per coefficient.

    ``df`` columns: ``coef`` (steering coefficient, or a label such as ``"beta = 5"``) and
    ``cos`` (one row per token or prompt). Each histogram sums to 1. The default title reports
    the median cosine at the smallest and largest coefficient.

    >>> fig = plot_cos_histograms(cos_table)                             # doctest: +SKIP
    """
    check_columns(df, required=("coef", "cos"), numeric=("cos",), table="cos(u, h)")
    fig, groups = _overlaid_histograms(df, "cos", ["coef"], nbins=nbins, coef_label=coef_label)
    fig.update_xaxes(title_text="cos(u, h) on forget prompts")
    if title is None:
        medians = [float(df.loc[df["coef"] == g[0], "cos"].median()) for g in groups]
        title = "Forget activations' cosine with the control vector u"
        if len(groups) > 1:
            title = (
                f"From {fmt_coef(groups[0][0], coef_label)} to "
                f"{fmt_coef(groups[-1][0], coef_label)}, the median cos(u, h) on forget prompts "
                f"goes {medians[0]:.2f} -> {medians[-1]:.2f}"
            )
    return style_figure(fig, title=title)


def plot_maxlogit_histograms(
    df: pd.DataFrame,
    *,
    by: Sequence[str] | None = None,
    nbins: int = 40,
    coef_label: str = "c",
    title: str | None = None,
) -> go.Figure:
    """MaxLogit (token confidence) distributions, one overlaid histogram per variant and/or coef.

    ``df`` columns: ``max_logit`` and ``variant`` and/or ``coef``; ``by`` (default: whichever of
    ``("variant", "coef")`` are present) picks the grouping. A row whose ``coef`` is NaN (the
    base model) is labelled by its variant alone.

    >>> fig = plot_maxlogit_histograms(maxlogit_table)                   # doctest: +SKIP
    """
    if by is None:
        by = [c for c in ("variant", "coef") if isinstance(df, pd.DataFrame) and c in df.columns]
        if not by:
            raise UnlearnInterpError("the MaxLogit table is missing column 'variant' or 'coef'")
    by = list(by)
    check_columns(df, required=(*by, "max_logit"), numeric=("max_logit",), table="MaxLogit")
    fig, groups = _overlaid_histograms(df, "max_logit", by, nbins=nbins, coef_label=coef_label)
    fig.update_xaxes(title_text="MaxLogit (max logit per generated token)")
    if title is None:
        medians = {g: float(np.median(t.x)) for g, t in zip(groups, fig.data, strict=True)}
        high, low = max(medians, key=medians.get), min(medians, key=medians.get)
        title = (
            f"Token confidence: median MaxLogit {medians[high]:.3g} "
            f"({_group_label(high, by, coef_label)}) vs {medians[low]:.3g} "
            f"({_group_label(low, by, coef_label)})"
        )
    return style_figure(fig, title=title)
