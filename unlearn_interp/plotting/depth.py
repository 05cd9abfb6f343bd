"""The depth profile: where along the layers the knowledge still is, one figure per run.

Layers on x (the residual stream after block ``l``), one row per measurement that was made,
one colour per variant, the same in every row:

* probe accuracy (``analysis.layer_probes``): own probe solid, the base model's probe dashed,
  the shuffled-label control dotted, 95% interval bands, chance dashed grey;
* logit-lens answer rank (``analysis.logit_lens``), log axis, ``rank + 1`` so the top is 1;
* linear CKA to base (``analysis.representation_similarity``): forget solid, retain dashed;
* residual norm and cosine to base (``analysis.layer_profile``): forget solid, retain dashed.

Rows whose table is not given are left out.

    >>> fig = plot_depth_profile(probes=probes, lens=lens, similarity=sim, profile=profile,
    ...                          rmu_layer=7)                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import convert_colors_to_same_type
from plotly.subplots import make_subplots

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.plotting.style import (
    FIG_HEIGHT,
    LAYER_AXIS_TITLE,
    VARIANT_COLORS,
    check_columns,
    check_layers,
    colors_for,
    layer_axes,
    legend_key,
    log_axis,
    ordered,
    style_figure,
    value_at,
    variant_label,
)

PROBE_STYLES = {"own": "solid", "reference": "dash", "shuffled": "dot"}
PROBE_NAMES = {
    "own": "own probe",
    "reference": "base model's probe",
    "shuffled": "shuffled-label probe",
}
LENS_STYLES = {"logit": "solid", "tuned": "dashdot"}
LENS_NAMES = {"logit": "logit lens", "tuned": "tuned lens"}
SET_STYLES = {"forget": "solid", "retain": "dash"}
SET_NAMES = {"forget": "forget prompts", "retain": "retain prompts"}
# The logit lens names its prompt sets after the MCQ tasks; the others after RMU's corpora.
PROMPT_SET_ALIASES = {"forget": ("forget", "hazardous"), "retain": ("retain", "benign")}
ROW_HEIGHT = 220  # px per measurement row
BAND_OPACITY = 0.12
BANDED = ("own", "reference")  # the shuffled control's band would only cover the others
LEGEND_GAP = 75  # px from the bottom row to the legend, below the layer axis title


@dataclasses.dataclass(frozen=True)
class Panel:
    """One row of the figure: ``column`` of ``table`` per variant and layer, one line per value
    of ``style_by`` (dash from ``dashes``, named in the legend by ``names``)."""

    axis_title: str
    table: pd.DataFrame
    column: str
    style_by: str
    dashes: Mapping[str, str]
    names: Mapping[str, str]
    band: bool = False
    log_y: bool = False
    chance: float | None = None
    y_range: tuple[float, float] | None = None


def plot_depth_profile(
    *,
    probes: pd.DataFrame | None = None,
    lens: pd.DataFrame | None = None,
    similarity: pd.DataFrame | None = None,
    profile: pd.DataFrame | None = None,
    title: str | None = None,
    rmu_layer: int | None = None,
    label: str = "choice",
    prompt_set: str = "forget",
    unlearned: str = "rmu",
) -> go.Figure:
    """Probe accuracy, logit-lens rank, CKA, residual norm and cosine to base, per layer.

    ``probes`` columns: ``variant, label, probe, layer, accuracy, ci_low, ci_high, chance``
    (rows of ``label`` drawn); ``lens``: ``variant, prompt_set, lens, layer, answer_rank_mean``
    (rows of ``prompt_set``; ``"hazardous"`` stands for ``"forget"``, ``"benign"`` for
    ``"retain"``); ``similarity``: ``variant, prompt_set, layer, cka``; ``profile``:
    ``variant, prompt_set, layer, norm, cos_to_reference``. ``rmu_layer`` draws a dotted line;
    ``unlearned`` names the unlearned variant the title reports on.

    >>> fig = plot_depth_profile(similarity=sim, profile=profile, rmu_layer=2)  # doctest: +SKIP
    """
    panels = [
        *_probe_panels(probes, label, rmu_layer),
        *_lens_panels(lens, prompt_set, rmu_layer),
        *_similarity_panels(similarity, rmu_layer),
        *_profile_panels(profile, rmu_layer),
    ]
    if not panels:
        raise UnlearnInterpError(
            "plot_depth_profile needs at least one of probes, lens, similarity or profile"
        )
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.25 / len(panels),
        subplot_titles=[p.axis_title for p in panels],
    )
    _draw_panels(fig, panels)
    _layer_axes(fig, panels, rmu_layer, "RMU layer" if unlearned == "rmu" else "layer")
    height = ROW_HEIGHT * len(panels) + FIG_HEIGHT - ROW_HEIGHT
    fig = style_figure(fig, title=title or _default_title(panels, unlearned), height=height)
    margin = fig.layout.template.layout.margin
    plot_height = height - margin.b - (fig.layout.margin.t or margin.t)
    fig.update_layout(legend_y=-LEGEND_GAP / plot_height)  # a fixed gap under the layer axis
    return fig


def _probe_panels(probes: pd.DataFrame | None, label: str, rmu_layer: int | None) -> list[Panel]:
    if probes is None:
        return []
    table = "probe"
    numeric = ("accuracy", "ci_low", "ci_high", "chance")
    check_columns(
        probes,
        required=("variant", "label", "probe", "layer", *numeric),
        numeric=numeric,
        table=table,
    )
    rows = _rows_where(probes, "label", (label,), table)
    check_layers(rows, table, rmu_layer)
    axis = f"probe accuracy ({label})"
    return [
        Panel(
            axis,
            rows,
            "accuracy",
            "probe",
            PROBE_STYLES,
            PROBE_NAMES,
            band=True,
            chance=float(rows["chance"].mean()),
        )
    ]


def _lens_panels(lens: pd.DataFrame | None, prompt_set: str, rmu_layer: int | None) -> list[Panel]:
    if lens is None:
        return []
    table = "logit lens"
    check_columns(
        lens,
        required=("variant", "prompt_set", "lens", "layer", "answer_rank_mean"),
        numeric=("answer_rank_mean",),
        table=table,
    )
    rows = _rows_where(lens, "prompt_set", PROMPT_SET_ALIASES.get(prompt_set, (prompt_set,)), table)
    check_layers(rows, table, rmu_layer)
    rows = rows.assign(answer_rank_mean=rows["answer_rank_mean"] + 1)  # rank 0 is the top: log axis
    axis = f"answer rank + 1, logit lens ({prompt_set})"
    return [Panel(axis, rows, "answer_rank_mean", "lens", LENS_STYLES, LENS_NAMES, log_y=True)]


def _similarity_panels(similarity: pd.DataFrame | None, rmu_layer: int | None) -> list[Panel]:
    if similarity is None:
        return []
    table = "similarity"
    check_columns(
        similarity,
        required=("variant", "prompt_set", "layer", "cka"),
        numeric=("cka",),
        table=table,
    )
    check_layers(similarity, table, rmu_layer)
    low = max(0.0, float(similarity["cka"].min()) - 0.05)
    axis = "linear CKA to base"
    return [
        Panel(axis, similarity, "cka", "prompt_set", SET_STYLES, SET_NAMES, y_range=(low, 1.02))
    ]


def _profile_panels(profile: pd.DataFrame | None, rmu_layer: int | None) -> list[Panel]:
    if profile is None:
        return []
    table = "layer profile"
    numeric = ("norm", "cos_to_reference")
    check_columns(
        profile,
        required=("variant", "prompt_set", "layer", *numeric),
        numeric=numeric,
        table=table,
    )
    check_layers(profile, table, rmu_layer)
    low = min(0.0, float(profile["cos_to_reference"].min()) - 0.05)
    return [
        Panel("mean residual norm", profile, "norm", "prompt_set", SET_STYLES, SET_NAMES),
        Panel(
            "cosine to base",
            profile,
            "cos_to_reference",
            "prompt_set",
            SET_STYLES,
            SET_NAMES,
            y_range=(low, 1.05),
        ),
    ]


def _rows_where(df: pd.DataFrame, column: str, wanted: tuple[str, ...], table: str) -> pd.DataFrame:
    """The rows whose ``column`` is the first of ``wanted`` present, else one sentence."""
    present = set(df[column].astype(str))
    for value in wanted:
        if value in present:
            return df[df[column].astype(str) == value]
    raise UnlearnInterpError(
        f"the {table} table has no rows with {column} {wanted[0]!r} (it has {sorted(present)})"
    )


def _draw_panels(fig: go.Figure, panels: list[Panel]) -> None:
    """Every panel's lines; each variant named once in the legend, each line style once."""
    tables = [p.table["variant"] for p in panels]
    variants = ordered(pd.concat(tables, ignore_index=True), tuple(VARIANT_COLORS))
    colors = colors_for(variants)
    named: set[str] = set()
    for row, panel in enumerate(panels, start=1):
        for variant in variants:
            for style in ordered(panel.table[panel.style_by], tuple(panel.dashes)):
                rows = panel.table[
                    (panel.table["variant"] == variant) & (panel.table[panel.style_by] == style)
                ]
                if rows.empty:
                    continue
                show = str(variant) not in named
                named.add(str(variant))
                _draw_line(fig, panel, rows, row, colors[variant], str(variant), str(style), show)
        _panel_axes(fig, panel, row)
    _style_keys(fig, panels)


