"""Evaluation: multiple-choice accuracy exactly as lm-evaluation-harness scores it, the gap
ablation recovers, side-by-side generations, confidence (MaxLogit, entropy) and retain loss.

* :func:`mcq_accuracy` ``mode="letter"`` is lm-evaluation-harness's zero-shot ``wmdp_*`` /
  ``mmlu_*`` task: prompt from :func:`data.mcq_prompt`, continuations `` A`` .. `` D`` tokenised
  the way its ``HFLM`` does (``_encode_pair``, BOS as the tokenizer adds it), highest
  log-likelihood wins. When every letter is one token (every common tokenizer) the four scores
  come from **one forward pass per question**, batched with left padding; otherwise the prompt
  runs once and each letter's remaining tokens on top of its cached keys and values (see
  :func:`score_requests`). Predictions equal the harness's item for item (tested).
* ``mode="continuation"``: each choice's text scored after a question prompt (sum of log-probs,
  and the byte-length-normalised variant, lm-evaluation-harness's ``acc_bytes``), for models that
  never learned the letter format (the model organism). The prompt runs once per question, the
  choices' tokens on top of its KV cache; the scores equal the harness's one sequence per choice
  (tested).
* :func:`gap_recovered`, :func:`compare_generations`, :func:`generate`, :func:`max_logit`,
  :func:`next_token_entropy`, :func:`retain_loss`.

Every scoring function takes ``fwd_hooks`` and also works inside ``Variant.applied(model)``::

    for v in (base, rmu, ablated):
        with v.applied(model):
            acc[v.name] = mcq_accuracy(model, items).accuracy
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import (
    HookedTransformer,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
)
from transformers import PreTrainedTokenizerBase

from unlearn_interp import data
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Hook, Variant

log = logging.getLogger(__name__)
T = TypeVar("T")

MODES = ("letter", "continuation")

# lm-evaluation-harness's default target delimiter: " A" after "Answer:", " Paris" after "Answer:".
TARGET_DELIMITER = " "
# Continuation-mode prompt; the organism's pretraining text asks questions this way too.
QA_TEMPLATE = "Question: {question}\nAnswer:"
# lm-evaluation-harness's ``mmlu_*_continuation`` tasks (pass as ``prompt_template``).
MMLU_CONTINUATION_TEMPLATE = (
    "The following are questions (with answers) about {subject}.\n\n" + QA_TEMPLATE
)

# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MCQResult:
    """Accuracy on a list of questions, with the evidence.

    ``per_item``: one row per question (``item``, ``subject``, ``answer``, ``predicted``,
    ``correct``, ``logprob_A`` ..; continuation mode adds ``predicted_norm``, ``correct_norm``
    and ``logprob_norm_A`` ..). ``per_subject``: ``subject``, ``n``, ``accuracy`` (and
    ``accuracy_norm``). ``accuracy_norm`` is the byte-length-normalised accuracy (continuation
    mode only).
    """

    accuracy: float
    n: int
    per_item: pd.DataFrame
    per_subject: pd.DataFrame
    mode: str
    accuracy_norm: float | None = None


# ---------------------------------------------------------------------------------------------
# Multiple-choice accuracy
# ---------------------------------------------------------------------------------------------


def mcq_accuracy(
    model: HookedTransformer,
    items: Sequence[MCQItem],
    mode: str = "letter",
    batch_size: int = 16,
    fwd_hooks: Sequence[Hook] = (),
    subject: str | None = None,
    progress: bool = True,
    *,
    prompt_template: str = QA_TEMPLATE,
    add_bos: bool | None = None,
) -> MCQResult:
    """Zero-shot multiple-choice accuracy of ``model`` on ``items``.

    ``mode="letter"``: lm-evaluation-harness's WMDP/MMLU task (see the module docstring);
    ``subject`` overrides the items' own for the description line. ``mode="continuation"``:
    each choice (after a space) scored as a continuation of ``prompt_template`` (fields
    ``{question}`` and ``{subject}``; :data:`MMLU_CONTINUATION_TEMPLATE` reproduces the
    harness's ``mmlu_*_continuation`` tasks).

    ``add_bos``: ``None`` tokenises as the tokenizer does by default, as lm-evaluation-harness
    does since it delegated BOS to the tokenizer (PR #3347, October 2025, release 0.4.10; tested
    against 0.4.13); ``False`` never prepends BOS, as earlier releases (those that produced the
    2024 WMDP and MMLU numbers) did unless run with ``add_bos_token=True``; ``True`` always
    does. For a Llama/Mistral tokenizer (Zephyr) the two defaults differ by one BOS token.
    ``batch_size`` counts sequences per forward pass (one per question in letter mode).
    Log-probabilities are computed in float32 whatever the model's dtype.

    >>> res = mcq_accuracy(model, load_mcq("wmdp_bio.jsonl"))                 # doctest: +SKIP
    >>> res.accuracy, res.per_item[["answer", "predicted", "logprob_A"]]       # doctest: +SKIP
    >>> mcq_accuracy(org.model, org.hazardous_mcq, mode="continuation").accuracy  # doctest: +SKIP
    """
    if not items:
        raise UnlearnInterpError("mcq_accuracy needs at least one question")
    if mode not in MODES:
        raise UnlearnInterpError(f"mode must be 'letter' or 'continuation', got {mode!r}")
    _check_batch_size(batch_size)
    if mode == "letter":
        contexts = [data.mcq_prompt(item, subject) for item in items]
        choices = [[TARGET_DELIMITER + letter for letter in item.letters] for item in items]
    else:
        contexts = [qa_prompt(item, prompt_template, subject) for item in items]
        choices = [[TARGET_DELIMITER + choice for choice in item.choices] for item in items]
    requests = encode_requests(model.tokenizer, contexts, choices, add_bos=add_bos)
    with _hooks(model, fwd_hooks):
        scores = score_requests(model, requests, batch_size=batch_size, progress=progress)
    return _mcq_result(items, scores, mode, subject)


def qa_prompt(item: MCQItem, template: str = QA_TEMPLATE, subject: str | None = None) -> str:
    """``template`` filled with the item's stripped question and its subject (spaces for
    underscores).

    >>> qa_prompt(MCQItem("Capital of France?", ["Paris", "Rome"], 0))
    'Question: Capital of France?\\nAnswer:'
    """
    subject = subject if subject is not None else item.subject
    if "{subject}" in template and not subject:
        raise UnlearnInterpError(
            f"prompt_template uses {{subject}} but question {item.question[:40]!r} has none"
        )
    try:
        return template.format(
            question=item.question.strip(), subject=data.subject_text(subject or "")
        )
    except (KeyError, IndexError, ValueError) as err:
        raise UnlearnInterpError(
            f"prompt_template {template!r} has a field other than {{question}} and {{subject}} ({err})"
        ) from err


def _mcq_result(
    items: Sequence[MCQItem], scores: Sequence[np.ndarray], mode: str, subject: str | None
) -> MCQResult:
    rows = []
    for index, (item, lls) in enumerate(zip(items, scores, strict=True)):
        row = {
            "item": index,
            "subject": subject if subject is not None else (item.subject or ""),
            "answer": item.answer,
            "predicted": int(np.argmax(lls)),  # first maximum on ties, as the harness's np.argmax
        }
        row["correct"] = row["predicted"] == item.answer
        row.update(
            {f"logprob_{letter}": float(v) for letter, v in zip(item.letters, lls, strict=True)}
        )
        if mode == "continuation":
            n_bytes = np.array([max(1, len(c.encode("utf-8"))) for c in item.choices], dtype=float)
            normed = np.asarray(lls) / n_bytes
            row["predicted_norm"] = int(np.argmax(normed))
            row["correct_norm"] = row["predicted_norm"] == item.answer
            row.update(
                {f"logprob_norm_{k}": float(v) for k, v in zip(item.letters, normed, strict=True)}
            )
        rows.append(row)
    per_item = pd.DataFrame(rows)
    aggregations = {"n": ("correct", "size"), "accuracy": ("correct", "mean")}
    if mode == "continuation":
        aggregations["accuracy_norm"] = ("correct_norm", "mean")
    per_subject = per_item.groupby("subject", sort=True).agg(**aggregations).reset_index()
    return MCQResult(
        accuracy=float(per_item["correct"].mean()),
        n=len(per_item),
        per_item=per_item,
        per_subject=per_subject,
        mode=mode,
        accuracy_norm=float(per_item["correct_norm"].mean()) if mode == "continuation" else None,
    )


def evaluate_variants(
    model: HookedTransformer,
    variants: Sequence[Variant],
    tasks: Mapping[str, Sequence[MCQItem]],
    mode: str = "letter",
    batch_size: int = 16,
    progress: bool = True,
    **kwargs,
) -> pd.DataFrame:
    """Accuracy of every variant on every task: one row per (variant, task) with ``variant``,
    ``task``, ``n``, ``accuracy`` (and ``accuracy_norm`` in continuation mode). ``kwargs`` go to
    :func:`mcq_accuracy`.

    >>> evaluate_variants(model, [base, rmu, ablated], {"wmdp_bio": bio, "mmlu": mmlu})  # doctest: +SKIP
    """
    rows = []
    for variant in variants:
        with variant.applied(model):
            for task, items in tasks.items():
                res = mcq_accuracy(model, items, mode, batch_size, progress=progress, **kwargs)
                row = {"variant": variant.name, "task": task, "n": res.n, "accuracy": res.accuracy}
                if res.accuracy_norm is not None:
                    row["accuracy_norm"] = res.accuracy_norm
                rows.append(row)
                log.info("%s on %s: accuracy %.4f (n=%d)", variant.name, task, res.accuracy, res.n)
    return pd.DataFrame(rows)


def format_accuracy_table(table: pd.DataFrame) -> str:
    """:func:`evaluate_variants`' table as text: variants as rows, tasks as columns; with three
    or more variants, also the gap each later variant recovers between the first (base) and the
    second (unlearned).

    >>> print(format_accuracy_table(evaluate_variants(model, variants, tasks)))  # doctest: +SKIP
    """
    wide = table.pivot(index="variant", columns="task", values="accuracy")
    order = list(dict.fromkeys(table["variant"]))
    wide = wide.loc[order, list(dict.fromkeys(table["task"]))]
    if len(order) >= 3:
        base, unlearned = wide.loc[order[0]], wide.loc[order[1]]
        for name in order[2:]:
            wide.loc[f"gap recovered: {name}"] = [
                gap_recovered(b, u, x)
                for b, u, x in zip(base, unlearned, wide.loc[name], strict=True)
            ]
    wide.columns.name = None
    return wide.to_string(float_format=lambda v: f"{v:.4f}")


# ---------------------------------------------------------------------------------------------
# Log-likelihood requests, tokenised and scored as lm-evaluation-harness's HFLM does
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One question as token ids: its context and one continuation per choice."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    @property
    def shared(self) -> bool:
        """True when every continuation is one token: one forward pass scores all of them."""
        return all(len(c) == 1 for c in self.continuations)


def encode_requests(
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    *,
    add_bos: bool | None = None,
) -> list[Request]:
    """Tokenise (context, continuation) pairs exactly as lm-evaluation-harness's ``HFLM`` does.

    Its ``_encode_pair``: trailing whitespace of the context moves to the continuation; the
    continuation's ids are ``encode(context + continuation)[len(encode(context)):]``. Its
    ``tok_encode``: special tokens as the tokenizer adds them by default (or as ``add_bos``
    forces), none if the text already starts with the BOS string. An empty context becomes the
    BOS (else EOS) token.

    >>> encode_requests(tok, ["Q?\\nAnswer:"], [[" A", " B"]])[0].shared     # doctest: +SKIP
    True
    """
    prefix_id = _prefix_token_id(tokenizer)
    ctx_texts, whole_texts, shapes = [], [], []
    for context, conts in zip(contexts, continuations, strict=True):
        n_spaces = len(context) - len(context.rstrip())
        moved = context[len(context) - n_spaces :]
        ctx = context[: len(context) - n_spaces]
        ctx_texts.append(ctx)
        whole_texts += [ctx + moved + cont for cont in conts]
        shapes.append(len(conts))
    ctx_ids = _tok_encode(tokenizer, ctx_texts, add_bos, prefix_id)
    whole_ids = _tok_encode(tokenizer, whole_texts, add_bos, prefix_id)
    requests, start = [], 0
    for ctx, ctx_text, n in zip(ctx_ids, ctx_texts, shapes, strict=True):
        wholes = whole_ids[start : start + n]
        start += n
        if ctx_text == "":
            ctx = [prefix_id]
            conts = [w[1:] if w[:1] == [prefix_id] else w for w in wholes]
        else:
            conts = [w[len(ctx) :] for w in wholes]
        if any(len(c) == 0 for c in conts):
            raise UnlearnInterpError(
                f"a choice of the question starting {ctx_text[-60:]!r} tokenises to nothing"
            )
        requests.append(Request(tuple(ctx), tuple(tuple(c) for c in conts)))
    return requests


def _prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """lm-evaluation-harness's ``prefix_token_id``: BOS, else EOS."""
    token_id = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if token_id is None:
        raise UnlearnInterpError("the tokenizer has neither a BOS nor an EOS token")
    return int(token_id)


