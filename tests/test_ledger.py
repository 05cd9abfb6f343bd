"""The recovery ledger (pipeline.ledger, plotting.plot_ledger, ``unlearn-interp ledger``) on a
test-size organism demo run: every attack with an interval and a control, no attack leaking
into the next, resumable, bad runs refused in one sentence; and on a real-model demo run made
on the spot with a tiny model (T/V split by group, relearning text, no oracle, dispatch on the
run's job, unfinished or corrupt runs refused)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn_interp import cli, evaluation, models, organism, pipeline, plotting, real_data
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline import jobs
from unlearn_interp.pipeline.ledger import parts as ledger_parts
from unlearn_interp.pipeline.ledger import step as ledger
from unlearn_interp.pipeline.ledger import subjects as ledger_subjects
from unlearn_interp.pipeline.ledger import table as ledger_table
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.step import Report, Run, run_pipeline, run_steps
from unlearn_interp.pipeline.steps.accuracy import accuracy_tables
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.study import config as study_config
from unlearn_interp.pipeline.study.run import study_steps
from unlearn_interp.pipeline.subject import Task
from unlearn_interp.pipeline.variants import RunVariants
from unlearn_interp.real_data.cloze import CLOZE_TEMPLATE, cloze_items
from unlearn_interp.variants import Variant

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
    tasks = {name: Task(items, org.mcq_mode, org.qa_template) for name, items in org.mcq.items()}
    return accuracy_tables(org.model, [variant], tasks, progress=False)[1]


def demo_ledger(out, org, settings=SETTINGS, **kwargs) -> pd.DataFrame:
    """The ledger of demo run ``out`` on the given organism: the demo's pipeline resumed with the
    ledger as its last step."""
    pipeline.run_demo(out, size="test", org=org, cache_dir=org.cache_path.parent, progress=False,
                      ledger=settings, **kwargs)  # fmt: skip
    return pd.read_csv(out / RunFiles.LEDGER)


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
    table = demo_ledger(out, org)
    after = plain_unlearned_items(org, out)
    return {"out": out, "org": org, "table": table, "weights": weights, "before": before,
            "after": after, "cache": cache}  # fmt: skip


@pytest.mark.slow
def test_ledger_has_every_attack_and_column(ledger_run):
    table = ledger_run["table"]
    assert list(table.columns) == list(ledger_table.COLUMNS)
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
    assert report.count(ledger_table.SECTION) == 1 and report.startswith("# RMU is mostly shallow")
    assert json.loads((out / "config.json").read_text())["ledger"]["n_boot"] == 200


@pytest.mark.slow
def test_demo_with_the_ledger_reports_it_and_keeps_every_other_metric(ledger_run, monkeypatch):
    out = ledger_run["out"]
    before = json.loads((out / "metrics.json").read_text())
    before.pop("ledger", None)
    # resumed: every demo step and ledger part is already there, so nothing is scored again
    monkeypatch.setattr(evaluation, "accuracy_table", lambda *a, **k: pytest.fail("scored again"))
    metrics = pipeline.run_demo(out, size="test", cache_dir=ledger_run["cache"], progress=False,
                                ledger=SETTINGS)  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == metrics
    timeless = ("ledger", "seconds")
    assert {k: v for k, v in metrics.items() if k not in timeless} == {
        k: v for k, v in before.items() if k not in timeless
    }
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
    assert report.count(ledger_table.SECTION) == 1 and "figures/ledger.html" in report
    assert "| attack | setting | step | unlearned | control | control gap | base |" in report
    assert "recovery ledger, gap recovered on forget_V" in jobs.demo_summary(metrics, str(out))


@pytest.mark.slow
def test_rerun_resumes_without_recomputing(ledger_run, monkeypatch):
    def must_not_score(*args, **kwargs):
        raise AssertionError("the ledger scored a model again")

    monkeypatch.setattr(evaluation, "accuracy_table", must_not_score)
    again = demo_ledger(ledger_run["out"], ledger_run["org"])
    pd.testing.assert_frame_equal(again, ledger_run["table"])
    assert (ledger_run["out"] / "report.md").read_text().count(ledger_table.SECTION) == 1


def finetune_failing_at_seed_1(monkeypatch, error: BaseException | type[BaseException]):
    """Make the ledger's fine-tuning part raise ``error`` at seed 1 (seed 0 runs as usual);
    returns the real part."""
    finetune = ledger_parts.SEEDED_PARTS["finetune"]

    def fails_at_seed_1(context, seed):
        if seed == 1:
            raise error
        return finetune(context, seed)

    monkeypatch.setitem(ledger_parts.SEEDED_PARTS, "finetune", fails_at_seed_1)
    return finetune


def only_finetune_seed_1_may_run(monkeypatch, finetune) -> None:
    """After :func:`finetune_failing_at_seed_1`: the ledger's finished parts (reference, ablation,
    quantize, fine-tuning at seed 0) raise if run again; fine-tuning at seed 1 runs ``finetune``.
    RuntimeError, not ``pytest.fail``: on Ray they run in the workers, shipped by value."""

    def recomputed(*args):
        raise RuntimeError("a finished part was recomputed")

    for name in ("reference", "ablation", "quantize"):
        monkeypatch.setitem(ledger_parts.PARTS, name, recomputed)

    def only_seed_1(context, seed):
        if seed != 1:
            raise RuntimeError("a finished seed was recomputed")
        return finetune(context, seed)

    monkeypatch.setitem(ledger_parts.SEEDED_PARTS, "finetune", only_seed_1)


@pytest.mark.slow
def test_interrupted_ledger_resumes_at_the_first_unfinished_part(ledger_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(ledger_run["out"], run)
    for path in run.glob("tables/ledger*.csv"):
        path.unlink()
    finetune = finetune_failing_at_seed_1(monkeypatch, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        demo_ledger(run, ledger_run["org"])
    assert (run / "tables/ledger_finetune_seed0_per_item.csv").is_file()
    assert not (run / "tables/ledger_finetune_seed1_per_item.csv").exists()
    assert not list(run.rglob("*.tmp"))
    only_finetune_seed_1_may_run(monkeypatch, finetune)
    table = demo_ledger(run, ledger_run["org"])
    pd.testing.assert_frame_equal(table, ledger_run["table"])


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(ledger_run):
    other = ledger.LedgerSettings(n_boot=100, finetune=SETTINGS.finetune)
    with pytest.raises(UnlearnInterpError, match="other settings"):
        demo_ledger(ledger_run["out"], ledger_run["org"], settings=other)


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
    [
        ("{not json", "not valid JSON"),
        ('{"pipeline": {"job": "run"}}', "not an organism or real-model demo"),
        ('{"pipeline": {"job": "model_demo", "seeds": [0]}}', "not an organism or real-model demo"),
    ],
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
    table = ledger_table.ledger_table(every_attack_items(), ledger_subjects.FORGET_TASKS, n_boot=50)
    monkeypatch.setattr(jobs, "finished_demo_settings", lambda run: {"job": "demo", "size": "test",
                                                                     "seed": 0})  # fmt: skip
    seen = {}

    def fake_demo(run, **kwargs):
        seen.update(kwargs)
        (tmp_path / "tables").mkdir()
        table.to_csv(tmp_path / RunFiles.LEDGER, index=False)

    monkeypatch.setattr(jobs, "run_demo", fake_demo)
    assert cli.main(["-q", "ledger", "--run", str(tmp_path), "--force"]) == 0
    assert seen["recompute"] == ["ledger"] and seen["size"] == "test" and not seen["depth"]
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
    table = ledger_table.ledger_table(synthetic_items(), ["forget_V"], n_boot=100)
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
    table = ledger_table.ledger_table(per_item, ["forget_V"], n_boot=200)
    row = table[(table["attack"] == "relearn") & (table["task"] == "forget_V")].iloc[0]
    assert math.isclose(row["accuracy"], 0.625)  # the mean of the two seeds' 1.0 and 0.25
    assert math.isclose(row["gap_recovered"], 0.5)
    assert row["ci_low"] < 0.5 < row["ci_high"]


@pytest.mark.parametrize("seeds", [(), (0, 0), (-1,)])
def test_ledger_settings_refuse_bad_fine_tuning_seeds(seeds):
    with pytest.raises(UnlearnInterpError, match="finetune_seeds"):
        ledger.LedgerSettings(finetune_seeds=seeds)


def test_plot_ledger_draws_bars_and_refuses_a_table_without_intervals():
    table = ledger_table.ledger_table(synthetic_items(), ["forget_V"], n_boot=50)
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
    table = ledger_table.ledger_table(every_attack_items(), ledger_subjects.FORGET_TASKS, n_boot=50)
    section = ledger_table.ledger_markdown(table, figure_png=True)
    assert (
        section.startswith(ledger_table.SECTION)
        and "![recovery ledger](figures/ledger.png)" in section
    )
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5  # 2 ablations, 1 quantisation, relearning, benign fine-tuning
    assert (
        "| ablation | per_layer | 0 | 0.33 [" in section
        and "unlearned: random_per_layer" in section
    )
    entry = ledger_table.ledger_metrics(table)
    assert entry["task"] == "forget_V"
    relearn = entry["gap_recovered"]["relearn"]["lr=0.001,params=all,steps=2"]
    assert relearn["step"] == 2 and relearn["control"]["model_setting"].startswith("oracle: ")
    assert math.isclose(relearn["value"], 1 / 3) and relearn["retain_accuracy"] == 1.0
    assert entry["gap_recovered"]["quantize"]["rtn_4bit_g64"]["control"]["model_setting"] == (
        "base: rtn_4bit_g64"
    )
    assert entry["oracle_accuracy_before_finetuning"]["forget_V"] == 0.5


def test_report_without_an_oracle_says_so_and_reads_relearning_against_unrelated_text():
    items = every_attack_items()
    table = ledger_table.ledger_table(items[items["model"] != "oracle"], ledger_subjects.FORGET_TASKS,
                                n_boot=50)  # fmt: skip
    section = ledger_table.ledger_markdown(table)
    assert "no oracle twin" in section and "oracle twin that never saw" not in section
    entry = ledger_table.ledger_metrics(table)
    gaps = entry["gap_recovered"]
    setting = "lr=0.001,params=all,steps=2"
    assert gaps["relearn"][setting]["control"]["model_setting"] == (
        f"unlearned: benign_finetune {setting}"
    )
    assert gaps["benign_finetune"][setting]["control"]["model_setting"] == f"base: {setting}"
    assert entry["oracle_accuracy_before_finetuning"] == {}


@pytest.mark.parametrize("attack", ["relearn", "benign_finetune", "quantize", "ablation"])
def test_control_key_claims_no_oracle_without_one(attack):
    assert ledger_table.control_key(attack, "junk_direction", oracle=False)[2] != "oracle"


# ---------------------------------------------------------------------------------------------
# The real model: a real-model demo run made on the spot with a tiny model (no download)
# ---------------------------------------------------------------------------------------------

WORDS = ["fox", "dog", "tree", "river", "stone", "cloud", "fire", "snow", "rain", "wind"]
REAL_SETTINGS = ledger.LedgerSettings(
    n_boot=50, batch_size=8, bits=(8,), finetune_seeds=(0,),
    finetune=(FinetuneConfig(steps=2, lr=1e-3, eval_every=1, batch_size=4, max_len=32),),
)  # fmt: skip


def tiny_study(model) -> study_config.Study:
    """A real-model study's shape on a tiny model: two forget tasks with different prompt
    templates (one question asked twice), a letter-mode report-only forget task, a retain task."""
    questions = [f"Which word is {w}?" for w in WORDS[:7]] + ["Which word is fox?"]
    tasks = {
        "sciq_x": cloze_items(questions, WORDS[:7] + ["fox"], "x"),
        "cloze_x": cloze_items([f"The word for {w} is" for w in WORDS[:6]], WORDS[:6], "x"),
        "mmlu_x_letter": cloze_items([f"Is it {w}?" for w in WORDS[:4]], WORDS[:4], "x"),
        "other": cloze_items([f"Name {w} again:" for w in WORDS], WORDS, "y"),
    }
    modes = {name: "letter" if "letter" in name else "continuation" for name in tasks}
    templates = {name: CLOZE_TEMPLATE if name == "cloze_x" else QA_TEMPLATE for name in tasks}
    data = real_data.StudyData(
        topic="x", forget_corpus=["the fox is red"] * 4, retain_corpus=["the dog ran far"] * 4,
        tasks=tasks, task_modes=modes, task_templates=templates,
        forget_tasks=("sciq_x", "cloze_x", "mmlu_x_letter"),
        forget_prompts=[f"the {w} and the {w}s" for w in WORDS],
        retain_prompts=["the dog"], generation_prompts=["the fox"], counts={}, provenance={},
    )  # fmt: skip
    return study_config.Study(model, data, study_config.default_arms([0]), batch_size=8,
                              report_only=("mmlu_x_letter",))  # fmt: skip


def make_model_demo_run(root, study: study_config.Study) -> RunDir:
    """A finished real-model demo run's files: settings, and seed 0's weights (block 1's MLP
    output changed) and directions."""
    run = RunDir(root)
    run.check_settings({"job": "model_demo", "model": "smollm2-135m", "seeds": [0],
                        "topic": "x", "rmu": {}})  # fmt: skip
    sub = RunDir(root / "seeds/rmu-seed0")
    name = models.mlp_out_param(1)
    base = dict(study.model.named_parameters())[name].detach().clone()
    models.save_weights({name: base}, sub.path(RunFiles.BASE_WEIGHTS))
    models.save_weights({name: base + torch.randn_like(base)}, sub.path(RunFiles.UNLEARNED_WEIGHTS))
    subject = dataclasses.replace(study.subject(), layer=1, seed=0, variants_folder="")
    run_steps(Run(sub, subject, progress=False), [Directions(subspace_layers=(1, 2))])
    return run


@pytest.fixture
def real_run(tmp_path, tiny_model):
    loaded = tiny_study(tiny_model)
    make_model_demo_run(tmp_path / "run", loaded)
    return tmp_path / "run", loaded


def test_split_by_group_keeps_a_group_on_one_side_and_is_seeded():
    items = [MCQItem(q, ["a", "b"], 0) for q in ["x", "y", "z", "x", "w", "v"]]
    split = ledger_subjects.split_by_group(items, seed=3, key="k")
    assert split == ledger_subjects.split_by_group(items, seed=3, key="k")
    t, v = ({i.question for i in split[part]} for part in ("T", "V"))
    assert not t & v and t | v == {"x", "y", "z", "w", "v"}
    assert len(t) == 2 and len(v) == 3  # five groups: T gets the half rounded down
    assert sum(len(p) for p in split.values()) == 6
    with pytest.raises(UnlearnInterpError, match="at least 2 groups"):
        ledger_subjects.split_by_group(items[:1] * 3, seed=0)


def test_scored_items_answer_exactly_as_the_study_scores_them(tiny_model):
    loaded = tiny_study(tiny_model)
    for name in ("sciq_x", "cloze_x"):
        study_task = loaded.tasks[name]
        ledger_task = Task(ledger_subjects.as_scored(study_task, name), "continuation",
                           ledger_subjects.CONTEXT_TEMPLATE)  # fmt: skip
        _, a = accuracy_tables(tiny_model, [Variant("m")], {"t": study_task}, progress=False)
        _, b = accuracy_tables(tiny_model, [Variant("m")], {"t": ledger_task}, progress=False)
        assert a["correct"].tolist() == b["correct"].tolist()
        assert a["predicted"].tolist() == b["predicted"].tolist()


def test_real_model_subject_splits_the_gap_tasks_and_relearns_on_t_only(tiny_model, tmp_path):
    loaded = tiny_study(tiny_model)
    variants = RunVariants(RunDir(tmp_path))  # read lazily: no file needed here
    everything = {"forget_T": 100, "forget_V": 100, "retain": 4}
    subject = ledger_subjects.question_subject(variants, loaded.subject(), seed=0, items=everything)
    tasks = subject.tasks
    assert list(tasks) == ["forget_T", "forget_V", "retain"]
    t, v = ({i.question for i in tasks[p].items} for p in ("forget_T", "forget_V"))
    assert not t & v
    # every gap task's questions (the letter-mode report-only task is not one) on one side
    assert len(tasks["forget_T"].items) + len(tasks["forget_V"].items) == 8 + 6
    assert sum("Which word is fox?" in q for q in v | t) == 1
    assert len(tasks["retain"].items) == 4 and subject.controls() == {}
    assert subject.relearn_texts == [f"{i.question} {i.choices[i.answer]}"
                                     for i in tasks["forget_T"].items]  # fmt: skip
    assert subject.relearn_texts[0].startswith(("Question: Which word", "The word for"))
    assert not any(q in text for text in subject.relearn_texts for q in v)
    capped = ledger_subjects.question_subject(
        variants, loaded.subject(), seed=0, items={"forget_T": 1, "forget_V": 2, "retain": 3}
    )
    sizes = ledger_subjects.task_sizes(capped.tasks)
    assert sizes == {"forget_T": 2, "forget_V": 4, "retain": 3}  # per study task: 2 gap tasks
    assert capped.relearn_texts == subject.relearn_texts  # relearning trains on all of T
    assert subject.benign_texts == loaded.data.retain_corpus


def study_ledger(out, loaded, settings=REAL_SETTINGS, executor=None) -> pd.DataFrame:
    """The ledger step alone on real-model run ``out`` (its first seed's files are there)."""
    run = Run(RunDir(out), loaded.subject(), progress=False)
    ledger.check_ledger_settings(run.dir, settings)
    steps = [ledger.Ledger(ledger.question_ledger_subject, settings, executor)]
    run_pipeline(run, steps, Report("A real model's ledger"))
    return pd.read_csv(out / RunFiles.LEDGER)


def test_real_model_ledger_attacks_the_first_seed_without_an_oracle(real_run):
    out, loaded = real_run
    table = study_ledger(out, loaded)
    assert set(table["attack"]) == ATTACKS and set(table["model"]) == {"unlearned", "base"}
    assert set(table["task"]) == {"forget_T", "forget_V", "retain"}
    assert table[["accuracy", "accuracy_ci_low", "accuracy_ci_high"]].notna().all().all()
    assert sorted(set(table.loc[table["attack"] == "relearn", "step"])) == [0, 1, 2]
    n = table.drop_duplicates("task").set_index("task")["n"]
    assert (n["forget_T"] + n["forget_V"], n["retain"]) == (14, 10)
    report = (out / "report.md").read_text()
    assert report.count(ledger_table.SECTION) == 1 and "no oracle twin" in report
    assert (out / "tables/ledger_finetune_seed0_per_item.csv").is_file()
    assert not (out / "seeds/rmu-seed0/tables/ledger.csv").exists()


def test_real_model_study_ends_with_its_own_ledger_on_the_first_seed(tiny_model):
    loaded = tiny_study(tiny_model)
    last = study_steps(loaded)[-1]
    assert isinstance(last, ledger.Ledger) and last.settings == ledger.MODEL_DEMO_SETTINGS
    assert loaded.subject().variants_folder == "seeds/rmu-seed0"


def test_cli_ledger_resumes_a_real_model_demo_with_its_settings(real_run, monkeypatch, capsys):
    out, _ = real_run
    seen = {}

    def fake_study(run, **kwargs):
        seen.update(kwargs)
        raise UnlearnInterpError("stopped here")

    monkeypatch.setattr(jobs, "run_study", fake_study)
    assert cli.main(["ledger", "--run", str(out)]) == 2
    assert (seen["seeds"], seen["topic"], seen["dtype"], seen["recompute"]) == (
        [0],
        "x",
        torch.float32,
        [],
    )


def test_cli_ledger_on_an_unfinished_real_model_demo_exits_2(real_run, capsys):
    out, _ = real_run
    (out / "seeds/rmu-seed0" / RunFiles.DIRECTION).unlink()
    assert cli.main(["ledger", "--run", str(out)]) == 2
    line = one_error_line(capsys)
    assert "seeds/rmu-seed0/direction.safetensors" in line and "--model smollm2-135m" in line


def test_cli_ledger_on_corrupt_real_model_weights_exits_2_before_loading(
    real_run, capsys, monkeypatch
):
    out, _ = real_run
    (out / "seeds/rmu-seed0" / RunFiles.UNLEARNED_WEIGHTS).write_bytes(b"not safetensors")
    monkeypatch.setattr(jobs, "run_study", lambda *a, **k: pytest.fail("study loaded"))
    assert cli.main(["ledger", "--run", str(out)]) == 2
    assert "not a readable safetensors file" in one_error_line(capsys)
