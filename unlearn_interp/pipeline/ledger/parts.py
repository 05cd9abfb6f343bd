"""The recovery ledger's parts: each attack family applied to the unlearned model and to its
controls, scored question by question.

A part is a function of a :class:`LedgerContext` returning per-item rows (columns
:data:`ITEM_COLUMNS`: ``attack, setting, model, step, task, item, correct, seed``);
:data:`PARTS` lists the deterministic ones and :data:`SEEDED_PARTS` those run once per
fine-tuning seed (``seed`` is empty for the first); :func:`planned_parts` puts them in the
order the ledger runs them, and :func:`run_parts` runs those not finished before, each a
resumable step writing its own rows (``tables/ledger_<part>_per_item.csv``), in this process or
on an executor's workers (:mod:`unlearn_interp.executors`); :mod:`.table` turns the rows into
the table.
Every attack goes through :class:`~unlearn_interp.variants.Variant` (weights swapped in and
hooks installed for one ``with`` block), so no attack outlives its own scoring.

    >>> rows = ablation_part(context)                                     # doctest: +SKIP
    >>> rows.groupby(["setting", "model", "task"])["correct"].mean()       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from unlearn_interp import attacks, directions
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.attacks.finetune import FinetuneConfig, finetune_curve
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor, SerialExecutor, TaskFailed
from unlearn_interp.interventions import ablation_hooks
from unlearn_interp.models import Model
from unlearn_interp.pipeline.ledger.subjects import LedgerSubject
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.steps.accuracy import accuracy_tables
from unlearn_interp.pipeline.subject import Task
from unlearn_interp.pipeline.variants import RunVariants
from unlearn_interp.variants import Hook, Variant

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("attack", "setting", "model", "step", "task", "item", "correct", "seed")


@dataclasses.dataclass
class LedgerContext:
    """What every part needs: the run the ledger writes to, what it attacks, how to score."""

    run: RunDir
    subject: LedgerSubject
    seed: int = 0
    batch_size: int = 32
    bits: Sequence[int] = (8, 4)
    finetune: Sequence[FinetuneConfig] = (FinetuneConfig(),)
    finetune_seeds: Sequence[int] = (0,)
    # ledger model name -> its per-item rows before fine-tuning (step 0 of every curve from it)
    start_items: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> Model:
        return self.subject.model

    @property
    def variants(self) -> RunVariants:
        return self.subject.variants

    def starts(self) -> dict[str, Variant]:
        """The plain unlearned and base variants, by ledger model name."""
        starts = {"unlearned": self.variants.unlearned, "base": "base"}  # ledger name -> variant
        return {model: self.variants.variant(name) for model, name in starts.items()}

    @functools.cached_property
    def candidates(self) -> directions.Candidates:
        """Difference-in-means candidates at every layer on the hazardous prompts (one pass
        of base and unlearned), computed once per ledger."""
        starts = self.starts()
        return directions.candidate_directions(
            self.model,
            starts["base"],
            starts["unlearned"],
            self.subject.hazardous_prompts,
            control_vectors=self.variants.control_vectors(),
            batch_size=self.batch_size,
        )


def ledger_tasks(context: LedgerContext) -> dict[str, Task]:
    """The tasks every model is scored on: the forget questions about T (``forget_T``) and
    about V (``forget_V``, never trained on by any attack), and the retain questions
    (``retain``)."""
    return context.subject.tasks


def score(
    context: LedgerContext, keyed: Mapping[tuple[str, str, str, int], Variant]
) -> pd.DataFrame:
    """Per-item rows of each ``(attack, setting, model, step) -> variant`` on every ledger
    task, through the one scoring loop."""
    tasks = ledger_tasks(context)
    named = {f"{i}": v for i, v in enumerate(keyed.values())}
    renamed = [dataclasses.replace(v, name=name) for name, v in named.items()]
    _, items = accuracy_tables(context.model, renamed, tasks, context.batch_size, progress=False)
    return per_item_rows(items, dict(zip(named, keyed, strict=True)))


def per_item_rows(items: pd.DataFrame, keys: Mapping[str, tuple]) -> pd.DataFrame:
    """``accuracy_tables``' per-item rows with their variant names replaced by ledger keys."""
    key = pd.DataFrame([keys[v] for v in items["variant"]], columns=list(ITEM_COLUMNS[:4]))
    rows = pd.concat([key, items[["task", "item"]].reset_index(drop=True)], axis=1)
    rows["correct"] = items["correct"].astype(int).to_numpy()
    rows["seed"] = float("nan")  # a fine-tuning part sets its seed
    return rows[list(ITEM_COLUMNS)]