def _draw_line(
    fig: go.Figure,
    panel: Panel,
    rows: pd.DataFrame,
    row: int,
    color: str,
    variant: str,
    style: str,
    show_legend: bool,
) -> None:
    """One variant's line in one style (layers averaged over repeated rows), with its band."""
    columns = [panel.column, *(("ci_low", "ci_high") if panel.band else ())]
    means = rows.groupby("layer", as_index=False)[columns].mean().sort_values("layer")
    if panel.band and style in BANDED:
        _draw_band(fig, means, row, color, variant)
    fig.add_trace(
        go.Scatter(
            x=means["layer"],
            y=means[panel.column],
            name=variant_label(variant),
            legendgroup=variant,
            showlegend=show_legend,
            mode="lines+markers",
            line={"color": color, "width": 2.5, "dash": panel.dashes.get(style, "longdash")},
            marker={"size": 5},
            hovertext=panel.names.get(style, style),
        ),
        row=row,
        col=1,
    )


def _draw_band(fig: go.Figure, means: pd.DataFrame, row: int, color: str, variant: str) -> None:
    """The 95% interval as a translucent band (upper edge, then lower edge filled up to it)."""
    rgb = convert_colors_to_same_type(color, "rgb")[0][0]
    fill = rgb.replace("rgb(", "rgba(").replace(")", f", {BAND_OPACITY})")
    for edge in ("ci_high", "ci_low"):
        fig.add_trace(
            go.Scatter(
                x=means["layer"],
                y=means[edge],
                mode="lines",
                line={"width": 0},
                fill="tonexty" if edge == "ci_low" else None,
                fillcolor=fill,
                legendgroup=variant,
                showlegend=False,
                hoverinfo="skip",
            ),
            row=row,
            col=1,
        )


