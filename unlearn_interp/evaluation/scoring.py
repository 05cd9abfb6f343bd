"""Log-likelihood requests, tokenised and scored exactly as lm-evaluation-harness's ``HFLM`` does.

A :class:`Request` is one question as token ids: its context and one continuation per choice.
:func:`encode_requests` tokenises (context, continuation) pairs the harness's way;
:func:`score_requests` returns each continuation's summed log-probability. Requests whose
continuations are all one token take one forward row; the others run their context once on a
KV cache and only their continuations' tokens on top of it (the harness's one sequence per
choice is kept as the reference, ``reuse_context=False``).

    >>> reqs = encode_requests(tok, ["Q: 2+2?\\nA:"], [[" four", " five"]])   # doctest: +SKIP
    >>> score_requests(model, reqs)[0]                # array([-3.1, -4.7])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from unlearn_interp import activations, data, models
from unlearn_interp.activations import KVCache
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model

log = logging.getLogger(__name__)
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Requests: tokenisation as the harness does it
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
    prefix_id = prefix_token_id(tokenizer)
    ctx_texts, whole_texts, shapes = [], [], []
    for context, conts in zip(contexts, continuations, strict=True):
        n_spaces = len(context) - len(context.rstrip())
        moved = context[len(context) - n_spaces :]
        ctx = context[: len(context) - n_spaces]
        ctx_texts.append(ctx)
        whole_texts += [ctx + moved + cont for cont in conts]
        shapes.append(len(conts))
    ctx_ids = tok_encode(tokenizer, ctx_texts, add_bos, prefix_id)
    whole_ids = tok_encode(tokenizer, whole_texts, add_bos, prefix_id)
    requests, start = [], 0
    for ctx, ctx_text, n in zip(ctx_ids, ctx_texts, shapes, strict=True):
        wholes = whole_ids[start : start + n]
        start += n
        requests.append(_request(ctx, ctx_text, wholes, prefix_id))
    return requests


def _request(ctx: list[int], ctx_text: str, wholes: list[list[int]], prefix_id: int) -> Request:
    """One request from its context's ids and each ``context + continuation``'s ids."""
    if ctx_text == "":
        ctx = [prefix_id]
        conts = [w[1:] if w[:1] == [prefix_id] else w for w in wholes]
    else:
        conts = [w[len(ctx) :] for w in wholes]
    if any(len(c) == 0 for c in conts):
        raise UnlearnInterpError(
            f"a choice of the question starting {ctx_text[-60:]!r} tokenises to nothing"
        )
    return Request(tuple(ctx), tuple(tuple(c) for c in conts))


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """lm-evaluation-harness's ``prefix_token_id``: BOS, else EOS."""
    token_id = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    if token_id is None:
        raise UnlearnInterpError("the tokenizer has neither a BOS nor an EOS token")
    return int(token_id)


