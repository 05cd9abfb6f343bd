"""Generation with a KV cache: continuations of prompts, and each variant's side by side.

:func:`generate` tokenises with the tokenizer itself (through its chat template when it has
one), decodes greedily by default and records the largest logit and the entropy of every step
(what :func:`~unlearn_interp.evaluation.max_logit` reads). :func:`compare_generations` runs it
under each variant.

    >>> generate(model, ["The capital of France is"], max_new_tokens=5).texts    # doctest: +SKIP
    >>> compare_generations(model, [base, rmu, ablated], hazardous_prompts)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from unlearn_interp import activations, data, models
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Hook, Variant, hooks_installed

log = logging.getLogger(__name__)


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool | None
) -> tuple[str, bool]:
    """``(text, add_special_tokens)``: ``prompt`` as a user turn of the tokenizer's chat template
    when it has one (and ``use_chat_template`` is not False), else ``prompt`` as is. A rendered
    template already holds its BOS, so no special tokens are added to it again."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template and not has_template:
        raise UnlearnInterpError("the tokenizer has no chat template (use_chat_template=True)")
    if has_template and use_chat_template is not False:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text), False
    return prompt, True


@dataclasses.dataclass(frozen=True)
class Generation:
    """Greedy (or sampled) continuations of a batch of prompts and what each step looked like.

    ``tokens[i]``: generated ids of prompt ``i`` (up to and including EOS); ``max_logits[i]`` /
    ``entropies[i]``: the largest logit and the entropy (nats) of the next-token distribution at
    each generated step."""

    texts: list[str]
    tokens: list[list[int]]
    max_logits: list[list[float]]
    entropies: list[list[float]]


@dataclasses.dataclass(frozen=True)
class _Sampling:
    """How the next token is chosen and when a row stops."""

    greedy: bool
    temperature: float
    generator: torch.Generator
    stop_at_eos: bool


def generate(
    model: Model,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    use_chat_template: bool | None = None,
    stop_at_eos: bool = True,
    fwd_hooks: Sequence[Hook] = (),
    progress: bool = True,
) -> Generation:
    """Continue each prompt by ``max_new_tokens`` tokens (greedy by default), with a KV cache.

    Prompts are tokenised by the tokenizer itself (through its chat template when it has one,
    unless ``use_chat_template=False``), never by the backend's own tokenising helpers.
    Prompts too long for the context keep their last tokens.

    >>> generate(model, ["The capital of France is"], max_new_tokens=5).texts    # doctest: +SKIP
    """
    if not prompts:
        raise UnlearnInterpError("generate needs at least one prompt")
    activations.check_batch_size(batch_size)
    keep = _prompt_room(model, max_new_tokens)
    tokenizer = model.tokenizer
    encoded = [chat_prompt(tokenizer, p, use_chat_template) for p in prompts]
    ids = [tokenizer(text, add_special_tokens=special)["input_ids"] for text, special in encoded]
    generator = torch.Generator(device=models.model_device(model)).manual_seed(seed)
    sampling = _Sampling(greedy, temperature, generator, stop_at_eos)
    if any(len(i) > keep for i in ids):
        log.warning(
            "some prompts do not fit the model's %d-token context with %d new tokens; "
            "their first tokens are cut (only the last %d are kept)",
            models.n_ctx(model),
            max_new_tokens,
            keep,
        )
    out = Generation([], [], [], [])
    bar = tqdm(total=len(ids), desc="generating", unit="prompt", disable=None if progress else True)
    with torch.no_grad(), hooks_installed(model, fwd_hooks), bar:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = data.left_pad([i[-keep:] for i in chunk], data.pad_token_id(tokenizer))
            tokens, max_logits, entropies = _decode(model, batch, max_new_tokens, sampling)
            out.tokens.extend(tokens)
            out.max_logits.extend(max_logits)
            out.entropies.extend(entropies)
            bar.update(len(chunk))
    out.texts.extend(tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens)
    return out


def _prompt_room(model: Model, max_new_tokens: int) -> int:
    """How many prompt tokens fit the context beside ``max_new_tokens`` new ones."""
    n_ctx = models.n_ctx(model)
    if max_new_tokens < 1:
        raise UnlearnInterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_new_tokens >= n_ctx:
        raise UnlearnInterpError(
            f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's "
            f"{n_ctx}-token context"
        )
    return n_ctx - max_new_tokens


def _next_token(
    logits: Float[Tensor, "batch d_vocab"], sampling: _Sampling
) -> tuple[Int[Tensor, " batch"], Float[Tensor, " batch"]]:
    """The chosen token of each row and the entropy (nats) of its next-token distribution
    (``entr(p) = -p log p`` is 0 where ``p`` is 0, so a logit of -inf adds nothing)."""
    probs = logits.softmax(-1)
    entropy = torch.special.entr(probs).sum(-1)
    if sampling.greedy:
        return logits.argmax(-1), entropy
    if sampling.temperature != 1.0:
        probs = (logits / sampling.temperature).softmax(-1)
    chosen = torch.multinomial(probs, 1, generator=sampling.generator).squeeze(-1)
    return chosen, entropy


def _decode(
    model: Model, batch: data.Batch, max_new_tokens: int, sampling: _Sampling
) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
    """The decoding loop on one left-padded batch, reusing keys and values between steps."""
    device = models.model_device(model)
    batch = batch.to(device)
    n = batch.tokens.shape[0]
    cache = activations.new_kv_cache(model, n, max_len=batch.tokens.shape[1] + max_new_tokens)
    eos = model.tokenizer.eos_token_id
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    steps: list[tuple[Tensor, ...]] = []  # per step: chosen, max logit, entropy, alive  [n] each
    step_input, mask = batch.tokens, batch.attention_mask
    for _ in range(max_new_tokens):
        resid = activations.decode_step(model, step_input, mask, cache)
        logits = activations.unembed(model, resid[:, -1:])[:, 0].float()  # [n, d_vocab]
        chosen, entropy = _next_token(logits, sampling)
        steps.append((chosen, logits.amax(-1), entropy, ~finished))
        if sampling.stop_at_eos and eos is not None:
            finished = finished | (chosen == eos)
        if bool(finished.all()):
            break
        step_input = chosen[:, None]
        mask = torch.ones_like(step_input)
    chosen, top, entropy, alive = (torch.stack(x, dim=1).cpu() for x in zip(*steps, strict=True))
    return (
        [chosen[i][alive[i]].tolist() for i in range(n)],
        [top[i][alive[i]].tolist() for i in range(n)],
        [entropy[i][alive[i]].tolist() for i in range(n)],
    )


def compare_generations(
    model: Model,
    variants: Sequence[Variant],
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    greedy: bool = True,
    **generate_kwargs,
) -> pd.DataFrame:
    """Each prompt's continuation under each variant, side by side: one row per prompt, column
    ``prompt`` and one column per variant name.

    >>> compare_generations(model, [base, rmu, ablated], hazardous_prompts)   # doctest: +SKIP
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or "prompt" in names:
        raise UnlearnInterpError(f"variant names must be unique and not 'prompt', got {names}")
    table = pd.DataFrame({"prompt": list(prompts)})
    for variant in variants:
        with variant.applied(model):
            table[variant.name] = generate(
                model, prompts, max_new_tokens, greedy=greedy, **generate_kwargs
            ).texts
    return table


__all__ = ["Generation", "chat_prompt", "compare_generations", "generate"]
