"""What the recovery ledger attacks, for each kind of run: one :class:`LedgerSubject`.

A subject is the model, the unlearned and base variants (and the junk direction, subspace and
control vectors beside them), the three tasks every attacked model is scored on (``forget_T``,
``forget_V``, ``retain``), the hazardous prompts the per-layer candidates are read on, the
relearning text about T, the benign (unrelated) text, and the extra fine-tuning controls.

* An organism demo run (job ``demo``, :func:`organism_subject`): the hazardous facts split into
  T and V by entity, T's documents as relearning text, the retain corpus as benign text, and
  the **oracle twin** (pretrained without V's texts) as the fine-tuning control.
* A real model (:func:`question_subject`, e.g. the real-model study's first seed): the
  questions of the run subject's gap tasks split into T and V by a seeded split of their groups
  (:func:`split_by_group`); relearning text = T's questions with their correct answers written
  out, as the continuation scorer reads them (Deeb & Roger's RTT); benign text = the subject's
  retain corpus (Lucki et al.'s unrelated-text control). A real model has no oracle: its
  fine-tuning controls are the base model and the unrelated-text fine-tuning.

    >>> subject = question_subject(run.variants, run.subject, seed=0)               # doctest: +SKIP
    >>> {name: len(task.items) for name, task in subject.tasks.items()}           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from unlearn_interp import organism
from unlearn_interp.data import MCQItem, mcq_prompt
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import qa_prompt
from unlearn_interp.models import Model
from unlearn_interp.organism.oracle import (
    FactSplit,
    load_oracle,
    split_facts,
    split_items,
    t_documents,
)
from unlearn_interp.pipeline.subject import Subject, Task
from unlearn_interp.pipeline.variants import RunVariants
from unlearn_interp.real_data import keyed_rng, sample_items
from unlearn_interp.variants import Variant

FORGET_TASKS = ("forget_T", "forget_V")  # the ledger's forget tasks: the facts of T and of V
# Extra fine-tuning controls by ledger model name: (network, variant to fine-tune).
Controls = Callable[[], dict[str, tuple[Model, Variant]]]
# A real-model item as scored: its question is the whole context, so one task can hold items of
# tasks with different prompt templates.
CONTEXT_TEMPLATE = "{question}"
CONTINUATION = "continuation"
# Questions scored per task of the run and ledger task on a real model (a seeded sample of each
# task's T half, V half, and of each retain task). Chosen by run time alone, before any recovery
# number was seen: scoring took 0.9 s per question and a fine-tuning step 8-50 s on one shared
# CPU core (2 cores, 4-8 processes), and the ledger scores about 36 models; V, the headline,
# gets the most. Relearning trains on every T question, scored or not.
QUESTION_ITEMS = {"forget_T": 5, "forget_V": 15, "retain": 10}


def no_controls() -> dict[str, tuple[Model, Variant]]:
    """A subject with no fine-tuning control besides the base model."""
    return {}


@dataclasses.dataclass
class LedgerSubject:
    """What the ledger attacks: ``model`` with the run's ``variants`` (the unlearned model and
    ``base``, the model before unlearning), scored on ``tasks`` (``forget_T``, ``forget_V``,
    ``retain``); the per-layer candidates are read on ``hazardous_prompts``; relearning trains
    on ``relearn_texts`` (about T only), benign fine-tuning on ``benign_texts`` (none: that
    attack is skipped); ``controls()`` gives the extra models fine-tuning is also applied to
    (the oracle twin), loaded on first use; ``notes`` are what the report must say about them."""

    model: Model
    variants: RunVariants
    tasks: dict[str, Task]
    hazardous_prompts: Sequence[str]
    relearn_texts: Sequence[str]
    benign_texts: Sequence[str]
    controls: Controls = no_controls
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# The organism
# ---------------------------------------------------------------------------------------------


def organism_subject(
    variants: RunVariants,
    org: organism.Organism,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> LedgerSubject:
    """The organism run's unlearned model: hazardous facts split by entity with ``seed``, T's
    documents as relearning text, the oracle twin (cached beside the organism) as control.

    >>> subject = organism_subject(RunVariants(run), org, seed=0)                 # doctest: +SKIP
    """
    split = split_facts(org.world, seed=seed)
    parts = split_items(org, split)
    sets = {"forget_T": parts["T"], "forget_V": parts["V"], "retain": org.benign_mcq}
    oracle = OracleTwin(org, split, cache_dir, progress)
    return LedgerSubject(
        model=org.model,
        variants=variants,
        tasks={name: Task(items, org.mcq_mode, org.qa_template) for name, items in sets.items()},
        hazardous_prompts=org.hazardous_prompts,
        relearn_texts=t_documents(org, split),
        benign_texts=org.retain_corpus,
        controls=oracle,
    )


@dataclasses.dataclass
class OracleTwin:
    """The organism's fine-tuning control, ``{"oracle": (network, variant)}``: its oracle twin
    for ``split``, loaded from the cache beside the organism (pretrained and cached when
    missing) on the first call and kept. A plain object rather than a closure, so a ledger
    shipped to an executor's workers pickles, taking the loaded twin with it."""

    org: organism.Organism
    split: FactSplit
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    model: Model | None = dataclasses.field(default=None, repr=False)

    def __call__(self) -> dict[str, tuple[Model, Variant]]:
        if self.model is None:
            self.model = load_oracle(self.org, self.split, self.cache_dir, self.progress).model
        return {"oracle": (self.model, Variant("oracle"))}