def _tok_encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], add_bos: bool | None, prefix_id: int
) -> list[list[int]]:
    """``HFLM.tok_encode`` for many texts at once (one tokenizer call per special-token setting)."""
    bos_text = tokenizer.decode(prefix_id)
    settings = [
        add_bos if add_bos is not None else (False if t.startswith(bos_text) else None)
        for t in texts
    ]
    out: list[list[int]] = [[] for _ in texts]
    for setting in set(settings):
        where = [i for i, s in enumerate(settings) if s == setting]
        kwargs = {} if setting is None else {"add_special_tokens": setting}
        encoded = tokenizer([texts[i] for i in where], **kwargs)["input_ids"]
        for i, ids in zip(where, encoded, strict=True):
            out[i] = list(ids)
    return out


@dataclasses.dataclass(frozen=True)
class _Row:
    """One sequence to run: its input ids and, for each of its last ``len(targets)`` positions,
    the token ids whose log-probabilities are wanted there."""

    request: int
    choice: int | None  # None: the row scores every choice of its request at once
    inputs: tuple[int, ...]
    targets: tuple[tuple[int, ...], ...]  # [n_positions][n_scored]


def _rows_for(index: int, request: Request, max_len: int) -> list[_Row]:
    """Inputs as the harness builds them: ``(context + continuation)[-(max_len+1):][:-1]``."""
    if request.shared:
        inputs = request.context[-max_len:]
        return [_Row(index, None, inputs, (tuple(c[0] for c in request.continuations),))]
    rows = []
    for k, cont in enumerate(request.continuations):
        inputs = (request.context + cont)[-(max_len + 1) :][:-1]
        rows.append(_Row(index, k, inputs, tuple((t,) for t in cont[-len(inputs) :])))
    return rows


