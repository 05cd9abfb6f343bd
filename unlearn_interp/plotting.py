"""Plotly figures from pandas DataFrames (never from models), in one shared style, and saving them.

Every ``plot_*`` function takes a long-format DataFrame (as written by ``analysis`` and
``pipeline`` to ``RUN/tables/*.csv``), checks that the columns it needs are there (a missing
column raises :class:`UnlearnInterpError` naming it), and returns a ``plotly.graph_objects.Figure``
styled by :func:`style_figure`: 900x450 px, font >= 12, a legend, integer layer ticks, the RMU
layer marked, and a default title that states what the data show (computed from the data; pass
``title=`` to override). Layer ``l`` is the residual stream after block ``l``
(``blocks.{l}.hook_resid_post``), as everywhere in unlearn_interp.

:func:`save_figure` always writes a self-contained HTML file (plotly.js inlined, works offline)
and, when static export works (kaleido >= 1 plus a Chrome/Chromium browser), PNG/SVG too;
otherwise it logs one sentence saying how to enable it and returns the files it wrote.

    >>> fig = plot_layer_norms(profile, rmu_layer=2)                    # doctest: +SKIP
    >>> save_figure(fig, "figures/layer_norms", formats=("html", "png"))  # doctest: +SKIP
    [PosixPath('figures/layer_norms.html'), PosixPath('figures/layer_norms.png')]

Getting PNG export (checked on Debian 12): ``pip install "unlearn-interp[static]"`` (kaleido >= 1),
then a browser: ``apt-get install chromium`` (kaleido finds ``/usr/bin/chromium`` on ``PATH``),
or ``plotly_get_chrome -y`` (downloads Chrome for Testing), or ``BROWSER_PATH=/path/to/chrome``.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from unlearn_interp.artifacts import atomic_path
from unlearn_interp.errors import UnlearnInterpError

logger = logging.getLogger(__name__)

FIG_WIDTH = 900  # README width: readable without zooming
FIG_HEIGHT = 450
FONT_SIZE = 14
LAYER_AXIS_TITLE = "layer (residual stream after block l)"
TITLE_CHARS = 90  # longer titles are broken onto two lines (about 9 px per character at 17 px)
STATIC_FORMATS = ("png", "svg", "pdf")
ENABLE_STATIC_HINT = (
    'enable it with `pip install "unlearn-interp[static]"` (kaleido >= 1) plus a browser: '
    "`apt-get install chromium` (Debian/Ubuntu), `plotly_get_chrome -y`, "
    "or BROWSER_PATH=/path/to/chrome"
)

# Fixed colours so a variant looks the same in every figure.
VARIANT_COLORS = {
    "base": "#1f77b4",
    "rmu": "#d62728",
    "rmu_ablated": "#2ca02c",
    "rmu_random_ablated": "#7f7f7f",
    "adaptive_rmu": "#9467bd",
    "base_steered": "#ff7f0e",
    "rmu_subspace_ablated": "#17becf",
    "rmu_random_subspace_ablated": "#bcbd22",
    "base_ablated": "#aec7e8",
    "base_subspace_ablated": "#9edae5",
}
VARIANT_LABELS = {
    "base": "base",
    "rmu": "RMU",
    "rmu_ablated": "RMU, junk ablated",
    "rmu_random_ablated": "RMU, random dir. ablated",
    "adaptive_rmu": "Adaptive RMU",
    "base_steered": "base + steering",
    "rmu_subspace_ablated": "RMU, junk subspace ablated",
    "rmu_random_subspace_ablated": "RMU, random subspace ablated",
    "base_ablated": "base, junk ablated",
    "base_subspace_ablated": "base, junk subspace ablated",
}
PROMPT_SET_ORDER = ("forget", "retain")
VARIANT_DASHES = {
    "rmu_random_ablated": "dash",
    "rmu_random_subspace_ablated": "dash",
}  # the random control often lies on top of RMU
LEGEND_KEY = "legend key"  # meta of legend-only entries (reference lines, dash styles)

TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font={"size": FONT_SIZE},
    title={"font": {"size": FONT_SIZE + 3}, "x": 0.01, "xanchor": "left"},
    width=FIG_WIDTH,
    height=FIG_HEIGHT,
    margin={"l": 70, "r": 30, "t": 80, "b": 120},
    legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0},
    hovermode="closest",
    xaxis={"title": {"font": {"size": FONT_SIZE + 1}}},
    yaxis={"title": {"font": {"size": FONT_SIZE + 1}}},
)


# ----------------------------------------------------------------------------- style helpers


def style_figure(
    fig: go.Figure, *, title: str, width: int = FIG_WIDTH, height: int = FIG_HEIGHT
) -> go.Figure:
    """Apply the shared template, size and title to ``fig`` (in place) and return it.

    >>> style_figure(go.Figure(), title="Norms jump at the RMU layer").layout.width
    900
    """
    title = _wrap_title(title)
    fig.update_layout(template=TEMPLATE, title_text=title, width=width, height=height)
    if "<br>" in title:
        fig.update_layout(margin_t=TEMPLATE.layout.margin.t + FONT_SIZE + 10)
    fig.update_annotations(font_size=FONT_SIZE)  # subplot titles default to 16; keep them level
    return fig


def _wrap_title(title: str, width: int = TITLE_CHARS) -> str:
    """Break a title longer than ``width`` characters once, outside parentheses, preferring
    '; ' over ', ' over a space, so that both lines fit."""
    if len(title) <= width or "<br>" in title:
        return title
    depth, cuts = 0, []  # (priority, -position) of spaces outside parentheses
    for i, char in enumerate(title):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char == " " and i <= width and len(title) - i - 1 <= width:
            cuts.append(({";": 0, ",": 1}.get(title[i - 1], 2), -i))
    if not cuts:
        return title
    cut = -min(cuts)[1]
    return title[:cut] + "<br>" + title[cut + 1 :]


def variant_label(name: object) -> str:
    """Legend label of a variant (``"rmu_ablated"`` -> ``"RMU, junk ablated"``)."""
    return VARIANT_LABELS.get(str(name), str(name))


def _colors_for(names: Sequence) -> dict:
    """Fixed colours for known variants, the qualitative palette in order for the rest."""
    spare = [c for c in qualitative.D3 + qualitative.Dark2 if c not in VARIANT_COLORS.values()]
    colors, i = {}, 0
    for name in names:
        if str(name) in VARIANT_COLORS:
            colors[name] = VARIANT_COLORS[str(name)]
        else:
            colors[name] = spare[i % len(spare)]
            i += 1
    return colors


def _ordered(values: pd.Series, preferred: Sequence[str] = ()) -> list:
    """Unique values: the ``preferred`` ones first in that order, then the rest as they appear."""
    seen = list(dict.fromkeys(values.tolist()))
    first = [p for p in preferred if p in seen]
    return first + [v for v in seen if v not in first]


def _sorted_groups(values: pd.Series) -> list:
    """Unique values sorted numerically when they are numbers, else in order of appearance."""
    unique = list(dict.fromkeys(values.tolist()))
    if pd.api.types.is_numeric_dtype(values):
        return sorted(unique)
    return unique


def _fmt_coef(value, coef_label: str) -> str:
    """``6.5`` -> ``"c = 6.5"``; labels that are already strings (``"beta = 5"``) pass through."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{coef_label} = {value:g}"
    return str(value)


