"""Tests for the analysis package's sweeps: the engine (writes as it goes, resumes), the RMU coefficient
and layer sweeps (base weights restored, Adaptive RMU's coefficient), noise sensitivity, and
that every table fits the plot that draws it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from unlearn_interp import activations, analysis, data, models, plotting, rmu
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError

PROMPTS = ["The quick brown fox jumps", "A multiple choice question", "Residual streams", "the dog"]
FORGET = [PROMPTS * 2]
RETAIN = [["Answer: A. B. C. D. the of and", "the lazy dog sat on the mat"] * 4]
MCQ = {
    "hazardous": [MCQItem("The quick brown", ["fox", "dog", "cat", "cow"], 0, subject="x")] * 3,
    "benign": [MCQItem("The lazy", ["dog", "fox", "cat", "cow"], 0, subject="x")] * 3,
}
SETUP = analysis.MCQSetup(mode="continuation", batch_size=8)


def small_cfg(**changes) -> rmu.RMUConfig:
    settings = dict(layer=1, steering_coef=20.0, alpha=10.0, lr=1e-2, batch_size=2, steps=4)
    return rmu.RMUConfig(**(settings | {"max_len": 16} | changes))


# ---------------------------------------------------------------------------------------------
# The sweep engine
# ---------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def counting_measure(calls: list, fail_at: int | None = None):
    def measure(point):
        if point["k"] == fail_at:
            raise Interrupted
        calls.append(point["k"])
        return [{"value": point["k"] * 10 + i} for i in range(2)]

    return measure


def test_interrupted_sweep_keeps_finished_points_and_rerun_computes_only_the_rest(tmp_path):
    path = tmp_path / "sweep.csv"
    points = [{"k": k, "label": f"p{k}"} for k in range(5)]
    calls: list[int] = []
    with pytest.raises(Interrupted):
        analysis.run_sweep(points, counting_measure(calls, fail_at=3), table_path=path)
    assert calls == [0, 1, 2]
    on_disk = pd.read_csv(path)
    assert sorted(set(on_disk["k"])) == [0, 1, 2] and len(on_disk) == 6

    calls.clear()
    table = analysis.run_sweep(points, counting_measure(calls), table_path=path)
    assert calls == [3, 4]  # the finished points were not recomputed
    assert list(table.columns) == ["k", "label", "value"]
    assert table["value"].tolist() == [k * 10 + i for k in range(5) for i in range(2)]
    assert table.equals(pd.read_csv(path))

    calls.clear()
    again = analysis.run_sweep(points, counting_measure(calls), table_path=path)
    assert calls == [] and again.equals(table)


def test_sweep_with_other_settings_starts_afresh(tmp_path):
    path = tmp_path / "sweep.csv"
    points = [{"k": k} for k in range(3)]
    calls: list[int] = []
    analysis.run_sweep(points, counting_measure(calls), table_path=path, settings={"steps": 4})
    calls.clear()
    analysis.run_sweep(points, counting_measure(calls), table_path=path, settings={"steps": 8})
    assert calls == [0, 1, 2]


def test_multi_table_sweep_drops_rows_of_a_point_that_did_not_finish(tmp_path):
    paths = {"a": tmp_path / "a.csv", "b": tmp_path / "b.csv"}
    calls = []

    def measure(point):
        calls.append(point["k"])
        return {"a": {"x": point["k"]}, "b": [{"y": point["k"]}] * 3}

    analysis.run_sweep_tables([{"k": 0}, {"k": 1}], measure, table_paths=paths)
    # A crash after writing point 2's tables but before recording it as finished:
    pd.DataFrame({"k": [0, 1, 2], "x": [0, 1, 2]}).to_csv(paths["a"], index=False)
    calls.clear()
    tables = analysis.run_sweep_tables([{"k": k} for k in range(3)], measure, table_paths=paths)
    assert calls == [2]
    assert tables["a"]["k"].tolist() == [0, 1, 2]
    assert tables["b"]["k"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_sweep_without_a_path_returns_numeric_keys_like_the_csv(tmp_path):
    points = [{"coef": None}, {"coef": 1.5}]
    memory = analysis.run_sweep(points, lambda p: {"v": 1})
    written = analysis.run_sweep(points, lambda p: {"v": 1}, table_path=tmp_path / "t.csv")
    assert memory["coef"].dtype == written["coef"].dtype == float
    assert memory["coef"].isna().tolist() == [True, False]


def test_sweep_rejects_repeated_points_and_clashing_columns():
    with pytest.raises(UnlearnInterpError, match="twice"):
        analysis.run_sweep([{"k": 1}, {"k": 1}], lambda p: {"v": 1})
    with pytest.raises(UnlearnInterpError, match="already have column"):
        analysis.run_sweep([{"k": 1}], lambda p: {"k": 2})


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def test_cos_distribution_is_one_along_a_tokens_own_activation(tiny_model):
    h = activations.mean_activations(tiny_model, PROMPTS[:1], layers=1, positions="last")[0]
    table = analysis.cos_distribution(tiny_model, PROMPTS, h.float(), layer=1, positions="last")
    assert table["prompt"].tolist() == [0, 1, 2, 3]
    assert table["cos"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    assert table["norm"].iloc[0] == pytest.approx(float(h.norm()), rel=1e-6)
    assert (table["cos"].iloc[1:] < 0.9999).all()
    every = analysis.cos_distribution(tiny_model, PROMPTS, h.float(), layer=1)
    n_tokens = int(data.encode_batch(tiny_model.tokenizer, PROMPTS).attention_mask.sum())
    assert len(every) == n_tokens


def test_forget_norm_by_layer_is_the_masked_mean_token_norm(tiny_model):
    table = analysis.forget_norm_by_layer(tiny_model, PROMPTS)
    batch = data.encode_batch(tiny_model.tokenizer, PROMPTS)
    h = activations.run_blocks(tiny_model, batch.tokens, attention_mask=batch.attention_mask)
    expected = rmu.mean_token_norm(h, batch.attention_mask)
    assert table["layer"].tolist() == [0, 1, 2]
    assert table["forget_norm"].iloc[2] == pytest.approx(expected, rel=1e-5)


def test_noise_sensitivity_is_zero_without_noise_and_grows_with_it(tiny_model):
    table = analysis.noise_sensitivity(
        tiny_model, PROMPTS, noise_scale=[0.0, 0.05, 0.2, 0.8], n_samples=2, noise="relative",
        progress=False,
    )  # fmt: skip
    phi = table.groupby(["layer", "noise_scale"])["phi"].mean().unstack()
    assert (phi[0.0] == 0.0).all()
    assert ((phi[0.05] < phi[0.2]) & (phi[0.2] < phi[0.8])).all()
    # After the last block g is the identity, so Phi is the relative noise power scale^2.
    assert phi.loc[2, 0.2] == pytest.approx(0.04, rel=0.3)
    logits = analysis.noise_sensitivity(
        tiny_model, PROMPTS, layers=[0], noise_scale=0.0, n_samples=1, output="logits"
    )
    assert logits["phi"].tolist() == [0.0]


def test_absolute_noise_of_the_activations_size_matches_relative_noise(tiny_model):
    """Absolute noise with the per-coordinate size of the activations is relative noise."""
    batch = data.encode_batch(tiny_model.tokenizer, PROMPTS)
    h = activations.run_blocks(tiny_model, batch.tokens, attention_mask=batch.attention_mask)
    per_coordinate = rmu.mean_token_norm(h, batch.attention_mask) / 32**0.5
    common = dict(layers=[2], n_samples=4, progress=False)
    small = analysis.noise_sensitivity(
        tiny_model, PROMPTS, noise_scale=per_coordinate / 4, **common
    )
    same = analysis.noise_sensitivity(
        tiny_model, PROMPTS, noise_scale=0.25, noise="relative", **common
    )
    # At the last layer g is the identity: both are about (1/4)^2 when the sizes match.
    assert small["phi"].mean() == pytest.approx(same["phi"].mean(), rel=0.3)


def test_noise_sensitivity_rejects_a_negative_scale(tiny_model):
    with pytest.raises(UnlearnInterpError, match="noise_scale"):
        analysis.noise_sensitivity(tiny_model, PROMPTS, noise_scale=-0.1)


# ---------------------------------------------------------------------------------------------
# RMU sweeps
# ---------------------------------------------------------------------------------------------


def test_coefficient_sweep_restores_base_weights_bit_exactly_and_resumes(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    kwargs = dict(
        coefs=[5.0, 50.0], betas=[3.0], maxlogit_items=PROMPTS[:2], maxlogit_tokens=3,
        setup=SETUP, table_dir=tmp_path, progress=False,
    )  # fmt: skip
    tables = analysis.coefficient_sweep(tiny_model, FORGET, RETAIN, MCQ, small_cfg(), **kwargs)
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    acc = tables["accuracy"]
    assert len(acc) == 4 * 2 and not acc.duplicated(["variant", "coef", "task"]).any()
    assert acc.loc[acc["variant"] == "rmu", "steering_coef"].tolist() == [5.0, 5.0, 50.0, 50.0]
    cos = tables["cos"]
    n_tokens = int(data.encode_batch(tiny_model.tokenizer, FORGET[0]).attention_mask.sum())
    assert len(cos) == 4 * n_tokens  # every real token of the forget prompts, at each point
    assert cos["cos"].between(-1, 1).all()
    assert len(tables["max_logit"]) == 4 * 2 * 3
    assert sorted(set(tables["norms"]["method"])) == ["base", "beta = 3", "c = 5", "c = 50"]

    calls = []
    original = rmu.train_rmu

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    rmu.train_rmu = counting
    try:
        again = analysis.coefficient_sweep(tiny_model, FORGET, RETAIN, MCQ, small_cfg(), **kwargs)
    finally:
        rmu.train_rmu = original
    assert calls == []
    assert all(again[name].equals(tables[name]) for name in tables)


def test_coefficient_sweep_pulls_forget_activations_toward_u_as_c_grows(tiny_model):
    tables = analysis.coefficient_sweep(
        tiny_model, FORGET, RETAIN, MCQ, small_cfg(steps=8, lr=3e-2), coefs=[1.0, 200.0],
        maxlogit_items=PROMPTS[:1], maxlogit_tokens=2, setup=SETUP, progress=False,
    )  # fmt: skip
    median = tables["cos"].groupby("coef", dropna=False)["cos"].median()
    assert median[200.0] > median[1.0] + 0.2


def test_layer_sweep_uses_beta_times_the_frozen_forget_norm_for_adaptive_rmu(tiny_model):
    cfg, beta = small_cfg(steps=2), 4.0
    table = analysis.layer_sweep(
        tiny_model, FORGET, RETAIN, MCQ, cfg, layers=[0, 2], coef=7.0, beta=beta, setup=SETUP,
        progress=False,
    )  # fmt: skip
    assert len(table) == 2 * 2 * 2  # layers x methods x tasks
    fixed = table[table["method"] == analysis.METHOD_FIXED]
    adaptive = table[table["method"] == analysis.METHOD_ADAPTIVE]
    assert (fixed["coef"] == 7.0).all()
    first = data.encode_batch(tiny_model.tokenizer, rmu.topic_batch(FORGET[0], 0, 2), 16)
    for layer in (0, 2):
        h = activations.run_blocks(
            tiny_model, first.tokens, stop=layer + 1, attention_mask=first.attention_mask
        )
        expected = beta * rmu.mean_token_norm(h, first.attention_mask)
        assert adaptive.loc[adaptive["layer"] == layer, "coef"].iloc[0] == pytest.approx(expected)
        norms = table.loc[table["layer"] == layer, "forget_norm"]
        assert norms.nunique() == 1  # the frozen model's norm does not depend on the method
    assert table["forget_norm"].iloc[-1] > table["forget_norm"].iloc[0]  # norms grow with depth


def test_sweep_tables_fit_the_plots_that_draw_them(tiny_model):
    tables = analysis.coefficient_sweep(
        tiny_model, FORGET, RETAIN, MCQ, small_cfg(steps=2), coefs=[5.0, 50.0],
        maxlogit_items=PROMPTS[:2], maxlogit_tokens=2, setup=SETUP, progress=False,
    )  # fmt: skip
    swept = lambda name: tables[name][tables[name]["variant"] != "base"]  # noqa: E731
    figures = [
        plotting.plot_accuracy_vs_coef(swept("accuracy")),
        plotting.plot_cos_histograms(swept("cos")),
        plotting.plot_maxlogit_histograms(tables["max_logit"]),
        plotting.plot_forget_norm_by_layer(tables["norms"], rmu_layer=1),
        plotting.plot_layer_sweep(
            analysis.layer_sweep(
                tiny_model,
                FORGET,
                RETAIN,
                MCQ,
                small_cfg(steps=1),
                layers=[1, 2],
                setup=SETUP,
                progress=False,
            ),
            rmu_layer=1,
        ),  # fmt: skip
        plotting.plot_noise_sensitivity(
            analysis.noise_sensitivity(tiny_model, PROMPTS, n_samples=1), rmu_layer=1
        ),
    ]
    result = rmu.train_rmu(
        models.random_model(n_layers=2, d_model=16, n_heads=2, tokenizer=tiny_model.tokenizer),
        FORGET, RETAIN, small_cfg(steps=2), progress=False,
    )  # fmt: skip
    figures.append(plotting.plot_training_curves(analysis.training_curves(result)))
    assert all(len(fig.data) > 0 for fig in figures)
    assert "c = 5" in figures[1].layout.title.text  # the title names the coefficients it compares