def score_requests(
    model: HookedTransformer,
    requests: Sequence[Request],
    batch_size: int = 16,
    progress: bool = True,
    *,
    reuse_context: bool = True,
) -> list[np.ndarray]:
    """Summed log-probability of every continuation of every request, ``[n_choices]`` each,
    as lm-evaluation-harness's ``HFLM.loglikelihood`` computes it.

    Requests whose continuations are all single tokens take one sequence (one forward row).
    With ``reuse_context`` (the default) the others run their context once, keep its keys and
    values in a TransformerLens KV cache, and run only their continuations' tokens on top of it
    (:func:`_score_on_context_cache`). A request whose context must be truncated to fit
    ``n_ctx``, and every request with ``reuse_context=False``, takes one full sequence per
    continuation, the harness's own way (kept as the reference). Both agree to float rounding
    (tested to 1e-4 in float32). ``batch_size`` counts sequences per forward pass: contexts,
    continuations or full rows. Rows are sorted by length so batches pad little, and only the
    scored positions go through the unembedding.

    Hooks see a cached request in two passes: its context, then its continuations' tokens
    (right-padded rows). Hooks acting on every position alike (steering, ablation) give the
    same scores either way; a hook that indexes positions does not.

    >>> reqs = encode_requests(tok, ["Q: 2+2?\\nA:"], [[" four", " five"]])   # doctest: +SKIP
    >>> score_requests(model, reqs)[0]                # array([-3.1, -4.7])  # doctest: +SKIP
    """
    _check_batch_size(batch_size)
    max_len = int(model.cfg.n_ctx)
    if any(len(r.context) + 1 > max_len for r in requests):
        log.warning(
            "some prompts exceed the model's %d-token context; truncated on the left", max_len
        )
    cached = [
        i for i, r in enumerate(requests) if reuse_context and _fits_context_cache(r, max_len)
    ]
    in_cache = set(cached)
    rows = [
        row for i, r in enumerate(requests) if i not in in_cache for row in _rows_for(i, r, max_len)
    ]
    n_continuations = sum(len(c) > 1 for i in cached for c in requests[i].continuations)
    scores = [np.zeros(len(r.continuations)) for r in requests]
    total = len(rows) + len(cached) + n_continuations
    bar = tqdm(total=total, desc="scoring", unit="seq", disable=None if progress else True)
    with torch.no_grad(), bar:
        _score_rows(model, rows, scores, batch_size, bar)
        for chunk in _chunks(sorted(cached, key=lambda i: -len(requests[i].context)), batch_size):
            _score_on_context_cache(model, requests, chunk, scores, batch_size, bar)
    return scores


