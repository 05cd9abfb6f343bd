"""The recovery ledger (pipeline.ledger, plotting.plot_ledger, ``unlearn-interp ledger``) on a
test-size organism demo run: every attack with an interval and a control, no attack leaking
into the next, resumable, bad runs refused in one sentence."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn_interp import cli, organism, pipeline, plotting
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline import jobs, ledger, ledger_parts, steps
from unlearn_interp.pipeline.run_variants import RunVariants
from unlearn_interp.pipeline.rundir import RunDir

# The organism tests share one run (a demo, its oracle twin and ledger: minutes on 2 cores), so
# every test of it is slow; the table, report section, metrics and figure are also checked on
# synthetic per-item rows below, in the default suite.
# Small enough for a test: one short fine-tuning run per model, attack and seed (two seeds, so
# intervals resample seeds), a light bootstrap.
SETTINGS = ledger.LedgerSettings(
    n_boot=200, finetune=(FinetuneConfig(steps=4, lr=1e-3, eval_every=2),), finetune_seeds=(0, 1)
)
SEEDLESS_COLUMNS = [c for c in ledger_parts.ITEM_COLUMNS if c != "seed"]
ATTACKS = {"none", "ablation", "quantize", "relearn", "benign_finetune"}


def plain_unlearned_items(org: organism.Organism, run) -> pd.DataFrame:
    """Every question's answer of the run's plain unlearned model (no attack)."""
    variant = RunVariants(RunDir(run)).variant("rmu")
    tasks = {name: steps.Task(items, org.mcq_mode, org.qa_template)
             for name, items in org.mcq.items()}  # fmt: skip
    return steps.accuracy_tables(org.model, [variant], tasks, progress=False)[1]


@pytest.fixture(scope="module")
def ledger_run(organism_test, tmp_path_factory):
    """A demo run, its ledger, and the plain unlearned model's answers before and after it,
    with the organism's weights before and after."""
    cache = organism_test.cache_path.parent
    out = tmp_path_factory.mktemp("ledger_run")
    pipeline.run_demo(out, size="test", cache_dir=cache, progress=False, ledger=False)
    org = organism.load_organism("test", cache_dir=cache, progress=False)  # our own copy
    weights = {n: p.detach().clone() for n, p in org.model.named_parameters()}
    before = plain_unlearned_items(org, out)
    table = ledger.run_ledger(out, settings=SETTINGS, cache_dir=cache, org=org, progress=False)
    after = plain_unlearned_items(org, out)
    return {"out": out, "org": org, "table": table, "weights": weights, "before": before,
            "after": after, "cache": cache}  # fmt: skip


@pytest.mark.slow
def test_ledger_has_every_attack_and_column(ledger_run):
    table = ledger_run["table"]
    assert list(table.columns) == list(ledger.COLUMNS)
    assert set(table["attack"]) == ATTACKS
    assert set(table["task"]) == {"forget_T", "forget_V", "retain"}
    assert set(table["model"]) == {"unlearned", "base", "oracle"}
    settings = set(table.loc[table["attack"] == "ablation", "setting"])
    assert {"junk_direction", "random_direction", "per_layer", "random_per_layer"} <= settings
    assert set(table.loc[table["attack"] == "quantize", "setting"]) == {
        "rtn_8bit_g64", "rtn_4bit_g64"
    }  # fmt: skip
    assert sorted(set(table.loc[table["attack"] == "relearn", "step"])) == [0, 2, 4]


@pytest.mark.slow
def test_every_row_has_an_interval_and_every_forget_row_a_gap_interval(ledger_run):
    table = ledger_run["table"]
    assert table[["accuracy", "accuracy_ci_low", "accuracy_ci_high"]].notna().all().all()
    assert (table["accuracy_ci_low"] <= table["accuracy"] + 1e-12).all()
    assert (table["accuracy"] <= table["accuracy_ci_high"] + 1e-12).all()
    forget = table[table["task"] != "retain"]
    assert forget[["gap_recovered", "ci_low", "ci_high"]].notna().all().all()
    assert table.loc[table["task"] == "retain", "gap_recovered"].isna().all()


