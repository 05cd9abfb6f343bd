"""pipeline.study: the multi-seed study (junk direction and subspace, controls, ablated base,
intervals) end to end on the test-size model organism, whose RMU really drops hazardous accuracy."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from conftest import save_hf_checkpoint
from test_ledger import tiny_study

from unlearn_interp import directions, models, pipeline, real_data, rmu, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.depth.step import DepthSettings
from unlearn_interp.pipeline.jobs import summary_text
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.steps.intervals import GAP_ROLES
from unlearn_interp.pipeline.steps.profile import FIGURES as PROFILE_FIGURES
from unlearn_interp.pipeline.study import config as study
from unlearn_interp.pipeline.study.intervals import FIGURES as INTERVAL_FIGURES
from unlearn_interp.pipeline.study.run import run_loaded_study, run_study
from unlearn_interp.pipeline.study.seeds import ModelSource, run_seed, run_seeds


def organism_study(org) -> study.Study:
    """The organism as a Study: hazardous is the forget task, benign the retain task."""
    data = real_data.StudyData(
        topic="hazardous", forget_corpus=org.forget_corpus, retain_corpus=org.retain_corpus,
        tasks={"hazardous": org.hazardous_mcq, "benign": org.benign_mcq},
        task_modes={"hazardous": org.mcq_mode, "benign": org.mcq_mode},
        task_templates={"hazardous": org.qa_template, "benign": org.qa_template},
        forget_tasks=("hazardous",), forget_prompts=org.hazardous_prompts,
        retain_prompts=org.benign_prompts, generation_prompts=org.hazardous_prompts[:2],
        counts={}, provenance={"source": "test organism"},
    )  # fmt: skip
    cfg = pipeline.organism_rmu_config(org)
    arms = (
        study.Arm("rmu", cfg, (0, 1)),
        study.Arm("rmu_gaussian", study.with_changes(cfg, control_vector="gaussian"), (0,),
                  study.ARM_VARIANTS),
    )  # fmt: skip
    return study.Study(org.model, data, arms, batch_size=32, max_new_tokens=8, title="organism")


@pytest.fixture(scope="module")
def study_run(organism_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    loaded = organism_study(organism_test)
    metrics = run_loaded_study(RunDir(out), loaded, progress=False, depth=DEPTH)
    return out, metrics, loaded


# A light depth profile: the real-model settings' shape (one shuffle, no relearned model) on a
# short tuned-lens fit.
DEPTH = DepthSettings(n_shuffles=1, lens_steps=20, relearn=None)


def test_study_depth_profile_covers_the_first_seed_and_its_subspace(study_run):
    out, metrics, _ = study_run
    probes = pd.read_csv(out / "tables/depth_probes.csv")
    assert set(probes["variant"]) == {"base", "rmu", "rmu_ablated", "rmu_subspace_ablated",
                                      "rmu_rtn4"}  # fmt: skip
    lens = pd.read_csv(out / "tables/depth_lens.csv")
    assert set(lens["prompt_set"]) == {"forget", "retain"}
    assert json.loads((out / "metrics.json").read_text())["depth"] == metrics["depth"]
    assert "## Depth profile" in (out / "report.md").read_text()


def test_study_scores_every_variant_of_every_seed_on_the_same_items(study_run):
    out, _, loaded = study_run
    per_item = pd.read_csv(out / "tables/per_item.csv")

    def n_items(variant: str) -> int:
        tasks = loaded.subject().tasks_for(variant.split(":")[-1])
        return sum(len(t.items) for t in tasks.values())

    expected = n_items("base") + sum(
        n_items(v) * len(arm.seeds) for arm in loaded.arms for v in arm.variants
    )
    assert len(per_item) == expected
    counts = per_item.groupby(["arm", "seed", "variant"], dropna=False).size()
    assert all(n == n_items(key[2]) for key, n in counts.items())
    # the random controls are scored on the forget task only, everything else on both
    assert n_items("rmu_random_ablated") == len(loaded.data.tasks["hazardous"])
    assert n_items("base_subspace_ablated") == n_items("base")


def test_study_rmu_drops_the_forget_task_and_the_intervals_hold_the_means(study_run):
    _, metrics, _ = study_run
    acc, ci = metrics["accuracy"], metrics["accuracy_ci"]
    assert acc["rmu"]["hazardous"] <= acc["base"]["hazardous"] - 0.3
    assert acc["rmu"]["benign"] >= acc["base"]["benign"] - 0.15
    for variant, tasks in acc.items():
        for task, value in tasks.items():
            assert ci[variant][task]["ci_low"] <= value <= ci[variant][task]["ci_high"]
    assert ci["rmu"]["hazardous"]["n_seeds"] == 2


def test_study_gap_recovered_has_every_ablation_and_its_control(study_run):
    _, metrics, _ = study_run
    assert set(metrics["gap_recovered"]) == set(GAP_ROLES)
    for name, value in metrics["gap_recovered"].items():
        low, high = (metrics["gap_recovered_ci"][name][k] for k in ("ci_low", "ci_high"))
        assert low <= value <= high
    gaussian = metrics["arms"]["rmu_gaussian"]["gap_recovered"]
    assert set(gaussian) == {"junk", "subspace", "random_subspace"}
    # the junk direction of the organism's RMU is its control vector; a random one is not
    assert metrics["junk_direction"]["cos_with_control_vector"] > 0.9


def test_study_subspaces_are_orthonormal_and_their_controls_orthogonal(study_run):
    out, _, loaded = study_run
    seed_dir = out / loaded.headline.seed_dir(1)
    junk = directions.Subspace.load(seed_dir / RunFiles.SUBSPACE)
    random = directions.Subspace.load(seed_dir / RunFiles.RANDOM_SUBSPACE)
    assert junk.k == random.k >= 1
    eye = torch.eye(junk.k)
    assert torch.allclose(junk.basis @ junk.basis.T, eye, atol=1e-5)
    assert float((random.basis @ junk.basis.T).abs().max()) < 1e-5
    assert junk.layers == tuple(loaded.headline.config.update_layers)[: len(junk.layers)]


def test_study_writes_report_figures_and_resumes_without_recomputing(study_run):
    out, metrics, loaded = study_run
    shown = (*PROFILE_FIGURES, *INTERVAL_FIGURES, "training_curves", "generations")
    for name in shown:
        assert (out / f"figures/{name}.html").is_file()
    report = (out / "report.md").read_text()
    assert "Gap recovered" in report and "junk subspace (vs base)" in report
    assert json.loads((out / "metrics.json").read_text())["forget_tasks"] == ["hazardous"]
    seconds = json.loads((out / RunFiles.STEP_SECONDS).read_text())
    again = run_loaded_study(RunDir(out), loaded, progress=False, depth=DEPTH)
    assert json.loads((out / RunFiles.STEP_SECONDS).read_text()) == seconds
    assert again["accuracy"] == metrics["accuracy"]
    assert "gap recovered" in summary_text(again, out)


def test_study_refuses_to_resume_a_seed_trained_with_other_settings(study_run, tmp_path):
    out, _, loaded = study_run
    changed = study.Arm("rmu", study.with_changes(loaded.headline.config, steps=3), (0,))
    other = study.Study(loaded.model, loaded.data, (changed,))
    with pytest.raises(UnlearnInterpError, match="other settings"):
        run_seed(RunDir(out), other, changed, 0, progress=False)


def test_real_model_demo_names_the_only_model_it_knows(tmp_path):
    with pytest.raises(UnlearnInterpError, match="smollm2-135m"):
        run_study(tmp_path, model="gpt2")
    with pytest.raises(UnlearnInterpError, match="distinct"):
        run_study(tmp_path, seeds=[0, 0])


def test_gap_rows_are_the_mean_over_forget_tasks(study_run):
    out, metrics, _ = study_run
    gaps = pd.read_csv(out / "tables/gap_recovered.csv")
    mean = gaps[(gaps["task"] == stats.MEAN_TASK) & (gaps["arm"] == "rmu")].set_index("gap")
    assert mean.loc["subspace", "gap_recovered"] == pytest.approx(
        metrics["gap_recovered"]["subspace"]
    )


# ---------------------------------------------------------------------------------------------
# The seeds on an executor: a tiny study on a tiny GPT-2 checkpoint, serially and on Ray
# ---------------------------------------------------------------------------------------------

TINY_RMU = rmu.RMUConfig(layer=1, update_layers=(0, 1), steering_coef=5.0, alpha=1.0, lr=1e-3,
                         batch_size=2, steps=2, max_len=16)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tokenizer, tmp_path_factory):
    """A tiny GPT-2 checkpoint and a study on it with two arms, three seeds in all."""
    path = save_hf_checkpoint("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2", tokenizer)
    arms = (
        study.Arm("rmu", TINY_RMU, (0, 1)),
        study.Arm("rmu_gaussian", study.with_changes(TINY_RMU, control_vector="gaussian"), (0,),
                  study.ARM_VARIANTS),
    )  # fmt: skip
    loaded = dataclasses.replace(tiny_study(models.load_model(str(path))), arms=arms)
    return path, loaded


def seed_files(root, loaded) -> dict[str, bytes]:
    """Every seed's per-item answers, trained weights and junk direction, as bytes."""
    names = ("tables/mcq_per_item.csv", "unlearned_weights.safetensors", "direction.safetensors")
    return {f"{arm.seed_dir(seed)}/{name}": (root / arm.seed_dir(seed) / name).read_bytes()
            for arm in loaded.arms for seed in arm.seeds for name in names}  # fmt: skip