def _fits_context_cache(request: Request, max_len: int) -> bool:
    """True when the request is worth a context cache (some continuation is longer than one
    token) and its context plus every continuation but the last token fits ``max_len``
    untruncated, so that the harness's inputs are exactly ``context + continuation[:-1]``."""
    longest = max(len(c) for c in request.continuations)
    return longest > 1 and 0 < len(request.context) <= max_len + 1 - longest


def _score_rows(
    model: HookedTransformer,
    rows: list[_Row],
    scores: list[np.ndarray],
    batch_size: int,
    bar: tqdm,
) -> None:
    """Score full sequences (:func:`_rows_for`) into ``scores``, longest rows first."""
    pad_id = data.pad_token_id(model.tokenizer)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
    for chunk in _chunks(order, batch_size):
        batch = [rows[i] for i in chunk]
        logprobs = _last_logprobs(
            model,
            data.left_pad([r.inputs for r in batch], pad_id),
            max(len(r.targets) for r in batch),
        )
        values = _gather(logprobs, [r.targets for r in batch])  # [batch, n_scored]
        for row, v in zip(batch, values, strict=True):
            if row.choice is None:
                scores[row.request][:] = v[: len(row.targets[0])]
            else:
                scores[row.request][row.choice] = v[0]
        bar.update(len(batch))