# ---------------------------------------------------------------------------------------------
# A real model
# ---------------------------------------------------------------------------------------------


def question_subject(
    variants: RunVariants,
    subject: Subject,
    seed: int,
    items: Mapping[str, int] = QUESTION_ITEMS,
) -> LedgerSubject:
    """A real model's run (``variants`` of the unlearned model, ``subject`` the run's): each gap
    task's questions split into T and V by group with ``seed`` (:func:`split_by_group`), every
    T question with its answer as relearning text, the retain corpus as benign text, no oracle;
    scored on at most ``items[task]`` questions per task of the run (a seeded sample).

    >>> subject = question_subject(run.variants, run.subject, seed=0)           # doctest: +SKIP
    """
    mode = ledger_mode(subject)
    split = gap_split(subject, seed)
    sets = {
        f"forget_{part}": [
            item
            for task, halves in split.items()
            for item in sample_items(
                halves[part], items[f"forget_{part}"], seed, f"ledger:{part}:{task}"
            )
        ]
        for part in ("T", "V")
    }
    sets["retain"] = retain_questions(subject, items["retain"], seed)
    benign, notes = benign_text(subject, mode, seed)
    return LedgerSubject(
        model=subject.model,
        variants=variants,
        tasks={name: scored_task(items, mode) for name, items in sets.items()},
        hazardous_prompts=subject.prompts["forget"],
        relearn_texts=[answered(item, mode) for halves in split.values() for item in halves["T"]],
        benign_texts=benign,
        notes=notes,
    )


def benign_text(subject: Subject, mode: str, seed: int) -> tuple[list[str], tuple[str, ...]]:
    """What benign fine-tuning trains on, and what the report must say about it: the retain
    corpus; without one, the retain questions with their answers; an empty one: nothing (the
    attack is skipped)."""
    if not subject.retain_corpora:
        retain = retain_questions(subject, len(subject.tasks), seed, every=True)
        note = "no retain corpus was given: benign fine-tuning trains on the retain questions "
        return [answered(i, mode) for i in retain], (note + "with their answers written out",)
    corpus = [text for texts in subject.retain_corpora for text in texts]
    if not corpus:
        return [], ("the retain corpus is empty: benign fine-tuning was skipped",)
    return corpus, ()


def ledger_tasks_of(subject: Subject) -> list[str]:
    """The run's tasks the ledger scores: its gap tasks and the retain tasks every variant is
    scored on."""
    every = subject.tasks_for(f"{subject.unlearned}_ablated")
    return [*subject.gap_tasks, *(t for t in every if t not in subject.forget_tasks)]


def ledger_mode(subject: Subject) -> str:
    """The one scoring mode of the tasks the ledger scores (its tasks pool questions of several
    of the run's tasks, so they must share it)."""
    modes = {subject.tasks[name].mode for name in ledger_tasks_of(subject)}
    if len(modes) != 1:
        raise UnlearnInterpError(
            f"the ledger pools the run's tasks, which must share one scoring mode; they use "
            f"{sorted(modes)}"
        )
    return modes.pop()


