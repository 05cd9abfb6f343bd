"""The recovery ledger as a pipeline step: every attack on a run's unlearned model and on its
controls, one table.

Each attack is applied to the unlearned model and to its controls (the same attack on the base
model, the ceiling; a random direction or subspace of matched dimension and norm for an
ablation; the oracle twin, which never saw the held-out facts, for fine-tuning). Every model is
scored question by question, so accuracy and gap recovered get paired bootstrap intervals over
items (:mod:`unlearn_interp.stats`).

The work is split into parts (:mod:`.parts`), each a resumable record of the run writing its
per-item rows (``tables/ledger_<part>_per_item.csv``); the step then turns them into
``tables/ledger.csv`` and ``figures/ledger.html`` (:mod:`.table`), so an interrupted ledger
resumes at the first unfinished part. The parts run here one after another, or on the workers
of an executor (``make_executor("ray", workers=2)``, :mod:`unlearn_interp.executors`) with the
same table; a ledger started one way can be finished the other. A run directory that
recomputes the step (``RunDir(..., recompute={"ledger"})``) recomputes its parts too.

    >>> steps = [..., Ledger(OrganismLedgerSubject(org), DEFAULT_SETTINGS)]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import pandas as pd

from unlearn_interp import organism, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.ledger.parts import (
    LedgerContext,
    part_file,
    part_names,
    read_parts,
    run_parts,
)
from unlearn_interp.pipeline.ledger.subjects import (
    FORGET_TASKS,
    LedgerSubject,
    organism_subject,
    question_subject,
)
from unlearn_interp.pipeline.ledger.table import (
    FIGURE,
    FIGURE_FILE,
    ledger_markdown,
    ledger_metrics,
    ledger_table,
)
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary

LEDGER_STEP = "ledger"
# The grid, reported whole: full weights at two learning rates, and only the MLP output
# matrices (the tensors RMU edits) at the larger one.
DEFAULT_FINETUNE = (
    FinetuneConfig(steps=50, lr=1e-4, params="all"),
    FinetuneConfig(steps=50, lr=1e-3, params="all"),
    FinetuneConfig(steps=50, lr=1e-3, params="mlp_out"),
)


@dataclasses.dataclass(frozen=True)
class LedgerSettings:
    """What the ledger runs besides the run's own files: ``seed`` splits the facts into T and
    V, draws the random controls and seeds the bootstrap (``n_boot`` replicates, 95%
    percentile intervals); ``bits`` are the quantisation widths; ``finetune`` the fine-tuning
    runs (each on every model, for relearning and for benign fine-tuning; the whole grid is
    reported), each run once per seed of ``finetune_seeds`` (the order its batches are drawn
    in; fine-tuning rows' intervals resample items and these seeds); ``batch_size`` is the
    scoring batch."""

    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    bits: tuple[int, ...] = (8, 4)
    finetune: tuple[FinetuneConfig, ...] = DEFAULT_FINETUNE
    finetune_seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        seeds = list(self.finetune_seeds)
        if (
            not seeds
            or len(set(seeds)) != len(seeds)
            or not all(is_int(s) and s >= 0 for s in seeds)
        ):
            raise UnlearnInterpError(
                f"finetune_seeds must be distinct non-negative integers, at least one; got {seeds}"
            )

    def to_dict(self) -> dict[str, Any]:
        """As config.json records it (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


DEFAULT_SETTINGS = LedgerSettings()
# The real model's grid, reported whole, chosen by the objective and the run-time budget before
# any recovery number was seen: full weights (RTT and Lucki et al. fine-tune everything) at a
# gentle and a strong learning rate for a 135M model, 10 steps of 4 texts (T has about 78
# questions, so 40 texts is half an epoch; scored at steps 0, 5 and 10), one seed, texts cut
# to 64 tokens. Measured before choosing: a full-weight step took 8-50 s and scoring 0.9 s per
# question on one shared CPU core, so a larger grid would not fit the ledger's run time.
MODEL_DEMO_FINETUNE = tuple(
    FinetuneConfig(steps=10, lr=lr, params="all", batch_size=4, max_len=64, eval_every=5)
    for lr in (1e-5, 1e-4)
)
MODEL_DEMO_SETTINGS = LedgerSettings(finetune=MODEL_DEMO_FINETUNE, finetune_seeds=(0,))

# What is attacked, from the run and the seed that splits the facts.
SubjectOf = Callable[[Run, int], LedgerSubject]


def question_ledger_subject(run: Run, seed: int) -> LedgerSubject:
    """A real model's run: its questions split into T and V (:func:`~.subjects.question_subject`)."""
    return question_subject(run.variants, run.subject, seed)


@dataclasses.dataclass(frozen=True)
class OrganismLedgerSubject:
    """The organism's run: its facts split by entity, its oracle twin cached beside it
    (``cache_dir``) as the fine-tuning control (:func:`~.subjects.organism_subject`)."""

    org: organism.Organism
    cache_dir: str | os.PathLike | None = None

    def __call__(self, run: Run, seed: int) -> LedgerSubject:
        return organism_subject(run.variants, self.org, seed, self.cache_dir, run.progress)


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Every attack on the run's unlearned model and its controls (``subject`` says what is
    attacked: :class:`OrganismLedgerSubject` or :func:`question_ledger_subject`),
    with ``settings``; the unfinished parts run on ``executor`` (default: here, in order; a
    Ray executor ships the model once and computes the same table; a part failing on every
    attempt raises :class:`~.parts.LedgerPartsFailed` once the others are written). Metrics
    entry ``ledger``; its report section."""

    subject: SubjectOf
    settings: LedgerSettings = DEFAULT_SETTINGS
    executor: Executor | None = None
    name: str = LEDGER_STEP

    def files(self, run: Run) -> list[str]:
        parts = [part_file(name) for name in part_names(self.settings.finetune_seeds)]
        return [*parts, RunFiles.LEDGER, FIGURE_FILE]

    def compute(self, run: Run) -> StepOutput:
        settings = self.settings
        context = LedgerContext(
            run.dir,
            self.subject(run, settings.seed),
            settings.seed,
            settings.batch_size,
            settings.bits,
            settings.finetune,
            settings.finetune_seeds,
        )
        run.dir.record_config("ledger_notes", list(context.subject.notes))
        run_parts(context, run.dir.recomputes(self.name), self.executor)
        per_item = read_parts(run.dir, part_names(settings.finetune_seeds))
        table = ledger_table(per_item, FORGET_TASKS, settings.n_boot, settings.seed)
        return StepOutput(tables={"ledger": table}, figures={FIGURE: plotting.plot_ledger(table)})

    def summary(self, run: Run) -> StepSummary:
        table = pd.read_csv(run.dir.path(RunFiles.LEDGER))
        png = run.dir.path(FIGURE_FILE).with_suffix(".png").is_file()
        notes = run.dir.config().get("ledger_notes", [])
        section = ledger_markdown(table, png) + "".join(f"\nNote: {note}.\n" for note in notes)
        return StepSummary(metrics={"ledger": ledger_metrics(table)}, section=section)


def check_ledger_settings(run_dir: RunDir, settings: LedgerSettings) -> None:
    """Refuse to resume a ledger made with other settings (unless the run recomputes it);
    record these in config.json (key ``ledger``)."""
    previous = run_dir.config().get(LEDGER_STEP)
    if (
        previous is not None
        and previous != settings.to_dict()
        and not run_dir.recomputes(LEDGER_STEP)
    ):
        raise UnlearnInterpError(
            f"{run_dir.root} holds a ledger made with other settings ({previous}); use --force"
        )
    run_dir.record_config(LEDGER_STEP, settings.to_dict())
