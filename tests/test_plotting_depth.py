"""The depth-profile figure (plotting.plot_depth_profile) from synthetic tables: one row per table
given, one line per variant and style in each, one legend entry per variant, the numbers in its
default title, the RMU layer marked in every row, and bad requests refused in one sentence."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from unlearn_interp import plotting
from unlearn_interp.errors import UnlearnInterpError

VARIANTS = ("base", "rmu", "rmu_ablated")
N_LAYERS = 4
RMU_LAYER = 2


def probes_table() -> pd.DataFrame:
    """Own probe 0.95 everywhere; the base probe drops to 0.4 on RMU from RMU_LAYER; shuffled 0.25."""
    rows = []
    for variant in VARIANTS:
        for probe in ("own", "reference", "shuffled"):
            for layer in range(N_LAYERS):
                acc = {"own": 0.95, "reference": 0.95, "shuffled": 0.25}[probe]
                if variant == "rmu" and probe == "reference" and layer >= RMU_LAYER:
                    acc = 0.4
                for label in ("choice", "value"):
                    rows.append(dict(variant=variant, label=label, probe=probe, layer=layer,
                                     accuracy=acc, ci_low=acc - 0.1, ci_high=min(acc + 0.1, 1.0),
                                     n=16, chance=0.25))  # fmt: skip
    return pd.DataFrame(rows)


def lens_table() -> pd.DataFrame:
    rows = [
        dict(
            variant=v, prompt_set=s, lens=lens, layer=layer, answer_rank_mean=float(10 - 3 * layer)
        )
        for v in VARIANTS
        for s in ("hazardous", "benign")
        for lens in ("logit", "tuned")
        for layer in range(N_LAYERS)
    ]
    return pd.DataFrame(rows)


def similarity_table() -> pd.DataFrame:
    """RMU's forget CKA falls to 0.55 at RMU_LAYER, its retain CKA stays 0.99."""
    rows = []
    for variant in VARIANTS:
        for prompt_set in ("forget", "retain"):
            for layer in range(N_LAYERS):
                cka = 1.0 if variant == "base" else 0.99
                if variant == "rmu" and prompt_set == "forget":
                    cka = 0.55 if layer == RMU_LAYER else 0.8
                rows.append(dict(variant=variant, prompt_set=prompt_set, layer=layer, cka=cka,
                                 mean_cos=cka, n_tokens=8))  # fmt: skip
    return pd.DataFrame(rows)


def profile_table() -> pd.DataFrame:
    rows = [
        dict(
            variant=v,
            prompt_set=s,
            layer=layer,
            norm=10.0 + layer,
            cos_to_reference=0.9,
            n_tokens=8,
        )  # fmt: skip
        for v in VARIANTS
        for s in ("forget", "retain")
        for layer in range(N_LAYERS)
    ]
    return pd.DataFrame(rows)


def lines(fig: go.Figure) -> list[go.Scatter]:
    """The data lines (not bands, not legend-only keys)."""
    return [t for t in fig.data if t.meta != plotting.LEGEND_KEY and t.mode == "lines+markers"]


def legend_names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data if t.showlegend is not False]


def test_every_table_gets_its_row_and_every_variant_one_legend_entry():
    fig = plotting.plot_depth_profile(
        probes=probes_table(), lens=lens_table(), similarity=similarity_table(),
        profile=profile_table(), rmu_layer=RMU_LAYER,
    )  # fmt: skip
    titles = [a.text for a in fig.layout.annotations]
    expected_rows = ["probe accuracy (choice)", "answer rank + 1, logit lens (forget)",
                     "linear CKA to base", "mean residual norm", "cosine to base"]  # fmt: skip
    assert [t for t in titles if t in expected_rows] == expected_rows
    assert len([k for k in fig.layout if k.startswith("yaxis")]) == 5
    # probes 3 variants x 3 kinds, lens 3 x 2, CKA 3 x 2, norm 3 x 2, cosine 3 x 2
    assert len(lines(fig)) == 9 + 6 + 6 + 6 + 6
    names = legend_names(fig)
    assert len(names) == len(set(names))
    assert {"base", "RMU", "RMU, junk ablated"} <= set(names)
    assert {"own probe", "base model's probe", "shuffled-label probe", "forget prompts",
            "retain prompts", "logit lens", "tuned lens", f"RMU layer {RMU_LAYER}"} <= set(names)  # fmt: skip
    assert len([s for s in fig.layout.shapes if s.x0 == RMU_LAYER and s.x1 == RMU_LAYER]) == 5


