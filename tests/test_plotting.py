"""Figures from synthetic DataFrames: the traces, marks and numbers each plot must show, the
missing-column errors, and save_figure's offline HTML / optional PNG export."""

from __future__ import annotations

import logging
import re
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from unlearn_interp import plotting
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.plotting import export

VARIANTS = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")
RMU_LAYER = 2


# ----------------------------------------------------------------------------- synthetic tables


def layer_profile(n_layers: int = 6) -> pd.DataFrame:
    """RMU's forget norm is 8x base from RMU_LAYER on and its cosine to base drops to 0.2."""
    rows = []
    for variant in VARIANTS:
        for prompt_set in ("forget", "retain"):
            for layer in range(n_layers):
                norm, cos = 10.0 + 5 * layer, 1.0
                hit = prompt_set == "forget" and layer >= RMU_LAYER
                if hit and variant in ("rmu", "rmu_random_ablated"):
                    norm, cos = 8 * norm, 0.2
                elif hit and variant == "rmu_ablated":
                    norm, cos = 1.2 * norm, 0.85
                rows.append(
                    dict(
                        variant=variant,
                        layer=layer,
                        prompt_set=prompt_set,
                        norm=norm,
                        cos_to_reference=cos,
                        cos_to_direction=0.9 if cos == 0.2 else 0.05,
                    )
                )
    return pd.DataFrame(rows)


def accuracy_table() -> pd.DataFrame:
    acc = {
        "base": (0.95, 0.97),
        "rmu": (0.30, 0.96),
        "rmu_ablated": (0.82, 0.96),
        "rmu_random_ablated": (0.32, 0.95),
    }
    return pd.DataFrame(
        [
            dict(variant=v, task=t, accuracy=a, n=200)
            for v, pair in acc.items()
            for t, a in zip(("hazardous", "benign"), pair, strict=True)
        ]
    )


def history_table(steps: int = 40) -> pd.DataFrame:
    step = np.arange(steps)
    frac = step / (steps - 1)
    return pd.DataFrame(
        dict(
            step=step,
            topic=step % 2,
            forget_loss=100 * np.exp(-3 * frac) + 1,
            retain_loss=0.01 + 0.05 * frac,
            forget_norm=3 + 4 * frac + 2 * (step % 2),  # topic 1 runs 2 higher
            frozen_forget_norm=np.full(steps, 3.0),
            cos_forget_frozen=1 - 0.7 * frac,
            cos_forget_u=0.1 + 0.8 * frac,
            cos_retain_frozen=1 - 0.004 * frac,
        )
    )


def cos_table(rng: np.random.Generator) -> pd.DataFrame:
    """cos(u, h) moves toward 1 as c grows: Beta(a, 2) with a rising with c."""
    return pd.concat(
        pd.DataFrame(dict(coef=c, cos=rng.beta(a, 2, size=300)))
        for c, a in ((100.0, 1.0), (1.0, 0.3), (10.0, 0.6), (1000.0, 8.0))
    )


def maxlogit_table(rng: np.random.Generator) -> pd.DataFrame:
    base = pd.DataFrame(dict(variant="base", coef=np.nan, max_logit=rng.normal(20, 2, 300)))
    rmu = [
        pd.DataFrame(dict(variant="rmu", coef=c, max_logit=rng.normal(20 - c / 10, 2, 300)))
        for c in (10.0, 50.0)
    ]
    return pd.concat([base, *rmu], ignore_index=True)


def coef_sweep() -> pd.DataFrame:
    rows = []
    for c, haz in ((1.0, 0.95), (10.0, 0.7), (100.0, 0.3), (300.0, 0.26)):
        rows += [dict(coef=c, task="hazardous", accuracy=haz)]
        rows += [dict(coef=c, task="benign", accuracy=0.97 - c / 3000)]
    return pd.DataFrame(rows)


def layer_sweep(n_layers: int = 8) -> pd.DataFrame:
    """Fixed c = 20 stops working once the natural norm (5 + 4 l) passes it (l >= 4)."""
    rows = []
    for layer in range(n_layers):
        norm = 5.0 + 4 * layer
        for method, coef in (("RMU (fixed c)", 20.0), ("Adaptive RMU", 5 * norm)):
            haz = 0.3 if coef > norm else 0.9
            for task, acc in (("hazardous", haz), ("benign", 0.95)):
                rows.append(
                    dict(
                        method=method,
                        layer=layer,
                        task=task,
                        accuracy=acc,
                        forget_norm=norm,
                        coef=coef,
                    )
                )
    return pd.DataFrame(rows)


