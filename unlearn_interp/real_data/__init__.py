"""Readers and topic rules for the real data the real-model study uses.

Everything here reads files that ship inside Python wheels (fetched by :mod:`sources`) and turns
them into the toolkit's types; it takes paths and does not care where they came from.

* ``wiki``: :func:`wikipedia_paragraphs`, prose paragraphs of a MediaWiki XML dump
  (``.xml.bz2``), markup stripped with ``mwparserfromhell``; the forget and retain corpora.
* ``topics``: :func:`topic_of`, the topic rule, for paragraphs and for questions alike;
  :func:`split_by_topic`.
* ``benchmarks``: :func:`mmlu_tasks`, :func:`sciq_items`, :func:`arc_items`,
  :func:`openbookqa_items`: questions as :class:`~unlearn_interp.data.MCQItem`.
* ``cloze``: :func:`capital_facts`, :func:`element_facts`: cloze fact sets scored in
  continuation mode.
* ``study_data``: :func:`build_study_data`: all of it for one forget topic, as a
  :class:`StudyData`.

    >>> study = build_study_data(olmo_dir, gensim_dir, mendeleev_dir, topic="chemistry")  # doctest: +SKIP
    >>> len(study.forget_corpus), sorted(study.tasks)                                      # doctest: +SKIP
"""

from unlearn_interp.data import MMLU_CONTINUATION_TEMPLATE, QA_TEMPLATE
from unlearn_interp.real_data.benchmarks import (
    MMLU_BIO_SUBJECTS,
    MMLU_CHEM_SUBJECTS,
    MMLU_CYBER_SUBJECTS,
    SCIENCE_SUBJECT,
    arc_items,
    keyed_rng,
    mmlu_tasks,
    openbookqa_items,
    sciq_items,
    sciq_supports,
)
from unlearn_interp.real_data.cloze import (
    CAPITAL_PROMPT,
    CAPITAL_SECTIONS,
    CLOZE_TEMPLATE,
    ELEMENT_PROMPTS,
    capital_facts,
    capital_pairs,
    cloze_items,
    element_facts,
    elements,
)
from unlearn_interp.real_data.study_data import (
    ARC_CHALLENGE,
    ARC_EASY,
    DEFAULT_MAX_ITEMS_PER_TASK,
    DEFAULT_TASK_KINDS,
    ELEMENT_PHRASING,
    ELEMENTS_DB,
    GENSIM_TEST_DATA,
    MAX_ATOMIC_NUMBER,
    MMLU,
    MMLU_OTHER_SUBJECTS,
    OLMO_DATASETS,
    PROMPT_WORDS,
    QUESTIONS_WORDS,
    SCIQ,
    TASK_KINDS,
    TOPIC_ABBREVIATIONS,
    WIKIPEDIA_DUMP,
    StudyData,
    build_study_data,
    first_words,
    locate,
    sample_items,
)
from unlearn_interp.real_data.topics import (
    BIOLOGY_WORDS,
    CHEMISTRY_WORDS,
    MIN_HITS_PARAGRAPH,
    MIN_HITS_QUESTION,
    TOPICS,
    check_topic,
    lexicon,
    question_topic,
    split_by_topic,
    topic_hits,
    topic_of,
)
from unlearn_interp.real_data.wiki import (
    MIN_PARAGRAPH_WORDS,
    Paragraph,
    prose_paragraphs,
    wikipedia_paragraphs,
)

__all__ = [
    "ARC_CHALLENGE",
    "ARC_EASY",
    "BIOLOGY_WORDS",
    "CAPITAL_PROMPT",
    "CAPITAL_SECTIONS",
    "CHEMISTRY_WORDS",
    "CLOZE_TEMPLATE",
    "DEFAULT_MAX_ITEMS_PER_TASK",
    "DEFAULT_TASK_KINDS",
    "ELEMENTS_DB",
    "ELEMENT_PHRASING",
    "ELEMENT_PROMPTS",
    "GENSIM_TEST_DATA",
    "MAX_ATOMIC_NUMBER",
    "MIN_HITS_PARAGRAPH",
    "MIN_HITS_QUESTION",
    "MIN_PARAGRAPH_WORDS",
    "MMLU",
    "MMLU_BIO_SUBJECTS",
    "MMLU_CHEM_SUBJECTS",
    "MMLU_CONTINUATION_TEMPLATE",
    "MMLU_CYBER_SUBJECTS",
    "MMLU_OTHER_SUBJECTS",
    "OLMO_DATASETS",
    "PROMPT_WORDS",
    "QA_TEMPLATE",
    "QUESTIONS_WORDS",
    "SCIENCE_SUBJECT",
    "SCIQ",
    "TASK_KINDS",
    "TOPICS",
    "TOPIC_ABBREVIATIONS",
    "WIKIPEDIA_DUMP",
    "Paragraph",
    "StudyData",
    "arc_items",
    "build_study_data",
    "capital_facts",
    "capital_pairs",
    "check_topic",
    "cloze_items",
    "element_facts",
    "elements",
    "first_words",
    "keyed_rng",
    "lexicon",
    "locate",
    "mmlu_tasks",
    "openbookqa_items",
    "prose_paragraphs",
    "question_topic",
    "sample_items",
    "sciq_items",
    "sciq_supports",
    "split_by_topic",
    "topic_hits",
    "topic_of",
    "wikipedia_paragraphs",
]
