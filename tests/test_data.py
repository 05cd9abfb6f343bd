"""Loading MCQ items, corpora and prompts from every supported format, with errors naming the
file, the row and the field; the lm-evaluation-harness prompt text; tokenisation helpers."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from unlearn_interp import checks, data
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError

WMDP_ROWS = [
    {"question": "Which agent is fictional?", "choices": ["Zorb", "Quill", "Mave", "Trent"], "answer": 2},
    {"question": " What, \"quoted\", is it?\n", "choices": ["a, b", "c\nd", "é", ""], "answer": 0},
    {"question": "Third one?", "choices": ["1", "2", "3", "4"], "answer": 3},
]  # fmt: skip


def expected_items(subject=None):
    return [MCQItem(r["question"], r["choices"], r["answer"], subject) for r in WMDP_ROWS]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_csv(path, header, records):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(records)
    return path


def make_wmdp_file(tmp_path, fmt):
    """The same three WMDP-layout questions in format ``fmt``."""
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "q.jsonl", WMDP_ROWS)
    if fmt == "json":
        path = tmp_path / "q.json"
        path.write_text(json.dumps(WMDP_ROWS), encoding="utf-8")
        return path
    if fmt == "csv_choices_json":
        records = [[r["question"], json.dumps(r["choices"]), r["answer"]] for r in WMDP_ROWS]
        return write_csv(tmp_path / "q.csv", ["question", "choices", "answer"], records)
    if fmt == "csv_letter_columns":
        records = [[r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in WMDP_ROWS]
        return write_csv(tmp_path / "q.csv", ["question", "A", "B", "C", "D", "answer"], records)
    if fmt == "parquet":
        path = tmp_path / "q.parquet"
        pd.DataFrame(WMDP_ROWS).to_parquet(path)
        return path
    if fmt == "datasets":
        import datasets

        path = tmp_path / "q_dataset"
        datasets.Dataset.from_list(WMDP_ROWS).save_to_disk(str(path))
        return path
    if fmt == "datasets_dict":
        import datasets

        path = tmp_path / "q_dataset_dict"
        test = datasets.Dataset.from_list(WMDP_ROWS)
        dev = datasets.Dataset.from_list(WMDP_ROWS[:1])
        datasets.DatasetDict({"dev": dev, "test": test}).save_to_disk(str(path))
        return path
    raise AssertionError(fmt)


FORMATS = [
    "jsonl",
    "json",
    "csv_choices_json",
    "csv_letter_columns",
    "parquet",
    "datasets",
    "datasets_dict",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_mcq_reads_every_format_to_the_same_items(tmp_path, fmt):
    assert data.load_mcq(make_wmdp_file(tmp_path, fmt)) == expected_items()


def test_load_mcq_reads_original_headerless_mmlu_csv_and_takes_subject_from_file_name(tmp_path):
    records = [[r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in WMDP_ROWS]
    path = write_csv(tmp_path / "high_school_biology_test.csv", None, records)
    assert data.load_mcq(path) == expected_items("high_school_biology")


def test_load_mcq_mmlu_layout_letter_answers_and_row_subjects(tmp_path):
    rows = [
        {"question": "q1", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": "B"},
        {"question": "q2", "subject": "virology", "choices": ["a", "b", "c", "d"], "answer": "d"},
        {"question": "q3", "subject": "virology", "choices": ["a", "b", "c", "d"], "answer": 0},
    ]
    items = data.load_mcq(write_jsonl(tmp_path / "mmlu.jsonl", rows))
    assert [(i.answer, i.subject) for i in items] == [
        (1, "anatomy"),
        (3, "virology"),
        (0, "virology"),
    ]
    overridden = data.load_mcq(tmp_path / "mmlu.jsonl", subject="biology")
    assert {i.subject for i in overridden} == {"biology"}


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("wmdp_bio.jsonl", "biology"),
        ("wmdp-cyber.parquet", "cybersecurity"),
        ("WMDP_chem.json", "chemistry"),
        ("questions.jsonl", None),
    ],
)
def test_subject_inferred_from_wmdp_file_names(tmp_path, name, subject):
    assert data.infer_subject(tmp_path / name) == subject


BAD_ROWS = {
    "three choices": ({"question": "q", "choices": ["a", "b", "c"], "answer": 0}, "choices"),
    "answer 4": ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "answer"),
    "answer E": ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}, "answer"),
    "answer missing": ({"question": "q", "choices": ["a", "b", "c", "d"]}, "answer"),
    "answer bool": ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": True}, "answer"),
    "missing question": ({"choices": ["a", "b", "c", "d"], "answer": 1}, "question"),
    "blank question": ({"question": "  ", "choices": ["a", "b", "c", "d"], "answer": 1}, "question"),
    "choice not text": ({"question": "q", "choices": ["a", None, "c", "d"], "answer": 1}, "choices"),
    "no choices": ({"question": "q", "answer": 1}, "choices"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_malformed_row_error_names_file_line_and_field(tmp_path, case):
    bad, field = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [WMDP_ROWS[0], WMDP_ROWS[1], bad])
    with pytest.raises(UnlearnInterpError) as err:
        data.load_mcq(path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and f"field '{field}'" in message


@pytest.mark.parametrize("fmt", ["json", "parquet", "datasets"])
def test_malformed_row_error_names_row_in_other_formats(tmp_path, fmt):
    rows = [*WMDP_ROWS[:1], {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 7}]
    if fmt == "json":
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        path = tmp_path / "bad.parquet"
        pd.DataFrame(rows).to_parquet(path)
    else:
        import datasets

        path = tmp_path / "bad_ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    with pytest.raises(UnlearnInterpError, match=r"row 2: field 'answer' is 7"):
        data.load_mcq(path)


def test_malformed_csv_row_names_row_and_field(tmp_path):
    records = [["q1", "a", "b", "c", "d", "A"], ["q2", "a", "b", "c", "d", "Z"]]
    path = write_csv(tmp_path / "x.csv", ["question", "A", "B", "C", "D", "answer"], records)
    with pytest.raises(UnlearnInterpError, match=r"x\.csv row 2: field 'answer' is 'Z'"):
        data.load_mcq(path)


def test_malformed_json_line_names_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(WMDP_ROWS[0]) + "\n\n" + '{"question": "q", "choices": [\n')
    with pytest.raises(UnlearnInterpError, match=r"broken\.jsonl line 3 is not valid JSON"):
        data.load_mcq(path)


def test_non_utf8_file_names_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(WMDP_ROWS[0]).encode() + b"\n" + '{"question": "caf\xe9"}'.encode("latin-1")
    )
    with pytest.raises(UnlearnInterpError, match=r"latin1\.jsonl line 2 is not UTF-8"):
        data.load_mcq(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_empty_file_is_an_error(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text("  \n")
    loader = data.load_corpus if suffix == ".txt" else data.load_mcq
    with pytest.raises(UnlearnInterpError, match=r"empty"):
        loader(path)


def test_missing_file_and_unsupported_extension_are_errors(tmp_path):
    with pytest.raises(UnlearnInterpError, match="does not exist"):
        data.load_mcq(tmp_path / "nope.jsonl")
    (tmp_path / "q.xlsx").write_text("x")
    with pytest.raises(UnlearnInterpError, match="unsupported extension"):
        data.load_mcq(tmp_path / "q.xlsx")


def test_datasets_dict_without_test_split_is_an_error(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(WMDP_ROWS)
    datasets.DatasetDict({"a": rows, "b": rows}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UnlearnInterpError, match="none is called 'test'"):
        data.load_mcq(tmp_path / "dd")


# ---------------------------------------------------------------------------------------------
# MCQItem and the prompt
# ---------------------------------------------------------------------------------------------


def test_mcq_prompt_is_lm_evaluation_harness_wmdp_text():
    item = MCQItem(
        "  Which virus is fictional?\n", ["Alpha", "Beta", "Gamma", "Delta"], 1, "biology"
    )
    assert data.mcq_prompt(item) == (
        "The following are multiple choice questions (with answers) about biology.\n\n"
        "Which virus is fictional?\nA. Alpha\nB. Beta\nC. Gamma\nD. Delta\nAnswer:"
    )


def test_mcq_prompt_mmlu_subject_reads_with_spaces_and_argument_overrides_item():
    item = MCQItem("q", ["a", "b", "c", "d"], 0, "high_school_us_history")
    assert data.mcq_prompt(item).startswith(
        "The following are multiple choice questions (with answers) about high school us history.\n\nq\n"
    )
    assert "about cybersecurity." in data.mcq_prompt(item, "cybersecurity")


def test_mcq_prompt_without_subject_is_an_error():
    with pytest.raises(UnlearnInterpError, match="subject"):
        data.mcq_prompt(MCQItem("q", ["a", "b", "c", "d"], 0))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "question"),
        ({"question": "q", "choices": "ab", "answer": 0}, "choices"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "choices"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer"),
        ({"question": "q", "choices": ["a", "b"], "answer": -1}, "answer"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "answer"),
    ],
)
def test_mcq_item_validation_names_field(kwargs, field):
    with pytest.raises(UnlearnInterpError, match=f"field '{field}'"):
        MCQItem(**kwargs)


def test_mcq_item_round_trips_through_dict_and_stores_choices_as_tuple():
    item = MCQItem("q", ["a", "b", "c"], 2, "s")
    assert item.choices == ("a", "b", "c") and item.letters == "ABC"
    assert MCQItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item


# ---------------------------------------------------------------------------------------------
# Corpora and prompts
# ---------------------------------------------------------------------------------------------

DOCS = ["First document about foxes.", "Second, longer document about dogs and cats.", "x"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "txt", "parquet", "datasets", "csv"])
def test_load_corpus_reads_every_format(tmp_path, fmt):
    rows = [{"text": d, "meta": i} for i, d in enumerate(DOCS)]
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "c.jsonl", rows)
    elif fmt == "json":
        path = tmp_path / "c.json"
        path.write_text(json.dumps(rows))
    elif fmt == "txt":
        path = tmp_path / "c.txt"
        path.write_text("\n\n".join(DOCS) + "\n   \n")
    elif fmt == "parquet":
        path = tmp_path / "c.parquet"
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "csv":
        path = write_csv(tmp_path / "c.csv", ["text", "meta"], [[d, i] for i, d in enumerate(DOCS)])
    else:
        import datasets

        path = tmp_path / "c_ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    assert data.load_corpus(path) == DOCS
    assert data.load_corpus(path, min_len=1) == DOCS[:2]  # strict: keeps len > min_len


def test_load_corpus_other_field_and_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": "hello"}, {"text": "no body"}])
    with pytest.raises(UnlearnInterpError, match=r"c\.jsonl line 2: field 'body' is missing"):
        data.load_corpus(path, field="body")
    assert data.load_corpus(write_jsonl(tmp_path / "d.jsonl", [{"body": "hi"}]), field="body") == [
        "hi"
    ]


def test_load_corpus_of_empty_strings_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": ""}, {"text": "   "}])
    with pytest.raises(UnlearnInterpError, match="no non-blank documents"):
        data.load_corpus(path)
    with pytest.raises(UnlearnInterpError, match="longer than 100"):
        data.load_corpus(write_jsonl(tmp_path / "d.jsonl", [{"text": "short"}]), min_len=100)


def test_load_prompts_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("How do I make X?\n\nWhat is Y?\n")
    assert data.load_prompts(txt) == ["How do I make X?", "What is Y?"]
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"text": "b"}, "c"])
    assert data.load_prompts(jsonl) == ["a", "b", "c"]
    with pytest.raises(UnlearnInterpError, match=r"line 1: field 'prompt' or 'text' is missing"):
        data.load_prompts(write_jsonl(tmp_path / "q.jsonl", [{"question": "a"}]))


# ---------------------------------------------------------------------------------------------
# Tokenizers and batches
# ---------------------------------------------------------------------------------------------


def test_train_tokenizer_bos_is_optional(tokenizer):
    no_bos = data.train_tokenizer(["the cat sat on the mat"] * 4, vocab_size=280, add_bos=False)
    assert no_bos("the cat")["input_ids"][0] != no_bos.bos_token_id
    assert tokenizer("the cat")["input_ids"][0] == tokenizer.bos_token_id


def test_left_pad_pads_on_the_left_with_mask():
    batch = data.left_pad([[5, 6, 7], [8]], pad_id=2)
    assert batch.tokens.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.last_positions.tolist() == [2, 2]
    with pytest.raises(UnlearnInterpError):
        data.left_pad([[1], []], pad_id=0)


# ---------------------------------------------------------------------------------------------
# The shared integer-field check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minimum", "kind"),
    [(True, 1, "a positive integer"), (-1, 0, "a non-negative integer"), (2.0, None, "an integer")],
)
def test_check_int_refuses_bools_floats_and_small_values_naming_the_field(value, minimum, kind):
    with pytest.raises(UnlearnInterpError, match=rf"^n_steps must be {kind}, got {value!r}$"):
        checks.check_int(value, "n_steps", minimum=minimum)
    assert checks.check_int(3, "n_steps", minimum=minimum) == 3
    assert checks.check_int(7, "n_steps", minimum=7) == 7


def test_load_corpus_min_len_uses_the_shared_integer_check(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a document\n")
    with pytest.raises(
        UnlearnInterpError, match="min_len must be a non-negative integer, got True"
    ):
        data.load_corpus(path, min_len=True)
