"""Generation's decoding loop: the same tokens, largest logits and entropies as the loop it
replaced (TransformerLens's concatenating cache, log-softmax entropy), greedy and sampled;
sampled runs reproducible for a seed; hooks steer it; the buffered key-value cache."""

from __future__ import annotations

import pytest
import torch
from conftest import peaked_checkpoint_model

from unlearn_interp import activations, data, evaluation, models
from unlearn_interp.evaluation.generation import chat_prompt
from unlearn_interp.interventions import add_vector_hook

PROMPTS = ["The quick brown fox jumps", "A", "Residual streams carry", "Which gene"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tmp_path_factory, tokenizer):
    """A tiny checkpoint (llama: rotary, grouped-query attention) with weights drawn large
    enough that the next-token distributions are far from uniform."""
    path = tmp_path_factory.mktemp(request.param)
    return peaked_checkpoint_model(request.param, path, tokenizer, seed=3)


@torch.no_grad()
def reference_generation(model, prompts, n, greedy=True, temperature=1.0, seed=0):
    """The loop as it was before: TransformerLens's own (concatenating) cache, entropy from
    the log-softmax, sampling from ``softmax(logits / temperature)``; no EOS stop."""
    tok = model.tokenizer
    ids = [
        tok(t, add_special_tokens=s)["input_ids"]
        for t, s in (chat_prompt(tok, p, None) for p in prompts)
    ]
    batch = data.left_pad(ids, data.pad_token_id(tok))
    cache = activations.new_kv_cache(model, len(prompts))
    generator = torch.Generator().manual_seed(seed)
    step_input, mask, steps = batch.tokens, batch.attention_mask, []
    for _ in range(n):
        resid = activations.decode_step(model, step_input, mask, cache)
        logits = activations.unembed(model, resid[:, -1:])[:, 0].float()
        logprobs = logits.log_softmax(-1)
        if greedy:
            chosen = logits.argmax(-1)
        else:
            probs = (logits / temperature).softmax(-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        steps.append((chosen, logits.amax(-1), -(logprobs.exp() * logprobs).sum(-1)))
        step_input, mask = chosen[:, None], torch.ones_like(chosen[:, None])
    return [torch.stack(x, dim=1).tolist() for x in zip(*steps, strict=True)]


def run(model, n=7, **kwargs):
    return evaluation.generate(model, PROMPTS, n, stop_at_eos=False, progress=False, **kwargs)


@pytest.mark.parametrize(("greedy", "temperature"), [(True, 1.0), (False, 1.0), (False, 0.7)])
def test_generation_equals_the_loop_it_replaced(model, greedy, temperature):
    gen = run(model, greedy=greedy, temperature=temperature, seed=5)
    tokens, top, entropy = reference_generation(model, PROMPTS, 7, greedy, temperature, seed=5)
    assert gen.tokens == tokens
    assert torch.tensor(gen.max_logits).sub(torch.tensor(top)).abs().max() <= 1e-5
    assert torch.tensor(gen.entropies).sub(torch.tensor(entropy)).abs().max() <= 1e-4
    assert min(min(e) for e in gen.entropies) > 0.05  # not degenerate: the values are compared


def test_batching_does_not_change_greedy_tokens(model):
    assert run(model, batch_size=1).tokens == run(model, batch_size=4).tokens


def test_sampled_generation_is_reproducible_for_a_seed(model):
    first, again = run(model, greedy=False, seed=11), run(model, greedy=False, seed=11)
    other = run(model, greedy=False, seed=12)
    assert first.tokens == again.tokens and first.entropies == again.entropies
    assert first.tokens != other.tokens


def test_a_hook_changes_the_generation_and_is_removed(model):
    push = add_vector_hook(
        torch.randn(models.d_model(model), generator=torch.Generator().manual_seed(0)) * 30
    )
    plain = run(model)
    steered = run(model, fwd_hooks=[("blocks.0.hook_resid_post", push)])
    assert steered.tokens != plain.tokens
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert run(model).tokens == plain.tokens


def test_a_token_banned_by_a_hook_is_never_chosen_and_entropy_stays_finite(model):
    banned = run(model).tokens[0][0]

    def ban(logits, hook):
        logits[..., banned] = -torch.inf
        return logits

    gen = run(model, fwd_hooks=[("unembed.hook_out", ban)])
    assert all(banned not in t for t in gen.tokens)
    assert all(torch.isfinite(torch.tensor(e)).all() for e in gen.entropies)


@torch.no_grad()
@pytest.mark.parametrize("max_len", [3, 12])
def test_buffered_cache_gives_what_the_concatenating_one_gives(model, max_len):
    """Past ``max_len`` (3: the prompt alone overflows it) it concatenates instead."""
    batch = data.left_pad([[5, 6, 7, 8], [9, 10]], 0)
    plain, buffered = (
        activations.new_kv_cache(model, 2),
        activations.new_kv_cache(model, 2, max_len),
    )
    step, mask = batch.tokens, batch.attention_mask
    for _ in range(4):
        a = activations.decode_step(model, step, mask, plain)
        b = activations.decode_step(model, step, mask, buffered)
        assert torch.equal(a, b)
        step = a[:, -1].abs().argmax(-1, keepdim=True) % 50
        mask = torch.ones_like(step)
    # keys: the toolkit's decode path stores them rotated (tests/test_backend_decode.py compares)
    assert torch.equal(buffered.entries[0].past_values, plain.entries[0].past_values)
    rows = activations.kv_cache_rows(buffered, [1, 1])
    assert torch.equal(rows.entries[-1].past_values[0], plain.entries[-1].past_values[1])