def _check_columns(
    df: pd.DataFrame, *, required: Sequence[str], numeric: Sequence[str] = (), table: str
) -> None:
    """Fail with one sentence naming the first missing or non-numeric column of ``table``."""
    if not isinstance(df, pd.DataFrame):
        raise UnlearnInterpError(f"the {table} table must be a pandas DataFrame, got {type(df)}")
    for column in required:
        if column not in df.columns:
            raise UnlearnInterpError(
                f"the {table} table is missing column {column!r} (it has {list(df.columns)})"
            )
    if df.empty:
        raise UnlearnInterpError(f"the {table} table has no rows")
    for column in numeric:
        if column in df.columns and not pd.api.types.is_numeric_dtype(df[column]):
            raise UnlearnInterpError(
                f"column {column!r} of the {table} table must be numeric, got {df[column].dtype}"
            )


def _check_layers(df: pd.DataFrame, table: str, rmu_layer: int | None) -> list[int]:
    """Layers must be integers; ``rmu_layer`` must lie among them (else its line is invisible)."""
    layers = df["layer"]
    if not pd.api.types.is_numeric_dtype(layers) or not np.all(np.mod(layers, 1) == 0):
        raise UnlearnInterpError(f"column 'layer' of the {table} table must hold integers")
    found = sorted({int(v) for v in layers})
    if rmu_layer is not None and not found[0] <= rmu_layer <= found[-1]:
        raise UnlearnInterpError(
            f"rmu_layer={rmu_layer} is outside the {table} table's layers {found[0]}..{found[-1]}"
        )
    return found


