"""pipeline (the organism demo, the shared steps, the step engine, run directories) and the demo
command: the whole story end to end, resumable run directories. The audit of a checkpoint pair:
test_audit."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unlearn_interp import pipeline, rmu
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.depth.summary import SECTION as DEPTH_SECTION
from unlearn_interp.pipeline.steps import profile

RUN_FILES = [
    "config.json", "metrics.json", "report.md", "control_vectors.safetensors",
    "unlearned_weights.safetensors", "direction.safetensors", "direction.json",
    "tables/accuracy.csv", "tables/mcq_per_item.csv", "tables/layer_profile.csv",
    "tables/generations.csv", "tables/rmu_history.csv", "tables/direction_candidates.csv",
    "figures/layer_norms_rmu.html", "figures/accuracy_bars.html",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(organism_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    metrics = pipeline.run_demo(
        out, size="test", cache_dir=organism_test.cache_path.parent, progress=False, ledger=False
    )
    return out, metrics


def test_demo_writes_the_run_directory_contract(demo_run, organism_test):
    out, metrics = demo_run
    missing = [name for name in RUN_FILES if not (out / name).is_file()]
    assert missing == []
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["accuracy"].keys() == {"base", "rmu", "rmu_ablated", "rmu_random_ablated"}
    assert set(on_disk["gap_recovered"]) == {"junk", "random"}
    assert on_disk["junk_direction"]["layer"] == organism_test.rmu_layer
    assert set(on_disk["seconds"]) >= {"pretrain", "rmu", "analysis", "total"}
    config = json.loads((out / "config.json").read_text())
    assert config["pipeline"]["size"] == "test" and "rmu" in config and "library_versions" in config


def test_demo_rmu_drops_hazardous_accuracy_and_keeps_benign(demo_run):
    acc = demo_run[1]["accuracy"]
    assert acc["base"]["hazardous"] >= 0.95 and acc["base"]["benign"] >= 0.95
    assert acc["rmu"]["hazardous"] <= acc["base"]["hazardous"] - 0.3
    assert acc["rmu"]["benign"] >= acc["base"]["benign"] - 0.1


def test_demo_junk_ablation_recovers_more_than_a_random_direction(demo_run):
    gaps = demo_run[1]["gap_recovered"]
    assert gaps["junk"] > gaps["random"] + 0.2
    assert abs(gaps["random"]) < 0.3


def test_demo_junk_direction_is_the_control_vector(demo_run):
    assert demo_run[1]["junk_direction"]["cos_with_control_vector"] > 0.9


def test_demo_norm_bump_sits_at_the_rmu_layer(demo_run, organism_test):
    out, _ = demo_run
    layer = organism_test.rmu_layer
    profile = pd.read_csv(out / "tables/layer_profile.csv")
    forget = profile[profile.prompt_set == "forget"].pivot(
        index="layer", columns="variant", values="norm"
    )
    jump = (forget["rmu"] / forget["base"]).diff().fillna(forget["rmu"] / forget["base"] - 1)
    assert int(jump.idxmax()) == layer  # the largest rise of rmu/base norm is at the RMU layer
    assert forget.loc[layer, "rmu"] >= 3 * forget.loc[layer, "base"]


def test_second_demo_run_reuses_every_finished_step(demo_run, organism_test, monkeypatch):
    out, metrics = demo_run
    before = json.loads((out / "tables/step_seconds.json").read_text())

    def must_not_train(*args, **kwargs):
        raise AssertionError("RMU was trained again")

    monkeypatch.setattr(rmu, "train_rmu", must_not_train)
    again = pipeline.run_demo(
        out, size="test", cache_dir=organism_test.cache_path.parent, progress=False, ledger=False
    )
    after = json.loads((out / "tables/step_seconds.json").read_text())
    assert {k: v for k, v in after.items() if k != "organism"} == {
        k: v for k, v in before.items() if k != "organism"
    }
    assert again["accuracy"] == metrics["accuracy"]


def test_interrupted_demo_resumes_from_finished_steps(organism_test, tmp_path, monkeypatch):
    cache = organism_test.cache_path.parent
    real = profile.LayerProfile.compute

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(profile.LayerProfile, "compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_demo(
            tmp_path, size="test", cache_dir=cache, progress=False, ledger=False, depth=False
        )
    assert (tmp_path / "tables/accuracy.csv").is_file()
    assert not (tmp_path / "tables/layer_profile.csv").exists()
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written artifact
    monkeypatch.setattr(profile.LayerProfile, "compute", real)
    monkeypatch.setattr(rmu, "train_rmu", lambda *a, **k: pytest.fail("RMU retrained on resume"))
    pipeline.run_demo(
        tmp_path, size="test", cache_dir=cache, progress=False, ledger=False, depth=False
    )
    assert (tmp_path / "metrics.json").is_file()


DEPTH_FILES = ["tables/depth_probes.csv", "tables/depth_lens.csv", "tables/depth_lens_kl.csv",
               "tables/depth_similarity.csv", "figures/depth_profile.html"]  # fmt: skip


def test_demo_depth_profile_has_its_tables_section_and_metrics(demo_run):
    out, metrics = demo_run
    assert [name for name in DEPTH_FILES if not (out / name).is_file()] == []
    report = (out / "report.md").read_text()
    assert report.count(DEPTH_SECTION) == 1 and "figures/depth_profile.html" in report
    entry = json.loads((out / "metrics.json").read_text())["depth"]
    assert entry == metrics["depth"]
    assert {"base", "rmu", "rmu_ablated", "rmu_rtn4", "rmu_relearned"} <= set(entry["variants"])
    probes = pd.read_csv(out / "tables/depth_probes.csv")
    base = probes[(probes.variant == "base") & (probes.label == "choice")]
    last = base[base.layer == base.layer.max()].set_index("probe")
    assert last.loc["own", "accuracy"] >= 0.9  # the base model's answer is readable
    assert last.loc["shuffled", "accuracy"] <= last.loc["shuffled", "chance"] + 0.1


def test_report_has_each_steps_section_once_in_the_steps_order(demo_run):
    report = (demo_run[0] / "report.md").read_text()
    order = ["## Unlearning", "## Junk direction", "## Accuracy", "## Layer profile",
             "## Greedy continuations", DEPTH_SECTION, "## Timing", "## Targets"]  # fmt: skip
    assert [report.count(header) for header in order] == [1] * len(order)
    assert [report.index(h) for h in order] == sorted(report.index(h) for h in order)
    assert report.startswith("# RMU is mostly shallow: the model organism (test)")


def test_resuming_with_other_settings_is_refused(demo_run, organism_test):
    out, _ = demo_run
    with pytest.raises(UnlearnInterpError, match="other settings.*seed"):
        pipeline.run_demo(
            out, size="test", seed=3, cache_dir=organism_test.cache_path.parent, ledger=False
        )