def test_seeds_on_ray_load_the_model_from_its_path_and_match_the_serial_study(
    tiny_checkpoint, ray_executor, tmp_path
):
    path, loaded = tiny_checkpoint
    run_seeds(RunDir(tmp_path / "serial"), loaded, progress=False)
    source = ModelSource(str(path))
    run_seeds(RunDir(tmp_path / "ray"), loaded, progress=False, executor=ray_executor,
              source=source)  # fmt: skip
    serial_files = seed_files(tmp_path / "serial", loaded)
    assert len(serial_files) == 9
    assert seed_files(tmp_path / "ray", loaded) == serial_files  # byte for byte
    per_item = pd.read_csv(tmp_path / "ray/seeds/rmu-seed1/tables/mcq_per_item.csv")
    assert set(per_item["variant"]) == set(study.FULL_VARIANTS)


def test_a_seed_whose_worker_cannot_load_the_model_is_reported(tiny_checkpoint, ray_executor,
                                                               tmp_path):  # fmt: skip
    _, loaded = tiny_checkpoint
    source = ModelSource(str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(UnlearnInterpError, match="seeds/rmu-seed0.*2 attempts") as raised:
        run_seeds(RunDir(tmp_path / "run"), loaded, progress=False, executor=ray_executor,
                  source=source)  # fmt: skip
    for name in ("rmu-seed0", "rmu-seed1", "rmu_gaussian-seed0"):
        assert name in str(raised.value)
    assert not list(tmp_path.glob("run/seeds/*/unlearned_weights.safetensors"))