def _layer_axes(
    fig: go.Figure, layers: Sequence[int], *, n_panels: int = 1, title: str = LAYER_AXIS_TITLE
) -> None:
    """Integer ticks on every x axis, as dense as the panel width allows (about 45 px per tick).

    One panel: ``title`` on its x axis; several: once, centred under them all.
    """
    span = max(layers) - min(layers)
    max_ticks = max(4, (FIG_WIDTH - 100) // (45 * n_panels))
    dtick = next((d for d in (1, 2, 4, 5, 8, 10, 16, 20) if span / d <= max_ticks), 32)
    fig.update_xaxes(tickmode="linear", tick0=min(layers), dtick=dtick, tickformat="d")
    if n_panels == 1:
        fig.update_xaxes(title_text=title)
    else:
        fig.add_annotation(
            text=title,
            x=0.5,
            y=0,
            xref="paper",
            yref="paper",
            yshift=-30,
            yanchor="top",
            showarrow=False,
            font={"size": FONT_SIZE},
        )


def _legend_key(fig: go.Figure, name: str, line: dict) -> None:
    """A legend-only entry explaining a reference line or a dash style (never collides)."""
    fig.add_trace(
        go.Scatter(x=[None], y=[None], mode="lines", name=name, line=line, meta=LEGEND_KEY)
    )


def _mark_rmu_layer(fig: go.Figure, rmu_layer: int | None, *, n_panels: int = 1) -> None:
    """A dotted vertical line at the RMU layer in every panel, named in the legend."""
    if rmu_layer is None:
        return
    line = {"dash": "dot", "color": "black", "width": 1.5}
    for col in range(1, n_panels + 1):
        fig.add_vline(x=rmu_layer, line=line, **({"row": 1, "col": col} if n_panels > 1 else {}))
    _legend_key(fig, f"RMU layer {rmu_layer}", line)


def _chance_line(fig: go.Figure, chance: float | int | None, *, n_panels: int = 1) -> None:
    """Dashed horizontal line at chance accuracy (0.25 for four-way multiple choice)."""
    if chance is None:
        return
    line = {"dash": "dash", "color": "grey", "width": 1.5}
    for col in range(1, n_panels + 1):
        fig.add_hline(y=chance, line=line, **({"row": 1, "col": col} if n_panels > 1 else {}))
    _legend_key(fig, f"chance ({chance:g})", line)


def _log_axis(values: pd.Series) -> dict:
    """Log axis settings: labels at powers of ten only when the data span >= 1.5 decades."""
    positive = values[values > 0]
    wide = len(positive) and positive.max() / positive.min() >= 10**1.5
    return {"type": "log", "dtick": 1} if wide else {"type": "log"}


def _prompt_sets(df: pd.DataFrame) -> list:
    return _ordered(df["prompt_set"], PROMPT_SET_ORDER)


# ----------------------------------------------------------------------------- layer profiles


def _layer_profile_figure(
    df: pd.DataFrame, column: str, *, rmu_layer: int | None, table: str
) -> tuple[go.Figure, list[int]]:
    """One panel per prompt set, one line per variant, legend entries shared across panels.

    Several rows for one (variant, prompt set, layer) are averaged.
    """
    layers = _check_layers(df, table, rmu_layer)
    sets = _prompt_sets(df)
    variants = _ordered(df["variant"], tuple(VARIANT_COLORS))
    colors = _colors_for(variants)
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
                        "dash": VARIANT_DASHES.get(str(variant), "solid"),
                    },
                    marker={"size": 6},
                ),
                row=1,
                col=col,
            )
    _layer_axes(fig, layers, n_panels=len(sets))
    _mark_rmu_layer(fig, rmu_layer, n_panels=len(sets))
    return fig, layers


