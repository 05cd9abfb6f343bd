"""The audit of any unlearned model: a (base, unlearned) pair and forget/retain questions, put
through every instrument of the toolkit (``unlearn-interp audit``).

``pair -> where did unlearning write (the layer chosen there) -> directions (junk direction,
junk subspace of the changed blocks, random controls) -> accuracy with intervals (the ablations,
their controls, the base model under the same ablations) -> layer profile -> generations ->
depth profile -> recovery ledger``

The unlearned model is a second checkpoint (or a run directory of ``unlearn-interp unlearn``, or
the changed tensors themselves from a notebook); nothing about the method that made it is
assumed. It is called ``rmu`` when it comes from an RMU run of the toolkit and ``unlearned``
otherwise. A real pair has no oracle twin: the ledger reads relearning against unrelated text.

    >>> metrics = audit("runs/audit", base="smollm2-135m", unlearned="runs/rmu",
    ...                 forget_mcq=["chem.jsonl"], retain_mcq=["geo.jsonl"])   # doctest: +SKIP
    >>> metrics = audit_model("runs/audit", model, result.unlearned_weights, tasks,
    ...                       forget_tasks=["chem"])                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from unlearn_interp import data, models
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import qa_prompt
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.audit.changes import WeightChanges, chosen_layer, subspace_layers
from unlearn_interp.pipeline.audit.pair import (
    PairWeights,
    Unlearned,
    run_record,
    unlearned_source,
)
from unlearn_interp.pipeline.audit.scores import PairScores, variant_names
from unlearn_interp.pipeline.depth.step import Depth, DepthSettings, question_depth_inputs
from unlearn_interp.pipeline.ledger.step import (
    MODEL_DEMO_SETTINGS,
    Ledger,
    LedgerSettings,
    check_ledger_settings,
    question_ledger_subject,
)
from unlearn_interp.pipeline.rundir import RunDir, with_dtype
from unlearn_interp.pipeline.step import Report, Run, Step, run_pipeline, run_steps
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.steps.generations import Generations
from unlearn_interp.pipeline.steps.profile import LayerProfile
from unlearn_interp.pipeline.subject import Subject, Task

# The steps a user may leave out (``--skip``), the slow ones first.
SKIPPABLE = ("ledger", "depth", "generations", "layer_profile")
MIN_SPLIT_QUESTIONS = 4  # per forget task, for the ledger's T/V split (2 on each side)
PROMPTS = 64  # forget and retain prompts at most (directions, layer profile, similarity)
PROMPT_WORDS = 48  # a corpus document's first words make a prompt
# The depth profile on a real pair: the real-model study's settings (one shuffle, a short tuned
# lens, no relearned model: the ledger fine-tunes), at the layers of :func:`depth_layers`.
AUDIT_DEPTH = DepthSettings(
    n_shuffles=1, batch_size=16, lens_steps=30, lens_texts=16, lens_max_tokens=64, relearn=None
)


@dataclasses.dataclass(frozen=True)
class AuditData:
    """What an audit scores and reads: MCQ ``tasks`` (forget tasks named in ``forget_tasks``),
    all scored in ``mode`` (continuation mode with ``prompt_template``); the forget and retain
    corpora when given (an empty retain corpus skips benign fine-tuning; none: it trains on the
    retain questions); the forget and retain prompts when given (else a corpus's documents or
    the questions)."""

    tasks: Mapping[str, Sequence[MCQItem]]
    forget_tasks: Sequence[str]
    mode: str = "letter"
    forget_corpus: Sequence[str] | None = None
    retain_corpus: Sequence[str] | None = None
    prompt_template: str = QA_TEMPLATE
    forget_prompts: Sequence[str] | None = None
    retain_prompts: Sequence[str] | None = None

    def __post_init__(self) -> None:
        unknown = [t for t in self.forget_tasks if t not in self.tasks]
        if not self.forget_tasks or unknown:
            raise UnlearnInterpError(
                f"forget task(s) {list(unknown) or '(none)'} must name MCQ tasks of {sorted(self.tasks)}"
            )
        if len(self.forget_tasks) == len(self.tasks):
            raise UnlearnInterpError("an audit needs retain questions (--retain-mcq) too")


def depth_layers(n_layers: int, chosen: int) -> tuple[int, ...]:
    """The layers the audit's depth profile measures: the first, a quarter, half and three
    quarters of the way, the last, and the chosen layer."""
    quarters = {0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1}
    return tuple(sorted(quarters | {chosen}))


def audit_subject(
    model: models.Model, audit_data: AuditData, unlearned_name: str, batch_size: int, seed: int
) -> Subject:
    """The pair as a run's subject (the layer is set once the change step chose it)."""
    template = audit_data.prompt_template
    tasks = {
        n: Task(list(items), audit_data.mode, template) for n, items in audit_data.tasks.items()
    }
    forget = [n for n in tasks if n in audit_data.forget_tasks]
    ordered = {n: tasks[n] for n in [*forget, *(n for n in tasks if n not in forget)]}
    retain_tasks = [t for n, t in ordered.items() if n not in forget]
    prompts = {
        "forget": list(audit_data.forget_prompts or [])
        or _prompts(audit_data.forget_corpus, [ordered[n] for n in forget]),
        "retain": list(audit_data.retain_prompts or [])
        or _prompts(audit_data.retain_corpus, retain_tasks),
    }
    retain = [] if audit_data.retain_corpus is None else [list(audit_data.retain_corpus)]
    return Subject(
        model=model,
        title=models.model_name(model),
        tasks=ordered,
        forget_tasks=tuple(forget),
        prompts=prompts,
        layer=0,
        generation_prompts=prompts["forget"][:4],
        retain_corpora=retain,
        batch_size=batch_size,
        seed=seed,
        unlearned=unlearned_name,
        controls_on_forget_only=True,
    )