def _panel_axes(fig: go.Figure, panel: Panel, row: int) -> None:
    if panel.log_y:
        fig.update_yaxes(**log_axis(panel.table[panel.column]), row=row, col=1)
    if panel.band:
        fig.update_yaxes(range=[0, 1.05], row=row, col=1)
    if panel.y_range is not None:
        fig.update_yaxes(range=list(panel.y_range), row=row, col=1)
    if panel.chance is not None:
        line = {"dash": "dash", "color": "grey", "width": 1.5}
        fig.add_hline(y=panel.chance, line=line, row=row, col=1)


def _style_keys(fig: go.Figure, panels: list[Panel]) -> None:
    """Legend-only entries saying what each dash style means (only where a row has several)."""
    named: set[str] = set()
    for panel in panels:
        styles = ordered(panel.table[panel.style_by], tuple(panel.dashes))
        if len(styles) < 2:
            continue
        for style in styles:
            name = panel.names.get(str(style), str(style))
            if name not in named:
                named.add(name)
                dash = panel.dashes.get(str(style), "longdash")
                legend_key(fig, name, {"color": "black", "dash": dash, "width": 2})


def _layer_axes(
    fig: go.Figure, panels: list[Panel], rmu_layer: int | None, layer_name: str = "RMU layer"
) -> None:
    """Integer layer ticks on every row, the axis title under the last, the RMU layer marked
    (its legend says ``layer_name``)."""
    layers = sorted({int(v) for p in panels for v in p.table["layer"]})
    layer_axes(fig, layers)
    for row in range(1, len(panels)):
        fig.update_xaxes(title_text=None, row=row, col=1)
    fig.update_xaxes(title_text=LAYER_AXIS_TITLE, row=len(panels), col=1)
    if rmu_layer is None:
        return
    line = {"dash": "dot", "color": "black", "width": 1.5}
    for row in range(1, len(panels) + 1):
        fig.add_vline(x=rmu_layer, line=line, row=row, col=1)
    legend_key(fig, f"{layer_name} {rmu_layer}", line)


