"""backend_speed: models store their linear matrices as TransformerLens' forward reads them, so the
forward copies no weight, and nothing a user sees changes: logits, gradients, every hook's
activation, variants applied in place and training steps equal the unpatched model's (the same
model with ``tl_layout``), and HuggingFace's on the same checkpoint.

Three families, as tiny random HuggingFace checkpoints loaded through ``models.load_model``:
``llama`` (SmolLM2-like: grouped-query attention, 4 heads over 2 K/V heads, RMSNorm, gated MLP),
``gpt2`` (multi-head attention, LayerNorm, plain MLP) and ``mistral`` (grouped-query).

    python -m pytest tests/test_backend_speed.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import save_hf_checkpoint
from torch.utils._python_dispatch import TorchDispatchMode

from unlearn_interp import backend_speed, models
from unlearn_interp.variants import Variant

FAMILIES = ["llama", "gpt2", "mistral"]
TOLERANCE = 1e-4  # float32 logits, the bound


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ckpt_{request.param}")
    return save_hf_checkpoint(request.param, path, tokenizer, seed=3)


@pytest.fixture
def pair(checkpoint):
    """(patched, unpatched): the loaded model and a copy stored as TransformerLens stores it."""
    model = models.load_model(checkpoint, device="cpu")
    return model, backend_speed.tl_layout(copy.deepcopy(model))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))


class ParameterCopies(TorchDispatchMode):
    """Counts the operations that copy out of a parameter's storage while active."""

    def __init__(self, model):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ops = {torch.ops.aten.clone.default: 0, torch.ops.aten.copy_.default: 1}
        if func in ops and isinstance(args[ops[func]], torch.Tensor):
            source = args[ops[func]].untyped_storage().data_ptr()
            self.count += source in self.storages
        return func(*args, **(kwargs or {}))


def parameter_copies(model, tokens) -> int:
    with torch.no_grad(), ParameterCopies(model) as mode:
        model(tokens)
    return mode.count


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|; equal infinities (masked attention scores) differ by 0, and a NaN in
    either is ``inf``, so it fails every bound (a NaN would slip through Python's ``max``)."""
    a, b = a.float(), b.float()
    diff = torch.where(a == b, 0.0, (a - b).abs())
    return torch.nan_to_num(diff, nan=float("inf")).max().item()


def test_the_installed_transformer_lens_is_a_tested_version():
    # A TransformerLens upgrade fails here: read its forwards again before widening the pin.
    assert backend_speed.is_tested_version()
    assert not backend_speed.is_tested_version("3.10.0")
    assert backend_speed.install() and backend_speed.install()  # idempotent


def test_every_model_is_built_in_the_fast_layout(pair, tokenizer):
    model, reference = pair
    assert backend_speed.uses_fast_layout(model)
    assert not backend_speed.uses_fast_layout(reference)
    assert backend_speed.uses_fast_layout(models.random_model(tokenizer=tokenizer))
    assert backend_speed.uses_fast_layout(backend_speed.hf_layout(reference))


def test_patched_forward_copies_no_parameter_and_unpatched_does(pair, tokens):
    model, reference = pair
    assert parameter_copies(model, tokens) == 0
    # the unpatched forward copies at least W_Q, W_K, W_V, W_O per block and W_U
    assert parameter_copies(reference, tokens) >= 4 * models.n_layers(model) + 1


def test_logits_equal_unpatched_and_huggingface(pair, tokens, checkpoint):
    from transformers import AutoModelForCausalLM

    model, reference = pair
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding in one row
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            logits = model(tokens, **kwargs)
            assert max_diff(logits, reference(tokens, **kwargs)) <= TOLERANCE
        assert max_diff(model(tokens), hf(tokens).logits) <= TOLERANCE


def test_gradients_equal_and_reach_the_parameters(pair, tokens):
    grads = []
    for m in pair:
        m.zero_grad()
        m(tokens, return_type="loss").backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    patched, unpatched = grads
    assert all(g is not None for g in patched.values())
    worst = max(max_diff(patched[n], unpatched[n]) for n in patched)
    assert worst <= 1e-6


def test_every_hook_sees_the_same_activation(pair, tokens):
    model, reference = pair
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        _, expected = reference.run_with_cache(tokens)
    names = set(expected.keys())
    assert set(cache.keys()) == names
    for name in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.1.attn.hook_attn_scores",
                 "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"):  # fmt: skip
        assert name in names
    assert all(cache[n].shape == expected[n].shape for n in names)
    assert max(max_diff(cache[n], expected[n]) for n in names) <= TOLERANCE


def test_a_variant_applied_in_place_changes_both_alike(pair, tokens):
    model, reference = pair
    gen = torch.Generator().manual_seed(1)
    names = ["blocks.1.mlp.W_out", "blocks.0.attn.W_Q", "blocks.0.attn.W_O", "unembed.W_U"]
    weights = {n: torch.randn(models.get_param(model, n).shape, generator=gen) * 0.1 for n in names}
    variant = Variant("shuffled", weights=weights)
    with torch.no_grad():
        before = model(tokens)
        with variant.applied(model), variant.applied(reference):
            changed, expected = model(tokens), reference(tokens)
        after = model(tokens)
    assert max_diff(changed, before) > 1e-2  # the variant does change the output
    assert max_diff(changed, expected) <= TOLERANCE
    assert max_diff(after, before) == 0.0
    assert backend_speed.uses_fast_layout(model)  # copies in place keep the layout


def test_a_training_step_updates_both_alike(pair, tokens):
    # RMU's optimiser (AdamW, eps 1e-6) on W_out as RMU trains it, and on the other relaid matrices
    kv = (
        "blocks.0.attn._W_K"
        if "blocks.0.attn._W_K" in dict(pair[0].named_parameters())
        else "blocks.0.attn.W_K"
    )
    names = ["blocks.1.mlp.W_out", "blocks.0.attn.W_Q", kv, "blocks.1.attn.W_O", "unembed.W_U"]
    trained = []
    for m in pair:
        params = [models.get_param(m, n) for n in names]
        optimizer = torch.optim.AdamW(params, lr=1e-2, eps=1e-6)
        for _ in range(2):
            optimizer.zero_grad()
            m(tokens, return_type="loss").backward()
            optimizer.step()
        trained.append({n: models.get_param(m, n).detach() for n in names})
    patched, unpatched = trained
    assert max(max_diff(patched[n], unpatched[n]) for n in names) <= 1e-6
    assert backend_speed.uses_fast_layout(pair[0])


def test_casting_and_copying_keep_the_layout(pair, tokens):
    model, reference = pair
    twin = copy.deepcopy(model)
    assert backend_speed.uses_fast_layout(twin)
    models.place(twin, dtype=torch.bfloat16)
    assert backend_speed.uses_fast_layout(twin)
    models.place(reference, dtype=torch.bfloat16)
    with torch.no_grad():
        assert max_diff(twin(tokens), reference(tokens)) == 0.0