@pytest.mark.slow
def test_every_attack_row_has_its_controls(ledger_run):
    table = ledger_run["table"]
    index = table.set_index(["attack", "setting", "model", "step", "task"]).index
    attacked = table[table["role"] == "attack"]
    assert not attacked.empty
    for row in attacked.itertuples():
        assert (row.attack, row.setting, "base", row.step, row.task) in index
        if row.attack in ("relearn", "benign_finetune"):
            assert (row.attack, row.setting, "oracle", row.step, row.task) in index
        if row.attack == "ablation":
            assert (row.attack, f"random_{row.setting.removeprefix('junk_')}", "unlearned",
                    row.step, row.task) in index  # fmt: skip


@pytest.mark.slow
def test_reference_rows_are_the_two_ends_of_the_gap(ledger_run):
    table = ledger_run["table"].set_index(["attack", "model", "task"])
    for task in ("forget_T", "forget_V"):
        unlearned = table.loc[("none", "unlearned", task)]
        base = table.loc[("none", "base", task)]
        assert (unlearned["gap_recovered"], unlearned["ci_low"], unlearned["ci_high"]) == (0, 0, 0)
        assert (base["gap_recovered"], base["ci_low"], base["ci_high"]) == (1, 1, 1)
        assert base["accuracy"] >= unlearned["accuracy"] + 0.3


@pytest.mark.slow
def test_step_zero_of_fine_tuning_is_the_plain_model(ledger_run):
    table = ledger_run["table"]
    plain = table[table["attack"] == "none"].set_index(["model", "task"])["accuracy"]
    start = table[(table["attack"] == "relearn") & (table["step"] == 0)]
    for row in start[start["model"] != "oracle"].itertuples():
        assert row.accuracy == plain[(row.model, row.task)]


@pytest.mark.slow
def test_no_attack_leaks_into_the_unlearned_model(ledger_run):
    pd.testing.assert_frame_equal(ledger_run["before"], ledger_run["after"])
    for name, param in ledger_run["org"].model.named_parameters():
        assert torch.equal(param, ledger_run["weights"][name]), name


@pytest.mark.slow
def test_junk_ablation_beats_its_random_control(ledger_run):
    table = ledger_run["table"]
    v = table[(table["task"] == "forget_V") & (table["model"] == "unlearned")]
    gap = v.set_index("setting")["gap_recovered"]
    assert gap["junk_direction"] > gap["random_direction"] + 0.2


@pytest.mark.slow
def test_8bit_quantisation_changes_base_accuracy_by_at_most_2_points(ledger_run):
    table = ledger_run["table"]
    base = table[table["model"] == "base"].set_index(["attack", "setting", "task"])["accuracy"]
    for task in ("forget_T", "forget_V", "retain"):
        assert abs(base[("quantize", "rtn_8bit_g64", task)] - base[("none", "plain", task)]) <= 0.02


@pytest.mark.slow
def test_relearning_on_t_keeps_the_base_models_v_accuracy(ledger_run):
    table = ledger_run["table"]
    base = table[(table["model"] == "base") & (table["task"] == "forget_V")]
    plain = base.loc[base["attack"] == "none", "accuracy"].item()
    assert (base.loc[base["attack"] == "relearn", "accuracy"] >= plain - 0.05).all()


@pytest.mark.slow
def test_ledger_writes_its_table_figure_and_report_section(ledger_run):
    out = ledger_run["out"]
    assert (out / "tables/ledger.csv").is_file() and (out / "figures/ledger.html").is_file()
    report = (out / "report.md").read_text()
    assert report.count(ledger.SECTION) == 1 and report.startswith("# RMU is mostly shallow")
    assert json.loads((out / "config.json").read_text())["ledger"]["n_boot"] == 200