def _score_on_context_cache(
    model: HookedTransformer,
    requests: Sequence[Request],
    chunk: list[int],
    scores: list[np.ndarray],
    batch_size: int,
    bar: tqdm,
) -> None:
    """Score the requests ``chunk`` (at most ``batch_size``) into ``scores``.

    One left-padded pass over their contexts fills a KV cache; its last position scores every
    continuation's first token. Then the continuations' other tokens run on copies of their
    request's cached row, ``batch_size`` rows at a time (:func:`_continuation_resid`).
    Positions come from the attention masks, so each token sits where it would in the full
    sequence ``context + continuation``. The scored positions of the whole chunk go through
    the unembedding together (TransformerLens copies the unembedding matrix on every call).
    """
    reqs = [requests[i] for i in chunk]
    batch = data.left_pad([r.context for r in reqs], data.pad_token_id(model.tokenizer))
    batch = batch.to(model.cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(reqs))
    resid = model(
        batch.tokens,
        attention_mask=batch.attention_mask,
        past_kv_cache=cache,
        stop_at_layer=model.cfg.n_layers,
    )  # [n_req, ctx_pos, d_model]
    bar.update(len(reqs))
    slots = [(b, k) for b, r in enumerate(reqs) for k in range(len(r.continuations))]
    slot = {bk: n for n, bk in enumerate(slots)}
    finals = [resid[:, -1]]  # [n_req, d_model]: row b scores request b's first tokens
    where = [b for b, _ in slots]  # per scored token: its row in finals, its id, its slot
    target = [reqs[b].continuations[k][0] for b, k in slots]
    owner = list(range(len(slots)))
    rest = sorted((bk for bk in slots if len(reqs[bk[0]].continuations[bk[1]]) > 1),
                  key=lambda bk: -len(reqs[bk[0]].continuations[bk[1]]))  # fmt: skip
    n_finals = len(reqs)
    for part in _chunks(rest, batch_size):
        conts = [reqs[b].continuations[k] for b, k in part]
        finals.append(_continuation_resid(model, _cache_rows(cache, [b for b, _ in part]), conts))
        for bk, cont in zip(part, conts, strict=True):  # real positions come row by row
            where += range(n_finals, n_finals + len(cont) - 1)
            target += cont[1:]
            owner += [slot[bk]] * (len(cont) - 1)
            n_finals += len(cont) - 1
        bar.update(len(part))
    logprobs = _unembed(model, torch.cat(finals)[None]).float().log_softmax(-1)[0]
    where_, target_ = (torch.tensor(x, device=logprobs.device) for x in (where, target))
    picked = logprobs[where_, target_].double().cpu()  # [n_scored]
    totals = torch.zeros(len(slots), dtype=torch.float64).index_add_(0, torch.tensor(owner), picked)
    for (b, k), value in zip(slots, totals.tolist(), strict=True):
        scores[chunk[b]][k] = value


