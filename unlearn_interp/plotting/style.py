"""The shared look of every figure, and the checks every ``plot_*`` function runs on its table.

Sizes, fonts, the plotly template, fixed variant colours and legend labels, title wrapping,
integer layer axes with the RMU layer marked, chance lines, log axes; and the column checks
that turn a malformed table into one :class:`UnlearnInterpError` sentence naming the column.
Layer ``l`` is the residual stream after block ``l`` (``blocks.{l}.hook_resid_post``).

    >>> style_figure(go.Figure(), title="Norms jump at the RMU layer").layout.width
    900
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from unlearn_interp.errors import UnlearnInterpError

FIG_WIDTH = 900  # README width: readable without zooming
FIG_HEIGHT = 450
FONT_SIZE = 14
LAYER_AXIS_TITLE = "layer (residual stream after block l)"
TITLE_CHARS = 90  # longer titles are broken onto two lines (about 9 px per character at 17 px)

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
    "rmu_rtn4": "#8c564b",
    "rmu_relearned": "#e377c2",
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
    "rmu_rtn4": "RMU, 4-bit quantised",
    "rmu_relearned": "RMU, relearned on T",
}
PROMPT_SET_ORDER = ("forget", "retain")
TASK_ORDER = ("hazardous", "benign", "wmdp_bio", "wmdp_cyber", "mmlu")  # tasks left to right
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
    """Legend label of a variant (``"rmu_ablated"`` -> ``"RMU, junk ablated"``; an audited
    pair's ``"unlearned_ablated"`` -> ``"unlearned, junk ablated"``)."""
    text = str(name)
    if text in VARIANT_LABELS:
        return VARIANT_LABELS[text]
    as_rmu = _as_rmu(text)
    return VARIANT_LABELS[as_rmu].replace("RMU", "unlearned") if as_rmu in VARIANT_LABELS else text


def variant_dash(name: object) -> str:
    """Line dash of a variant: dashed for the random controls, solid otherwise."""
    return VARIANT_DASHES.get(_as_rmu(str(name)), "solid")


def _as_rmu(name: str) -> str:
    """An audited pair's variant by the name of its RMU counterpart (``unlearned_x`` -> ``rmu_x``),
    so both look alike in every figure."""
    return "rmu" + name.removeprefix("unlearned") if name.startswith("unlearned") else name


def colors_for(names: Sequence) -> dict:
    """Fixed colours for known variants, the qualitative palette in order for the rest."""
    fixed = {c.lower() for c in VARIANT_COLORS.values()}
    spare = [c for c in qualitative.D3 + qualitative.Dark2 if c.lower() not in fixed]
    colors, i = {}, 0
    for name in names:
        if _as_rmu(str(name)) in VARIANT_COLORS:
            colors[name] = VARIANT_COLORS[_as_rmu(str(name))]
        else:
            colors[name] = spare[i % len(spare)]
            i += 1
    return colors


def ordered(values: pd.Series, preferred: Sequence[str] = ()) -> list:
    """Unique values: the ``preferred`` ones first in that order, then the rest as they appear."""
    seen = list(dict.fromkeys(values.tolist()))
    first = [p for p in preferred if p in seen]
    return first + [v for v in seen if v not in first]


def sorted_groups(values: pd.Series) -> list:
    """Unique values sorted numerically when they are numbers, else in order of appearance."""
    unique = list(dict.fromkeys(values.tolist()))
    if pd.api.types.is_numeric_dtype(values):
        return sorted(unique)
    return unique


def fmt_coef(value, coef_label: str) -> str:
    """``6.5`` -> ``"c = 6.5"``; labels that are already strings (``"beta = 5"``) pass through."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{coef_label} = {value:g}"
    return str(value)


def check_columns(
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


def check_layers(df: pd.DataFrame, table: str, rmu_layer: int | None) -> list[int]:
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


def layer_axes(
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


def legend_key(fig: go.Figure, name: str, line: dict) -> None:
    """A legend-only entry explaining a reference line or a dash style (never collides)."""
    fig.add_trace(
        go.Scatter(x=[None], y=[None], mode="lines", name=name, line=line, meta=LEGEND_KEY)
    )


def mark_rmu_layer(fig: go.Figure, rmu_layer: int | None, *, n_panels: int = 1) -> None:
    """A dotted vertical line at the RMU layer in every panel, named in the legend."""
    if rmu_layer is None:
        return
    line = {"dash": "dot", "color": "black", "width": 1.5}
    for col in range(1, n_panels + 1):
        fig.add_vline(x=rmu_layer, line=line, **({"row": 1, "col": col} if n_panels > 1 else {}))
    legend_key(fig, f"RMU layer {rmu_layer}", line)


def chance_line(fig: go.Figure, chance: float | int | None, *, n_panels: int = 1) -> None:
    """Dashed horizontal line at chance accuracy (0.25 for four-way multiple choice)."""
    if chance is None:
        return
    line = {"dash": "dash", "color": "grey", "width": 1.5}
    for col in range(1, n_panels + 1):
        fig.add_hline(y=chance, line=line, **({"row": 1, "col": col} if n_panels > 1 else {}))
    legend_key(fig, f"chance ({chance:g})", line)


def log_axis(values: pd.Series) -> dict:
    """Log axis settings: labels at powers of ten only when the data span >= 1.5 decades."""
    positive = values[values > 0]
    wide = len(positive) and positive.max() / positive.min() >= 10**1.5
    return {"type": "log", "dtick": 1} if wide else {"type": "log"}


def value_at(df: pd.DataFrame, column: str, **where) -> float | None:
    """Mean of ``column`` over the rows matching ``where``; None when no row matches."""
    mask = np.ones(len(df), dtype=bool)
    for key, value in where.items():
        mask &= (df[key] == value).to_numpy()
    values = df.loc[mask, column]
    return float(values.mean()) if len(values) else None
