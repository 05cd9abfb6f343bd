"""Where unlearning wrote, as one figure: the relative weight change of each block (stacked by
component) above the forget and retain prompts' cosine to base at each layer, the layer the
junk direction is read at marked.

    >>> fig = plot_weight_changes(changes, choice, layer=7)                 # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unlearn_interp.plotting.style import (
    LAYER_AXIS_TITLE,
    check_columns,
    colors_for,
    layer_axes,
    legend_key,
    style_figure,
)


def plot_weight_changes(
    changes: pd.DataFrame, choice: pd.DataFrame, layer: int, title: str | None = None
) -> go.Figure:
    """Top: per block, the sum of its tensors' relative changes, one bar segment per component.
    Bottom: per layer (residual stream after block l), the last token's cosine to base on
    forget and retain prompts. ``changes`` columns: ``block, component, relative_change``;
    ``choice``: ``layer, cos_forget, cos_retain``; ``layer`` is marked."""
    check_columns(
        changes,
        required=("block", "component", "relative_change"),
        numeric=("relative_change",),
        table="weight changes",
    )
    check_columns(
        choice,
        required=("layer", "cos_forget", "cos_retain"),
        numeric=("cos_forget", "cos_retain"),
        table="layer choice",
    )
    layers = sorted(int(v) for v in choice["layer"])
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=("relative weight change per block", "cosine to base at the last token"),
    )
    inside = changes[changes["block"] >= 0]
    per = inside.groupby(["component", "block"], as_index=False)["relative_change"].sum()
    colors = colors_for(sorted(per["component"].unique()))
    for component, rows in per.groupby("component"):
        fig.add_trace(
            go.Bar(
                x=rows["block"],
                y=rows["relative_change"],
                name=str(component),
                marker_color=colors[component],
            ),
            row=1,
            col=1,
        )
    for column, name, dash in (
        ("cos_forget", "forget prompts", "solid"),
        ("cos_retain", "retain prompts", "dash"),
    ):
        fig.add_trace(
            go.Scatter(
                x=choice["layer"],
                y=choice[column],
                name=name,
                mode="lines+markers",
                line={"dash": dash, "color": "#d62728"},
            ),
            row=2,
            col=1,
        )
    fig.update_layout(barmode="stack")
    layer_axes(fig, layers)
    fig.update_xaxes(title_text=LAYER_AXIS_TITLE, row=2, col=1)
    line = {"dash": "dot", "color": "black", "width": 1.5}
    for row in (1, 2):
        fig.add_vline(x=layer, line=line, row=row, col=1)
    legend_key(fig, f"junk direction read at layer {layer}", line)
    top = per.groupby("block")["relative_change"].sum()
    default = (
        f"Unlearning changed {len(top[top > 0])} blocks (most: block {int(top.idxmax())}); "
        f"the junk direction is read at layer {layer}"
        if len(top)
        else f"No block changed; the junk direction is read at layer {layer}"
    )
    return style_figure(fig, title=title or default, height=650)
