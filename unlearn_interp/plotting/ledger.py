"""The recovery ledger's figure: gap recovered per attack with 95% intervals, beside accuracy
on the held-out forget facts over fine-tuning steps for the unlearned, base and oracle models.

It draws ``tables/ledger.csv`` as ``pipeline.ledger`` writes it (one row per attack, setting,
model, step and task) and nothing else.

    >>> fig = plot_ledger(pd.read_csv("runs/demo/tables/ledger.csv"))      # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from unlearn_interp.plotting.style import (
    FIG_HEIGHT,
    FIG_WIDTH,
    check_columns,
    legend_key,
    style_figure,
)

LEDGER_COLUMNS = (
    "attack",
    "setting",
    "model",
    "step",
    "task",
    "accuracy",
    "gap_recovered",
    "ci_low",
    "ci_high",
)
MODEL_COLORS = {"unlearned": "#d62728", "base": "#1f77b4", "oracle": "#2ca02c"}
HEADLINE_TASKS = ("forget_V", "hazardous")  # the task the figure shows, first one present
CURVE_ATTACK = "relearn"
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def headline_task(ledger: pd.DataFrame) -> str:
    """The forget task the figure shows: held-out facts V when there, else the hazardous."""
    present = set(ledger["task"])
    return next((t for t in HEADLINE_TASKS if t in present), str(ledger["task"].iloc[0]))


def last_steps(ledger: pd.DataFrame) -> pd.DataFrame:
    """Each (attack, setting, model) at its last step only (a static attack has one)."""
    last = ledger.groupby(["attack", "setting", "model"], sort=False)["step"].transform("max")
    return ledger[ledger["step"] == last]


def plot_ledger(ledger: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Left: gap recovered on the headline forget task (:func:`headline_task`) of every attack
    at its last step, one bar per model, with its 95% interval (0 = where unlearning left the
    model, 1 = the base model). Right, when the ledger has relearning rows: accuracy on that
    task over fine-tuning steps, one line per model.

    >>> fig = plot_ledger(ledger)                                          # doctest: +SKIP
    """
    check_columns(
        ledger,
        required=LEDGER_COLUMNS,
        table="ledger",
        numeric=("step", "accuracy", "gap_recovered", "ci_low", "ci_high"),
    )
    task = headline_task(ledger)
    rows = ledger[ledger["task"] == task]
    curves = rows[rows["attack"] == CURVE_ATTACK]
    cols = 2 if not curves.empty else 1
    fig = make_subplots(
        rows=1,
        cols=cols,
        column_widths=[0.6, 0.4][:cols],
        horizontal_spacing=0.22,
        subplot_titles=[f"gap recovered ({task})", f"accuracy on {task} while relearning"][:cols],
    )
    _gap_bars(fig, last_steps(rows[rows["attack"] != "none"]))
    if not curves.empty:
        _relearning_curves(fig, curves)
    n_bars = rows[["attack", "setting"]].drop_duplicates().shape[0]
    height = max(FIG_HEIGHT, 160 + 26 * n_bars)
    title = title or f"Recovery ledger: how much of RMU's {task} gap each attack brings back"
    return style_figure(fig, title=title, width=FIG_WIDTH + 200 * (cols - 1), height=height)


def _gap_bars(fig: go.Figure, rows: pd.DataFrame) -> None:
    """One horizontal bar per (attack, setting) and model, with its interval."""
    labels = rows["attack"] + ": " + rows["setting"].astype(str)
    for model in dict.fromkeys(rows["model"]):
        mine = rows["model"] == model
        part = rows[mine]
        fig.add_trace(
            go.Bar(
                y=labels[mine],
                x=part["gap_recovered"],
                orientation="h",
                name=str(model),
                legendgroup=str(model),
                marker_color=MODEL_COLORS.get(str(model)),
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "thickness": 1.2,
                    "array": part["ci_high"] - part["gap_recovered"],
                    "arrayminus": part["gap_recovered"] - part["ci_low"],
                },
            ),
            row=1,
            col=1,
        )
    for x in (0, 1):
        fig.add_vline(x=x, line={"dash": "dot", "color": "grey", "width": 1}, row=1, col=1)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="(acc - RMU) / (base - RMU)", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)


def _relearning_curves(fig: go.Figure, curves: pd.DataFrame) -> None:
    """Accuracy over fine-tuning steps: colour = model, line style = fine-tuning setting."""
    settings = list(dict.fromkeys(curves["setting"]))
    dashes = {s: DASHES[i % len(DASHES)] for i, s in enumerate(settings)}
    for (setting, model), part in curves.groupby(["setting", "model"], sort=False):
        part = part.sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=part["step"],
                y=part["accuracy"],
                mode="lines+markers",
                name=f"{model} ({setting})",
                legendgroup=str(model),
                showlegend=False,
                line={"color": MODEL_COLORS.get(str(model)), "dash": dashes[setting]},
            ),
            row=1,
            col=2,
        )
    for setting in settings:
        legend_key(fig, f"relearn {setting}", {"color": "grey", "dash": dashes[setting]})
    fig.update_xaxes(title_text="fine-tuning step", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=2)
