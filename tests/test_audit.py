"""The audit of any unlearned model (``unlearn-interp audit``, pipeline.audit): end to end on tiny
checkpoint pairs (one made by ``unlearn-interp unlearn``, one whose every block's MLP changed),
resumable, every bad input one sentence with exit status 2."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import save_hf_checkpoint

from unlearn_interp import cli, models
from unlearn_interp.pipeline.audit.run import AuditData, audit_model
from unlearn_interp.pipeline.steps.intervals import GAP_ROLES

WORDS = ["fox", "dog", "tree", "river", "stone", "cloud", "fire", "snow", "rain", "wind"]


def mcq_rows(prefix: str, n: int) -> list[dict]:
    return [
        {"question": f"{prefix} {WORDS[i % 10]} number {i}?", "choices": ["red", "blue", "green",
         "gold"], "answer": i % 4, "subject": "biology"}
        for i in range(n)
    ]  # fmt: skip


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def pair_files(tokenizer, tmp_path_factory):
    """A tiny base checkpoint, a copy whose every block's MLP changed, question files and
    corpora."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("audit")
    base = save_hf_checkpoint("llama", root / "base", tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in hf.model.layers:
            for matrix in (layer.mlp.down_proj.weight, layer.mlp.up_proj.weight):
                matrix.add_(torch.randn(matrix.shape, generator=generator) * 0.05)
    hf.save_pretrained(root / "changed")
    tokenizer.save_pretrained(root / "changed")
    (root / "forget.txt").write_text("the fox and the river and the stone\n" * 8)
    (root / "retain.txt").write_text("a dog ran far past the tree in the snow\n" * 8)
    (root / "empty.txt").write_text("\n\n")
    return {
        "root": root,
        "base": str(base),
        "changed": str(root / "changed"),
        "forget_mcq": write_jsonl(root / "forget.jsonl", mcq_rows("Which animal is", 10)),
        "retain_mcq": write_jsonl(root / "retain.jsonl", mcq_rows("Which colour is", 8)),
    }


def audit_argv(files, out, unlearned, *extra) -> list[str]:
    return ["-q", "audit", "--base", files["base"], "--unlearned", unlearned, "--forget-mcq",
            files["forget_mcq"], "--retain-mcq", files["retain_mcq"], "--mode", "continuation",
            "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def rmu_audit(pair_files, tmp_path_factory):
    """``unlearn`` (RMU at layer 1) on the base checkpoint, then ``audit`` of that pair."""
    root = tmp_path_factory.mktemp("rmu_audit")
    unlearn = ["-q", "unlearn", "--model", pair_files["base"], "--forget",
               str(pair_files["root"] / "forget.txt"), "--retain",
               str(pair_files["root"] / "retain.txt"), "--layer", "1", "--steps", "4",
               "--batch-size", "2", "--max-len", "32", "--steering-coef", "20", "--alpha", "10",
               "--lr", "1e-3", "--out", str(root / "rmu")]  # fmt: skip
    assert cli.main(unlearn) == 0
    out = root / "audit"
    argv = audit_argv(pair_files, out, str(root / "rmu"), "--retain-corpus",
                      str(pair_files["root"] / "retain.txt"))  # fmt: skip
    assert cli.main(argv) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_audit_of_an_rmu_run_names_it_rmu_and_keeps_the_control_vector(rmu_audit):
    out, metrics = rmu_audit
    assert metrics["changes"]["blocks_changed"] == [0, 1]  # RMU's update layers at layer 1
    assert metrics["changes"]["tensors_changed"] == 2
    assert metrics["changes"]["layer"] in (0, 1)  # the rule picks a changed block's output
    assert set(metrics["changes"]["layer_scores"]) == {"0", "1"}  # JSON keys are text
    assert {"rmu", "rmu_ablated", "rmu_subspace_ablated", "base_subspace_ablated"} <= set(
        metrics["accuracy"]
    )
    assert "cos_with_control_vector" in metrics["junk_direction"]
    assert set(metrics["gap_recovered"]) == set(GAP_ROLES)
    for name, value in metrics["gap_recovered"].items():
        ci = metrics["gap_recovered_ci"][name]
        assert ci["ci_low"] - 1e-9 <= value <= ci["ci_high"] + 1e-9 or value != value  # NaN: no gap
    ci = metrics["accuracy_ci"]["rmu"]["forget"]
    assert ci["ci_low"] <= metrics["accuracy"]["rmu"]["forget"] <= ci["ci_high"]
    assert {"depth", "ledger", "pair", "changes", "layer_profile"} <= set(metrics)


def test_audit_writes_its_run_directory_and_report(rmu_audit):
    out, metrics = rmu_audit
    for name in ("unlearned_weights.safetensors", "control_vectors.safetensors",
                 "direction.safetensors", "subspace.safetensors", "tables/weight_changes.csv",
                 "tables/layer_choice.csv", "tables/accuracy.csv", "tables/gap_recovered.csv",
                 "tables/ledger.csv", "tables/depth_probes.csv", "figures/weight_changes.html",
                 "figures/gap_recovered.html", "figures/ledger.html"):  # fmt: skip
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    for header in ("## The pair", "## Where did unlearning write?", "## Junk direction",
                   "## Accuracy", "## Gap recovered", "## Depth profile", "## Recovery ledger"):  # fmt: skip
        assert report.count(header) == 1, header
    assert "no oracle twin" in report
    assert metrics["forget_tasks"] == ["forget"] and metrics["retain_tasks"] == ["retain"]


def test_a_second_audit_recomputes_nothing(rmu_audit, pair_files):
    out, metrics = rmu_audit
    seconds = json.loads((out / "tables/step_seconds.json").read_text())
    argv = audit_argv(pair_files, out, str(out.parent / "rmu"), "--retain-corpus",
                      str(pair_files["root"] / "retain.txt"))  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads((out / "tables/step_seconds.json").read_text()) == seconds
    again = json.loads((out / "metrics.json").read_text())
    assert again["accuracy"] == metrics["accuracy"]


def test_audit_of_a_pair_whose_every_block_changed(pair_files, tmp_path):
    model = models.load_model(pair_files["base"], device="cpu")
    tasks = {
        "forget": [models_item(r) for r in mcq_rows("Which animal is", 10)],
        "retain": [models_item(r) for r in mcq_rows("Which colour is", 8)],
    }
    audit_data = AuditData(tasks, ["forget"], "continuation", retain_corpus=[])  # empty corpus
    metrics = audit_model(tmp_path / "run", model, pair_files["changed"], audit_data,
                          progress=False)  # fmt: skip
    assert metrics["changes"]["blocks_changed"] == [0, 1, 2]
    assert metrics["changes"]["tensors_changed"] == 6
    assert "unlearned_subspace_ablated" in metrics["accuracy"]
    assert "cos_with_control_vector" not in metrics["junk_direction"]
    report = (tmp_path / "run/report.md").read_text()
    assert "benign fine-tuning was skipped" in report
    assert "benign_finetune" not in set(metrics["ledger"]["gap_recovered"])


def models_item(row):
    from unlearn_interp.data import MCQItem

    return MCQItem.from_dict(row)


# --- bad input: one sentence, exit status 2 -----------------------------------------------------


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn-interp: error: "), lines
    return lines[0]


def test_a_pair_with_no_changed_tensor_is_refused(pair_files, tmp_path, capsys):
    assert cli.main(audit_argv(pair_files, tmp_path / "run", pair_files["base"])) == 2
    assert "same weights as the base model" in one_error(capsys)


def test_a_layer_out_of_range_is_refused(pair_files, tmp_path, capsys):
    argv = audit_argv(pair_files, tmp_path / "run", pair_files["changed"], "--layer", "9")
    assert cli.main(argv) == 2
    assert "layer 9 is out of range" in one_error(capsys)


def test_a_forget_file_too_small_to_split_is_refused(pair_files, tmp_path, capsys):
    files = {**pair_files, "forget_mcq": write_jsonl(tmp_path / "f.jsonl", mcq_rows("Is", 3))}
    assert cli.main(audit_argv(files, tmp_path / "run", pair_files["changed"])) == 2
    assert "needs at least 4" in one_error(capsys)


def test_an_unparsable_question_names_file_and_line(pair_files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(mcq_rows("Is", 1)[0]) + "\n{not json\n")
    files = {**pair_files, "forget_mcq": str(bad)}
    assert cli.main(audit_argv(files, tmp_path / "run", pair_files["changed"])) == 2
    assert "bad.jsonl" in one_error(capsys)


def test_a_different_architecture_is_named(pair_files, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig.from_pretrained(pair_files["base"])
    config.intermediate_size = 48
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other")
    assert cli.main(audit_argv(pair_files, tmp_path / "run", str(tmp_path / "other"))) == 2
    assert "d_mlp" in one_error(capsys)


def test_a_checkpoint_lacking_tensors_is_an_error_not_a_random_model(tokenizer, tmp_path):
    path = save_hf_checkpoint("llama", tmp_path / "ckpt", tokenizer)
    (path / "model.safetensors").unlink()
    torch.save({}, path / "pytorch_model.bin")
    with pytest.raises(Exception, match=r"tensors are missing from pytorch_model\.bin"):
        models.load_model(path, device="cpu")


def test_custom_code_in_a_config_is_said_to_be_ignored(tokenizer, tmp_path, caplog):
    path = save_hf_checkpoint("llama", tmp_path / "ckpt", tokenizer)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        models.load_model(path, device="cpu")
    assert "declares custom code" in caplog.text and "not run" in caplog.text


def test_evaluate_on_a_run_with_a_corrupt_config_is_refused(pair_files, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    argv = ["evaluate", "--model", pair_files["base"], "--mcq", pair_files["forget_mcq"],
            "--run", str(run)]  # fmt: skip
    assert cli.main(argv) == 2
    assert "config.json line 1 is not valid JSON" in one_error(capsys)