# ---------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------


def reference_part(context: LedgerContext) -> pd.DataFrame:
    """The plain unlearned and base models: the two ends of the gap."""
    return score(context, {("none", "plain", m, 0): v for m, v in context.starts().items()})


def ablation_part(context: LedgerContext) -> pd.DataFrame:
    """Each ablation (:func:`ablation_settings`) on the unlearned and the base model."""
    keyed = {
        ("ablation", setting, model, 0): start.with_hooks(hooks)
        for setting, hooks in ablation_settings(context).items()
        for model, start in context.starts().items()
    }
    return score(context, keyed)


def ablation_settings(context: LedgerContext) -> dict[str, Sequence[Hook]]:
    """The ablations, each followed by its matched random control: the run's junk direction
    and its norm-matched random direction (projected out at every block input, attention
    output and MLP output); the span of the junk directions at the outputs of the blocks RMU
    updated and a random subspace of the same dimension; every layer's own candidate removed
    from that layer on (:func:`attacks.per_layer_ablation`) and random directions in the
    same places."""
    removed = context.variants.removed
    subspace = junk_subspace(context)
    random = directions.random_subspace_control(subspace, seed=context.seed)
    candidates, seed = context.candidates, context.seed
    return {
        "junk_direction": ablation_hooks(removed("ablated")),
        "random_direction": ablation_hooks(removed("random_ablated")),
        f"junk_subspace_k{subspace.k}": ablation_hooks(subspace.basis),
        f"random_subspace_k{subspace.k}": ablation_hooks(random.basis),
        "per_layer": attacks.per_layer_ablation(candidates),
        "random_per_layer": attacks.random_per_layer_ablation(candidates, seed=seed),
    }


def junk_subspace(context: LedgerContext) -> directions.Subspace:
    """The run's subspace when its directions step extracted one, else the span of the
    candidates at the RMU run's update layers (the run holding the attacked weights)."""
    run = context.variants.run
    if run.path(RunFiles.SUBSPACE).is_file():
        return directions.Subspace.load(run.path(RunFiles.SUBSPACE))
    layers = directions.subspace_layers(run.config()["rmu"])
    return context.candidates.subspace(layers)


def quantize_part(context: LedgerContext) -> pd.DataFrame:
    """Round-to-nearest group quantisation (:func:`attacks.quantized_variant`) at each of
    ``context.bits`` of the unlearned and the base model."""
    keyed = {
        (
            "quantize",
            f"rtn_{bits}bit_g{attacks.DEFAULT_GROUP_SIZE}",
            model,
            0,
        ): attacks.quantized_variant(context.model, start, bits)
        for bits in context.bits
        for model, start in context.starts().items()
    }
    return score(context, keyed)


def finetune_part(context: LedgerContext, seed: int) -> pd.DataFrame:
    """Relearning on T (RTT: trained on the subject's text about T, scored on V too) and
    benign fine-tuning (the same schedule on its benign text), each with every config of
    ``context.finetune`` with its batches drawn by ``seed``, on the unlearned and base models
    and the subject's controls (the organism's oracle twin)."""
    subject = context.subject
    texts = {"relearn": subject.relearn_texts, "benign_finetune": subject.benign_texts}
    texts = {attack: t for attack, t in texts.items() if t}  # no text: the subject's notes say so
    configs = [dataclasses.replace(cfg, seed=seed) for cfg in context.finetune]
    frames = [
        curve_rows(context, (attack, finetune_setting(cfg), name), model, start, texts[attack], cfg)
        for attack in texts
        for cfg in configs
        for name, (model, start) in finetuned_models(context).items()
    ]
    return pd.concat(frames, ignore_index=True).assign(seed=seed)


