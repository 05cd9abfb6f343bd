"""backend_decode: the toolkit's decode path (rotated keys kept, grouped attention, per-step
tables) gives what TransformerLens' own forward gives: the same tokens, per-step logits and every
attention hook's activations within float32 rounding (2e-6 of the tensor's largest magnitude:
the decode path multiplies per head, TransformerLens one matrix for all heads), and the same
effect of a hook that edits rotated keys.

The reference decodes through TransformerLens' own cache and attention forward
(``activations.new_kv_cache`` without ``max_len``), the decode path through
:class:`~unlearn_interp.backend_decode.BufferedEntry` entries with step tables (``max_len``
given, on a model with the toolkit's attention). Two families of tiny random checkpoints:
``llama`` (rotary, 4 query heads over 2 K/V heads) and ``gpt2`` (learned positions,
multi-head), at batch 1 and at batch 8 with left padding. A model with TransformerLens' own
attention (a user's HookedTransformer) decodes on buffered entries without rotation.

    python -m pytest tests/test_backend_decode.py -q
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import peaked_checkpoint_model
from transformer_lens.components import AbstractAttention

from unlearn_interp import activations, backend_components, backend_decode, data, models
from unlearn_interp.variants import hooks_installed

RELATIVE = 2e-6  # largest difference over the reference's largest magnitude


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The largest elementwise difference relative to the reference's largest magnitude."""
    return ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)).item()


N_STEPS = 6
ATTENTION_HOOKS = ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores",
                   "hook_pattern", "hook_z"]  # fmt: skip


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tmp_path_factory, tokenizer):
    """A tiny checkpoint with weights drawn large enough that attention is far from uniform."""
    path = tmp_path_factory.mktemp(request.param)
    return peaked_checkpoint_model(request.param, path, tokenizer, seed=5)


def prompts(batch_size: int) -> data.Batch:
    """``batch_size`` prompts of different lengths (3 to 10 tokens), left-padded."""
    generator = torch.Generator().manual_seed(batch_size)
    lengths = [10] if batch_size == 1 else [3 + (i * 5) % 8 for i in range(batch_size)]
    ids = [torch.randint(1, 200, (n,), generator=generator).tolist() for n in lengths]
    return data.left_pad(ids, 0)


@torch.no_grad()
def decode(model, batch: data.Batch, own_path: bool, steps: int = N_STEPS, buffered=None):
    """Greedy decoding for ``steps`` steps: (tokens [batch, steps], logits per step);
    ``own_path``: on the decode path's cache, else on TransformerLens' own (``buffered``: a
    buffered cache all the same, default ``own_path``)."""
    n = batch.tokens.shape[0]
    buffered = own_path if buffered is None else buffered
    max_len = batch.tokens.shape[1] + steps if buffered else None
    cache = activations.new_kv_cache(model, n, max_len=max_len)
    assert on_decode_path(cache) == own_path
    step, mask, chosen, logits = batch.tokens, batch.attention_mask, [], []
    for _ in range(steps):
        resid = activations.decode_step(model, step, mask, cache)
        logits.append(activations.unembed(model, resid[:, -1:])[:, 0])
        chosen.append(logits[-1].argmax(-1))
        step, mask = chosen[-1][:, None], torch.ones_like(chosen[-1][:, None])
    return torch.stack(chosen, dim=1), logits


def on_decode_path(cache) -> bool:
    """Whether ``cache``'s entries are the decode path's (buffered, with step tables)."""
    tables = [getattr(e, "tables", None) for e in cache.entries]
    assert len({id(t) for t in tables}) == 1  # every layer shares one step's tables (or None)
    return tables[0] is not None


def test_models_are_supported(model):
    assert backend_decode.supports(model)
    assert backend_components.uses_toolkit_decoding(model)
    cache = activations.new_kv_cache(model, 2, max_len=8)
    assert all(isinstance(e, backend_decode.BufferedEntry) for e in cache.entries)
    assert on_decode_path(cache)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_tokens_and_logits_equal_transformer_lens(model, batch_size):
    batch = prompts(batch_size)
    tokens, logits = decode(model, batch, own_path=True)
    reference_tokens, reference_logits = decode(model, batch, own_path=False)
    assert torch.equal(tokens, reference_tokens)
    for ours, theirs in zip(logits, reference_logits, strict=True):
        assert relative_difference(ours, theirs) <= RELATIVE


def recorder(seen: list):
    def record(activation, hook):
        seen.append((hook.name, activation.detach().clone()))

    return record


def attention_hook_names(model) -> list[str]:
    return [
        name
        for name in model.hook_dict
        if ".attn." in name and name.rsplit(".", 1)[-1] in ATTENTION_HOOKS
    ]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_every_attention_hook_sees_the_same(model, batch_size):
    batch = prompts(batch_size)
    names = attention_hook_names(model)
    assert len(names) == 3 * (8 if "blocks.0.attn.hook_rot_k" in names else 6)
    views = {}
    for own_path in (True, False):
        seen = views[own_path] = []
        with hooks_installed(model, [(name, recorder(seen)) for name in names]):
            decode(model, batch, own_path, steps=4)
    assert [name for name, _ in views[True]] == [name for name, _ in views[False]]
    assert len(views[True]) == len(names) * 4
    for (name, ours), (_, theirs) in zip(views[True], views[False], strict=True):
        assert ours.shape == theirs.shape, name
        finite = theirs.isfinite()
        assert torch.equal(ours.isfinite(), finite), name
        assert relative_difference(ours[finite], theirs[finite]) <= RELATIVE, name


def shrink_old_keys(keys, hook):
    """Edits rotated keys in place: every position but the newest is scaled down."""
    keys[:, :-1] *= 0.25
    return keys