def _prompts(corpus: Sequence[str] | None, tasks: Sequence[Task]) -> list[str]:
    """Up to :data:`PROMPTS` prompts: a corpus's documents (their first :data:`PROMPT_WORDS`
    words), else the questions as the run scores them."""
    if corpus:
        return [" ".join(text.split()[:PROMPT_WORDS]) for text in corpus[:PROMPTS]]
    contexts = [
        qa_prompt(item, task.prompt_template)
        if task.mode == "continuation"
        else data.mcq_prompt(item)
        for task in tasks
        for item in task.items
    ]
    return contexts[:PROMPTS]


def audit_steps(
    subject: Subject,
    layer: int | None,
    subspace: Sequence[int],
    unlearned: Unlearned,
    skip: Sequence[str] = (),
    ledger: LedgerSettings = MODEL_DEMO_SETTINGS,
    executor: Executor | None = None,
) -> list[Step]:
    """The audit's steps, in order, leaving out those named in ``skip``."""
    names = variant_names(subject.unlearned)
    profiled = names[:3] + (f"{subject.unlearned}_subspace_ablated",)
    depth = dataclasses.replace(
        AUDIT_DEPTH, layers=depth_layers(models.n_layers(subject.model), subject.layer)
    )
    optional: dict[str, Step] = {
        "layer_profile": LayerProfile(profiled, subject.title),
        "generations": Generations(profiled, "Greedy continuations of forget prompts"),
        "depth": Depth(question_depth_inputs, depth),
        "ledger": Ledger(question_ledger_subject, ledger, executor),
    }
    steps: list[Step] = [
        PairWeights(unlearned),
        WeightChanges(layer),
        Directions(subspace_layers=tuple(subspace)),
        PairScores(),
    ]
    return steps + [step for name, step in optional.items() if name not in skip]


