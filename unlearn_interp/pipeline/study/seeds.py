"""The study's unlearned models: the base model scored once (:class:`BaseAccuracy`), then each
arm's seeds (:class:`Seeds`), each its own sub-run ``seeds/<arm>-seed<seed>`` running the
shared steps ``unlearn -> directions -> per-item scores``. The seeds run here one after another
or on the workers of an executor (:mod:`unlearn_interp.executors`), which load the model from
its checkpoint (:class:`ModelSource`) rather than receive a pickled copy.

    >>> steps = [BaseAccuracy(), Seeds(study, executor=make_executor("ray", workers=2))]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from unlearn_interp import directions, models, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor, SerialExecutor, TaskFailed
from unlearn_interp.models import Model
from unlearn_interp.pipeline.report import bullet_lines
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files, run_steps
from unlearn_interp.pipeline.steps.accuracy import evaluate_per_item
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.steps.unlearn import TRAINING_FIGURE, Unlearn
from unlearn_interp.pipeline.study.config import Arm, Study, with_changes
from unlearn_interp.variants import Variant


@dataclasses.dataclass(frozen=True)
class BaseAccuracy:
    """Per-item correctness of the base model on every task, scored once for every seed."""

    name: str = "base_accuracy"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.BASE_PER_ITEM]

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        table = evaluate_per_item(
            subject.model, [Variant("base")], subject.tasks, subject.batch_size, run.progress
        )
        return StepOutput(tables={"base_per_item": table})

    def summary(self, run: Run) -> StepSummary:
        return StepSummary()


@dataclasses.dataclass(frozen=True)
class ScoreVariants:
    """Per-item correctness of one seed's ``variants`` (not plain base: it is scored once)."""

    variants: tuple[str, ...]
    name: str = "accuracy"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.MCQ_PER_ITEM]

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        chosen = list(run.variants.variants(self.variants).values())
        table = evaluate_per_item(
            subject.model, chosen, subject.tasks_for, subject.batch_size, run.progress
        )
        return StepOutput(tables={"mcq_per_item": table})

    def summary(self, run: Run) -> StepSummary:
        return StepSummary()


def seed_steps(arm: Arm, seed: int) -> list[Any]:
    """What one seed of ``arm`` runs in its sub-run: RMU with that seed, the junk direction and
    the subspace of the updated blocks (random controls drawn with the same seed), the arm's
    variants scored."""
    cfg = with_changes(arm.config, seed=seed)
    return [
        Unlearn(cfg),
        Directions(subspace_layers=cfg.update_layers),
        ScoreVariants(arm.variants),
    ]