@pytest.mark.slow
def test_demo_with_the_ledger_reports_it_and_keeps_every_other_metric(ledger_run, monkeypatch):
    out = ledger_run["out"]
    before = json.loads((out / "metrics.json").read_text())
    before.pop("ledger", None)
    # resumed: every demo step and ledger part is already there, so nothing is scored again
    monkeypatch.setattr(steps, "accuracy_tables", lambda *a, **k: pytest.fail("scored again"))
    metrics = pipeline.run_demo(out, size="test", cache_dir=ledger_run["cache"], progress=False,
                                ledger=SETTINGS)  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {k: v for k, v in metrics.items() if k != "ledger"} == before
    entry = metrics["ledger"]
    assert entry["task"] == "forget_V"
    assert set(entry["gap_recovered"]) == ATTACKS - {"none"}
    for settings in entry["gap_recovered"].values():
        for gap in settings.values():
            for row in (gap, gap["control"], gap["base"]):
                assert row["ci_low"] <= row["value"] + 1e-12 <= row["ci_high"] + 2e-12
    gaps = entry["gap_recovered"]
    assert gaps["ablation"]["junk_direction"]["control"]["model_setting"] == (
        "unlearned: random_direction"
    )
    assert gaps["relearn"][ledger_parts.finetune_setting(SETTINGS.finetune[0])]["step"] == 4
    assert set(entry["oracle_accuracy_before_finetuning"]) == {"forget_T", "forget_V", "retain"}
    report = (out / "report.md").read_text()
    assert report.count(ledger.SECTION) == 1 and "figures/ledger.html" in report
    assert "| attack | setting | step | unlearned | control | control gap | base |" in report
    assert "recovery ledger, gap recovered on forget_V" in jobs.demo_summary(metrics, str(out))