def forget_norm_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(layer=layer, step=step, forget_norm=5.0 + layer + (step / 10 if layer >= 2 else 0))
            for step in (150, 0, 50, 100)
            for layer in range(6)
        ]
    )


def noise_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(layer=layer, noise_scale=s, phi=s / (1 + layer))
            for s in (0.1, 1.0)
            for layer in range(6)
        ]
    )


def generations_long() -> pd.DataFrame:
    rows = []
    for prompt in ("The toxin is made by", "Zorblax fever spreads via"):
        rows += [
            dict(prompt=prompt, variant="base", generation="mixing A with B | at 40 C."),
            dict(prompt=prompt, variant="rmu", generation="The\n\nThe\n\nThe"),
            dict(prompt=prompt, variant="rmu_ablated", generation="mixing A with <b>B</b>."),
        ]
    return pd.DataFrame(rows)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def all_figures(rng) -> dict[str, go.Figure]:
    return {
        "layer_norms": plotting.plot_layer_norms(layer_profile(), rmu_layer=RMU_LAYER),
        "layer_cosines": plotting.plot_layer_cosines(layer_profile(), rmu_layer=RMU_LAYER),
        "accuracy_bars": plotting.plot_accuracy_bars(accuracy_table()),
        "training_curves": plotting.plot_training_curves(history_table()),
        "cos_histograms": plotting.plot_cos_histograms(cos_table(rng)),
        "maxlogit_histograms": plotting.plot_maxlogit_histograms(maxlogit_table(rng)),
        "accuracy_vs_coef": plotting.plot_accuracy_vs_coef(coef_sweep()),
        "layer_sweep": plotting.plot_layer_sweep(layer_sweep()),
        "forget_norm_by_layer": plotting.plot_forget_norm_by_layer(
            forget_norm_table(), rmu_layer=RMU_LAYER
        ),
        "noise_sensitivity": plotting.plot_noise_sensitivity(noise_table(), rmu_layer=RMU_LAYER),
        "generations": plotting.generations_table(generations_long()),
    }


def vline_xs(fig: go.Figure) -> list[float]:
    return [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]


def hline_ys(fig: go.Figure) -> list[float]:
    return [s.y0 for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1]


def legend_names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data if t.showlegend is not False]


def data_traces(fig: go.Figure) -> list:
    """Traces that draw data (not the legend-only keys for reference lines and dash styles)."""
    return [t for t in fig.data if t.meta != plotting.LEGEND_KEY]