def _value_at(df: pd.DataFrame, column: str, **where) -> float | None:
    """Mean of ``column`` over the rows matching ``where``; None when no row matches."""
    mask = np.ones(len(df), dtype=bool)
    for key, value in where.items():
        mask &= (df[key] == value).to_numpy()
    values = df.loc[mask, column]
    return float(values.mean()) if len(values) else None


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
    _check_columns(
        profile, required=("variant", "layer", "prompt_set", "norm"), numeric=("norm",), table=table
    )
    fig, _ = _layer_profile_figure(profile, "norm", rmu_layer=rmu_layer, table=table)
    fig.update_yaxes(title_text="mean residual norm", row=1, col=1)
    if log_y:
        fig.update_yaxes(**_log_axis(profile["norm"]))
    if title is None:
        title = "Mean residual-stream norm by layer"
        if rmu_layer is not None:
            where = {"layer": rmu_layer, "prompt_set": "forget"}
            ref = _value_at(profile, "norm", variant=reference, **where)
            unl = _value_at(profile, "norm", variant=unlearned, **where)
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
    _check_columns(
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
            value = _value_at(
                profile, column, variant=unlearned, layer=rmu_layer, prompt_set="forget"
            )
        if value is not None:
            title = (
                f"At layer {rmu_layer}, {variant_label(unlearned)}'s forget-prompt activations "
                f"have cosine {value:.2f} to {target}"
            )
    return style_figure(fig, title=title)


# ----------------------------------------------------------------------------- accuracy


def gap_recovered_table(
    accuracy: pd.DataFrame,
    *,
    baseline: str = "base",
    unlearned: str = "rmu",
    min_gap: float = 0.05,
) -> pd.DataFrame:
    """Gap recovered ``(acc_v - acc_unlearned) / (acc_baseline - acc_unlearned)`` per variant and task.

    Only for tasks where the unlearning gap ``acc_baseline - acc_unlearned`` is at least
    ``min_gap`` (on a retain task such as MMLU the ratio is noise over ~0), and only for the
    variants other than ``baseline`` and ``unlearned``. Columns: ``variant``, ``task``,
    ``gap_recovered``.

    >>> acc = pd.DataFrame({"variant": ["base", "rmu", "rmu_ablated"], "task": ["bio"] * 3,
    ...                     "accuracy": [0.6, 0.3, 0.5]})
    >>> round(gap_recovered_table(acc)["gap_recovered"].item(), 3)
    0.667
    """
    _check_columns(
        accuracy,
        required=("variant", "task", "accuracy"),
        numeric=("accuracy",),
        table="accuracy",
    )
    wide = accuracy.pivot_table(index="task", columns="variant", values="accuracy", aggfunc="mean")
    rows = []
    if baseline in wide.columns and unlearned in wide.columns:
        for task, acc in wide.iterrows():
            gap = acc[baseline] - acc[unlearned]
            if not gap >= min_gap:
                continue
            for variant in wide.columns:
                if variant not in (baseline, unlearned) and not np.isnan(acc[variant]):
                    rows.append((variant, task, (acc[variant] - acc[unlearned]) / gap))
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
    _check_columns(
        accuracy,
        required=("variant", "task", "accuracy"),
        numeric=("accuracy", "n", "gap_recovered", "ci_low", "ci_high"),
        table="accuracy",
    )
    gaps = _gap_lookup(accuracy, baseline=baseline, unlearned=unlearned, min_gap=min_gap)
    tasks = _ordered(accuracy["task"], ("hazardous", "benign", "wmdp_bio", "wmdp_cyber", "mmlu"))
    variants = _ordered(accuracy["variant"], tuple(VARIANT_COLORS))
    colors = _colors_for(variants)
    fig = go.Figure()
    for variant in variants:
        fig.add_trace(_accuracy_bar(accuracy, variant, tasks, gaps, color=colors[variant]))
    _chance_line(fig, chance)
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
        return {"type": "data", "symmetric": False, "thickness": 1.2,
                "array": rows["ci_high"].to_numpy(dtype=float) - value,
                "arrayminus": value - rows["ci_low"].to_numpy(dtype=float)}  # fmt: skip
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
    _check_columns(
        gaps,
        required=("label", "gap_recovered", "ci_low", "ci_high"),
        numeric=("gap_recovered", "ci_low", "ci_high"),
        table="gap recovered",
    )
    groups = gaps["group"] if "group" in gaps.columns else pd.Series(["gap"] * len(gaps))
    colors = _colors_for(_ordered(groups))
    fig = go.Figure()
    for group in _ordered(groups):
        rows = gaps[groups.to_numpy() == group]
        fig.add_trace(go.Bar(
            y=rows["label"], x=rows["gap_recovered"], orientation="h", name=str(group),
            marker_color=colors[group], error_x=_error_bars(
                rows.rename(columns={"gap_recovered": "value"}), "value"),
            text=[f"{g:.0%}" for g in rows["gap_recovered"]], textposition="outside",
        ))  # fmt: skip
    for x in (0, 1):
        fig.add_vline(x=x, line={"dash": "dot", "color": "grey", "width": 1})
    fig.update_xaxes(title_text="gap recovered: (intervened - RMU) / (base - RMU)")
    fig.update_yaxes(autorange="reversed")
    height = max(FIG_HEIGHT, 90 + 34 * len(gaps))
    return style_figure(fig, title=title or "Gap recovered, with 95% intervals", height=height)


# ----------------------------------------------------------------------------- training


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
    _check_columns(
        history, required=("step", "topic", *columns), numeric=("step", *columns), table="history"
    )
    topics = _ordered(history["topic"])
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
                        line={"color": color, "dash": TOPIC_DASHES[i % 4], "width": 2},
                        hovertext=f"topic {topic}",
                    ),
                    row=1,
                    col=col,
                )
    if len(topics) > 1:
        for i, topic in enumerate(topics):
            _legend_key(fig, f"topic {topic}", {"color": "black", "dash": TOPIC_DASHES[i % 4]})
    losses = pd.concat([history["forget_loss"], history["retain_loss"]])
    fig.update_yaxes(**_log_axis(losses), row=1, col=1)
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