def audit_model(
    out: str | os.PathLike,
    model: models.Model,
    unlearned: Unlearned,
    audit_data: AuditData,
    *,
    layer: int | None = None,
    skip: Sequence[str] = (),
    batch_size: int = 8,
    seed: int = 0,
    ledger: LedgerSettings = MODEL_DEMO_SETTINGS,
    executor: Executor | None = None,
    force: bool = False,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit of ``model`` (the base, already loaded) against ``unlearned`` on
    ``audit_data``; returns ``metrics.json``'s content (see :func:`audit`)."""
    _check_audit(model, audit_data, layer, skip)
    run_dir = RunDir(out, force=force)
    recorded = {
        "job": "audit",
        "model": models.model_name(model),
        "layer": layer,
        "seed": seed,
        "mode": audit_data.mode,
        **(settings or {}),
        "tasks": {k: len(v) for k, v in audit_data.tasks.items()},
    }
    run_dir.check_settings(with_dtype(recorded, models.model_dtype(model)))
    name = unlearned_name(unlearned)
    subject = audit_subject(model, audit_data, name, batch_size, seed)
    run_steps(Run(run_dir, subject, progress), [PairWeights(unlearned), WeightChanges(layer)])
    subject = dataclasses.replace(subject, layer=chosen_layer(run_dir))
    steps = audit_steps(subject, layer, subspace_layers(run_dir), unlearned, skip, ledger, executor)
    if "ledger" not in skip:
        check_ledger_settings(run_dir, ledger)
    return run_pipeline(Run(run_dir, subject, progress), steps, audit_report(subject))


def unlearned_name(unlearned: Unlearned) -> str:
    """``rmu`` for an RMU run directory of the toolkit, ``unlearned`` for anything else."""
    kind, path = unlearned_source(unlearned)
    return "rmu" if kind == "run" and "rmu" in run_record(path) else "unlearned"


def _check_audit(
    model: models.Model, audit_data: AuditData, layer: int | None, skip: Sequence[str]
) -> None:
    """One sentence for each way the audit's arguments can be wrong, before any work."""
    if layer is not None:
        models.check_layer(model, layer)
    unknown = sorted(set(skip) - set(SKIPPABLE))
    if unknown:
        raise UnlearnInterpError(f"--skip takes {', '.join(SKIPPABLE)}; got {unknown}")
    if "ledger" in skip:
        return
    for name in audit_data.forget_tasks:
        distinct = len({item.question for item in audit_data.tasks[name]})
        if distinct < MIN_SPLIT_QUESTIONS:
            raise UnlearnInterpError(
                f"forget task {name!r} has {distinct} distinct questions; the ledger splits them "
                f"into T and V and needs at least {MIN_SPLIT_QUESTIONS} (or --skip ledger)"
            )


def audit_report(subject: Subject) -> Report:
    """The audit's report frame: what was audited, and the facts of its metrics.json."""
    forget = list(subject.forget_tasks)
    retain = [t for t in subject.tasks if t not in subject.forget_tasks]
    intro = (
        f"An audit of an unlearned model against its base, {subject.title}: where unlearning "
        f"wrote, whether the junk direction and subspace it left bring the forgotten answers "
        f"back (against random controls and the base model under the same ablations), where "
        f"the answers still are layer by layer, and which attacks recover them. Forget tasks: "
        f"{', '.join(forget)}; retain tasks: {', '.join(retain)}."
    )
    facts = {"forget_tasks": forget, "gap_tasks": list(subject.gap_tasks), "retain_tasks": retain}
    return Report(f"Audit: {subject.title}, removed or hidden?", intro, facts)


def load_audit_data(
    forget_mcq: Sequence[str],
    retain_mcq: Sequence[str],
    mode: str,
    forget_corpus: str | None = None,
    retain_corpus: str | None = None,
    prompt_template: str = QA_TEMPLATE,
    forget_prompts: str | None = None,
    retain_prompts: str | None = None,
) -> AuditData:
    """The audit's data from files: one task per MCQ file (named by its file name), the corpora
    and prompts when given (an empty retain corpus is kept empty: benign fine-tuning is then
    skipped)."""
    tasks: dict[str, list[MCQItem]] = {}
    forget = []
    for path, is_forget in [*((p, True) for p in forget_mcq), *((p, False) for p in retain_mcq)]:
        name = _task_name(path, tasks)
        tasks[name] = data.load_mcq(path)
        forget += [name] if is_forget else []
    prompts = [data.load_prompts(p) if p else None for p in (forget_prompts, retain_prompts)]
    corpora = (_corpus(forget_corpus), _corpus(retain_corpus))
    return AuditData(tasks, forget, mode, *corpora, prompt_template, *prompts)


def _task_name(path: str, taken: Mapping[str, Any]) -> str:
    name = os.path.basename(path).split(".")[0]
    return name if name not in taken else f"{name}_{len(taken)}"


def _corpus(path: str | None) -> list[str] | None:
    """A corpus file's documents; an empty one (no usable document) is an empty list."""
    if path is None:
        return None
    if not os.path.exists(path):
        raise UnlearnInterpError(f"corpus {path} does not exist")
    try:
        return data.load_corpus(path)
    except UnlearnInterpError as err:
        if "contains no non-blank documents" in str(err):
            return []
        raise


def audit(
    out: str | os.PathLike,
    *,
    base: str | os.PathLike,
    unlearned: str | os.PathLike,
    forget_mcq: Sequence[str],
    retain_mcq: Sequence[str],
    forget_corpus: str | None = None,
    retain_corpus: str | None = None,
    layer: int | None = None,
    mode: str = "letter",
    prompt_template: str = QA_TEMPLATE,
    forget_prompts: str | None = None,
    retain_prompts: str | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> dict[str, Any]:
    """The audit of checkpoint (or run directory, or asset) ``unlearned`` against ``base`` on
    the questions of ``forget_mcq`` and ``retain_mcq`` (files), reading the corpora and prompt
    files when given;
    returns ``metrics.json``'s content. ``options`` as :func:`audit_model` takes them (``skip``,
    ``batch_size``, ``seed``, ``executor``, ``force``, ``progress``).

    >>> audit("runs/audit", base="smollm2-135m", unlearned="runs/rmu",
    ...       forget_mcq=["chem.jsonl"], retain_mcq=["geo.jsonl"], mode="continuation")  # doctest: +SKIP
    """
    audit_data = load_audit_data(
        forget_mcq,
        retain_mcq,
        mode,
        forget_corpus,
        retain_corpus,
        prompt_template,
        forget_prompts,
        retain_prompts,
    )
    unlearned_source(unlearned)  # a wrong path is one sentence before the model loads
    model = models.load_model(base, device=device, dtype=dtype)
    settings = {"base": str(base), "unlearned": str(unlearned)}
    return audit_model(out, model, unlearned, audit_data, layer=layer, settings=settings, **options)