def _default_title(panels: list[Panel], unlearned: str = "rmu") -> str:
    """What the rows show for the unlearned variant, in numbers where the tables have them."""
    facts = []
    for panel in panels:
        if panel.column == "cka":
            facts.append(_cka_fact(panel.table, unlearned))
        elif panel.column == "accuracy":
            facts.append(_probe_fact(panel.table, unlearned))
    facts = [f for f in facts if f]
    if not facts:
        return "Depth profile: " + ", ".join(p.axis_title for p in panels) + " by layer"
    text = "; ".join(facts)
    return text[0].upper() + text[1:]


def _cka_fact(similarity: pd.DataFrame, unlearned: str) -> str | None:
    """``"RMU's forget-prompt CKA to base falls to 0.55 at layer 2 (retain 0.99)"``."""
    forget = similarity[
        (similarity["variant"] == unlearned) & (similarity["prompt_set"] == "forget")
    ]
    if forget.empty:
        return None
    lowest = forget.loc[forget["cka"].idxmin()]
    layer = int(lowest["layer"])
    fact = f"{variant_label(unlearned)}'s forget-prompt CKA to base falls to {lowest['cka']:.2f} at layer {layer}"
    retain = value_at(similarity, "cka", variant=unlearned, prompt_set="retain", layer=layer)
    return fact if retain is None else f"{fact} (retain {retain:.2f})"


def _probe_fact(probes: pd.DataFrame, unlearned: str) -> str | None:
    """``"at layer 3 probes find RMU's answers 0.95 (own probe), 0.40 (base model's probe)"``."""
    last = int(probes["layer"].max())
    where = {"variant": unlearned, "layer": last}
    own = value_at(probes, "accuracy", probe="own", **where)
    if own is None:
        return None
    fact = f"at layer {last} probes find {variant_label(unlearned)}'s answers {own:.2f} (own probe)"
    base = value_at(probes, "accuracy", probe="reference", **where)
    return fact if base is None else f"{fact}, {base:.2f} (base model's probe)"


__all__ = ["PROBE_STYLES", "SET_STYLES", "plot_depth_profile"]