def scored_task(items: Sequence[MCQItem], mode: str) -> Task:
    """A ledger task of questions as :func:`as_scored` left them."""
    return Task(items, mode, CONTEXT_TEMPLATE) if mode == CONTINUATION else Task(items, mode)


def gap_split(subject: Subject, seed: int) -> dict[str, dict[str, list[MCQItem]]]:
    """Gap task -> ``{"T": [...], "V": [...]}``: each of the subject's gap tasks' questions (as
    scored, :func:`as_scored`) split by group with ``seed`` (:func:`split_by_group`)."""
    return {
        name: split_by_group(as_scored(subject.tasks[name], name), seed, key=name)
        for name in subject.gap_tasks
    }


def retain_questions(subject: Subject, n: int, seed: int, every: bool = False) -> list[MCQItem]:
    """At most ``n`` questions (a seeded sample; ``every``: all of them) of each retain task
    every variant is scored on, as scored."""
    names = [t for t in ledger_tasks_of(subject) if t not in subject.forget_tasks]
    if not names:
        raise UnlearnInterpError("the run has no retain task scored for every variant")
    scored = {name: as_scored(subject.tasks[name], name) for name in names}
    if every:
        return [item for items in scored.values() for item in items]
    return [
        item
        for name, items in scored.items()
        for item in sample_items(items, n, seed, f"ledger:{name}")
    ]


def as_scored(task: Task, name: str) -> list[MCQItem]:
    """The questions of ``task`` (called ``name``) as the ledger scores them: in continuation
    mode each question replaced by its whole context (:data:`CONTEXT_TEMPLATE` then scores them
    exactly as the run does, whatever each task's template); in letter mode as they are (each
    item's prompt is built from its own question, choices and subject)."""
    if task.mode != CONTINUATION:
        return list(task.items)
    return [
        dataclasses.replace(item, question=qa_prompt(item, task.prompt_template))
        for item in task.items
    ]


def split_by_group(
    items: Sequence[MCQItem],
    seed: int,
    key: str = "",
    group: Callable[[MCQItem], str] | None = None,
) -> dict[str, list[MCQItem]]:
    """``{"T": [...], "V": [...]}``: the distinct groups of ``items`` (default a question's
    text, so a question asked twice stays on one side) shuffled by an RNG keyed on ``seed``
    and ``key``, the first half (rounded down) in T, the rest in V; items keep their order.

    >>> items = [MCQItem(q, ["a", "b"], 0) for q in ["x", "y", "z", "x"]]
    >>> {part: [i.question for i in its] for part, its in split_by_group(items, 0).items()}
    {'T': ['x', 'x'], 'V': ['y', 'z']}
    """
    group = group or (lambda item: item.question)
    groups = sorted({group(item) for item in items})
    if len(groups) < 2:
        raise UnlearnInterpError(
            f"a T/V split needs at least 2 groups of questions, got {len(groups)} ({key or 'items'})"
        )
    keyed_rng(seed, f"ledger-split:{key}").shuffle(groups)
    in_t = set(groups[: len(groups) // 2])
    return {
        "T": [i for i in items if group(i) in in_t],
        "V": [i for i in items if group(i) not in in_t],
    }


def answered(item: MCQItem, mode: str = CONTINUATION) -> str:
    """An item (as :func:`as_scored` left it) as relearning text, its correct answer after the
    prompt as the scorer reads them: ``context + " " + answer`` in continuation mode, the
    lm-evaluation-harness prompt and `` <letter>`` in letter mode."""
    if mode == CONTINUATION:
        return f"{item.question} {item.choices[item.answer]}"
    return f"{mcq_prompt(item)} {item.letters[item.answer]}"


def task_sizes(tasks: Mapping[str, Task]) -> dict[str, int]:
    """Questions per ledger task, for the run's config."""
    return {name: len(task.items) for name, task in tasks.items()}


__all__ = [
    "CONTEXT_TEMPLATE",
    "FORGET_TASKS",
    "QUESTION_ITEMS",
    "LedgerSubject",
    "OracleTwin",
    "answered",
    "as_scored",
    "gap_split",
    "no_controls",
    "organism_subject",
    "question_subject",
    "retain_questions",
    "split_by_group",
    "task_sizes",
]
