"""Logit lens per layer on multiple-choice questions: where in depth does the model already
"say" the answer, for each variant?

:func:`logit_lens` decodes each question's residual stream after every layer (at the last
context token, :func:`~unlearn_interp.analysis.questions.question_resid`) through the model's
final norm and unembedding (nostalgebraist 2020), or first through a tuned lens
(:mod:`.tuned_lens`), and scores the correct answer's token: its rank in the whole vocabulary
(0 = top), its log-probability, and whether it beats the other choices' tokens. At the last
layer the logit lens is the model's own next-token prediction. Layer ``l`` is the residual
stream *after* block ``l``.

The scored token is each choice's first token (``question_set``). When the choices begin with
the same tokens (the organism's ``"the marsh grelk"``, ``"the dune vossel"``), that token says
nothing about the answer: :func:`decision_questions` runs each context on through the shared
tokens so the scored token is the first one where the choices differ.

    >>> qs = {"hazardous": decision_questions(model, org.hazardous_mcq),
    ...       "benign": decision_questions(model, org.benign_mcq)}            # doctest: +SKIP
    >>> table = logit_lens(model, [base, rmu], qs, lens=tuned)  # variant, prompt_set, lens, layer, ...  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp.activations import check_batch_size
from unlearn_interp.analysis.questions import (
    QuestionSet,
    ResidStore,
    question_resid,
    question_set,
)
from unlearn_interp.analysis.tuned_lens import (
    LOGIT,
    TUNED,
    TunedLens,
    check_lens_covers,
    decode_logprobs,
    lens_layers,
)
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import mcq_requests
from unlearn_interp.models import Model
from unlearn_interp.stats import accuracy_intervals
from unlearn_interp.variants import Variant, applied

COLUMNS = (
    "variant",
    "prompt_set",
    "lens",
    "layer",
    "answer_rank_mean",
    "answer_rank_median",
    "answer_logprob",
    "choice_accuracy",
    "ci_low",
    "ci_high",
    "n",
)
# Rows decoded through the unembedding at once: 256 x a 49k vocabulary is 50 MB of float32, and
# each call has a fixed cost (TransformerLens copies the unembedding matrix on every call).
DECODE_ROWS = 256
ITEM_COLUMNS = (
    "variant",
    "prompt_set",
    "lens",
    "layer",
    "item",
    "group",
    "rank",
    "logprob",
    "correct",
)

# ---------------------------------------------------------------------------------------------
# Which token is scored
# ---------------------------------------------------------------------------------------------


def decision_questions(
    model: Model,
    items: Sequence[MCQItem],
    mode: str = "continuation",
    prompt_template: str = QA_TEMPLATE,
    groups: Sequence[str] | None = None,
) -> QuestionSet:
    """:func:`question_set`, with each context extended by the tokens all of its choices
    share at the start, so ``choice_tokens`` are the first tokens where the choices differ
    (the same as ``question_set``'s where the first tokens already differ). Where a choice
    ends inside the shared part, the scored tokens stay tied and the question never counts as
    answered.

    >>> decision_questions(model, org.hazardous_mcq).choice_tokens[0]   # " marsh", " dune", ...  # doctest: +SKIP
    """
    first = question_set(model, items, mode, prompt_template, groups)  # validates the items
    contexts, tokens = [], []
    for request in mcq_requests(model, items, mode, prompt_template):
        shared = _shared_length(request.continuations)
        contexts.append(request.context + request.continuations[0][:shared])
        tokens.append([c[shared] for c in request.continuations])
    return QuestionSet(tuple(contexts), torch.tensor(tokens), first.answers, first.groups)


def _shared_length(continuations: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every continuation shares, leaving each at least one more."""
    k = 0
    while all(len(c) > k + 1 and c[k] == continuations[0][k] for c in continuations):
        k += 1
    return k


# ---------------------------------------------------------------------------------------------
# The logit lens on multiple-choice questions
# ---------------------------------------------------------------------------------------------


def answer_scores(
    logprobs: Float[Tensor, "n_questions d_vocab"], questions: QuestionSet
) -> pd.DataFrame:
    """Per question: ``rank`` of the correct answer's first token (how many tokens score
    strictly higher; 0 = top), its ``logprob``, and ``correct`` (1 when it beats every other
    choice's first token strictly)."""
    answers = questions.answer_tokens().to(logprobs.device)
    answer_lp = logprobs.gather(1, answers[:, None])[:, 0]
    rank = (logprobs > answer_lp[:, None]).sum(dim=1)
    choice_lp = logprobs.gather(1, questions.choice_tokens.to(logprobs.device))
    is_answer = torch.nn.functional.one_hot(questions.answers, choice_lp.shape[1]).bool()
    others = choice_lp.masked_fill(is_answer.to(logprobs.device), -math.inf).amax(dim=1)
    return pd.DataFrame(
        {
            "item": np.arange(len(questions)),
            "rank": rank.cpu().numpy(),
            "logprob": answer_lp.double().cpu().numpy(),
            "correct": (answer_lp > others).long().cpu().numpy(),
        }
    )


def _layer_scores(
    model: Model,
    resid: Float[Tensor, "n_questions n_layers d_model"],
    questions: QuestionSet,
    layers: Sequence[int],
    lens: TunedLens | None,
) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(layer, answer_scores)`` per layer; the vocabulary is decoded :data:`DECODE_ROWS`
    rows at a time (a 49k-token vocabulary is large; one unembedding call per row chunk)."""
    for i, layer in enumerate(layers):
        parts = [
            decode_logprobs(model, resid[start : start + DECODE_ROWS, i], layer, lens).cpu()
            for start in range(0, len(questions), DECODE_ROWS)
        ]
        yield layer, answer_scores(torch.cat(parts), questions)


def lens_items(
    model: Model,
    variants: Sequence[Variant],
    questions: Mapping[str, QuestionSet],
    *,
    layers: Sequence[int] | None = None,
    lens: TunedLens | None = None,
    batch_size: int = 32,
    store: ResidStore | None = None,
) -> pd.DataFrame:
    """Every question's answer as each layer decodes it: one row per variant, question set
    (``prompt_set``), lens (``"logit"``, and ``"tuned"`` when ``lens`` is given), layer and
    question, with columns :data:`ITEM_COLUMNS` (``rank``, ``logprob``, ``correct`` as in
    :func:`answer_scores`; ``group`` the question's entity). :func:`logit_lens` summarises it.
    Residuals already in ``store`` (see :class:`ResidStore`) are not computed again.

    >>> lens_items(model, [base], {"hazardous": qs}, layers=[3]).query("rank > 0")  # doctest: +SKIP
    """
    layers = _check_lens_inputs(model, variants, questions, layers, lens)
    check_batch_size(batch_size)
    lenses = {LOGIT: None} | ({TUNED: lens} if lens is not None else {})
    frames = []
    for variant in variants:
        for set_name, qs in questions.items():
            resid = question_resid(model, qs, variant, layers, batch_size, store)
            with torch.no_grad(), applied(variant, model):
                for lens_name, chosen in lenses.items():
                    for layer, scores in _layer_scores(model, resid, qs, layers, chosen):
                        frames.append(
                            scores.assign(
                                variant=variant.name,
                                prompt_set=set_name,
                                lens=lens_name,
                                layer=layer,
                                group=list(qs.groups),
                            )
                        )
    return pd.concat(frames, ignore_index=True)[list(ITEM_COLUMNS)]


def logit_lens(
    model: Model,
    variants: Sequence[Variant],
    questions: Mapping[str, QuestionSet],
    *,
    layers: Sequence[int] | None = None,
    lens: TunedLens | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    store: ResidStore | None = None,
) -> pd.DataFrame:
    """The answer as each layer's residual stream decodes it, one row per variant, question
    set (``prompt_set``), lens and layer: :func:`summarise_lens` of :func:`lens_items`.

    Columns :data:`COLUMNS`: ``variant, prompt_set, lens, layer, answer_rank_mean,
    answer_rank_median, answer_logprob`` (mean), ``choice_accuracy, ci_low, ci_high`` (95%
    bootstrap interval over questions), ``n`` (questions). ``lens`` is ``"logit"``, and also
    ``"tuned"`` when a :class:`TunedLens` is given.

    >>> logit_lens(model, [base, rmu], {"hazardous": qs}, layers=[0, 3])  # doctest: +SKIP
    """
    items = lens_items(
        model, variants, questions, layers=layers, lens=lens, batch_size=batch_size, store=store
    )
    return summarise_lens(items, n_boot=n_boot, seed=seed)


def _check_lens_inputs(
    model: Model,
    variants: Sequence[Variant],
    questions: Mapping[str, QuestionSet],
    layers: Sequence[int] | None,
    lens: TunedLens | None,
) -> list[int]:
    if not variants:
        raise UnlearnInterpError("the logit lens needs at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UnlearnInterpError(f"variant names {names} repeat a name")
    if not questions:
        raise UnlearnInterpError("the logit lens needs at least one question set")
    layers = lens_layers(model, layers)
    check_lens_covers(lens, layers, model)
    return layers


def summarise_lens(items: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (variant, prompt_set, lens, layer) of a :func:`lens_items` table: mean and
    median rank, mean log-probability, choice accuracy with a 95% interval from
    :func:`~unlearn_interp.stats.accuracy_intervals` (questions resampled, the same draws for
    every row of a question set), and ``n``."""
    keys = ["variant", "prompt_set", "lens", "layer"]
    if items.empty:
        raise UnlearnInterpError("the logit-lens table has no rows")
    key = items.groupby(keys, sort=False).ngroup().astype(str)
    per_item = items.assign(variant=key, task=items["prompt_set"], seed=np.nan)
    intervals = accuracy_intervals(per_item, n_boot=n_boot, seed=seed).set_index("variant")
    table = items.groupby(keys, sort=False).agg(
        answer_rank_mean=("rank", "mean"),
        answer_rank_median=("rank", "median"),
        answer_logprob=("logprob", "mean"),
        n=("item", "size"),
    )
    table = table.reset_index().astype({"answer_rank_mean": float, "answer_rank_median": float})
    for column, source in (
        ("choice_accuracy", "accuracy"),
        ("ci_low", "ci_low"),
        ("ci_high", "ci_high"),
    ):
        table[column] = intervals.loc[[str(i) for i in range(len(table))], source].to_numpy()
    return table[list(COLUMNS)]


__all__ = [
    "COLUMNS",
    "ITEM_COLUMNS",
    "answer_scores",
    "decision_questions",
    "lens_items",
    "logit_lens",
    "summarise_lens",
]
