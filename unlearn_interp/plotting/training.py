"""RMU training curves: losses, forget-activation norms and cosines over steps, per topic
(``RMUResult.history``, written to ``tables/rmu_history.csv``)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from unlearn_interp.plotting.style import (
    FIG_HEIGHT,
    check_columns,
    legend_key,
    log_axis,
    ordered,
    style_figure,
)

TRAINING_PANELS = {
    "loss": {"forget_loss": "forget loss", "retain_loss": "retain loss"},
    "forget-activation norm": {
        "forget_norm": "forget norm",
        "frozen_forget_norm": "frozen forget norm",
    },
    "cosine": {
        "cos_forget_frozen": "cos(forget, frozen)",
        "cos_forget_u": "cos(forget, u)",
        "cos_retain_frozen": "cos(retain, frozen)",
    },
}
TOPIC_DASHES = ("solid", "dash", "dot", "dashdot")


def plot_training_curves(history: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Three panels over RMU steps: losses (log scale), forget-activation norms, cosines.

    ``history`` is ``RMUResult.history``, columns: ``step``, ``topic``, ``forget_loss``,
    ``retain_loss``, ``forget_norm``, ``frozen_forget_norm``, ``cos_forget_frozen``,
    ``cos_forget_u``, ``cos_retain_frozen``. One colour per quantity, one dash style per topic.

    >>> fig = plot_training_curves(result.history)                       # doctest: +SKIP
    """
    columns = [c for panel in TRAINING_PANELS.values() for c in panel]
    check_columns(
        history, required=("step", "topic", *columns), numeric=("step", *columns), table="history"
    )
    topics = ordered(history["topic"])
    colors = iter(qualitative.D3)
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(TRAINING_PANELS))
    for col, panel in enumerate(TRAINING_PANELS.values(), start=1):
        for column, label in panel.items():
            color = next(colors)
            for i, topic in enumerate(topics):
                rows = history[history["topic"] == topic].sort_values("step")
                fig.add_trace(
                    go.Scatter(
                        x=rows["step"],
                        y=rows[column],
                        name=label,
                        legendgroup=column,
                        showlegend=i == 0,
                        mode="lines",
                        connectgaps=True,  # frozen-forget columns: NaN between diagnostic steps
                        line={"color": color, "dash": TOPIC_DASHES[i % 4], "width": 2},
                        hovertext=f"topic {topic}",
                    ),
                    row=1,
                    col=col,
                )
    if len(topics) > 1:
        for i, topic in enumerate(topics):
            legend_key(fig, f"topic {topic}", {"color": "black", "dash": TOPIC_DASHES[i % 4]})
    losses = pd.concat([history["forget_loss"], history["retain_loss"]])
    fig.update_yaxes(**log_axis(losses), row=1, col=1)
    fig.update_xaxes(title_text="step")
    # Legend entries on a grid (three per row); the extra height keeps all rows inside the image.
    fig.update_layout(legend={"entrywidth": 185, "entrywidthmode": "pixels"}, margin_b=170)
    return style_figure(fig, title=title or _training_title(history), height=FIG_HEIGHT + 50)


def _training_title(history: pd.DataFrame) -> str:
    """First -> last value of the headline quantities, each averaged over topics."""
    by_topic = history.sort_values("step").groupby("topic")
    first, last = by_topic.head(1).mean(numeric_only=True), by_topic.tail(1).mean(numeric_only=True)
    return (
        f"RMU training: forget norm {first.forget_norm:.3g} -> {last.forget_norm:.3g}, "
        f"cos(forget, frozen) -> {last.cos_forget_frozen:.2f}, "
        f"cos(retain, frozen) -> {last.cos_retain_frozen:.3f}"
    )