def run_seed(run_dir: RunDir, study: Study, arm: Arm, seed: int, progress: bool) -> None:
    """Train ``arm`` with ``seed`` (control vector and random controls), extract its directions
    and score its variants, in the sub-run ``<run>/seeds/<arm>-seed<seed>``."""
    sub = RunDir(run_dir.path(arm.seed_dir(seed)), force=run_dir.force)
    cfg = with_changes(arm.config, seed=seed)
    sub.check_settings({"arm": arm.name, "seed": seed, "rmu": cfg.to_dict()})
    subject = dataclasses.replace(study.subject(), seed=seed, variants_folder="")
    run_steps(Run(sub, subject, progress), seed_steps(arm, seed))


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where an executor's worker loads the study's model: a checkpoint path (or known name),
    device and dtype name. Loading beats shipping a pickled copy: for SmolLM2-135M on one busy
    CPU thread, loading took 2.2 s (7.8 s cold), pickling 13 s and unpickling 7.3 s (685 MB)."""

    path: str
    device: str | None = None
    dtype: str = "float32"

    def load(self) -> Model:
        """The model, loaded once per worker process and reused by its later seeds (as the
        serial study reuses one model: each RMU run puts the base weights back)."""
        return _loaded_model(self)


@functools.lru_cache(maxsize=1)
def _loaded_model(source: ModelSource) -> Model:
    dtype = getattr(torch, source.dtype)
    return models.load_model(source.path, device=source.device, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class SeedTask:
    """:func:`run_seed` of one ``(arm index, seed)``: what an executor maps over the study's
    seeds. A seed writes only its own sub-run (on a cluster, ``run_dir`` must be on storage
    every worker shares). ``study`` is the whole study, or with ``source`` its fields but the
    model (:func:`study_fields`), the worker loading the model from there."""

    run_dir: RunDir
    study: Study | Mapping[str, Any]
    source: ModelSource | None = None
    progress: bool = False

    def __call__(self, job: tuple[int, int]) -> None:
        study = self.study
        if not isinstance(study, Study):
            study = Study(model=self.source.load(), **study)
        run_seed(self.run_dir, study, study.arms[job[0]], job[1], self.progress)


def study_fields(study: Study) -> dict[str, Any]:
    """Every field of ``study`` but its model: what travels to workers that load the model."""
    return {f.name: getattr(study, f.name) for f in dataclasses.fields(study) if f.name != "model"}


def run_seeds(
    run_dir: RunDir,
    study: Study,
    progress: bool = True,
    executor: Executor | None = None,
    source: ModelSource | None = None,
) -> None:
    """Every arm's seeds (:func:`run_seed`), each in its own sub-run, through ``executor``
    (default serial: here, in order). On another executor the workers load the model from
    ``source`` when given, else receive the study's model once; seeds failing on every attempt
    raise once the others finished (the study run again computes only those: finished seeds
    are skipped, whichever executor ran them).

    >>> run_seeds(run_dir, study, executor=make_executor("ray", workers=2))  # doctest: +SKIP
    """
    jobs = [(i, seed) for i, arm in enumerate(study.arms) for seed in arm.seeds]
    executor = executor or SerialExecutor()
    task = SeedTask(run_dir, study, progress=progress)
    if executor.name != "serial":
        shipped = study if source is None else study_fields(study)
        task = SeedTask(run_dir, shipped, source, progress=False)  # no bars from workers
    failed: dict[str, TaskFailed] = {}
    for index, result in executor.run(task, jobs, desc="study_seed"):
        if isinstance(result, TaskFailed):
            arm, seed = jobs[index]
            failed[study.arms[arm].seed_dir(seed)] = result
    if failed:
        said = "; ".join(f"{name}: {f.error} ({f.attempts} attempts)" for name, f in failed.items())
        raise UnlearnInterpError(
            f"study seed(s) failed on every attempt ({said}); every other seed is written: "
            "run the study again to compute only these"
        )


@dataclasses.dataclass(frozen=True)
class Seeds:
    """Every arm's seeds of ``study``, each a sub-run (:func:`run_seeds`, on ``executor``; its
    workers load the model from ``source`` when given); the headline arm's first seed's
    training curves. Metrics: the seeds, and the junk direction and subspace per seed."""

    study: Study
    executor: Executor | None = None
    source: ModelSource | None = None
    name: str = "seeds"

    def files(self, run: Run) -> list[str]:
        sub_runs = [
            f"{arm.seed_dir(s)}/{RunFiles.MCQ_PER_ITEM}"
            for arm in self.study.arms
            for s in arm.seeds
        ]
        return sub_runs + figure_files([TRAINING_FIGURE])

    def compute(self, run: Run) -> StepOutput:
        run_seeds(run.dir, self.study, run.progress, self.executor, self.source)
        first = run.dir.path(run.subject.variants_folder)
        history = pd.read_csv(first / RunFiles.RMU_HISTORY)
        return StepOutput(figures={TRAINING_FIGURE: plotting.plot_training_curves(history)})

    def summary(self, run: Run) -> StepSummary:
        headline = self.study.headline
        entry = direction_summary(run.dir, headline)
        lines = ["## Junk direction and subspace", "", *bullet_lines(entry)]
        return StepSummary(
            metrics={"seeds": list(headline.seeds), "junk_direction": entry},
            section="\n".join(lines),
        )


def direction_summary(run_dir: RunDir, arm: Arm) -> dict[str, Any]:
    """Junk direction layer, |cos| with the control vector per seed and its mean; the subspace's
    layers and dimension."""
    cosines, dims = [], []
    for seed in arm.seeds:
        sub = run_dir.path(arm.seed_dir(seed))
        junk = directions.Direction.load(sub / RunFiles.DIRECTION)
        cosines.append(
            max(map(abs, junk.metadata.get("cos_with_control_vectors") or [float("nan")]))
        )
        dims.append(directions.Subspace.load(sub / RunFiles.SUBSPACE).k)
    return {
        "layer": arm.config.layer,
        "cos_with_control_vector": float(sum(cosines) / len(cosines)),
        "cos_with_control_vector_per_seed": cosines,
        "subspace_layers": list(arm.config.update_layers),
        "subspace_dims_per_seed": dims,
    }


__all__ = [
    "BaseAccuracy",
    "ModelSource",
    "ScoreVariants",
    "SeedTask",
    "Seeds",
    "direction_summary",
    "run_seed",
    "run_seeds",
    "seed_steps",
    "study_fields",
]