def finetune_setting(cfg: FinetuneConfig) -> str:
    """``"lr=0.0001,params=all,steps=100"``: what tells one fine-tuning setting from another
    (its seed is the rows' ``seed``)."""
    return f"lr={cfg.lr:g},params={cfg.params},steps={cfg.steps}"


def finetuned_models(context: LedgerContext) -> dict[str, tuple[Model, Variant]]:
    """Ledger model name -> (network, variant to fine-tune): the unlearned and base variants,
    then the subject's controls as they are (the organism's oracle twin; none for a real
    model)."""
    mine = {name: (context.model, start) for name, start in context.starts().items()}
    return {**mine, **context.subject.controls()}


def curve_rows(
    context: LedgerContext,
    key: tuple[str, str, str],
    model: Model,
    start: Variant,
    texts: Sequence[str],
    cfg: FinetuneConfig,
) -> pd.DataFrame:
    """Per-item rows at every evaluation of one fine-tuning run (:func:`finetune_curve`,
    which puts the weights back afterwards). Step 0 is the model before fine-tuning, the same
    for every run from it: scored once per ledger (``context.start_items``)."""
    scored: list[pd.DataFrame] = []
    tasks = ledger_tasks(context)

    def evaluate(network: Model) -> dict[str, float]:
        items = context.start_items.get(key[2]) if not scored else None
        if items is None:
            _, items = accuracy_tables(
                network, [Variant("model")], tasks, context.batch_size, progress=False
            )
        context.start_items.setdefault(key[2], items)
        scored.append(items)
        return items.groupby("task", sort=False)["correct"].mean().to_dict()

    curve = finetune_curve(model, start, texts, cfg, evaluate)
    frames = [
        per_item_rows(items, {"model": (*key, int(step))})
        for step, items in zip(curve["step"], scored, strict=True)
    ]
    return pd.concat(frames, ignore_index=True)


# Part name -> what it computes, in the order the ledger runs them: the deterministic parts,
# then each seeded part once per fine-tuning seed (``<name>_seed<seed>``).
PARTS: dict[str, Callable[[LedgerContext], pd.DataFrame]] = {
    "reference": reference_part,
    "ablation": ablation_part,
    "quantize": quantize_part,
}
SEEDED_PARTS: dict[str, Callable[[LedgerContext, int], pd.DataFrame]] = {
    "finetune": finetune_part,
}


def part_names(finetune_seeds: Sequence[int]) -> list[str]:
    """Every part's name, in the order the ledger runs them."""
    seeded = [f"{name}_seed{seed}" for name in SEEDED_PARTS for seed in finetune_seeds]
    return [*PARTS, *seeded]


def planned_parts(context: LedgerContext) -> dict[str, Callable[[], pd.DataFrame]]:
    """Part name -> its computation on ``context`` (:func:`part_names` order); the parts are
    looked up when called, so a replaced entry of :data:`PARTS` is the one that runs."""
    plan: dict[str, Callable[[], pd.DataFrame]] = {
        name: functools.partial(lambda n: PARTS[n](context), name) for name in PARTS
    }
    for name in SEEDED_PARTS:
        for seed in context.finetune_seeds:
            run = functools.partial(lambda n, s: SEEDED_PARTS[n](context, s), name, seed)
            plan[f"{name}_seed{seed}"] = run
    return plan


# ---------------------------------------------------------------------------------------------
# Running the parts: each a resumable step, in this process or on an executor's workers
# ---------------------------------------------------------------------------------------------


class LedgerPartsFailed(UnlearnInterpError):
    """Ledger parts that failed on every attempt on an executor's workers (``failed``: part
    name -> :class:`~unlearn_interp.executors.TaskFailed`), raised once every other part was
    written, so the ledger run again (on any executor) computes only these."""

    def __init__(self, failed: Mapping[str, TaskFailed]) -> None:
        self.failed = dict(failed)
        said = "; ".join(f"{name}: {f.error} ({f.attempts} attempts)" for name, f in failed.items())
        super().__init__(
            f"ledger part(s) failed on every attempt, so there is no ledger table ({said}); every "
            "other part is written: run the ledger again to compute only these"
        )


