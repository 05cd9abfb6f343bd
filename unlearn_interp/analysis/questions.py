"""Multiple-choice questions as the depth profile reads them: the residual stream at the last
token of each question's scored context, at every layer, and each choice's first token.

A :class:`QuestionSet` holds the questions exactly as :func:`evaluation.mcq_accuracy` scores
them (same contexts, same tokenisation), the correct choice and a group per question (the
entity it is about: probes train and test by group, never by question text).
:func:`question_resid` runs one variant over them and keeps only the last context token's
residual stream after each layer; a :class:`ResidStore` lets several analyses of one profile
share those forward passes.

    >>> questions = question_set(model, org.hazardous_mcq, "continuation", org.qa_template,
    ...                          groups=[f.entity for f in org.world.facts_in("hazardous")])  # doctest: +SKIP
    >>> resid = question_resid(model, questions, variant=rmu)      # [n_questions, n_layers, d_model]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlearn_interp import data, models
from unlearn_interp.activations import (
    capture_resid,
    check_batch_size,
    check_layers,
    select_positions,
)
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import mcq_requests
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant


@dataclasses.dataclass(frozen=True)
class QuestionSet:
    """Questions as token ids: ``contexts[i]`` is question ``i``'s scored context,
    ``choice_tokens[i, c]`` the first token of its choice ``c``'s continuation, ``answers[i]``
    the correct choice, ``groups[i]`` what train/test splits keep together (the entity)."""

    contexts: tuple[tuple[int, ...], ...]
    choice_tokens: Int[Tensor, "n_questions n_choices"]
    answers: Int[Tensor, " n_questions"]
    groups: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.contexts)

    @classmethod
    def concat(cls, sets: Sequence[QuestionSet]) -> QuestionSet:
        """The questions of ``sets`` one after the other (every set with as many choices)."""
        widths = {s.choice_tokens.shape[1] for s in sets}
        if len(widths) != 1:
            raise UnlearnInterpError(
                f"question sets with {sorted(widths)} choices cannot be joined"
            )
        return cls(
            tuple(c for s in sets for c in s.contexts),
            torch.cat([s.choice_tokens for s in sets]),
            torch.cat([s.answers for s in sets]),
            tuple(g for s in sets for g in s.groups),
        )

    def answer_tokens(self) -> Int[Tensor, " n_questions"]:
        """The first token of each question's correct choice."""
        return self.choice_tokens[torch.arange(len(self)), self.answers]


def checked_groups(items: Sequence[MCQItem], groups: Sequence[str] | None) -> list[str]:
    """``groups`` as strings (default: each question its own group), after checking there are
    questions, one group each, and as many choices in every question; else one sentence."""
    if not items:
        raise UnlearnInterpError("a question set needs at least one question")
    groups = [str(i) for i in range(len(items))] if groups is None else [str(g) for g in groups]
    if len(groups) != len(items):
        raise UnlearnInterpError(f"{len(groups)} groups given for {len(items)} questions")
    widths = {len(item.choices) for item in items}
    if len(widths) != 1:
        raise UnlearnInterpError(
            f"the questions have different numbers of choices: {sorted(widths)}"
        )
    return groups


def question_set(
    model: Model,
    items: Sequence[MCQItem],
    mode: str = "continuation",
    prompt_template: str = QA_TEMPLATE,
    groups: Sequence[str] | None = None,
) -> QuestionSet:
    """``items`` tokenised as ``mcq_accuracy(model, items, mode, prompt_template=...)`` scores
    them; ``groups`` (default: each question its own group) keep related questions on one
    side of a train/test split. Every question needs the same number of choices."""
    groups = checked_groups(items, groups)
    requests = mcq_requests(model, items, mode, prompt_template)
    choice_tokens = torch.tensor([[c[0] for c in r.continuations] for r in requests])
    answers = torch.tensor([item.answer for item in items])
    return QuestionSet(tuple(r.context for r in requests), choice_tokens, answers, tuple(groups))


@dataclasses.dataclass
class ResidStore:
    """Residual rows already computed, by variant name, layers and context, so analyses of one
    profile (the probes and the lens read mostly the same contexts) run each forward pass once.
    A variant's name stands for its weights: use one store per set of variants."""

    rows: dict[tuple[str, tuple[int, ...], tuple[int, ...]], Tensor] = dataclasses.field(
        default_factory=dict
    )


def question_resid(
    model: Model,
    questions: QuestionSet,
    variant: Variant | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    store: ResidStore | None = None,
) -> Float[Tensor, "n_questions n_layers d_model"]:
    """The residual stream after each of ``layers`` (default every block) at the last token of
    each question's context, under ``variant``; float32 on the CPU. With a ``store``, contexts
    it holds for this variant and these layers are not run again, and new ones are kept."""
    check_batch_size(batch_size)
    layers = list(range(models.n_layers(model))) if layers is None else check_layers(model, layers)
    if store is None:
        return _last_token_resid(model, questions.contexts, variant, layers, batch_size)
    name = "base" if variant is None else variant.name
    keys = [(name, tuple(layers), tuple(c)) for c in questions.contexts]
    missing = list(dict.fromkeys(k for k in keys if k not in store.rows))
    computed = _last_token_resid(model, [k[2] for k in missing], variant, layers, batch_size)
    store.rows.update(zip(missing, computed, strict=True))
    return torch.stack([store.rows[k] for k in keys])


def _last_token_resid(
    model: Model,
    contexts: Sequence[Sequence[int]],
    variant: Variant | None,
    layers: list[int],
    batch_size: int,
) -> Float[Tensor, "n_contexts n_layers d_model"]:
    out = torch.zeros(len(contexts), len(layers), models.d_model(model))
    pad = data.pad_token_id(model.tokenizer)
    device = models.model_device(model)
    for start in range(0, len(contexts), batch_size):
        batch = data.left_pad(contexts[start : start + batch_size], pad).to(device)
        rows = slice(start, start + batch.tokens.shape[0])

        def keep(index: int, resid: Tensor, rows: slice = rows) -> None:
            out[rows, index] = resid.float().cpu()

        capture_resid(model, batch, layers, select_positions(batch, "last"), variant, keep)
    return out
