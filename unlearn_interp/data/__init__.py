"""Text data: MCQ items and corpora from local files, prompt templates, tokenizers and batches.

Users bring WMDP, MMLU and their corpora as local files; everything here reads them, validates
every row, and fails with one sentence naming the file, the row and the field.

* ``items``: :class:`MCQItem` and :func:`load_mcq` (``.jsonl``, ``.json``, ``.csv``,
  ``.parquet`` and HuggingFace ``datasets`` directories written by ``save_to_disk``), in the
  WMDP layout (``question``, ``choices``, ``answer`` 0-3) or the MMLU layout (``answer`` as an
  index or a letter, ``subject``; also the original headerless MMLU CSVs); :func:`mcq_prompt`,
  the exact zero-shot prompt of lm-evaluation-harness's WMDP and MMLU tasks.
* ``files``: :func:`read_rows` (``(where, row)`` from any supported file), :func:`load_corpus`
  (documents) and :func:`load_prompts` (one prompt per line or row).
* ``templates``: :data:`QA_TEMPLATE`, :data:`MMLU_CONTINUATION_TEMPLATE`, the letter format.
* ``tokens``: :func:`train_tokenizer`, :class:`Batch`, :func:`encode_batch`, :func:`left_pad`:
  tokenisation into left-padded batches with attention masks.

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

from unlearn_interp.data.files import (
    load_corpus,
    load_prompts,
    read_rows,
    read_text,
    text_field,
)
from unlearn_interp.data.items import (
    WMDP_SUBJECTS,
    MCQItem,
    infer_subject,
    load_mcq,
    mcq_prompt,
    subject_text,
)
from unlearn_interp.data.templates import (
    LETTERS,
    MCQ_DESCRIPTION,
    MMLU_CONTINUATION_TEMPLATE,
    N_CHOICES,
    QA_TEMPLATE,
)
from unlearn_interp.data.tokens import (
    BOS,
    EOS,
    PAD,
    UNK,
    Batch,
    encode_batch,
    left_pad,
    pad_token_id,
    train_tokenizer,
)

__all__ = [
    "BOS",
    "EOS",
    "LETTERS",
    "MCQ_DESCRIPTION",
    "MMLU_CONTINUATION_TEMPLATE",
    "N_CHOICES",
    "PAD",
    "QA_TEMPLATE",
    "UNK",
    "WMDP_SUBJECTS",
    "Batch",
    "MCQItem",
    "encode_batch",
    "infer_subject",
    "left_pad",
    "load_corpus",
    "load_mcq",
    "load_prompts",
    "mcq_prompt",
    "pad_token_id",
    "read_rows",
    "read_text",
    "subject_text",
    "text_field",
    "train_tokenizer",
]