def tok_encode(
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


def chunks(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    """``seq`` in consecutive lists of ``size`` (the last may be shorter)."""
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


# What one more forward pass costs, in padded tokens: on a CPU a token's matmuls dominate and a
# call's Python and hook overhead is worth a few dozen tokens; on an accelerator the overhead
# dominates, so batches are split only where padding would be huge.
CALL_COST_TOKENS = {"cpu": 32}
ACCELERATOR_CALL_COST_TOKENS = 2048


def length_groups(lengths: Sequence[int], batch_size: int, call_cost: int) -> list[list[int]]:
    """Indices of ``lengths``, longest first, cut into consecutive batches of at most
    ``batch_size`` so that padded tokens (rows x the batch's longest) plus ``call_cost`` per
    batch are fewest (an exact dynamic programme over the cut points, ``O(n * batch_size)``).

    >>> length_groups([5, 90, 88, 6, 91], 4, call_cost=10)
    [[4, 1, 2], [3, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    width = [lengths[i] for i in order]  # non-increasing: a batch's first row is its widest
    best, cut = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        options = range(max(0, end - batch_size), end)
        cut[end] = min(options, key=lambda s: best[s] + (end - s) * width[s] + call_cost)
        best[end] = best[cut[end]] + (end - cut[end]) * width[cut[end]] + call_cost
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def call_cost(model: Model) -> int:
    """:data:`CALL_COST_TOKENS` for the model's device type."""
    device = models.model_device(model).type
    return CALL_COST_TOKENS.get(device, ACCELERATOR_CALL_COST_TOKENS)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


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
    model: Model,
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
    values in a KV cache, and run only their continuations' tokens on top of it
    (:func:`_score_on_context_cache`). A request whose context must be truncated to fit
    ``n_ctx``, and every request with ``reuse_context=False``, takes one full sequence per
    continuation, the harness's own way (kept as the reference). Both agree to float rounding
    (tested to 1e-4 in float32). ``batch_size`` counts sequences per forward pass: contexts,
    continuations or full rows. Rows are sorted by length and cut into the batches that pad
    least (:func:`length_groups`: fewer than ``batch_size`` rows where lengths jump), and only
    the scored positions go through the unembedding. Leading tokens that all rows of a batch
    share (a benchmark's description line) run once, on one row, under a KV cache the rows
    continue from (:data:`MIN_SHARED_PREFIX` tokens or more, where the tokens saved outweigh the
    extra call's :func:`prefix_call_cost`; never while forward hooks are installed, so hooks
    always see whole rows).

    Hooks see a cached request in two passes: its context, then its continuations' tokens
    (right-padded rows). Hooks acting on every position alike (steering, ablation) give the
    same scores either way; a hook that indexes positions does not.

    >>> reqs = encode_requests(tok, ["Q: 2+2?\\nA:"], [[" four", " five"]])   # doctest: +SKIP
    >>> score_requests(model, reqs)[0]                # array([-3.1, -4.7])  # doctest: +SKIP
    """
    activations.check_batch_size(batch_size)
    max_len = models.n_ctx(model)
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
        widths = [len(requests[i].context) for i in cached]
        for group in length_groups(widths, batch_size, call_cost(model)):
            chunk = [cached[g] for g in group]
            _score_on_context_cache(model, requests, chunk, scores, batch_size, bar)
    return scores


def _fits_context_cache(request: Request, max_len: int) -> bool:
    """True when the request is worth a context cache (some continuation is longer than one
    token) and its context plus every continuation but the last token fits ``max_len``
    untruncated, so that the harness's inputs are exactly ``context + continuation[:-1]``."""
    longest = max(len(c) for c in request.continuations)
    return longest > 1 and 0 < len(request.context) <= max_len + 1 - longest


def _score_rows(
    model: Model, rows: list[_Row], scores: list[np.ndarray], batch_size: int, bar: tqdm
) -> None:
    """Score full sequences (:func:`_rows_for`) into ``scores``, longest rows first, in the
    batches of least padding (:func:`length_groups`)."""
    widths = [len(row.inputs) for row in rows]
    for chunk in length_groups(widths, batch_size, call_cost(model)):
        batch = [rows[i] for i in chunk]
        logprobs = _last_logprobs(
            model, [r.inputs for r in batch], max(len(r.targets) for r in batch)
        )
        values = gather(logprobs, [r.targets for r in batch])  # [batch, n_scored]
        for row, v in zip(batch, values, strict=True):
            if row.choice is None:
                scores[row.request][:] = v[: len(row.targets[0])]
            else:
                scores[row.request][row.choice] = v[0]
        bar.update(len(batch))


def _last_logprobs(
    model: Model, inputs: list[tuple[int, ...]], n_positions: int
) -> Float[Tensor, "batch pos d_vocab"]:
    """:func:`activations.last_logprobs` of the left-padded ``inputs``, their shared first tokens
    run once (:func:`_shared_prefix`)."""
    n_prefix = _shared_prefix(model, inputs, keep=n_positions)
    if not n_prefix:
        batch = data.left_pad(inputs, data.pad_token_id(model.tokenizer))
        return activations.last_logprobs(model, batch, n_positions)
    resid, _ = _run_after_prefix(model, inputs, n_prefix)
    return activations.unembed(model, resid[:, -n_positions:]).float().log_softmax(dim=-1)


# Fewest leading tokens a batch's rows must share for them to run once (MMLU's description
# line "The following are multiple choice questions (with answers) about college biology." is
# 16 of SmolLM2's tokens, a sixth of an MMLU question).
MIN_SHARED_PREFIX = 4


def _shared_prefix(model: Model, rows: Sequence[Sequence[int]], keep: int) -> int:
    """How many leading tokens all ``rows`` share, leaving at least ``keep`` of each row after
    them; 0 when that is under :data:`MIN_SHARED_PREFIX`, for a single row, when forward hooks
    are installed (they then see every row in one pass, as without sharing), or when the tokens
    saved do not pay for the extra forward call (:func:`prefix_call_cost`)."""
    if len(rows) < 2 or activations.has_forward_hooks(model):
        return 0
    n = min(len(os.path.commonprefix([tuple(r) for r in rows])), min(map(len, rows)) - keep)
    saved = (len(rows) - 1) * n
    return n if n >= MIN_SHARED_PREFIX and saved > prefix_call_cost(model) else 0


def prefix_call_cost(model: Model) -> int:
    """Tokens a shared prefix must save to be run apart: none on a CPU (bench_scoring's MMLU run
    was 6% slower when small batches ran theirs inline), :func:`call_cost` on an accelerator (a
    7B model's call costs more there than a batch's description lines: letter scoring 0.53x ->
    0.78x HuggingFace's speed on an H200 once they ran inline)."""
    return 0 if models.model_device(model).type == "cpu" else call_cost(model)


def _run_after_prefix(
    model: Model, rows: Sequence[Sequence[int]], n_prefix: int, room: int = 0
) -> tuple[Float[Tensor, "batch pos d_model"], KVCache]:
    """Final residuals of each row's tokens after its first ``n_prefix`` (left-padded), and the
    KV cache of the whole rows, with ``room`` positions to spare. The shared first ``n_prefix``
    tokens run once, on one row whose keys and values are then copied to every row; positions
    come from the attention masks, so each token sits where it would in its whole row (padding
    between the two parts is masked). The cache is buffered (``new_kv_cache(max_len=)``): later
    tokens (``room``) are written in place, and where the model's attention is the toolkit's
    (``backend_components.uses_toolkit_decoding``) it keeps keys rotated and groups queries
    instead of repeating keys."""
    device = models.model_device(model)
    rest = data.left_pad([r[n_prefix:] for r in rows], data.pad_token_id(model.tokenizer))
    rest = rest.to(device)
    max_len = n_prefix + rest.tokens.shape[1] + room
    cache = activations.new_kv_cache(model, 1 if n_prefix else len(rows), max_len=max_len)
    if n_prefix:
        prefix = torch.tensor([list(rows[0][:n_prefix])], device=device)
        activations.decode_step(model, prefix, torch.ones_like(prefix), cache)
        cache = activations.kv_cache_rows(cache, [0] * len(rows))
    return activations.decode_step(model, rest.tokens, rest.attention_mask, cache), cache


@dataclasses.dataclass
class _ScoredTokens:
    """Every token one context-cache chunk scores: per token, the row of the stacked final
    residuals (``finals``) that predicts it, its id, and the (request, choice) slot it counts for."""

    finals: list[Tensor]  # pieces of [n_rows, d_model], concatenated in order
    where: list[int]
    target: list[int]
    owner: list[int]

    @property
    def n_rows(self) -> int:
        return sum(int(f.shape[0]) for f in self.finals)


def _score_on_context_cache(
    model: Model,
    requests: Sequence[Request],
    chunk: list[int],
    scores: list[np.ndarray],
    batch_size: int,
    bar: tqdm,
) -> None:
    """Score the requests ``chunk`` (at most ``batch_size``) into ``scores``.

    One left-padded pass over their contexts (their shared first tokens run once:
    :func:`_run_after_prefix`) fills a KV cache; its last position scores every
    continuation's first token. Then the continuations' other tokens run on copies of their
    request's cached row, at most ``batch_size`` rows at a time, batched by length
    (:func:`length_groups`, :func:`_continuation_resid`).
    Positions come from the attention masks, so each token sits where it would in the full
    sequence ``context + continuation``. The scored positions of the whole chunk go through
    the unembedding together (one unembedding call, not one per piece).
    """
    reqs = [requests[i] for i in chunk]
    contexts = [r.context for r in reqs]
    room = max(len(c) for r in reqs for c in r.continuations) - 1
    n_prefix = _shared_prefix(model, contexts, keep=1)
    resid, cache = _run_after_prefix(model, contexts, n_prefix, room)
    bar.update(len(reqs))  # resid: [n_req, ctx_pos, d_model]
    slots = [(b, k) for b, r in enumerate(reqs) for k in range(len(r.continuations))]
    # Row b of resid[:, -1] scores request b's first tokens.
    scored = _ScoredTokens(
        finals=[resid[:, -1]],
        where=[b for b, _ in slots],
        target=[reqs[b].continuations[k][0] for b, k in slots],
        owner=list(range(len(slots))),
    )
    rest = [bk for bk in slots if len(reqs[bk[0]].continuations[bk[1]]) > 1]
    widths = [len(reqs[b].continuations[k]) - 1 for b, k in rest]
    slot = {bk: n for n, bk in enumerate(slots)}
    for group in length_groups(widths, batch_size, call_cost(model)):
        part = [rest[g] for g in group]
        _add_continuations(model, cache, reqs, part, [slot[bk] for bk in part], scored)
        bar.update(len(part))
    totals = _summed_logprobs(model, scored, len(slots))
    for (b, k), value in zip(slots, totals.tolist(), strict=True):
        scores[chunk[b]][k] = value


def _add_continuations(
    model: Model,
    cache: KVCache,
    reqs: list[Request],
    part: list[tuple[int, int]],
    owners: list[int],
    scored: _ScoredTokens,
) -> None:
    """Run the continuations ``part`` ((request, choice) pairs) after their cached contexts and
    record the tokens but the first of each as scored (real positions come row by row)."""
    conts = [reqs[b].continuations[k] for b, k in part]
    n_rows = scored.n_rows
    rows = activations.kv_cache_rows(cache, [b for b, _ in part])
    scored.finals.append(_continuation_resid(model, rows, conts))
    for owner, cont in zip(owners, conts, strict=True):
        scored.where += range(n_rows, n_rows + len(cont) - 1)
        scored.target += cont[1:]
        scored.owner += [owner] * (len(cont) - 1)
        n_rows += len(cont) - 1


def _summed_logprobs(model: Model, scored: _ScoredTokens, n_slots: int) -> Tensor:
    """Float64 sum of each slot's scored tokens' log-probabilities: ``[n_slots]``."""
    logprobs = activations.unembed(model, torch.cat(scored.finals)[None]).float()
    logprobs = logprobs.log_softmax(-1)[0]
    where, target = (torch.tensor(x, device=logprobs.device) for x in (scored.where, scored.target))
    picked = logprobs[where, target].double().cpu()  # [n_scored]
    totals = torch.zeros(n_slots, dtype=torch.float64)
    return totals.index_add_(0, torch.tensor(scored.owner), picked)


def _continuation_resid(
    model: Model, cache: KVCache, continuations: list[tuple[int, ...]]
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
    device = models.model_device(model)
    resid = activations.decode_step(model, tokens.to(device), mask.to(device), cache)
    return resid[mask.bool().to(resid.device)]  # resid: [n, width, d_model]


def gather(
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


__all__ = ["Request", "encode_requests", "gather", "score_requests"]