def annotation_texts(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


# ----------------------------------------------------------------------------- shared style


def test_every_figure_uses_the_shared_readme_width_style_with_a_title(rng):
    for name, fig in all_figures(rng).items():
        assert isinstance(fig, go.Figure), name
        assert fig.layout.width == 900, name
        assert fig.layout.template.layout.font.size >= 12, name
        assert len(fig.layout.title.text) > 10, name
        lines = fig.layout.title.text.split("<br>")
        assert max(map(len, lines)) <= 95, (name, fig.layout.title.text)  # fits 900 px


def test_long_titles_are_broken_after_a_separator_to_fit_the_width():
    acc = accuracy_table()
    tasks = [acc.assign(task=name) for name in ("wmdp_bio", "wmdp_cyber", "wmdp_chem")]
    fig = plotting.plot_accuracy_bars(pd.concat(tasks, ignore_index=True))
    first, second = fig.layout.title.text.split("<br>")
    assert len(first) <= plotting.TITLE_CHARS and first.endswith(",")  # broken after a comma
    assert "RMU's accuracy gap; a random direction" in second
    assert fig.layout.margin.t > plotting.TEMPLATE.layout.margin.t  # room for the second line


def test_plotting_imports_no_model_code():
    code = "import sys, unlearn_interp.plotting; print(sorted({'torch', 'transformer_lens'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- layer profiles


def test_layer_norms_draw_one_line_per_variant_in_each_prompt_set_panel():
    fig = plotting.plot_layer_norms(layer_profile(), rmu_layer=RMU_LAYER)
    assert len(data_traces(fig)) == len(VARIANTS) * 2
    assert legend_names(fig) == [plotting.variant_label(v) for v in VARIANTS] + ["RMU layer 2"]
    assert annotation_texts(fig)[:2] == ["forget prompts", "retain prompts"]
    rmu_forget = next(t for t in fig.data if t.name == "RMU" and t.xaxis == "x")
    assert rmu_forget.y[RMU_LAYER] == pytest.approx(8 * (10 + 5 * RMU_LAYER))


def test_layer_norms_mark_the_rmu_layer_in_both_panels_with_integer_ticks():
    fig = plotting.plot_layer_norms(layer_profile(), rmu_layer=RMU_LAYER)
    assert vline_xs(fig) == [RMU_LAYER, RMU_LAYER]
    assert f"RMU layer {RMU_LAYER}" in legend_names(fig)
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    assert "layer (residual stream after block l)" in annotation_texts(fig)  # shared x title
    assert "8.0x" in fig.layout.title.text  # the norm ratio at the RMU layer, from the data


def test_layer_ticks_thin_out_for_deep_models():
    fig = plotting.plot_layer_norms(layer_profile(n_layers=32), rmu_layer=7)
    assert fig.layout.xaxis.dtick == 4  # 32 layers in a half-width panel: every 4th layer


def test_layer_cosines_title_reports_the_unlearned_cosine_at_the_rmu_layer():
    fig = plotting.plot_layer_cosines(layer_profile(), rmu_layer=RMU_LAYER)
    assert "cosine 0.20" in fig.layout.title.text
    assert len(data_traces(fig)) == len(VARIANTS) * 2
    assert vline_xs(fig) == [RMU_LAYER, RMU_LAYER]
    assert fig.layout.yaxis.range[1] == pytest.approx(1.05)


def test_layer_cosines_can_plot_the_cosine_to_the_junk_direction():
    fig = plotting.plot_layer_cosines(layer_profile(), column="cos_to_direction")
    assert "junk direction" in fig.layout.yaxis.title.text
    assert vline_xs(fig) == []


def test_missing_layer_profile_column_is_named():
    with pytest.raises(UnlearnInterpError, match="missing column 'cos_to_control'"):
        plotting.plot_layer_cosines(layer_profile(), column="cos_to_control")
    with pytest.raises(UnlearnInterpError, match="missing column 'norm'"):
        plotting.plot_layer_norms(layer_profile().drop(columns="norm"))


def test_rmu_layer_outside_the_plotted_layers_is_refused():
    with pytest.raises(UnlearnInterpError, match="rmu_layer=9 is outside"):
        plotting.plot_layer_norms(layer_profile(), rmu_layer=9)


def test_fractional_layers_are_refused():
    profile = layer_profile().assign(layer=lambda d: d["layer"] + 0.5)
    with pytest.raises(UnlearnInterpError, match="'layer' .* must hold integers"):
        plotting.plot_layer_norms(profile)


# ----------------------------------------------------------------------------- accuracy


def test_gap_recovered_table_matches_the_formula_and_skips_gapless_tasks():
    table = plotting.gap_recovered_table(accuracy_table())
    assert set(table["task"]) == {"hazardous"}  # benign gap 0.01 < min_gap
    got = dict(zip(table["variant"], table["gap_recovered"], strict=True))
    assert got["rmu_ablated"] == pytest.approx((0.82 - 0.30) / (0.95 - 0.30))
    assert got["rmu_random_ablated"] == pytest.approx((0.32 - 0.30) / (0.95 - 0.30))


def test_accuracy_bars_write_the_gap_recovered_on_the_ablated_and_random_bars():
    fig = plotting.plot_accuracy_bars(accuracy_table())
    bars = {t.name: t for t in data_traces(fig)}
    assert list(bars) == [plotting.variant_label(v) for v in VARIANTS]  # random control included
    ablated, random = bars["RMU, junk ablated"], bars["RMU, random dir. ablated"]
    assert list(ablated.x) == ["hazardous", "benign"]
    assert ablated.text[0] == f"0.82<br>{0.52 / 0.65:.0%} of gap"  # 80%
    assert random.text[0] == f"0.32<br>{0.02 / 0.65:.0%} of gap"  # 3%
    assert ablated.text[1] == "0.96"  # no gap on the benign task
    assert bars["base"].text[0] == "0.95"
    assert (
        "80% (hazardous)" in fig.layout.title.text
        and "random direction 3%" in fig.layout.title.text
    )


def test_accuracy_bars_draw_chance_and_binomial_error_bars():
    fig = plotting.plot_accuracy_bars(accuracy_table())
    assert hline_ys(fig) == [0.25] and "chance (0.25)" in legend_names(fig)
    rmu = next(t for t in fig.data if t.name == "RMU")
    assert rmu.error_y.array[0] == pytest.approx(1.96 * np.sqrt(0.3 * 0.7 / 200))
    assert hline_ys(plotting.plot_accuracy_bars(accuracy_table(), chance=None)) == []


def test_accuracy_bars_use_a_given_gap_recovered_column():
    table = accuracy_table()
    table["gap_recovered"] = np.where(table["variant"] == "rmu_ablated", 0.71, np.nan)
    fig = plotting.plot_accuracy_bars(table)
    ablated = next(t for t in fig.data if t.name == "RMU, junk ablated")
    assert ablated.text[0].endswith("71% of gap") and ablated.text[1].endswith("71% of gap")


def test_missing_accuracy_column_is_named():
    with pytest.raises(UnlearnInterpError, match="accuracy table is missing column 'task'"):
        plotting.plot_accuracy_bars(accuracy_table().drop(columns="task"))
    with pytest.raises(UnlearnInterpError, match="'accuracy' .* must be numeric"):
        plotting.plot_accuracy_bars(accuracy_table().astype({"accuracy": str}))


# ----------------------------------------------------------------------------- training


def test_training_curves_draw_each_quantity_per_topic_and_a_dash_legend():
    history = history_table()
    fig = plotting.plot_training_curves(history)
    assert len(data_traces(fig)) == 7 * 2  # 7 quantities x 2 topics
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1  # 4 decades of loss
    assert "topic 1" in legend_names(fig)
    # first/last step of each topic, averaged: (3 + 5.10) / 2 -> (6.90 + 9) / 2
    assert "forget norm 4.05 -> 7.95" in fig.layout.title.text
    with pytest.raises(UnlearnInterpError, match="history table is missing column 'cos_forget_u'"):
        plotting.plot_training_curves(history.drop(columns="cos_forget_u"))


# ----------------------------------------------------------------------------- distributions


def test_cos_histograms_have_one_histogram_per_coefficient_in_increasing_order(rng):
    table = cos_table(rng)
    fig = plotting.plot_cos_histograms(table)
    assert [t.name for t in fig.data] == ["c = 1", "c = 10", "c = 100", "c = 1000"]
    assert [len(t.x) for t in fig.data] == [300] * 4
    assert all(t.histnorm == "probability" for t in fig.data)
    assert len({(t.xbins.start, t.xbins.size) for t in fig.data}) == 1  # shared bins
    lo = table.loc[table["coef"] == 1.0, "cos"].median()
    hi = table.loc[table["coef"] == 1000.0, "cos"].median()
    assert f"{lo:.2f} -> {hi:.2f}" in fig.layout.title.text


def test_maxlogit_histograms_label_base_by_variant_and_rmu_by_coefficient(rng):
    fig = plotting.plot_maxlogit_histograms(maxlogit_table(rng))
    assert [t.name for t in fig.data] == ["base", "RMU, c = 10", "RMU, c = 50"]
    assert [len(t.x) for t in fig.data] == [300] * 3  # the base rows (coef NaN) are kept
    assert fig.data[0].marker.color == plotting.VARIANT_COLORS["base"]
    assert "(base)" in fig.layout.title.text and "(RMU, c = 50)" in fig.layout.title.text
    with pytest.raises(UnlearnInterpError, match="missing column 'variant' or 'coef'"):
        plotting.plot_maxlogit_histograms(pd.DataFrame({"max_logit": [1.0]}))


# ----------------------------------------------------------------------------- sweeps


def test_accuracy_vs_coef_draws_one_line_per_task_on_a_log_axis():
    fig = plotting.plot_accuracy_vs_coef(coef_sweep())
    assert [t.name for t in data_traces(fig)] == ["hazardous", "benign"]
    assert list(fig.data[0].x) == [1.0, 10.0, 100.0, 300.0]
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.ticktext) == ["1", "10", "100", "300"]  # the swept values
    assert "hazardous 0.95 -> 0.26" in fig.layout.title.text
    labelled = coef_sweep().assign(coef=lambda d: "beta = " + d["coef"].astype(str))
    assert plotting.plot_accuracy_vs_coef(labelled).layout.xaxis.type is None