def test_a_hook_editing_rotated_keys_acts_the_same(model):
    if "blocks.0.attn.hook_rot_k" not in model.hook_dict:
        pytest.skip("no rotary embedding: there is no hook_rot_k")
    batch = prompts(8)
    hooks = [(f"blocks.{layer}.attn.hook_rot_k", shrink_old_keys) for layer in range(3)]
    with hooks_installed(model, hooks):
        tokens, logits = decode(model, batch, own_path=True)
        reference_tokens, reference_logits = decode(model, batch, own_path=False)
    _, unhooked = decode(model, batch, own_path=True)
    assert torch.equal(tokens, reference_tokens)
    for ours, theirs in zip(logits, reference_logits, strict=True):
        assert relative_difference(ours, theirs) <= RELATIVE
    assert max((a - b).abs().max().item() for a, b in zip(logits, unhooked, strict=True)) > 0.1


@torch.no_grad()
def test_cached_keys_are_transformer_lens_rotation(model):
    """The decode cache holds what TransformerLens' ``apply_rotary`` makes of its own cache's
    (unrotated) keys: rotated once equals rotated again."""
    batch = prompts(8)
    plain = activations.new_kv_cache(model, 8)
    ours = activations.new_kv_cache(model, 8, max_len=batch.tokens.shape[1] + 1)
    for cache in (plain, ours):
        activations.decode_step(model, batch.tokens, batch.attention_mask, cache)
        activations.decode_step(
            model, batch.tokens[:, :1], torch.ones_like(batch.tokens[:, :1]), cache
        )
    attn = next(m for m in model.modules() if isinstance(m, AbstractAttention))
    keys = plain.entries[0].past_keys
    if "blocks.0.attn.hook_rot_k" in model.hook_dict:
        keys = attn.apply_rotary(keys, 0, plain.previous_attention_mask)
    assert torch.equal(ours.entries[0].past_keys, keys)
    assert torch.equal(ours.entries[0].past_values, plain.entries[0].past_values)


@torch.no_grad()
def test_cache_rows_continue_like_transformer_lens(model):
    batch = prompts(8)
    plain = activations.new_kv_cache(model, 8)
    ours = activations.new_kv_cache(model, 8, max_len=batch.tokens.shape[1] + 1)
    for cache in (plain, ours):
        activations.decode_step(model, batch.tokens, batch.attention_mask, cache)
    rows = [6, 6, 1]
    step = torch.tensor([[4], [9], [11]])
    a = activations.decode_step(
        model, step, torch.ones_like(step), activations.kv_cache_rows(ours, rows)
    )
    b = activations.decode_step(
        model, step, torch.ones_like(step), activations.kv_cache_rows(plain, rows)
    )
    assert relative_difference(a, b) <= RELATIVE


def test_overflowing_the_buffer_concatenates(model):
    batch = prompts(8)
    with torch.no_grad():
        cache = activations.new_kv_cache(model, 8, max_len=3)  # the prompt alone overflows it
    step, mask = batch.tokens, batch.attention_mask
    with torch.no_grad():
        first = activations.decode_step(model, step, mask, cache)
        reference = activations.decode_step(model, step, mask, activations.new_kv_cache(model, 8))
    assert cache.entries[0].past_keys.shape[1] == batch.tokens.shape[1]
    assert relative_difference(first, reference) <= RELATIVE


def test_an_unsupported_feature_decodes_through_transformer_lens(model):
    model.set_use_attn_result(True)
    try:
        assert not backend_decode.supports(model)
        assert not backend_components.uses_toolkit_decoding(model)
        assert not on_decode_path(activations.new_kv_cache(model, 2, max_len=8))
    finally:
        model.set_use_attn_result(False)
    assert backend_components.uses_toolkit_decoding(model)


def test_transformer_lens_attention_decodes_on_buffered_entries_without_rotation(model):
    """A model with TransformerLens' own attention (a user's HookedTransformer) gets buffered
    entries that TransformerLens' forward reads: the same tokens and logits."""
    theirs = backend_components.use_transformer_lens_components(copy.deepcopy(model))
    assert not backend_components.uses_toolkit_decoding(theirs)
    cache = activations.new_kv_cache(theirs, 2, max_len=8)
    assert all(isinstance(e, backend_decode.BufferedEntry) for e in cache.entries)
    batch = prompts(8)
    tokens, logits = decode(theirs, batch, own_path=False, buffered=True)
    reference_tokens, reference_logits = decode(theirs, batch, own_path=False)
    ours_tokens, _ = decode(model, batch, own_path=True)
    assert torch.equal(tokens, reference_tokens) and torch.equal(tokens, ours_tokens)
    assert all(torch.equal(a, b) for a, b in zip(logits, reference_logits, strict=True))


def test_the_decode_cache_refuses_masks_it_does_not_implement(model):
    cache = activations.new_kv_cache(model, 1, max_len=4)
    x = torch.zeros(1, 1, models.d_model(model))
    attn = model.blocks[0].attn
    with pytest.raises(ValueError, match="additive_attention_mask"):
        attn(x, x, x, cache.entries[0], torch.zeros(1, 1, 1, 1))


def test_inert_on_an_untested_transformer_lens(model, monkeypatch):
    monkeypatch.setattr(backend_components, "backend_version", lambda: "3.99.0")
    fresh = backend_components.use_toolkit_components(
        backend_components.use_transformer_lens_components(copy.deepcopy(model))
    )
    assert not backend_components.uses_toolkit_decoding(fresh)
    assert not on_decode_path(activations.new_kv_cache(fresh, 2, max_len=8))
    assert AbstractAttention.forward.__module__ == "transformer_lens.components.abstract_attention"