# ----------------------------------------------------------------------------- distributions


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
        parts.append(variant_label(value) if column == "variant" else _fmt_coef(value, coef_label))
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
    fixed = _colors_for([g[v] if v is not None else "all" for g in groups])
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
    _check_columns(df, required=("coef", "cos"), numeric=("cos",), table="cos(u, h)")
    fig, groups = _overlaid_histograms(df, "cos", ["coef"], nbins=nbins, coef_label=coef_label)
    fig.update_xaxes(title_text="cos(u, h) on forget prompts")
    if title is None:
        medians = [float(df.loc[df["coef"] == g[0], "cos"].median()) for g in groups]
        title = "Forget activations' cosine with the control vector u"
        if len(groups) > 1:
            title = (
                f"From {_fmt_coef(groups[0][0], coef_label)} to "
                f"{_fmt_coef(groups[-1][0], coef_label)}, the median cos(u, h) on forget prompts "
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
    _check_columns(df, required=(*by, "max_logit"), numeric=("max_logit",), table="MaxLogit")
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


# ----------------------------------------------------------------------------- sweeps


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
    _check_columns(
        df, required=("coef", "task", "accuracy"), numeric=("accuracy",), table="coefficient sweep"
    )
    numeric = pd.api.types.is_numeric_dtype(df["coef"])
    tasks = _ordered(df["task"], ("hazardous", "benign", "wmdp_bio", "wmdp_cyber", "mmlu"))
    colors = _colors_for([f"task:{t}" for t in tasks])
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
    _chance_line(fig, chance)
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
    _check_columns(
        df,
        required=("method", "layer", "task", "accuracy"),
        numeric=("accuracy", "forget_norm", "coef"),
        table=table,
    )
    layers = _check_layers(df, table, rmu_layer)
    tasks = _ordered(df["task"], ("hazardous", "benign", "wmdp_bio", "wmdp_cyber", "mmlu"))
    methods = _ordered(df["method"], tuple(METHOD_COLORS))
    colors = {**_colors_for(methods), **METHOD_COLORS}
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
    _chance_line(fig, chance, n_panels=len(tasks))
    if with_norm:
        _norm_panel(fig, df, methods, colors, col=len(titles))
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    _layer_axes(fig, layers, n_panels=len(titles), title=f"unlearning {LAYER_AXIS_TITLE}")
    _mark_rmu_layer(fig, rmu_layer, n_panels=len(titles))
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
    fig.update_yaxes(**_log_axis(values), title_text="norm, c", title_standoff=2, row=1, col=col)


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
    _check_columns(
        df, required=("layer", group, "forget_norm"), numeric=("forget_norm",), table=table
    )
    layers = _check_layers(df, table, rmu_layer)
    groups = _sorted_groups(df[group]) if group == "step" else _ordered(df[group])
    if group == "step":
        ramp = np.linspace(0, 0.9, len(groups)) if len(groups) > 1 else [0.0]
        colors = dict(zip(groups, sample_colorscale("Viridis", list(ramp)), strict=True))
    else:
        colors = {**_colors_for(groups), **{m: c for m, c in METHOD_COLORS.items() if m in groups}}
    fig = go.Figure()
    for value in groups:
        rows = df[df[group] == value].groupby("layer", as_index=False)["forget_norm"].mean()
        name = f"step {value}" if group == "step" else str(value)
        fig.add_trace(_line(rows["layer"], rows["forget_norm"], name, colors[value], True))
    _layer_axes(fig, layers)
    _mark_rmu_layer(fig, rmu_layer)
    fig.update_yaxes(title_text="mean forget-activation norm")
    if title is None:
        title = "Forget-activation norm by layer"
        if rmu_layer is not None and len(groups) > 1:
            first, last = groups[0], groups[-1]
            a = _value_at(df, "forget_norm", layer=rmu_layer, **{group: first})
            b = _value_at(df, "forget_norm", layer=rmu_layer, **{group: last})
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
    _check_columns(df, required=("layer", "phi"), numeric=("phi", "noise_scale"), table=table)
    layers = _check_layers(df, table, rmu_layer)
    scales = _sorted_groups(df["noise_scale"]) if "noise_scale" in df.columns else [None]
    ramp = np.linspace(0, 0.9, len(scales)) if len(scales) > 1 else [0.0]
    fig = go.Figure()
    for scale, color in zip(scales, sample_colorscale("Viridis", list(ramp)), strict=True):
        rows = df if scale is None else df[df["noise_scale"] == scale]
        rows = rows.groupby("layer", as_index=False)["phi"].mean()
        name = "Phi" if scale is None else f"noise scale {scale:g}"
        fig.add_trace(_line(rows["layer"], rows["phi"], name, color, True))
    _layer_axes(fig, layers)
    _mark_rmu_layer(fig, rmu_layer)
    fig.update_yaxes(title_text="noise sensitivity Phi", **(_log_axis(df["phi"]) if log_y else {}))
    if title is None:
        mean = df.groupby("layer")["phi"].mean()
        verb = "falls" if mean.iloc[-1] < mean.iloc[0] else "rises"
        title = (
            f"Noise sensitivity {verb} with depth: Phi {mean.iloc[0]:.3g} at layer "
            f"{mean.index[0]} -> {mean.iloc[-1]:.3g} at layer {mean.index[-1]}"
        )
    return style_figure(fig, title=title)


# ----------------------------------------------------------------------------- generations


def _generations_wide(df: pd.DataFrame) -> pd.DataFrame:
    """Long (prompt, variant, generation) or wide (prompt + one column per variant) -> wide."""
    _check_columns(df, required=("prompt",), table="generations")
    if "variant" in df.columns or "generation" in df.columns:
        _check_columns(df, required=("prompt", "variant", "generation"), table="generations")
        variants = _ordered(df["variant"], tuple(VARIANT_COLORS))
        wide = df.pivot_table(
            index="prompt", columns="variant", values="generation", aggfunc="first", sort=False
        )
        return wide.reindex(columns=variants).reset_index()
    if len(df.columns) < 2:
        raise UnlearnInterpError("the generations table has no variant columns beside 'prompt'")
    return df


def _show_text(text, max_chars: int) -> str:
    """Newlines shown as a visible ``\\n`` (RMU's gibberish is mostly newlines), long text cut."""
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    text = text.replace("\r", "").replace("\n", "\\n")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _table_cell(text, max_chars: int, chars_per_line: int) -> str:
    """Escaped cell text; words longer than a line get hard breaks (plotly wraps at spaces only)."""
    words = _show_text(text, max_chars).split(" ")
    pieces = [
        "<br>".join(
            html.escape(w[i : i + chars_per_line]) for i in range(0, len(w), chars_per_line)
        )
        for w in words
    ]
    return " ".join(pieces)


def generations_table(
    df: pd.DataFrame, *, max_chars: int = 300, title: str | None = None
) -> go.Figure:
    """Side-by-side generations as a plotly Table: one row per prompt, one column per variant.

    ``df`` is long (columns ``prompt``, ``variant``, ``generation``) or already wide
    (``prompt`` plus one column per variant). Newlines are shown as ``\\n`` so the "The\\n\\nThe"
    gibberish of RMU is visible; texts are cut at ``max_chars``. The height grows with the text.

    >>> fig = generations_table(generations)                             # doctest: +SKIP
    """
    wide = _generations_wide(df)
    columns = list(wide.columns)
    header = ["prompt" if c == "prompt" else variant_label(c) for c in columns]
    col_px = (FIG_WIDTH - 60) / len(columns)
    chars_per_line = max(8, int(col_px / (0.6 * (FONT_SIZE - 2))))
    cells = [[_table_cell(v, max_chars, chars_per_line) for v in wide[c]] for c in columns]
    line_px = 1.4 * (FONT_SIZE - 2)
    row_px = [
        12 + line_px * max(math.ceil(len(cells[c][r]) / chars_per_line) for c in range(len(cells)))
        for r in range(len(wide))
    ]
    fig = go.Figure(
        go.Table(
            header={
                "values": [f"<b>{h}</b>" for h in header],
                "fill_color": "#e8eef7",
                "align": "left",
                "font": {"size": FONT_SIZE},
            },
            cells={
                "values": cells,
                "align": "left",
                "font": {"size": FONT_SIZE - 2},
                "fill_color": "white",
                "line_color": "#d0d0d0",
            },
        )
    )
    fig.update_layout(margin={"l": 30, "r": 30, "t": 70, "b": 20})
    height = int(70 + 20 + 40 + sum(row_px) * 1.1)
    return style_figure(
        fig, title=title or "Generations side by side, same prompts", height=max(250, height)
    )


def generations_markdown(df: pd.DataFrame, *, max_chars: int = 300) -> str:
    """Side-by-side generations as a Markdown table (for ``report.md``): rows prompt, columns variant.

    >>> print(generations_markdown(pd.DataFrame({"prompt": ["Q"], "rmu": ["The\\n\\nThe"]})))
    | prompt | RMU |
    |---|---|
    | Q | The\\n\\nThe |
    """
    wide = _generations_wide(df)
    header = ["prompt" if c == "prompt" else variant_label(c) for c in wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in wide.itertuples(index=False):
        cells = [_show_text(v, max_chars).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- saving

_WARNED: set[str] = set()  # one warning per distinct problem per process, not one per figure
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _find_browser() -> str | None:
    """The browser kaleido would use: BROWSER_PATH, plotly_get_chrome's download, or PATH."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, AttributeError, TypeError):  # another choreographer layout: search PATH
        return next((p for p in map(shutil.which, _BROWSER_NAMES) if p), None)


def static_export_problem() -> str | None:
    """Why PNG/SVG export cannot work here (None when kaleido >= 1 and a browser are present).

    A cheap check that starts no browser; an export can still fail later (e.g. a browser that
    crashes), which :func:`save_figure` reports the same way.

    >>> static_export_problem()                                          # doctest: +SKIP
    'no Chrome/Chromium browser was found'
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        kaleido_version = version("kaleido")
    except PackageNotFoundError:
        return "kaleido is not installed"
    if int(kaleido_version.split(".")[0]) < 1:
        return f"kaleido {kaleido_version} is installed but >= 1 is needed"
    browser_path = os.environ.get("BROWSER_PATH")
    if browser_path:
        ok = os.path.isfile(browser_path) and os.access(browser_path, os.X_OK)
        return None if ok else f"BROWSER_PATH={browser_path!r} is not an executable file"
    if _find_browser() is None:
        return "no Chrome/Chromium browser was found"
    return None


@contextlib.contextmanager
def static_export() -> Iterator[bool]:
    """Keep one browser open for many :func:`save_figure` calls; yields whether export works.

    Without it every PNG starts and stops Chrome (about 2-3 s each); inside it, about 0.2 s.

    >>> with static_export():                                            # doctest: +SKIP
    ...     for name, fig in figures.items():
    ...         save_figure(fig, out / name)
    """
    started = False
    if static_export_problem() is None:
        import kaleido

        try:
            kaleido.start_sync_server(silence_warnings=True)
            started = True
        except Exception as err:  # no server (old kaleido, broken browser): one browser per call
            logger.debug("could not start a kaleido server: %s", err)
    try:
        yield started
    finally:
        if started:
            kaleido.stop_sync_server(silence_warnings=True)


def _figure_paths(path: Path, formats: Sequence[str]) -> dict[str, Path]:
    """``figures/norms`` or ``figures/norms.png`` -> ``{"html": figures/norms.html, ...}``."""
    allowed = ("html", *STATIC_FORMATS)
    for fmt in formats:
        if fmt not in allowed:
            raise UnlearnInterpError(f"figure format {fmt!r} is not one of {allowed}")
    if path.suffix.lstrip(".") in allowed:
        path = path.with_suffix("")
    return {fmt: path.parent / f"{path.name}.{fmt}" for fmt in dict.fromkeys(formats)}


def save_figure(
    fig: go.Figure,
    path: str | os.PathLike,
    formats: Sequence[str] = ("html", "png"),
    *,
    scale: float | int = 2,
    strict: bool = False,
) -> list[Path]:
    """Write ``fig`` as self-contained HTML and, where static export works, PNG/SVG/PDF.

    ``path`` is the file stem (a known suffix such as ``.png`` is dropped). The HTML embeds
    plotly.js, so it opens offline. Static formats need kaleido >= 1 and Chrome/Chromium; when
    either is missing (or the export fails) the static files are skipped with one logged
    warning saying how to enable them, or, with ``strict=True``, :class:`UnlearnInterpError`
    with that sentence. Every file is written atomically. Returns the paths written.

    >>> save_figure(fig, "figures/layer_norms")                          # doctest: +SKIP
    [PosixPath('figures/layer_norms.html'), PosixPath('figures/layer_norms.png')]
    """
    targets = _figure_paths(Path(path), formats)
    written = []
    if "html" in targets:
        with atomic_path(targets["html"]) as tmp:
            fig.write_html(
                tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False}
            )
        written.append(targets["html"])
    static = {fmt: p for fmt, p in targets.items() if fmt != "html"}
    problem = static_export_problem() if static else None
    for fmt, target in static.items() if problem is None else ():
        try:
            image = _to_image(fig, fmt, scale)
        except Exception as err:  # kaleido/browser failures have no common base class
            problem = f"the export failed with {type(err).__name__}: {str(err).strip()[:200]}"
            break
        with atomic_path(target) as tmp:
            tmp.write_bytes(image)
        written.append(target)
    if problem is not None:
        _report_static_problem(problem, sorted(static), strict=strict)
    return written


def _to_image(fig: go.Figure, fmt: str, scale: float | int) -> bytes:
    with warnings.catch_warnings():  # plotly passes kaleido options a running server ignores
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format=fmt, scale=scale)


def _report_static_problem(problem: str, formats: list[str], *, strict: bool) -> None:
    sentence = (
        f"Skipped {'/'.join(formats).upper()} export because {problem}; {ENABLE_STATIC_HINT}."
    )
    if strict:
        raise UnlearnInterpError(sentence)
    if sentence not in _WARNED:
        _WARNED.add(sentence)
        logger.warning(sentence)