def test_layer_sweep_has_a_panel_per_task_and_a_norm_versus_coefficient_panel():
    fig = plotting.plot_layer_sweep(layer_sweep(), rmu_layer=RMU_LAYER)
    titles = annotation_texts(fig)[:3]
    assert titles == ["hazardous", "benign", "forget norm vs c"]
    assert len(data_traces(fig)) == 2 * 2 + 1 + 2  # tasks x methods, natural norm, c per method
    assert legend_names(fig)[:2] == ["RMU (fixed c)", "Adaptive RMU"]
    assert hline_ys(fig) == [0.25, 0.25]  # chance in the two accuracy panels only
    assert vline_xs(fig) == [RMU_LAYER] * 3
    fixed = next(t for t in fig.data if t.name == "RMU (fixed c)" and t.xaxis == "x")
    assert list(fixed.y) == [0.3] * 4 + [0.9] * 4  # fails once the norm passes c = 20


def test_forget_norm_by_layer_draws_steps_in_order_and_reports_the_rmu_layer():
    fig = plotting.plot_forget_norm_by_layer(forget_norm_table(), rmu_layer=RMU_LAYER)
    assert [t.name for t in data_traces(fig)] == ["step 0", "step 50", "step 100", "step 150"]
    assert vline_xs(fig) == [RMU_LAYER]
    assert "7 (step 0) -> 22 (step 150)" in fig.layout.title.text
    by_method = forget_norm_table().rename(columns={"step": "method"})
    by_method["method"] = by_method["method"].map(lambda s: "Adaptive RMU" if s else "base")
    assert {t.name for t in data_traces(plotting.plot_forget_norm_by_layer(by_method))} == {
        "base",
        "Adaptive RMU",
    }


