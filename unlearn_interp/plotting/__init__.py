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

The modules, one job each: ``style`` (sizes, colours, labels, axes, column checks), ``layers``
(layer profiles), ``accuracy`` (accuracy bars, gap recovered), ``training`` (RMU training
curves), ``distributions`` (histograms), ``sweeps`` (coefficient, layer and noise sweeps),
``tables`` (generations side by side), ``ledger`` (the recovery ledger), ``changes`` (where
unlearning wrote: weight change per block, cosine to base per layer), ``depth`` (the
depth profile: probes, logit lens, CKA, norms and cosines per layer) and ``export``
(HTML/PNG files, browser discovery).
"""

from __future__ import annotations

from unlearn_interp.plotting.accuracy import (
    gap_recovered_table,
    plot_accuracy_bars,
    plot_gap_recovered,
)
from unlearn_interp.plotting.changes import plot_weight_changes
from unlearn_interp.plotting.depth import plot_depth_profile
from unlearn_interp.plotting.distributions import plot_cos_histograms, plot_maxlogit_histograms
from unlearn_interp.plotting.export import (
    ENABLE_STATIC_HINT,
    STATIC_FORMATS,
    save_figure,
    static_export,
    static_export_problem,
)
from unlearn_interp.plotting.layers import plot_layer_cosines, plot_layer_norms
from unlearn_interp.plotting.ledger import headline_task, last_steps, plot_ledger
from unlearn_interp.plotting.style import (
    FIG_HEIGHT,
    FIG_WIDTH,
    FONT_SIZE,
    LAYER_AXIS_TITLE,
    LEGEND_KEY,
    PROMPT_SET_ORDER,
    TASK_ORDER,
    TEMPLATE,
    TITLE_CHARS,
    VARIANT_COLORS,
    VARIANT_DASHES,
    VARIANT_LABELS,
    style_figure,
    variant_label,
)
from unlearn_interp.plotting.sweeps import (
    METHOD_COLORS,
    plot_accuracy_vs_coef,
    plot_forget_norm_by_layer,
    plot_layer_sweep,
    plot_noise_sensitivity,
)
from unlearn_interp.plotting.tables import generations_markdown, generations_table
from unlearn_interp.plotting.training import TOPIC_DASHES, TRAINING_PANELS, plot_training_curves

__all__ = [
    "ENABLE_STATIC_HINT",
    "FIG_HEIGHT",
    "FIG_WIDTH",
    "FONT_SIZE",
    "LAYER_AXIS_TITLE",
    "LEGEND_KEY",
    "METHOD_COLORS",
    "PROMPT_SET_ORDER",
    "STATIC_FORMATS",
    "TASK_ORDER",
    "TEMPLATE",
    "TITLE_CHARS",
    "TOPIC_DASHES",
    "TRAINING_PANELS",
    "VARIANT_COLORS",
    "VARIANT_DASHES",
    "VARIANT_LABELS",
    "gap_recovered_table",
    "generations_markdown",
    "generations_table",
    "headline_task",
    "last_steps",
    "plot_accuracy_bars",
    "plot_accuracy_vs_coef",
    "plot_cos_histograms",
    "plot_depth_profile",
    "plot_forget_norm_by_layer",
    "plot_gap_recovered",
    "plot_layer_cosines",
    "plot_layer_norms",
    "plot_layer_sweep",
    "plot_ledger",
    "plot_weight_changes",
    "plot_maxlogit_histograms",
    "plot_noise_sensitivity",
    "plot_training_curves",
    "save_figure",
    "static_export",
    "static_export_problem",
    "style_figure",
    "variant_label",
]