def _cache_rows(
    cache: TransformerLensKeyValueCache, rows: list[int]
) -> TransformerLensKeyValueCache:
    """A new cache holding ``cache``'s rows ``rows`` (repeats allowed): keys, values and
    attention mask alike."""

    def pick(x: Tensor) -> Tensor:
        return x.index_select(0, torch.tensor(rows, device=x.device))

    entries = [
        TransformerLensKeyValueCacheEntry(pick(e.past_keys), pick(e.past_values))
        for e in cache.entries
    ]  # [rows, ctx_pos, n_kv_heads, d_head] each
    return TransformerLensKeyValueCache(entries, pick(cache.previous_attention_mask))


def _continuation_resid(
    model: HookedTransformer,
    cache: TransformerLensKeyValueCache,
    continuations: list[tuple[int, ...]],
) -> Float[Tensor, "n_real d_model"]:
    """Final residuals of each continuation's tokens but its last, run after its cached context
    row: inputs ``continuation[:-1]``, right-padded (padding after the real tokens cannot reach
    them under causal attention, and its mask is 0); the real positions, row by row."""
    n, width = len(continuations), max(len(c) for c in continuations) - 1
    tokens = torch.full((n, width), data.pad_token_id(model.tokenizer), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, cont in enumerate(continuations):
        tokens[row, : len(cont) - 1] = torch.tensor(cont[:-1])
        mask[row, : len(cont) - 1] = 1
    resid = model(
        tokens.to(model.cfg.device),
        attention_mask=mask.to(model.cfg.device),
        past_kv_cache=cache,
        stop_at_layer=model.cfg.n_layers,
    )  # [n, width, d_model]
    return resid[mask.bool().to(resid.device)]


def _gather(
    logprobs: Float[Tensor, "batch pos d_vocab"], targets: Sequence[tuple[tuple[int, ...], ...]]
) -> np.ndarray:
    """For each row, the target tokens' log-probs summed over the row's scored positions (its
    last ``len(targets[b])``): ``[batch, n_scored]`` (zeros where a row scores fewer)."""
    n_pos, n_scored = logprobs.shape[1], max(len(t[0]) for t in targets)
    ids = torch.zeros((len(targets), n_pos, n_scored), dtype=torch.long)
    valid = torch.zeros((len(targets), n_pos, n_scored), dtype=torch.bool)
    for b, t in enumerate(targets):
        ids[b, n_pos - len(t) :, : len(t[0])] = torch.tensor(t)
        valid[b, n_pos - len(t) :, : len(t[0])] = True
    picked = logprobs.gather(2, ids.to(logprobs.device))
    picked = torch.where(valid.to(logprobs.device), picked, torch.zeros_like(picked))
    return picked.double().sum(1).cpu().numpy()


def _last_logprobs(
    model: HookedTransformer, batch: data.Batch, n_positions: int
) -> Float[Tensor, "batch pos d_vocab"]:
    """Float32 log-softmax at the last ``n_positions`` positions of each (left-padded) row.

    The blocks run on the whole batch; the final norm and the unembedding only on the positions
    that are scored, which saves gigabytes of logits for a 32k vocabulary.
    """
    batch = batch.to(model.cfg.device)
    resid = model(
        batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=model.cfg.n_layers
    )
    return _unembed(model, resid[:, -n_positions:]).float().log_softmax(dim=-1)


def _unembed(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """What ``HookedTransformer.forward`` does after the last block: final norm, unembedding,
    logit soft-cap (its hooks fire as usual)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


# ---------------------------------------------------------------------------------------------
# Gap recovered
# ---------------------------------------------------------------------------------------------


def gap_recovered(
    base: float | MCQResult, unlearned: float | MCQResult, intervened: float | MCQResult
) -> float:
    """Share of the accuracy lost to unlearning that an intervention brings back:
    ``(intervened - unlearned) / (base - unlearned)``; NaN (with a warning) when there is no gap.

    >>> round(gap_recovered(0.637, 0.312, 0.543), 2)
    0.71
    """
    b, u, i = (
        x.accuracy if isinstance(x, MCQResult) else float(x) for x in (base, unlearned, intervened)
    )
    if math.isclose(b, u, abs_tol=1e-12):
        log.warning("base and unlearned accuracy are equal (%.4f): no gap to recover", b)
        return float("nan")
    return (i - u) / (b - u)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


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


def generate(
    model: HookedTransformer,
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
    unless ``use_chat_template=False``), never by TransformerLens' ``to_tokens``.

    >>> generate(model, ["The capital of France is"], max_new_tokens=5).texts    # doctest: +SKIP
    """
    if not prompts:
        raise UnlearnInterpError("generate needs at least one prompt")
    _check_batch_size(batch_size)
    if max_new_tokens < 1:
        raise UnlearnInterpError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_new_tokens >= model.cfg.n_ctx:
        raise UnlearnInterpError(
            f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's "
            f"{model.cfg.n_ctx}-token context"
        )
    tokenizer = model.tokenizer
    encoded = [chat_prompt(tokenizer, p, use_chat_template) for p in prompts]
    ids = [tokenizer(text, add_special_tokens=special)["input_ids"] for text, special in encoded]
    generator = torch.Generator(device=model.cfg.device).manual_seed(seed)
    keep = model.cfg.n_ctx - max_new_tokens  # room for the new tokens
    if any(len(i) > keep for i in ids):
        log.warning(
            "some prompts do not fit the model's %d-token context with %d new tokens; "
            "their first tokens are cut (only the last %d are kept)",
            model.cfg.n_ctx, max_new_tokens, keep,
        )  # fmt: skip
    out = Generation([], [], [], [])
    bar = tqdm(total=len(ids), desc="generating", unit="prompt", disable=None if progress else True)
    with torch.no_grad(), _hooks(model, fwd_hooks), bar:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = data.left_pad([i[-keep:] for i in chunk], data.pad_token_id(tokenizer))
            tokens, max_logits, entropies = _decode(
                model, batch, max_new_tokens, greedy, temperature, generator, stop_at_eos
            )
            out.tokens.extend(tokens)
            out.max_logits.extend(max_logits)
            out.entropies.extend(entropies)
            bar.update(len(chunk))
    out.texts.extend(tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens)
    return out


def _decode(
    model: HookedTransformer,
    batch: data.Batch,
    max_new_tokens: int,
    greedy: bool,
    temperature: float,
    generator: torch.Generator,
    stop_at_eos: bool,
) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
    """The decoding loop on one left-padded batch, reusing keys and values between steps."""
    batch = batch.to(model.cfg.device)
    n = batch.tokens.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
    eos = model.tokenizer.eos_token_id
    finished = torch.zeros(n, dtype=torch.bool, device=model.cfg.device)
    steps: list[tuple[Tensor, ...]] = []  # per step: chosen, max logit, entropy, alive  [n] each
    step_input, mask = batch.tokens, batch.attention_mask
    for _ in range(max_new_tokens):
        resid = model(
            step_input, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers
        )
        logits = _unembed(model, resid[:, -1:])[:, 0].float()  # [n, d_vocab]
        logprobs = logits.log_softmax(-1)
        if greedy:
            chosen = logits.argmax(-1)
        else:
            probs = (logits / temperature).softmax(-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        steps.append((chosen, logits.amax(-1), entropy, ~finished))
        if stop_at_eos and eos is not None:
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
    model: HookedTransformer,
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


# ---------------------------------------------------------------------------------------------
# Confidence and retain loss
# ---------------------------------------------------------------------------------------------


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
    model: HookedTransformer,
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
        model, texts, k, batch_size=batch_size, use_chat_template=False,
        stop_at_eos=False, fwd_hooks=fwd_hooks, progress=progress,
    )  # fmt: skip
    rows = [
        {"item": i, "step": s, "token": t, "max_logit": m, "entropy": e}
        for i in range(len(texts))
        for s, (t, m, e) in enumerate(
            zip(gen.tokens[i], gen.max_logits[i], gen.entropies[i], strict=True)
        )
    ]
    return pd.DataFrame(rows)


def next_token_entropy(
    model: HookedTransformer,
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
    _check_batch_size(batch_size)
    ids = _tok_encode(model.tokenizer, texts, add_bos, _prefix_token_id(model.tokenizer))
    pad_id = data.pad_token_id(model.tokenizer)
    entropy, top = np.zeros(len(texts)), np.zeros(len(texts))
    with torch.no_grad(), _hooks(model, fwd_hooks):
        for chunk in _chunks(list(range(len(texts))), batch_size):
            batch = data.left_pad([ids[i][-model.cfg.n_ctx :] for i in chunk], pad_id)
            resid = model(
                batch.tokens.to(model.cfg.device),
                attention_mask=batch.attention_mask.to(model.cfg.device),
                stop_at_layer=model.cfg.n_layers,
            )
            logits = _unembed(model, resid[:, -1:])[:, 0].float()
            logprobs = logits.log_softmax(-1)
            entropy[chunk] = (-(logprobs.exp() * logprobs).sum(-1)).double().cpu().numpy()
            top[chunk] = logits.max(-1).values.double().cpu().numpy()
    return pd.DataFrame({"item": range(len(texts)), "entropy": entropy, "max_logit": top})


def retain_loss(
    model: HookedTransformer,
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
    _check_batch_size(batch_size)
    order = sorted(corpus, key=len, reverse=True)
    total, count = torch.zeros((), dtype=torch.float64), 0
    bar = tqdm(total=len(order), desc="retain loss", unit="doc", disable=None if progress else True)
    with torch.no_grad(), _hooks(model, fwd_hooks), bar:
        for start in range(0, len(order), batch_size):
            texts = order[start : start + batch_size]
            batch = data.encode_batch(model.tokenizer, texts, max_len=min(max_len, model.cfg.n_ctx))
            batch = batch.to(model.cfg.device)
            nll = _token_nll(model, batch)
            keep = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
            total += nll[keep].double().sum().cpu()
            count += int(keep.sum())
            bar.update(len(texts))
    if count == 0:
        raise UnlearnInterpError("the corpus has no document of two or more tokens to score")
    return float(total / count)


def _token_nll(model: HookedTransformer, batch: data.Batch) -> Float[Tensor, "batch pos_minus_1"]:
    logits = model(batch.tokens, attention_mask=batch.attention_mask)[:, :-1]
    logprobs = logits.float().log_softmax(-1)
    return -logprobs.gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _hooks(model: HookedTransformer, fwd_hooks: Sequence[Hook]):
    """``model.hooks`` for the given forward hooks: added on entry, removed on exit."""
    return model.hooks(fwd_hooks=list(fwd_hooks))


def _chunks(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UnlearnInterpError(f"batch_size must be a positive integer, got {batch_size!r}")


__all__ = [
    "MMLU_CONTINUATION_TEMPLATE",
    "QA_TEMPLATE",
    "Generation",
    "MCQResult",
    "Request",
    "chat_prompt",
    "compare_generations",
    "encode_requests",
    "evaluate_variants",
    "format_accuracy_table",
    "gap_recovered",
    "generate",
    "max_logit",
    "mcq_accuracy",
    "next_token_entropy",
    "qa_prompt",
    "retain_loss",
    "score_requests",
]