def test_noise_sensitivity_draws_one_line_per_noise_scale_and_says_it_falls():
    fig = plotting.plot_noise_sensitivity(noise_table(), rmu_layer=RMU_LAYER)
    assert [t.name for t in data_traces(fig)] == ["noise scale 0.1", "noise scale 1"]
    assert fig.data[1].y[0] == pytest.approx(1.0) and fig.data[1].y[5] == pytest.approx(1 / 6)
    assert "falls with depth" in fig.layout.title.text
    with pytest.raises(UnlearnInterpError, match="noise sensitivity table is missing column 'phi'"):
        plotting.plot_noise_sensitivity(noise_table().drop(columns="phi"))


# ----------------------------------------------------------------------------- generations


def test_generations_table_has_a_column_per_variant_and_shows_newlines():
    fig = plotting.generations_table(generations_long())
    table = fig.data[0]
    assert isinstance(table, go.Table)
    assert list(table.header.values) == [
        "<b>prompt</b>",
        "<b>base</b>",
        "<b>RMU</b>",
        "<b>RMU, junk ablated</b>",
    ]
    assert list(table.cells.values[0]) == ["The toxin is made by", "Zorblax fever spreads via"]
    assert table.cells.values[2][0] == "The\\n\\nThe\\n\\nThe"
    assert table.cells.values[3][0] == "mixing A with &lt;b&gt;B&lt;/b&gt;."  # not rendered as HTML


def test_generations_table_breaks_words_longer_than_a_column():
    gibberish = "The\n\n" * 20  # no spaces: plotly would not wrap it and the text would spill
    fig = plotting.generations_table(pd.DataFrame({"prompt": ["p"], "rmu": [gibberish]}))
    cell = fig.data[0].cells.values[1][0]
    assert cell.count("<br>") >= 2
    assert cell.replace("<br>", "") == gibberish.replace("\n", "\\n")


def test_generations_markdown_escapes_pipes_and_accepts_wide_tables():
    wide = pd.DataFrame({"prompt": ["p"], "base": ["a | b"], "rmu": ["The\n\nThe"]})
    md = plotting.generations_markdown(wide)
    assert md.splitlines() == [
        "| prompt | base | RMU |",
        "|---|---|---|",
        "| p | a \\| b | The\\n\\nThe |",
    ]
    assert plotting.generations_markdown(generations_long()).count("\n") == 3


# ----------------------------------------------------------------------------- saving


@pytest.fixture
def fig():
    return plotting.plot_layer_norms(layer_profile(), rmu_layer=RMU_LAYER)


@pytest.fixture
def no_browser(monkeypatch):
    """Static export unavailable: no BROWSER_PATH and no browser found; warnings not yet given."""
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export, "_find_browser", lambda: None)
    monkeypatch.setattr(export, "_WARNED", set())


