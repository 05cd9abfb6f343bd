"""Multiple-choice accuracy exactly as lm-evaluation-harness scores it, the one loop that scores
every variant on every task, and gap recovered.

* :func:`mcq_accuracy` ``mode="letter"`` is lm-evaluation-harness's zero-shot ``wmdp_*`` /
  ``mmlu_*`` task: prompt from :func:`data.mcq_prompt`, continuations `` A`` .. `` D`` tokenised
  the way its ``HFLM`` does, highest log-likelihood wins. ``mode="continuation"``: each choice's
  text scored after a question prompt (sum of log-probs, and the byte-length-normalised variant,
  the harness's ``acc_bytes``), for models that never learned the letter format.
* :func:`accuracy_table`: every variant on every task, one tidy row per (variant, task), and the
  per-item rows when asked. The pipeline, the analysis sweeps and the CLI all score through it.
* :func:`gap_recovered`: ``(intervened - unlearned) / (base - unlearned)``, the rule of
  :func:`stats.gap_ratio` for single numbers or :class:`MCQResult`\\ s.

    >>> table = accuracy_table(model, [base, rmu, ablated], {"wmdp_bio": bio})  # doctest: +SKIP
    >>> print(format_accuracy_table(table))                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from unlearn_interp import activations, data, stats
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.scoring import Request, encode_requests, score_requests
from unlearn_interp.models import Model
from unlearn_interp.variants import Hook, Variant, hooks_installed

log = logging.getLogger(__name__)

MODES = ("letter", "continuation")
# lm-evaluation-harness's default target delimiter: " A" after "Answer:", " Paris" after "Answer:".
TARGET_DELIMITER = " "

Tasks = Mapping[str, Sequence[MCQItem]]

# ---------------------------------------------------------------------------------------------
# One list of questions
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


def mcq_accuracy(
    model: Model,
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
    ``{question}`` and ``{subject}``; :data:`data.MMLU_CONTINUATION_TEMPLATE` reproduces the
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
    activations.check_batch_size(batch_size)
    requests = mcq_requests(model, items, mode, prompt_template, subject, add_bos)
    with hooks_installed(model, fwd_hooks):
        scores = score_requests(model, requests, batch_size=batch_size, progress=progress)
    return _mcq_result(items, scores, mode, subject)


def mcq_requests(
    model: Model,
    items: Sequence[MCQItem],
    mode: str = "letter",
    prompt_template: str = QA_TEMPLATE,
    subject: str | None = None,
    add_bos: bool | None = None,
) -> list[Request]:
    """The items as :func:`mcq_accuracy` scores them: one tokenised request per question,
    its context and one continuation per choice (letters in ``"letter"`` mode, the choices'
    texts in ``"continuation"`` mode, each after a space)."""
    if mode == "letter":
        contexts = [data.mcq_prompt(item, subject) for item in items]
        choices = [[TARGET_DELIMITER + letter for letter in item.letters] for item in items]
    else:
        contexts = [qa_prompt(item, prompt_template, subject) for item in items]
        choices = [[TARGET_DELIMITER + choice for choice in item.choices] for item in items]
    return encode_requests(model.tokenizer, contexts, choices, add_bos=add_bos)


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


def _item_row(
    index: int, item: MCQItem, lls: np.ndarray, mode: str, subject: str | None
) -> dict[str, Any]:
    """One question's row of ``MCQResult.per_item`` from its choices' log-likelihoods."""
    row = {
        "item": index,
        "subject": subject if subject is not None else (item.subject or ""),
        "answer": item.answer,
        "predicted": int(np.argmax(lls)),  # first maximum on ties, as the harness's np.argmax
    }
    row["correct"] = row["predicted"] == item.answer
    row.update({f"logprob_{letter}": float(v) for letter, v in zip(item.letters, lls, strict=True)})
    if mode == "continuation":
        n_bytes = np.array([max(1, len(c.encode("utf-8"))) for c in item.choices], dtype=float)
        normed = np.asarray(lls) / n_bytes
        row["predicted_norm"] = int(np.argmax(normed))
        row["correct_norm"] = row["predicted_norm"] == item.answer
        row.update(
            {f"logprob_norm_{k}": float(v) for k, v in zip(item.letters, normed, strict=True)}
        )
    return row


def _mcq_result(
    items: Sequence[MCQItem], scores: Sequence[np.ndarray], mode: str, subject: str | None
) -> MCQResult:
    rows = [
        _item_row(index, item, lls, mode, subject)
        for index, (item, lls) in enumerate(zip(items, scores, strict=True))
    ]
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


# ---------------------------------------------------------------------------------------------
# Every variant on every task: the one loop
# ---------------------------------------------------------------------------------------------


@overload
def accuracy_table(
    model: Model,
    variants: Sequence[Variant],
    tasks: Tasks | Callable[[str], Tasks],
    mode: str = ...,
    batch_size: int = ...,
    progress: bool = ...,
    *,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = ...,
    per_item: Literal[False] = ...,
    **kwargs: Any,
) -> pd.DataFrame: ...


@overload
def accuracy_table(
    model: Model,
    variants: Sequence[Variant],
    tasks: Tasks | Callable[[str], Tasks],
    mode: str = ...,
    batch_size: int = ...,
    progress: bool = ...,
    *,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = ...,
    per_item: Literal[True],
    **kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def accuracy_table(
    model: Model,
    variants: Sequence[Variant],
    tasks: Tasks | Callable[[str], Tasks],
    mode: str = "letter",
    batch_size: int = 16,
    progress: bool = True,
    *,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    per_item: bool = False,
    **kwargs: Any,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy of every variant on every task, each variant applied once around all its tasks.

    Returns one row per (variant, task), in that order: ``variant``, ``task``, ``accuracy``,
    ``n`` (and ``accuracy_norm`` for tasks scored in continuation mode). With ``per_item=True``
    also every question's row (``MCQResult.per_item`` plus ``variant`` and ``task``), as
    ``(table, per_item_table)``.

    ``tasks``: name -> questions, or a function of the variant's name giving them (variants
    scored on different task sets). ``mode``, ``batch_size`` and ``kwargs`` (``prompt_template``,
    ``add_bos``, ``subject``, ``fwd_hooks``) go to :func:`mcq_accuracy` for every task;
    ``task_kwargs[task]`` overrides them for one task (``{"mode": "continuation",
    "prompt_template": ...}``). ``Variant("model")`` scores the model as it is.

    >>> accuracy_table(model, [base, rmu, ablated], {"wmdp_bio": bio, "mmlu": mmlu})  # doctest: +SKIP
    >>> table, items = accuracy_table(model, variants, tasks, per_item=True)       # doctest: +SKIP
    """
    tasks_of = tasks if callable(tasks) else (lambda name: tasks)
    shared = {"mode": mode, "batch_size": batch_size, "progress": progress, **kwargs}
    total = sum(len(tasks_of(v.name)) for v in variants)
    rows, frames = [], []
    bar = tqdm(total=total, desc="evaluating", unit="task", disable=None if progress else True)
    with bar:
        for variant in variants:
            with variant.applied(model):
                for task, items in tasks_of(variant.name).items():
                    settings = {**shared, **(task_kwargs or {}).get(task, {})}
                    result = mcq_accuracy(model, items, **settings)
                    rows.append(_accuracy_row(variant.name, task, result))
                    if per_item:
                        frames.append(result.per_item.assign(variant=variant.name, task=task))
                    bar.update()
    table = pd.DataFrame(rows, columns=_table_columns(rows))
    return (table, pd.concat(frames, ignore_index=True)) if per_item else table