def test_a_variant_has_one_colour_in_every_row():
    fig = plotting.plot_depth_profile(
        probes=probes_table(), similarity=similarity_table(), profile=profile_table()
    )
    colours: dict[str, set[str]] = {}
    for trace in lines(fig):
        colours.setdefault(trace.legendgroup, set()).add(trace.line.color)
    assert set(colours) == set(VARIANTS)
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == len(VARIANTS)


def test_probe_row_draws_the_chosen_label_with_interval_bands_and_dashes():
    fig = plotting.plot_depth_profile(probes=probes_table(), label="choice")
    rmu_base_probe = [t for t in lines(fig) if t.legendgroup == "rmu" and t.line.dash == "dash"]
    assert len(rmu_base_probe) == 1
    assert list(rmu_base_probe[0].y) == pytest.approx([0.95, 0.95, 0.4, 0.4])
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert len(bands) == 6  # own and base-model probes; none for the shuffled control
    assert {t.line.dash for t in lines(fig)} == {"solid", "dash", "dot"}
    assert any(s.y0 == 0.25 and s.y1 == 0.25 for s in fig.layout.shapes)  # chance


def test_lens_row_reads_hazardous_for_forget_and_plots_rank_plus_one_on_a_log_axis():
    fig = plotting.plot_depth_profile(lens=lens_table(), prompt_set="forget")
    assert fig.layout.yaxis.type == "log"
    logit = [t for t in lines(fig) if t.legendgroup == "base" and t.line.dash == "solid"]
    assert list(logit[0].y) == [11.0, 8.0, 5.0, 2.0]


def test_only_the_rows_given_are_drawn_and_the_title_states_the_cka_drop():
    fig = plotting.plot_depth_profile(similarity=similarity_table())
    assert len([k for k in fig.layout if k.startswith("yaxis")]) == 1
    assert len(lines(fig)) == 6
    assert "CKA to base falls to 0.55 at layer 2 (retain 0.99)" in fig.layout.title.text.replace(
        "<br>", " "
    )
    assert fig.layout.xaxis.title.text == "layer (residual stream after block l)"


def test_default_title_reports_the_probes_at_the_last_layer():
    fig = plotting.plot_depth_profile(probes=probes_table())
    assert "At layer 3 probes find RMU's answers 0.95 (own probe), 0.40 (base model's probe)" in (
        fig.layout.title.text.replace("<br>", " ")
    )


def test_bad_requests_are_refused_in_one_sentence():
    with pytest.raises(UnlearnInterpError, match="at least one of probes"):
        plotting.plot_depth_profile()
    with pytest.raises(UnlearnInterpError, match="no rows with label 'answer'"):
        plotting.plot_depth_profile(probes=probes_table(), label="answer")
    with pytest.raises(UnlearnInterpError, match="missing column 'cka'"):
        plotting.plot_depth_profile(similarity=similarity_table().drop(columns="cka"))
    with pytest.raises(UnlearnInterpError, match="rmu_layer=9 is outside"):
        plotting.plot_depth_profile(profile=profile_table(), rmu_layer=9)
    with pytest.raises(UnlearnInterpError, match="no rows with prompt_set 'dev'"):
        plotting.plot_depth_profile(lens=lens_table(), prompt_set="dev")