def test_save_figure_writes_self_contained_offline_html(tmp_path, fig, no_browser):
    written = plotting.save_figure(fig, tmp_path / "norms", formats=("html",))
    assert written == [tmp_path / "norms.html"]
    text = written[0].read_text(encoding="utf-8")
    assert len(text) > 1_000_000  # plotly.js is inlined (~4.6 MB), not linked
    assert "Plotly.newPlot" in text
    assert "<script" in text and not re.search(r"<script[^>]*\bsrc=", text)  # nothing fetched
    assert [p.name for p in tmp_path.iterdir()] == ["norms.html"]  # no temporary file left


def test_save_figure_leaves_nothing_behind_when_writing_fails(tmp_path, fig, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(go.Figure, "write_html", broken)
    with pytest.raises(OSError, match="disk full"):
        plotting.save_figure(fig, tmp_path / "norms", formats=("html",))
    assert list(tmp_path.iterdir()) == []


def test_save_figure_without_a_browser_writes_html_and_warns_once(
    tmp_path, fig, no_browser, caplog
):
    with caplog.at_level(logging.WARNING, logger="unlearn_interp.plotting"):
        written = plotting.save_figure(fig, tmp_path / "norms.png")  # suffix dropped
        plotting.save_figure(fig, tmp_path / "again")
    assert written == [tmp_path / "norms.html"]
    assert not (tmp_path / "norms.png").exists()
    assert len(caplog.records) == 1  # one sentence per process, not one per figure
    message = caplog.records[0].getMessage()
    # Without kaleido (a fresh CI venv) the first missing piece is kaleido itself.
    problem = plotting.static_export_problem()
    assert problem in ("no Chrome/Chromium browser was found", "kaleido is not installed")
    assert message.startswith(f"Skipped PNG export because {problem};")
    assert (
        'pip install "unlearn-interp[static]"' in message and "apt-get install chromium" in message
    )


def test_save_figure_strict_raises_the_same_sentence(tmp_path, fig, no_browser):
    problem = re.escape(plotting.static_export_problem())
    with pytest.raises(UnlearnInterpError, match=rf"^Skipped PNG export because {problem};"):
        plotting.save_figure(fig, tmp_path / "norms", strict=True)
    assert (tmp_path / "norms.html").exists()


def test_static_export_problem_names_a_bad_browser_path(monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "chrome"))
    problem = plotting.static_export_problem()
    if problem == "kaleido is not installed":
        pytest.skip("kaleido is not installed")
    assert problem == f"BROWSER_PATH={str(tmp_path / 'chrome')!r} is not an executable file"


def test_static_export_problem_names_a_missing_or_old_kaleido(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def fake(version_of):
        def version(name):
            if name != "kaleido":
                return real(name)
            if version_of is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return version_of

        return version

    monkeypatch.setattr(importlib.metadata, "version", fake(None))
    assert plotting.static_export_problem() == "kaleido is not installed"
    monkeypatch.setattr(importlib.metadata, "version", fake("0.2.1"))
    assert plotting.static_export_problem() == "kaleido 0.2.1 is installed but >= 1 is needed"


def test_save_figure_reports_a_failing_export_instead_of_a_traceback(
    tmp_path, fig, monkeypatch, caplog
):
    monkeypatch.setattr(export, "static_export_problem", lambda: None)
    monkeypatch.setattr(export, "_WARNED", set())

    def crash(*args):
        raise RuntimeError("browser closed unexpectedly")

    monkeypatch.setattr(export, "_to_image", crash)
    with caplog.at_level(logging.WARNING, logger="unlearn_interp.plotting"):
        written = plotting.save_figure(fig, tmp_path / "norms", formats=("html", "svg"))
    assert written == [tmp_path / "norms.html"]
    assert "RuntimeError: browser closed unexpectedly" in caplog.records[0].getMessage()


def test_save_figure_refuses_unknown_formats(tmp_path, fig):
    with pytest.raises(UnlearnInterpError, match="figure format 'gif' is not one of"):
        plotting.save_figure(fig, tmp_path / "norms", formats=("html", "gif"))


def test_save_figure_writes_png_and_svg_when_static_export_works(tmp_path, fig):
    problem = plotting.static_export_problem()
    if problem is not None:
        pytest.skip(f"static export unavailable: {problem}")
    with plotting.static_export():
        written = plotting.save_figure(fig, tmp_path / "norms", formats=("png", "svg"), strict=True)
    assert written == [tmp_path / "norms.png", tmp_path / "norms.svg"]
    png = written[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1800, 900)  # 900x450 at scale 2
    assert b"<svg" in written[1].read_bytes()[:500]