def part_file(name: str) -> str:
    """The per-item rows of one ledger part: ``tables/ledger_<part>_per_item.csv``."""
    return RunFiles.table(f"ledger_{name}_per_item")


def part_step(name: str) -> str:
    """The step name under which a part's time is recorded: ``ledger_<part>``."""
    return f"ledger_{name}"


def part_done(run: RunDir, name: str) -> bool:
    """Whether part ``name`` finished before: its rows written and its time recorded (what
    :meth:`RunDir.step` skips on)."""
    return run.done([part_file(name)]) and part_step(name) in run.seconds()


def read_parts(run: RunDir, names: Sequence[str]) -> pd.DataFrame:
    """The per-item rows of the parts ``names``, in that order."""
    frames = [pd.read_csv(run.path(part_file(name))) for name in names]
    return pd.concat([f for f in frames if not f.empty], ignore_index=True)


@dataclasses.dataclass(frozen=True)
class PartTask:
    """A part's per-item rows and the seconds it took, by part name: the task an executor maps
    over the unfinished parts. It holds the plan, and through it the context with its models,
    so a Ray executor puts them in the object store once for every part."""

    plan: Mapping[str, Callable[[], pd.DataFrame]]

    def __call__(self, name: str) -> tuple[pd.DataFrame, float]:
        start = time.perf_counter()
        rows = self.plan[name]()
        return rows, time.perf_counter() - start


def run_parts(
    context: LedgerContext, force: bool = False, executor: Executor | None = None
) -> list[str]:
    """Compute every part not finished before (all of them when ``force``) through ``executor``
    (default serial: here, in :func:`part_names` order) and return their names. This process
    writes each part's rows and records its time as it finishes, so an interrupted ledger
    resumes at the parts it lacks, whichever executor ran the others. Parts that fail on every
    attempt raise :class:`LedgerPartsFailed` after every other part was written.

    >>> run_parts(context, executor=make_executor("ray", workers=2))        # doctest: +SKIP
    ['reference', 'ablation', 'quantize', 'finetune_seed0']
    """
    plan = planned_parts(context)
    run = context.run
    todo = [name for name in plan if force or not part_done(run, name)]
    for name in [name for name in plan if name not in todo]:
        log.info("ledger part %s skipped: %s already written", name, part_file(name))
    if not todo:
        return todo  # nothing to run: no executor started
    for name in todo if force else ():  # a forced ledger cut short must not look finished
        run.path(part_file(name)).unlink(missing_ok=True)
    executor = executor or SerialExecutor()
    if executor.name != "serial" and any(name not in PARTS for name in todo):
        context.subject.controls()  # loaded (an oracle pretrained) once, here, then shipped
    failed: dict[str, TaskFailed] = {}
    for index, result in executor.run(PartTask(plan), todo, desc="ledger_part"):
        if isinstance(result, TaskFailed):
            failed[todo[index]] = result
        else:
            write_part(run, todo[index], *result)
    if failed:
        raise LedgerPartsFailed({name: failed[name] for name in todo if name in failed})
    return todo


def write_part(run: RunDir, name: str, rows: pd.DataFrame, seconds: float) -> None:
    """One finished part: its per-item rows written atomically, then its time recorded."""
    run.write_table(f"ledger_{name}_per_item", rows)
    run.record_seconds(part_step(name), seconds)
    log.info("ledger part %s written (%.1f s)", name, seconds)


__all__ = [
    "ITEM_COLUMNS",
    "PARTS",
    "SEEDED_PARTS",
    "LedgerContext",
    "LedgerPartsFailed",
    "PartTask",
    "ablation_settings",
    "ledger_tasks",
    "part_done",
    "part_file",
    "part_names",
    "planned_parts",
    "read_parts",
    "run_parts",
    "score",
]
