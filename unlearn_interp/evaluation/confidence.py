"""How sure the model is, and how well it still models ordinary text.

* :func:`max_logit`: Adaptive RMU's token confidence, the largest logit at each of ``k``
  greedy steps per question.
* :func:`next_token_entropy`: entropy and largest logit of the next-token distribution after
  each prompt, one forward pass each.
* :func:`retain_loss`: mean next-token cross-entropy over a corpus, padding masked out.

    >>> max_logit(model, wmdp_items, k=30).max_logit.mean()           # doctest: +SKIP
    >>> retain_loss(model, wiki[:200])                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from unlearn_interp import activations, data, models
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.generation import generate
from unlearn_interp.evaluation.mcq import qa_prompt
from unlearn_interp.evaluation.scoring import chunks, prefix_token_id, tok_encode
from unlearn_interp.models import Model
from unlearn_interp.variants import Hook, hooks_installed


def _prompt_texts(
    items_or_prompts: Sequence[MCQItem | str], subject: str | None, prompt_template: str | None
) -> list[str]:
    """Questions as prompts: letter-format prompts, or ``prompt_template`` when given."""
    if not items_or_prompts:
        raise UnlearnInterpError("need at least one question or prompt")
    texts = []
    for x in items_or_prompts:
        if isinstance(x, str):
            texts.append(x)
        elif prompt_template is None:
            texts.append(data.mcq_prompt(x, subject))
        else:
            texts.append(qa_prompt(x, prompt_template, subject))
    return texts


def max_logit(
    model: Model,
    items_or_prompts: Sequence[MCQItem | str],
    k: int = 30,
    *,
    batch_size: int = 16,
    fwd_hooks: Sequence[Hook] = (),
    subject: str | None = None,
    prompt_template: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Token confidence as Adaptive RMU measures it: generate ``k`` tokens greedily per question
    and record, at every step, the largest logit (MaxLogit) and the entropy of the next-token
    distribution. One row per (question, step): ``item``, ``step``, ``token``, ``max_logit``,
    ``entropy``. MCQ items are prompted in the letter format unless ``prompt_template`` is given;
    plain strings are used as they are (no chat template).

    >>> df = max_logit(model, wmdp_items, k=30)                       # doctest: +SKIP
    >>> df.max_logit.mean(), df.groupby("item").max_logit.mean()      # doctest: +SKIP
    """
    texts = _prompt_texts(items_or_prompts, subject, prompt_template)
    gen = generate(
        model,
        texts,
        k,
        batch_size=batch_size,
        use_chat_template=False,
        stop_at_eos=False,
        fwd_hooks=fwd_hooks,
        progress=progress,
    )
    rows = [
        {"item": i, "step": s, "token": t, "max_logit": m, "entropy": e}
        for i in range(len(texts))
        for s, (t, m, e) in enumerate(
            zip(gen.tokens[i], gen.max_logits[i], gen.entropies[i], strict=True)
        )
    ]
    return pd.DataFrame(rows)


def next_token_entropy(
    model: Model,
    items_or_prompts: Sequence[MCQItem | str],
    *,
    batch_size: int = 16,
    fwd_hooks: Sequence[Hook] = (),
    subject: str | None = None,
    prompt_template: str | None = None,
    add_bos: bool | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Entropy (nats) and largest logit of the next-token distribution after each prompt, one
    forward pass each: columns ``item``, ``entropy``, ``max_logit``. Take ``.entropy.mean()``
    for the mean next-token entropy.

    >>> next_token_entropy(model, wmdp_items).entropy.mean()          # doctest: +SKIP
    """
    texts = _prompt_texts(items_or_prompts, subject, prompt_template)
    activations.check_batch_size(batch_size)
    ids = tok_encode(model.tokenizer, texts, add_bos, prefix_token_id(model.tokenizer))
    pad_id, n_ctx = data.pad_token_id(model.tokenizer), models.n_ctx(model)
    entropy, top = np.zeros(len(texts)), np.zeros(len(texts))
    with torch.no_grad(), hooks_installed(model, fwd_hooks):
        for chunk in chunks(list(range(len(texts))), batch_size):
            batch = data.left_pad([ids[i][-n_ctx:] for i in chunk], pad_id)
            logits = _last_logits(model, batch)
            logprobs = logits.log_softmax(-1)
            entropy[chunk] = (-(logprobs.exp() * logprobs).sum(-1)).double().cpu().numpy()
            top[chunk] = logits.max(-1).values.double().cpu().numpy()
    return pd.DataFrame({"item": range(len(texts)), "entropy": entropy, "max_logit": top})


def _last_logits(model: Model, batch: data.Batch) -> Float[Tensor, "batch d_vocab"]:
    """Float32 logits at each (left-padded) row's last position."""
    batch = batch.to(models.model_device(model))
    resid = activations.run_blocks(model, batch.tokens, attention_mask=batch.attention_mask)
    return activations.unembed(model, resid[:, -1:])[:, 0].float()


def retain_loss(
    model: Model,
    corpus: Sequence[str],
    max_len: int = 512,
    *,
    batch_size: int = 8,
    fwd_hooks: Sequence[Hook] = (),
    progress: bool = True,
) -> float:
    """Mean next-token cross-entropy (nats per token) over ``corpus``: every real token after the
    first of each document counts once (padding masked out), accumulated in float64. Documents
    are truncated to ``max_len`` tokens.

    >>> retain_loss(model, wiki[:200])                                # doctest: +SKIP
    """
    if not corpus:
        raise UnlearnInterpError("retain_loss needs at least one document")
    activations.check_batch_size(batch_size)
    order = sorted(corpus, key=len, reverse=True)
    max_len = min(max_len, models.n_ctx(model))
    total, count = torch.zeros((), dtype=torch.float64), 0
    bar = tqdm(total=len(order), desc="retain loss", unit="doc", disable=None if progress else True)
    with torch.no_grad(), hooks_installed(model, fwd_hooks), bar:
        for texts in chunks(order, batch_size):
            batch = data.encode_batch(model.tokenizer, texts, max_len=max_len)
            batch = batch.to(models.model_device(model))
            nll = _token_nll(model, batch)
            keep = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
            total += nll[keep].double().sum().cpu()
            count += int(keep.sum())
            bar.update(len(texts))
    if count == 0:
        raise UnlearnInterpError("the corpus has no document of two or more tokens to score")
    return float(total / count)


def _token_nll(model: Model, batch: data.Batch) -> Float[Tensor, "batch pos_minus_1"]:
    logits = activations.logits(model, batch)[:, :-1]
    logprobs = logits.float().log_softmax(-1)
    return -logprobs.gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)


__all__ = ["max_logit", "next_token_entropy", "retain_loss"]
