"""Layer-profile figures: residual norm and cosine per layer, one line per variant, forget and
retain prompts side by side (the tables ``analysis`` writes to ``tables/layer_profile.csv``)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unlearn_interp.plotting.style import (
    PROMPT_SET_ORDER,
    VARIANT_COLORS,
    check_columns,
    check_layers,
    colors_for,
    layer_axes,
    log_axis,
    mark_rmu_layer,
    ordered,
    style_figure,
    value_at,
    variant_dash,
    variant_label,
)


def _prompt_sets(df: pd.DataFrame) -> list:
    return ordered(df["prompt_set"], PROMPT_SET_ORDER)


def _layer_profile_figure(
    df: pd.DataFrame, column: str, *, rmu_layer: int | None, table: str
) -> tuple[go.Figure, list[int]]:
    """One panel per prompt set, one line per variant, legend entries shared across panels.

    Several rows for one (variant, prompt set, layer) are averaged.
    """
    layers = check_layers(df, table, rmu_layer)
    sets = _prompt_sets(df)
    variants = ordered(df["variant"], tuple(VARIANT_COLORS))
    colors = colors_for(variants)
    fig = make_subplots(
        rows=1,
        cols=len(sets),
        shared_yaxes=True,
        subplot_titles=[f"{s} prompts" for s in sets],
        horizontal_spacing=0.04,
    )
    for col, prompt_set in enumerate(sets, start=1):
        for variant in variants:
            rows = df[(df["prompt_set"] == prompt_set) & (df["variant"] == variant)]
            rows = rows.groupby("layer", as_index=False)[column].mean()
            fig.add_trace(
                go.Scatter(
                    x=rows["layer"],
                    y=rows[column],
                    name=variant_label(variant),
                    legendgroup=str(variant),
                    showlegend=col == 1,
                    mode="lines+markers",
                    line={
                        "color": colors[variant],
                        "width": 2.5,
                        "dash": variant_dash(variant),
                    },
                    marker={"size": 6},
                ),
                row=1,
                col=col,
            )
    layer_axes(fig, layers, n_panels=len(sets))
    mark_rmu_layer(fig, rmu_layer, n_panels=len(sets))
    return fig, layers


def plot_layer_norms(
    profile: pd.DataFrame,
    *,
    rmu_layer: int | None = None,
    reference: str = "base",
    unlearned: str = "rmu",
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Mean residual-stream norm per layer, one line per variant, forget and retain side by side.

    ``profile`` columns: ``variant``, ``layer`` (int; residual stream after block ``l``),
    ``prompt_set`` ("forget"/"retain"), ``norm`` (mean residual norm). ``rmu_layer`` draws a
    dotted vertical line. The default title reports the forget-prompt norm ratio
    ``unlearned / reference`` at ``rmu_layer``.

    >>> fig = plot_layer_norms(profile, rmu_layer=7)                     # doctest: +SKIP
    """
    table = "layer profile"
    check_columns(
        profile, required=("variant", "layer", "prompt_set", "norm"), numeric=("norm",), table=table
    )
    fig, _ = _layer_profile_figure(profile, "norm", rmu_layer=rmu_layer, table=table)
    fig.update_yaxes(title_text="mean residual norm", row=1, col=1)
    if log_y:
        fig.update_yaxes(**log_axis(profile["norm"]))
    if title is None:
        title = "Mean residual-stream norm by layer"
        if rmu_layer is not None:
            where = {"layer": rmu_layer, "prompt_set": "forget"}
            ref = value_at(profile, "norm", variant=reference, **where)
            unl = value_at(profile, "norm", variant=unlearned, **where)
            if ref and unl is not None:
                title = (
                    f"At layer {rmu_layer}, {variant_label(unlearned)} makes the forget-prompt "
                    f"residual {unl / ref:.1f}x as large as {variant_label(reference)}'s"
                )
    return style_figure(fig, title=title)


def plot_layer_cosines(
    profile: pd.DataFrame,
    *,
    column: str = "cos_to_reference",
    rmu_layer: int | None = None,
    reference: str = "base",
    unlearned: str = "rmu",
    title: str | None = None,
) -> go.Figure:
    """Per-layer cosine similarity, one line per variant, forget and retain side by side.

    ``profile`` columns: ``variant``, ``layer`` (int; residual stream after block ``l``),
    ``prompt_set`` ("forget"/"retain") and ``column``: ``cos_to_reference`` (cosine to the
    ``reference`` variant's activations; the reference's own line is 1 everywhere and kept as
    an anchor), or ``cos_to_direction`` / ``cos_to_control``. The default title reports the
    ``unlearned`` variant's forget-prompt cosine at ``rmu_layer``.

    >>> fig = plot_layer_cosines(profile, rmu_layer=7)                   # doctest: +SKIP
    >>> fig = plot_layer_cosines(profile, column="cos_to_direction")     # doctest: +SKIP
    """
    table = "layer profile"
    check_columns(
        profile,
        required=("variant", "layer", "prompt_set", column),
        numeric=(column,),
        table=table,
    )
    fig, _ = _layer_profile_figure(profile, column, rmu_layer=rmu_layer, table=table)
    target = {
        "cos_to_reference": f"{variant_label(reference)}'s activations",
        "cos_to_direction": "the junk direction",
        "cos_to_control": "the control vector u",
    }.get(column, column)
    low = min(0.0, float(profile[column].min()) - 0.05)
    fig.update_yaxes(range=[low, 1.05])
    fig.update_yaxes(title_text=f"cosine to {target}", row=1, col=1)
    if title is None:
        title = f"Cosine similarity to {target} by layer"
        value = None
        if rmu_layer is not None:
            value = value_at(
                profile, column, variant=unlearned, layer=rmu_layer, prompt_set="forget"
            )
        if value is not None:
            title = (
                f"At layer {rmu_layer}, {variant_label(unlearned)}'s forget-prompt activations "
                f"have cosine {value:.2f} to {target}"
            )
    return style_figure(fig, title=title)
