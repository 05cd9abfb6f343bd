"""Sweep figures: accuracy against the steering coefficient, accuracy against the layer RMU
targets (with the natural forget norm beside the coefficient), forget-activation norm per layer
over training steps or methods, and the noise sensitivity of the layers after ``l``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from unlearn_interp.plotting.style import (
    LAYER_AXIS_TITLE,
    TASK_ORDER,
    VARIANT_COLORS,
    chance_line,
    check_columns,
    check_layers,
    colors_for,
    layer_axes,
    log_axis,
    mark_rmu_layer,
    ordered,
    sorted_groups,
    style_figure,
    value_at,
)


def plot_accuracy_vs_coef(
    df: pd.DataFrame,
    *,
    chance: float | int | None = 0.25,
    log_x: bool | None = None,
    coef_label: str = "c",
    title: str | None = None,
) -> go.Figure:
    """Accuracy per task as the steering coefficient grows, one line per task.

    ``df`` columns: ``coef`` (numbers, or labels such as ``"beta = 5"`` on a categorical axis),
    ``task``, ``accuracy``. ``log_x=None`` uses a log axis when positive numeric coefficients
    span a factor of 20 or more.

    >>> fig = plot_accuracy_vs_coef(sweep_table)                         # doctest: +SKIP
    """
    check_columns(
        df, required=("coef", "task", "accuracy"), numeric=("accuracy",), table="coefficient sweep"
    )
    numeric = pd.api.types.is_numeric_dtype(df["coef"])
    tasks = ordered(df["task"], TASK_ORDER)
    colors = colors_for([f"task:{t}" for t in tasks])
    fig = go.Figure()
    summary = []
    for task in tasks:
        rows = df[df["task"] == task].groupby("coef", sort=numeric, as_index=False)["accuracy"]
        rows = rows.mean()
        fig.add_trace(
            go.Scatter(
                x=rows["coef"] if numeric else rows["coef"].astype(str),
                y=rows["accuracy"],
                name=str(task),
                mode="lines+markers",
                line={"color": colors[f"task:{task}"], "width": 2.5},
                marker={"size": 8},
            )
        )
        summary.append(f"{task} {rows['accuracy'].iloc[0]:.2f} -> {rows['accuracy'].iloc[-1]:.2f}")
    chance_line(fig, chance)
    if log_x is None:
        coefs = df["coef"] if numeric else pd.Series([1.0])
        log_x = bool(numeric and coefs.min() > 0 and coefs.max() / coefs.min() >= 20)
    fig.update_xaxes(title_text=f"steering coefficient {coef_label}", type="log" if log_x else None)
    coefs = sorted(set(df["coef"])) if numeric else []
    if 0 < len(coefs) <= 12:  # label exactly the swept values
        fig.update_xaxes(tickvals=coefs, ticktext=[f"{c:g}" for c in coefs])
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05])
    if title is None:
        title = "Accuracy as the coefficient grows: " + ", ".join(summary)
    return style_figure(fig, title=title)


METHOD_COLORS = {"RMU (fixed c)": VARIANT_COLORS["rmu"], "Adaptive RMU": "#9467bd"}


def plot_layer_sweep(
    df: pd.DataFrame,
    *,
    chance: float | int | None = 0.25,
    rmu_layer: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Accuracy vs the layer RMU is applied at, one panel per task, one line per method.

    ``df`` columns: ``method`` (e.g. "RMU (fixed c)" / "Adaptive RMU"), ``layer`` (int; the RMU
    layer, residual stream after block ``l``), ``task``, ``accuracy``; optional
    ``forget_norm`` (the natural forget-activation norm at that layer) and ``coef`` (the
    coefficient used): when present, a last panel draws them (solid norm, dashed coefficient),
    which shows where a fixed coefficient falls below the natural norm.

    >>> fig = plot_layer_sweep(layer_sweep_table)                        # doctest: +SKIP
    """
    table = "layer sweep"
    check_columns(
        df,
        required=("method", "layer", "task", "accuracy"),
        numeric=("accuracy", "forget_norm", "coef"),
        table=table,
    )
    layers = check_layers(df, table, rmu_layer)
    tasks = ordered(df["task"], TASK_ORDER)
    methods = ordered(df["method"], tuple(METHOD_COLORS))
    colors = {**colors_for(methods), **METHOD_COLORS}
    with_norm = "forget_norm" in df.columns
    titles = [str(t) for t in tasks] + (["forget norm vs c"] if with_norm else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.07)
    for col, task in enumerate(tasks, start=1):
        for method in methods:
            rows = df[(df["task"] == task) & (df["method"] == method)]
            rows = rows.groupby("layer", as_index=False)["accuracy"].mean()
            fig.add_trace(
                _line(rows["layer"], rows["accuracy"], str(method), colors[method], col == 1),
                row=1,
                col=col,
            )
        fig.update_yaxes(range=[0, 1.05], row=1, col=col)
    chance_line(fig, chance, n_panels=len(tasks))
    if with_norm:
        _norm_panel(fig, df, methods, colors, col=len(titles))
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    layer_axes(fig, layers, n_panels=len(titles), title=f"unlearning {LAYER_AXIS_TITLE}")
    mark_rmu_layer(fig, rmu_layer, n_panels=len(titles))
    if title is None:
        title = "Accuracy by the layer unlearning targets: " + " vs ".join(map(str, methods))
    return style_figure(fig, title=title)