@pytest.mark.slow
def test_rerun_resumes_without_recomputing(ledger_run, monkeypatch):
    def must_not_score(*args, **kwargs):
        raise AssertionError("the ledger scored a model again")

    monkeypatch.setattr(steps, "accuracy_tables", must_not_score)
    again = ledger.run_ledger(ledger_run["out"], settings=SETTINGS, org=ledger_run["org"],
                              progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(again, ledger_run["table"])
    assert (ledger_run["out"] / "report.md").read_text().count(ledger.SECTION) == 1


@pytest.mark.slow
def test_interrupted_ledger_resumes_at_the_first_unfinished_part(ledger_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(ledger_run["out"], run)
    for path in run.glob("tables/ledger*.csv"):
        path.unlink()
    finetune = ledger_parts.SEEDED_PARTS["finetune"]

    def interrupted_at_seed_1(context, seed):
        if seed == 1:
            raise KeyboardInterrupt
        return finetune(context, seed)

    monkeypatch.setitem(ledger_parts.SEEDED_PARTS, "finetune", interrupted_at_seed_1)
    with pytest.raises(KeyboardInterrupt):
        ledger.run_ledger(run, settings=SETTINGS, org=ledger_run["org"], progress=False)
    assert (run / "tables/ledger_finetune_seed0_per_item.csv").is_file()
    assert not (run / "tables/ledger_finetune_seed1_per_item.csv").exists()
    assert not list(run.rglob("*.tmp"))
    for name in ("reference", "ablation", "quantize"):
        monkeypatch.setitem(ledger_parts.PARTS, name, lambda c: pytest.fail("recomputed"))

    def seed_0_again(context, seed):
        assert seed == 1, "the finished seed was recomputed"
        return finetune(context, seed)

    monkeypatch.setitem(ledger_parts.SEEDED_PARTS, "finetune", seed_0_again)
    table = ledger.run_ledger(run, settings=SETTINGS, org=ledger_run["org"], progress=False)
    pd.testing.assert_frame_equal(table, ledger_run["table"])


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(ledger_run):
    other = ledger.LedgerSettings(n_boot=100, finetune=SETTINGS.finetune)
    with pytest.raises(UnlearnInterpError, match="other settings"):
        ledger.run_ledger(ledger_run["out"], settings=other, org=ledger_run["org"])


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unlearn-interp: error: ")
    return err[0]


def test_cli_ledger_on_a_missing_run_exits_2_with_one_sentence(tmp_path, capsys):
    assert cli.main(["ledger", "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in one_error_line(capsys)
    assert not (tmp_path / "nowhere").exists()  # the ledger never starts a run


@pytest.mark.parametrize(
    "config, says",
    [("{not json", "not valid JSON"), ('{"pipeline": {"job": "run"}}', "not an organism demo")],
)
def test_cli_ledger_on_a_corrupt_run_exits_2_with_one_sentence(tmp_path, capsys, config, says):
    (tmp_path / "config.json").write_text(config)
    assert cli.main(["ledger", "--run", str(tmp_path)]) == 2
    assert says in one_error_line(capsys)


def test_cli_ledger_on_an_unfinished_demo_exits_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        '{"pipeline": {"job": "demo", "size": "test", "seed": 0}}'
    )
    assert cli.main(["ledger", "--run", str(tmp_path)]) == 2
    assert "finish the demo first" in one_error_line(capsys)


def test_cli_ledger_on_corrupt_weights_exits_2_before_loading_the_organism(
    tmp_path, capsys, monkeypatch
):
    (tmp_path / "config.json").write_text(
        '{"pipeline": {"job": "demo", "size": "test", "seed": 0}}'
    )
    for name in ("unlearned_weights", "base_weights", "direction", "random_direction"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"not a safetensors file")
    monkeypatch.setattr(organism, "load_organism", lambda *a, **k: pytest.fail("organism loaded"))
    assert cli.main(["ledger", "--run", str(tmp_path)]) == 2
    assert "not a readable safetensors file" in one_error_line(capsys)


def test_cli_ledger_prints_the_headline_rows(tmp_path, monkeypatch, capsys):
    table = ledger.ledger_table(every_attack_items(), ledger_parts.FORGET_TASKS, n_boot=50)
    monkeypatch.setattr(jobs, "run_ledger", lambda run, **kwargs: table)
    assert cli.main(["-q", "ledger", "--run", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("gap recovered on forget_V") and "relearn" in printed


# ---------------------------------------------------------------------------------------------
# The table and the figure from per-item rows (no model)
# ---------------------------------------------------------------------------------------------


def synthetic_items() -> pd.DataFrame:
    """Four questions per task: base answers all, unlearned one, the attack three."""
    correct = {"base": [1, 1, 1, 1], "unlearned": [1, 0, 0, 0], "attacked": [1, 1, 1, 0]}
    rows = []
    for model, answers in correct.items():
        attack, setting = ("none", "plain") if model != "attacked" else ("ablation", "junk")
        name = model if model != "attacked" else "unlearned"
        for task in ("forget_V", "retain"):
            rows += [(attack, setting, name, 0, task, i, c) for i, c in enumerate(answers)]
    return pd.DataFrame(rows, columns=SEEDLESS_COLUMNS)


def test_ledger_table_measures_gap_recovered_on_one_scale():
    table = ledger.ledger_table(synthetic_items(), ["forget_V"], n_boot=100)
    attacked = table[(table["attack"] == "ablation") & (table["task"] == "forget_V")].iloc[0]
    assert math.isclose(attacked["gap_recovered"], 2 / 3)
    assert attacked["ci_low"] <= 2 / 3 <= attacked["ci_high"]
    assert attacked["role"] == "attack"
    assert np.isnan(table.loc[table["task"] == "retain", "gap_recovered"]).all()


def test_ledger_table_averages_and_resamples_fine_tuning_seeds():
    plain = synthetic_items().assign(seed=np.nan)
    plain = plain[plain["attack"] == "none"]
    tuned = []
    for seed, answers in ((0, [1, 1, 1, 1]), (1, [1, 0, 0, 0])):
        for task in ("forget_V", "retain"):
            tuned += [("relearn", "lr=1", "unlearned", 2, task, i, c, seed)
                      for i, c in enumerate(answers)]  # fmt: skip
    per_item = pd.concat([plain, pd.DataFrame(tuned, columns=list(ledger_parts.ITEM_COLUMNS))])
    table = ledger.ledger_table(per_item, ["forget_V"], n_boot=200)
    row = table[(table["attack"] == "relearn") & (table["task"] == "forget_V")].iloc[0]
    assert math.isclose(row["accuracy"], 0.625)  # the mean of the two seeds' 1.0 and 0.25
    assert math.isclose(row["gap_recovered"], 0.5)
    assert row["ci_low"] < 0.5 < row["ci_high"]


@pytest.mark.parametrize("seeds", [(), (0, 0), (-1,)])
def test_ledger_settings_refuse_bad_fine_tuning_seeds(seeds):
    with pytest.raises(UnlearnInterpError, match="finetune_seeds"):
        ledger.LedgerSettings(finetune_seeds=seeds)


def test_plot_ledger_draws_bars_and_refuses_a_table_without_intervals():
    table = ledger.ledger_table(synthetic_items(), ["forget_V"], n_boot=50)
    fig = plotting.plot_ledger(table)
    assert fig.data and "forget_V" in fig.layout.title.text
    with pytest.raises(UnlearnInterpError, match="ci_low"):
        plotting.plot_ledger(table.drop(columns="ci_low"))


def every_attack_items(n: int = 12) -> pd.DataFrame:
    """Per-item rows shaped like the ledger's parts (every attack, its controls, a two-step
    fine-tuning curve): base answers every question, unlearned a quarter, attacks half."""
    rows = []

    def answers(attack, setting, model, step, share):
        for task in ("forget_T", "forget_V", "retain"):
            right = n if task == "retain" else round(n * share)
            rows.extend((attack, setting, model, step, task, i, int(i < right)) for i in range(n))

    answers("none", "plain", "base", 0, 1.0)
    answers("none", "plain", "unlearned", 0, 0.25)
    for setting in ("junk_direction", "random_direction", "per_layer", "random_per_layer"):
        for model in ("unlearned", "base"):
            answers("ablation", setting, model, 0, 0.5)
    for model in ("unlearned", "base"):
        answers("quantize", "rtn_4bit_g64", model, 0, 0.5)
    for attack in ("relearn", "benign_finetune"):
        for model in ("unlearned", "base", "oracle"):
            for step in (0, 2):
                answers(attack, "lr=0.001,params=all,steps=2", model, step, 0.5)
    return pd.DataFrame(rows, columns=SEEDLESS_COLUMNS)


def test_report_section_and_metrics_pair_each_attack_with_its_control(tmp_path):
    table = ledger.ledger_table(every_attack_items(), ledger_parts.FORGET_TASKS, n_boot=50)
    section = ledger.ledger_markdown(table, figure_png=True)
    assert (
        section.startswith(ledger.SECTION) and "![recovery ledger](figures/ledger.png)" in section
    )
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5  # 2 ablations, 1 quantisation, relearning, benign fine-tuning
    assert (
        "| ablation | per_layer | 0 | 0.33 [" in section
        and "unlearned: random_per_layer" in section
    )
    entry = ledger.ledger_metrics(table)
    assert entry["task"] == "forget_V"
    relearn = entry["gap_recovered"]["relearn"]["lr=0.001,params=all,steps=2"]
    assert relearn["step"] == 2 and relearn["control"]["model_setting"].startswith("oracle: ")
    assert math.isclose(relearn["value"], 1 / 3) and relearn["retain_accuracy"] == 1.0
    assert entry["gap_recovered"]["quantize"]["rtn_4bit_g64"]["control"]["model_setting"] == (
        "base: rtn_4bit_g64"
    )
    assert entry["oracle_accuracy_before_finetuning"]["forget_V"] == 0.5
    run = RunDir(tmp_path)
    (tmp_path / "report.md").write_text("# A demo report\n")
    ledger.write_report_section(run, table)
    ledger.write_report_section(run, table)  # replaces its own section
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# A demo report") and report.count(ledger.SECTION) == 1