def _accuracy_row(variant: str, task: str, result: MCQResult) -> dict[str, Any]:
    row = {"variant": variant, "task": task, "accuracy": result.accuracy, "n": result.n}
    if result.accuracy_norm is not None:
        row["accuracy_norm"] = result.accuracy_norm
    log.info("%s on %s: accuracy %.4f (n=%d)", variant, task, result.accuracy, result.n)
    return row


def _table_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns = ["variant", "task", "accuracy", "n"]
    return columns + (["accuracy_norm"] if any("accuracy_norm" in r for r in rows) else [])


def evaluate_variants(
    model: Model,
    variants: Sequence[Variant],
    tasks: Tasks,
    mode: str = "letter",
    batch_size: int = 16,
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`accuracy_table` without per-item rows (the name the CLI and notebooks use).

    >>> evaluate_variants(model, [base, rmu, ablated], {"wmdp_bio": bio, "mmlu": mmlu})  # doctest: +SKIP
    """
    return accuracy_table(model, variants, tasks, mode, batch_size, progress, **kwargs)


def format_accuracy_table(table: pd.DataFrame) -> str:
    """:func:`accuracy_table`'s table as text: variants as rows, tasks as columns; with three
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
# Gap recovered
# ---------------------------------------------------------------------------------------------


def gap_recovered(
    base: float | MCQResult, unlearned: float | MCQResult, intervened: float | MCQResult
) -> float:
    """Share of the accuracy lost to unlearning that an intervention brings back:
    ``(intervened - unlearned) / (base - unlearned)``; NaN (with a warning) when there is no gap.
    The rule is :func:`stats.gap_ratio`'s, for one number.

    >>> round(gap_recovered(0.637, 0.312, 0.543), 2)
    0.71
    """
    b, u, i = (
        x.accuracy if isinstance(x, MCQResult) else float(x) for x in (base, unlearned, intervened)
    )
    if stats.no_gap(u, b):
        log.warning("base and unlearned accuracy are equal (%.4f): no gap to recover", b)
    return float(stats.gap_ratio(i, u, b))


__all__ = [
    "MODES",
    "TARGET_DELIMITER",
    "MCQResult",
    "accuracy_table",
    "evaluate_variants",
    "format_accuracy_table",
    "gap_recovered",
    "mcq_accuracy",
    "qa_prompt",
]
