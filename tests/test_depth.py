"""The depth profile's plumbing (analysis.questions, pipeline.depth.step, pipeline.depth.summary): question
sets joined across tasks, the report's summary and metrics from the four tables, the real-model
inputs. The measurements themselves are tested in test_probes, test_lens and test_similarity; the
step on the organism in test_pipeline."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from unlearn_interp.analysis.probes import Readouts, readouts
from unlearn_interp.analysis.questions import QuestionSet, question_set
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.depth import summary as depth_report
from unlearn_interp.pipeline.depth.step import question_depth_inputs
from unlearn_interp.pipeline.subject import Subject, Task

ITEMS = [MCQItem(f"What is thing {i}?", ["red", "blue", "green", "gold"], i % 4) for i in range(6)]
OTHER = [MCQItem(f"Which place {i}?", ["north", "south", "east", "west"], 3) for i in range(4)]


def test_question_sets_and_readouts_join_one_after_the_other(tiny_model):
    for build, kind in ((question_set, QuestionSet), (readouts, Readouts)):
        first = build(tiny_model, ITEMS, groups=[f"a{i}" for i in range(6)])
        second = build(tiny_model, OTHER, groups=[f"b{i}" for i in range(4)])
        joined = kind.concat([first, second])
        assert len(joined) == 10 and joined.groups[6] == "b0"
        assert joined.answers.tolist() == [*first.answers.tolist(), *second.answers.tolist()]
    shifted = joined.rows[6:] - len(first.contexts)
    assert (shifted == second.rows).all()  # rows of the second set point at its own contexts
    assert joined.contexts[joined.rows[6, 0]] == second.contexts[second.rows[0, 0]]


def test_joining_sets_with_different_numbers_of_choices_is_refused(tiny_model):
    three = [MCQItem("Q?", ["a", "b", "c"], 0)]
    with pytest.raises(UnlearnInterpError, match="cannot be joined"):
        QuestionSet.concat([question_set(tiny_model, ITEMS), question_set(tiny_model, three)])


def test_question_inputs_join_the_gap_tasks_and_keep_the_retain_ones_apart(tiny_model):
    tasks = {"sci": Task(ITEMS, "continuation"), "bio": Task(OTHER, "continuation"),
             "geo": Task(OTHER, "continuation"), "arc": Task(ITEMS, "continuation")}  # fmt: skip
    subject = Subject(tiny_model, "tiny", tasks, forget_tasks=("sci", "bio"),
                      prompts={"forget": ["a"], "retain": ["b"]}, layer=1,
                      retain_corpora=[["text"]], report_only=("arc",))  # fmt: skip
    inputs = question_depth_inputs(subject)
    assert len(inputs.probe_sets["choice"]) == 10 and len(inputs.lens_sets["retain"]) == 4
    assert inputs.probe_sets["choice"].groups[0] == "sci:0"  # each question its own group
    assert inputs.relearn_texts is None and list(inputs.lens_texts) == ["text"]


def synthetic_tables() -> dict[str, pd.DataFrame]:
    probes = pd.DataFrame(
        [(v, "choice", p, layer, acc, acc - 0.1, acc + 0.1, 40, 0.25)
         for v, acc in (("base", 0.95), ("rmu", 0.5))
         for p in ("own", "reference", "shuffled") for layer in (0, 1, 2)],
        columns=["variant", "label", "probe", "layer", "accuracy", "ci_low", "ci_high", "n",
                 "chance"],
    )  # fmt: skip
    lens = pd.DataFrame(
        [(v, s, kind, layer, 0.8, 0.7, 0.9) for v in ("base", "rmu") for s in ("forget", "retain")
         for kind in ("logit", "tuned") for layer in (0, 1, 2)],
        columns=["variant", "prompt_set", "lens", "layer", "choice_accuracy", "ci_low", "ci_high"],
    )  # fmt: skip
    similarity = pd.DataFrame(
        [(v, s, layer, 1.0 if v == "base" else 0.5) for v in ("base", "rmu")
         for s in ("forget", "retain") for layer in (0, 1, 2)],
        columns=["variant", "prompt_set", "layer", "cka"],
    )  # fmt: skip
    kl = pd.DataFrame({"layer": [0, 0], "lens": ["logit", "tuned"], "kl": [0.4, 0.1]})
    return {"depth_probes": probes, "depth_lens": lens, "depth_similarity": similarity,
            "depth_lens_kl": kl}  # fmt: skip


def test_summary_picks_the_rmu_layer_and_the_last_with_intervals():
    summary = depth_report.depth_summary(synthetic_tables(), layer=1)
    assert sorted(summary["layer"].unique()) == [1, 2]
    own = summary.query("variant == 'rmu' and layer == 1 and measure == 'own probe'").iloc[0]
    assert (own["value"], own["ci_low"]) == (0.5, pytest.approx(0.4))
    cka = summary.query("variant == 'rmu' and measure == 'CKA forget'")["ci_low"]
    assert cka.isna().all()  # CKA has no interval


def test_markdown_and_metrics_carry_the_same_numbers():
    tables = synthetic_tables()
    text = depth_report.depth_markdown(tables, layer=1)
    assert text.startswith(depth_report.SECTION)
    assert "| rmu | 1 | 0.50 [0.40, 0.60] |" in text and "tuned lens 0.10 nats" in text
    metrics = depth_report.depth_metrics(tables, layer=1)
    own = metrics["variants"]["rmu"]["1"]["own probe"]
    assert own["value"] == 0.5 and math.isclose(own["ci_high"], 0.6)
    assert metrics["variants"]["base"]["2"]["CKA forget"]["ci_low"] is None
    assert metrics["lens_kl_mean"] == {"logit": 0.4, "tuned": 0.1}
