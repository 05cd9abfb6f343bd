"""A run's subject: the model and the data its steps read, whatever made them (the organism, a
real model with real data, a user's checkpoint pair).

    >>> subject = Subject(model, "SmolLM2-135M", {"bio": Task(bio, "letter")}, ("bio",),
    ...                   {"forget": bio_prompts, "retain": wiki_prompts}, layer=7)  # doctest: +SKIP
    >>> subject.tasks_for("rmu_random_ablated")                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.models import Model


@dataclasses.dataclass(frozen=True)
class Task:
    """One knowledge test: its questions and how they are scored (``mode`` and, in continuation
    mode, the prompt template, as :func:`evaluation.mcq_accuracy` takes them)."""

    items: Sequence[MCQItem]
    mode: str
    prompt_template: str = QA_TEMPLATE


# The tasks of every variant, or a function of a variant's name giving its tasks.
TasksOf = Mapping[str, Task] | Callable[[str], Mapping[str, Task]]


@dataclasses.dataclass
class Subject:
    """What a run studies.

    ``tasks`` are the knowledge tests (forget tasks first), ``forget_tasks`` those the gap
    recovered is measured on; ``prompts`` the ``forget`` and ``retain`` prompt sets (directions
    are read on the forget prompts, the layer profile compares both); ``layer`` is where the
    junk direction is read (residual stream after that block); ``forget_corpora`` and
    ``retain_corpora`` (one per topic) what unlearning trains on. ``variants_folder`` is the
    sub-run whose weights the run's variants come from ("" = the run itself) and ``unlearned``
    the unlearned model's name (``rmu`` when the toolkit trained RMU). ``report_only``
    tasks are scored for the plain models only, and with ``controls_on_forget_only`` the
    random controls only on the forget tasks (the real-model study's choices, for time)."""

    model: Model
    title: str
    tasks: dict[str, Task]
    forget_tasks: tuple[str, ...]
    prompts: dict[str, list[str]]
    layer: int
    generation_prompts: list[str] = dataclasses.field(default_factory=list)
    forget_corpora: list[list[str]] = dataclasses.field(default_factory=list)
    retain_corpora: list[list[str]] = dataclasses.field(default_factory=list)
    batch_size: int = 16
    max_new_tokens: int = 32
    seed: int = 0
    variants_folder: str = ""
    unlearned: str = "rmu"
    report_only: tuple[str, ...] = ()
    controls_on_forget_only: bool = False

    @property
    def gap_tasks(self) -> tuple[str, ...]:
        """The forget tasks every variant is scored on: gap recovered is their mean."""
        return tuple(t for t in self.forget_tasks if t not in self.report_only)

    def tasks_for(self, variant: str) -> dict[str, Task]:
        """The tasks ``variant`` is scored on: all of them for the plain models (``base`` and
        the unlearned one); the others skip the ``report_only`` tasks and, with
        ``controls_on_forget_only``, a random control is scored on the forget tasks only."""
        if variant in ("base", self.unlearned):
            return self.tasks
        kept = [n for n in self.tasks if n not in self.report_only]
        if self.controls_on_forget_only and "random" in variant:
            kept = [n for n in kept if n in self.forget_tasks]
        return {name: self.tasks[name] for name in kept}
