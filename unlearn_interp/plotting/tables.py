"""Generations side by side, one row per prompt and one column per variant: as a plotly Table
figure and as a Markdown table for ``report.md``. Newlines show as a visible ``\\n``."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.plotting.style import (
    FIG_WIDTH,
    FONT_SIZE,
    VARIANT_COLORS,
    check_columns,
    ordered,
    style_figure,
    variant_label,
)


def _generations_wide(df: pd.DataFrame) -> pd.DataFrame:
    """Long (prompt, variant, generation) or wide (prompt + one column per variant) -> wide."""
    check_columns(df, required=("prompt",), table="generations")
    if "variant" in df.columns or "generation" in df.columns:
        check_columns(df, required=("prompt", "variant", "generation"), table="generations")
        variants = ordered(df["variant"], tuple(VARIANT_COLORS))
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