def _line(x, y, name: str, color: str, showlegend: bool, dash: str = "solid") -> go.Scatter:
    return go.Scatter(
        x=x,
        y=y,
        name=name,
        legendgroup=name,
        showlegend=showlegend,
        mode="lines+markers",
        line={"color": color, "width": 2.5, "dash": dash},
        marker={"size": 6},
    )


def _norm_panel(fig: go.Figure, df: pd.DataFrame, methods: list, colors: dict, *, col: int):
    """The natural forget norm (grey, averaged over methods) and each method's coefficient."""
    norm = df.groupby("layer", as_index=False)["forget_norm"].mean()
    fig.add_trace(_line(norm["layer"], norm["forget_norm"], "forget norm", "black", True), 1, col)
    if "coef" in df.columns:
        for method in methods:
            rows = df[df["method"] == method].groupby("layer", as_index=False)["coef"].mean()
            fig.add_trace(
                _line(rows["layer"], rows["coef"], f"c, {method}", colors[method], True, "dash"),
                row=1,
                col=col,
            )
    values = (
        pd.concat([df["forget_norm"], df["coef"]]) if "coef" in df.columns else norm["forget_norm"]
    )
    fig.update_yaxes(**log_axis(values), title_text="norm, c", title_standoff=2, row=1, col=col)


def plot_forget_norm_by_layer(
    df: pd.DataFrame, *, rmu_layer: int | None = None, title: str | None = None
) -> go.Figure:
    """Forget-activation norm per layer, one line per training step (or per method).

    ``df`` columns: ``layer`` (int; residual stream after block ``l``), ``forget_norm``, and
    ``step`` (lines coloured early -> late on a sequential scale) or ``method``.

    >>> fig = plot_forget_norm_by_layer(norms_table, rmu_layer=7)        # doctest: +SKIP
    """
    table = "forget norm by layer"
    group = "step" if isinstance(df, pd.DataFrame) and "step" in df.columns else "method"
    check_columns(
        df, required=("layer", group, "forget_norm"), numeric=("forget_norm",), table=table
    )
    layers = check_layers(df, table, rmu_layer)
    groups = sorted_groups(df[group]) if group == "step" else ordered(df[group])
    if group == "step":
        ramp = np.linspace(0, 0.9, len(groups)) if len(groups) > 1 else [0.0]
        colors = dict(zip(groups, sample_colorscale("Viridis", list(ramp)), strict=True))
    else:
        colors = {**colors_for(groups), **{m: c for m, c in METHOD_COLORS.items() if m in groups}}
    fig = go.Figure()
    for value in groups:
        rows = df[df[group] == value].groupby("layer", as_index=False)["forget_norm"].mean()
        name = f"step {value}" if group == "step" else str(value)
        fig.add_trace(_line(rows["layer"], rows["forget_norm"], name, colors[value], True))
    layer_axes(fig, layers)
    mark_rmu_layer(fig, rmu_layer)
    fig.update_yaxes(title_text="mean forget-activation norm")
    if title is None:
        title = "Forget-activation norm by layer"
        if rmu_layer is not None and len(groups) > 1:
            first, last = groups[0], groups[-1]
            a = value_at(df, "forget_norm", layer=rmu_layer, **{group: first})
            b = value_at(df, "forget_norm", layer=rmu_layer, **{group: last})
            label = (lambda g: f"step {g}") if group == "step" else str
            title = (
                f"Forget-activation norm at layer {rmu_layer}: {a:.3g} ({label(first)}) -> "
                f"{b:.3g} ({label(last)})"
            )
    return style_figure(fig, title=title)


def plot_noise_sensitivity(
    df: pd.DataFrame,
    *,
    rmu_layer: int | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Noise sensitivity Phi of the layers after ``l``, per layer (one line per noise scale).

    ``df`` columns: ``layer`` (int; the noise is added to the residual stream after block
    ``l``), ``phi`` (``||g(h + xi) - g(h)||^2 / ||g(h)||^2``), optional ``noise_scale``.

    >>> fig = plot_noise_sensitivity(phi_table, rmu_layer=7)             # doctest: +SKIP
    """
    table = "noise sensitivity"
    check_columns(df, required=("layer", "phi"), numeric=("phi", "noise_scale"), table=table)
    layers = check_layers(df, table, rmu_layer)
    scales = sorted_groups(df["noise_scale"]) if "noise_scale" in df.columns else [None]
    ramp = np.linspace(0, 0.9, len(scales)) if len(scales) > 1 else [0.0]
    fig = go.Figure()
    for scale, color in zip(scales, sample_colorscale("Viridis", list(ramp)), strict=True):
        rows = df if scale is None else df[df["noise_scale"] == scale]
        rows = rows.groupby("layer", as_index=False)["phi"].mean()
        name = "Phi" if scale is None else f"noise scale {scale:g}"
        fig.add_trace(_line(rows["layer"], rows["phi"], name, color, True))
    layer_axes(fig, layers)
    mark_rmu_layer(fig, rmu_layer)
    fig.update_yaxes(title_text="noise sensitivity Phi", **(log_axis(df["phi"]) if log_y else {}))
    if title is None:
        mean = df.groupby("layer")["phi"].mean()
        verb = "falls" if mean.iloc[-1] < mean.iloc[0] else "rises"
        title = (
            f"Noise sensitivity {verb} with depth: Phi {mean.iloc[0]:.3g} at layer "
            f"{mean.index[0]} -> {mean.iloc[-1]:.3g} at layer {mean.index[-1]}"
        )
    return style_figure(fig, title=title)
