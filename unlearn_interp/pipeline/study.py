"""The real-model study: RMU on a pretrained model with real, published data, over several seeds,
with every ablation against its controls and a 95% interval on every figure.

``unlearn-interp demo --model smollm2-135m --out RUN`` runs :func:`run_model_demo`. Its steps,
each resumable (a finished step is skipped when run again), are those of
:mod:`unlearn_interp.pipeline.steps`:

``fetch -> data -> base accuracy -> per seed: unlearn -> directions -> accuracy -> (first seed)
layer profile, generations -> comparison arms (Adaptive RMU, Gaussian control vector) ->
intervals -> figures -> report``

What is compared per seed (variants, gap-recovered entries, arms): see
:mod:`unlearn_interp.pipeline.study_config`. The arms' seeds, each in its own sub-run, run here one
after another or on the workers of an executor (:mod:`unlearn_interp.executors`), which load the
model from its checkpoint (:class:`ModelSource`) rather than receive a pickled copy.

    >>> metrics = run_model_demo("runs/smollm2")                           # doctest: +SKIP
    >>> metrics["gap_recovered"]["subspace"], metrics["gap_recovered_ci"]["subspace"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import unlearn_interp.pipeline.steps as steps
from unlearn_interp import models, real_data, rmu, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor, SerialExecutor, TaskFailed
from unlearn_interp.models import Model
from unlearn_interp.pipeline.depth import REAL_MODEL_SETTINGS as DEPTH_SETTINGS
from unlearn_interp.pipeline.depth import DepthSettings, study_depth_inputs
from unlearn_interp.pipeline.depth import step_depth as depth_step
from unlearn_interp.pipeline.depth_report import with_depth
from unlearn_interp.pipeline.figures import BAR_VARIANTS, GAP_LABELS, STUDY_FIGURES, study_figures
from unlearn_interp.pipeline.ledger import MODEL_DEMO_SETTINGS, LedgerSettings, with_ledger
from unlearn_interp.pipeline.metrics import study_metrics as compute_metrics
from unlearn_interp.pipeline.report import render_study_report as render_report
from unlearn_interp.pipeline.report import summary_text
from unlearn_interp.pipeline.report import write_study_report as step_report
from unlearn_interp.pipeline.run_variants import RunVariants
from unlearn_interp.pipeline.rundir import RunDir, with_dtype
from unlearn_interp.pipeline.steps import Task, TasksOf
from unlearn_interp.pipeline.study_assets import asset_paths, build_study, with_report_only_capped
from unlearn_interp.pipeline.study_config import (
    ARM_VARIANTS,
    DATA_ASSETS,
    FULL_VARIANTS,
    GAPS,
    GENERATION_VARIANTS,
    MAX_ITEMS_PER_TASK,
    MAX_REPORT_ONLY_ITEMS,
    PROFILE_VARIANTS,
    REPORT_ONLY_KINDS,
    SMOLLM2,
    SMOLLM2_ADAPTIVE_BETA,
    SMOLLM2_NOTE,
    SMOLLM2_RMU,
    Arm,
    Study,
    default_arms,
    smollm2_rmu_config,
    with_changes,
)  # fmt: skip
from unlearn_interp.variants import Variant

SEED_ITEMS = RunFiles.MCQ_PER_ITEM
BASE_ITEMS = RunFiles.BASE_PER_ITEM
SUBSPACE_FILE = RunFiles.SUBSPACE
RANDOM_DIRECTION_FILE = RunFiles.RANDOM_DIRECTION
RANDOM_SUBSPACE_FILE = RunFiles.RANDOM_SUBSPACE
DIRECTION_FILES = tuple(steps.direction_files(subspace=True))
ITEM_COLUMNS = ["variant", "task", "item", "correct", "predicted", "answer"]


def evaluate_per_item(
    model: Model,
    variants: Sequence[Variant],
    tasks: TasksOf,
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Correctness of every item of every task under every variant: columns ``variant``,
    ``task``, ``item``, ``correct`` (0/1), ``predicted``, ``answer``. ``tasks`` is one mapping
    for all variants or a function of the variant's name (e.g. :meth:`Study.tasks_for`).

    >>> evaluate_per_item(model, [base, rmu], study.tasks)                     # doctest: +SKIP
    """
    _, per_item = steps.accuracy_tables(model, variants, tasks, batch_size, progress)
    per_item["correct"] = per_item["correct"].astype(int)
    return per_item[ITEM_COLUMNS]


def seed_variants(run: RunDir, names: Sequence[str] = FULL_VARIANTS) -> dict[str, Variant]:
    """The named variants of one trained seed (and ``base``), from the files its steps wrote.

    >>> seed_variants(RunDir("runs/smollm2/seeds/rmu-seed0"))["rmu_subspace_ablated"]  # doctest: +SKIP
    """
    return RunVariants(run).variants(["base", *names])


# ---------------------------------------------------------------------------------------------
# Steps of one seed: unlearn -> directions -> accuracy
# ---------------------------------------------------------------------------------------------


def run_seed(run: RunDir, study: Study, arm: Arm, seed: int, progress: bool) -> RunVariants:
    """Train ``arm`` with ``seed`` (control vector and random controls), extract its directions
    and score its variants, in the sub-run ``run/seeds/<arm>-seed<seed>``; returns the
    sub-run's variants, read once."""
    sub = RunDir(run.path(arm.seed_dir(seed)), force=run.force)
    cfg = with_changes(arm.config, seed=seed)
    sub.check_settings({"arm": arm.name, "seed": seed, "rmu": cfg.to_dict()})
    data = study.data
    steps.step_unlearn(sub, study.model, cfg, [data.forget_corpus], [data.retain_corpus],
                       progress)  # fmt: skip
    variants = RunVariants(sub)
    step_directions(sub, study, cfg, variants)
    step_seed_accuracy(sub, study, arm, variants, progress)
    return variants


def step_directions(
    sub: RunDir, study: Study, cfg: rmu.RMUConfig, variants: RunVariants | None = None
) -> None:
    """Per-layer difference-in-means candidates (both forward passes once), the junk direction
    at the RMU layer, the subspace of the updated blocks' outputs, and their random controls."""
    settings = steps.DirectionSettings(cfg.layer, cfg.seed, study.batch_size, cfg.update_layers)
    steps.step_directions(sub, study.model, variants or RunVariants(sub),
                          study.data.forget_prompts, settings)  # fmt: skip


def step_seed_accuracy(
    sub: RunDir, study: Study, arm: Arm, variants: RunVariants, progress: bool
) -> None:
    """Per-item correctness of the arm's variants (not plain base: it is scored once)."""

    def compute() -> None:
        chosen = list(variants.variants(arm.variants).values())
        table = evaluate_per_item(study.model, chosen, study.tasks_for, study.batch_size, progress)
        sub.write_table("mcq_per_item", table)

    sub.step("accuracy", [SEED_ITEMS], compute)


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
    seeds. A seed writes only its own sub-run (on a cluster, ``run`` must be on storage every
    worker shares). ``study`` is the whole study, or with ``source`` its fields but the model
    (:func:`study_fields`), the worker loading the model from there."""

    run: RunDir
    study: Study | Mapping[str, Any]
    source: ModelSource | None = None
    progress: bool = False

    def __call__(self, job: tuple[int, int]) -> None:
        study = self.study
        if not isinstance(study, Study):
            study = Study(model=self.source.load(), **study)
        run_seed(self.run, study, study.arms[job[0]], job[1], self.progress)


def study_fields(study: Study) -> dict[str, Any]:
    """Every field of ``study`` but its model: what travels to workers that load the model."""
    return {f.name: getattr(study, f.name) for f in dataclasses.fields(study) if f.name != "model"}


def run_seeds(
    run: RunDir,
    study: Study,
    progress: bool = True,
    executor: Executor | None = None,
    source: ModelSource | None = None,
) -> RunVariants:
    """Every arm's seeds (:func:`run_seed`), each in its own sub-run, through ``executor``
    (default serial: here, in order); returns the variants of the headline arm's first seed.
    On another executor the workers load the model from ``source`` when given, else receive
    the study's model once; seeds failing on every attempt raise once the others finished
    (the study run again computes only those: finished seeds are skipped, whichever executor
    ran them).

    >>> run_seeds(run, study, executor=make_executor("ray", workers=2))    # doctest: +SKIP
    """
    jobs = [(i, seed) for i, arm in enumerate(study.arms) for seed in arm.seeds]
    executor = executor or SerialExecutor()
    task = SeedTask(run, study, progress=progress)
    if executor.name != "serial":
        shipped = study if source is None else study_fields(study)
        task = SeedTask(run, shipped, source, progress=False)  # no bars from workers
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
    headline = study.headline
    return RunVariants(RunDir(run.path(headline.seed_dir(headline.seeds[0]))))


# ---------------------------------------------------------------------------------------------
# Top-level steps
# ---------------------------------------------------------------------------------------------


def step_base_accuracy(run: RunDir, study: Study, progress: bool) -> None:
    """Per-item correctness of the base model, scored once for every seed."""

    def compute() -> None:
        table = evaluate_per_item(study.model, [Variant("base")], study.tasks, study.batch_size,
                                  progress)  # fmt: skip
        run.write_table("base_per_item", table)

    run.step("base_accuracy", [BASE_ITEMS], compute)


def step_layer_profile(run: RunDir, study: Study, first: RunVariants) -> None:
    """Norm and cosine to base at every layer (last token, forget and retain prompts) for the
    first seed: the blog's four plots, with the subspace ablation beside the single direction."""
    sets = {"forget": study.data.forget_prompts, "retain": study.data.retain_prompts}
    steps.step_layer_profile(run, study.model, first, PROFILE_VARIANTS, sets, study.batch_size)


def step_generations(run: RunDir, study: Study, first: RunVariants) -> None:
    """Greedy continuations of forget-topic prompts, side by side, for the first seed."""
    steps.step_generations(run, study.model, first, GENERATION_VARIANTS,
                           study.data.generation_prompts, max_new_tokens=study.max_new_tokens,
                           progress=False)  # fmt: skip


def per_item_table(run: RunDir, study: Study) -> pd.DataFrame:
    """Every scored item of the study: ``arm``, ``seed``, ``variant`` (arm-labelled), ``task``,
    ``item``, ``correct``; plain base once with no seed (it does not depend on the seed)."""
    frames = [run.table("base_per_item").assign(arm="base", seed=float("nan"))]
    for arm in study.arms:
        for seed in arm.seeds:
            table = pd.read_csv(run.path(arm.seed_dir(seed)) / SEED_ITEMS)
            table["variant"] = table["variant"].map(arm.label)
            frames.append(table.assign(arm=arm.name, seed=seed))
    columns = ["arm", "seed", "variant", "task", "item", "correct"]
    return pd.concat(frames, ignore_index=True)[columns]


def step_intervals(run: RunDir, study: Study, n_boot: int = 2000) -> dict[str, pd.DataFrame]:
    """``tables/per_item.csv`` (everything scored), ``tables/accuracy.csv`` and
    ``tables/gap_recovered.csv`` with bootstrap 95% intervals over items and seeds (each arm
    bootstrapped over its own seeds)."""
    per_item = per_item_table(run, study)
    run.write_table("per_item", per_item)
    accuracy = pd.concat(
        [stats.accuracy_intervals(arm_items(per_item, arm), n_boot=n_boot) for arm in study.arms]
    ).drop_duplicates(subset=["variant", "task"], ignore_index=True)
    gaps = pd.concat([arm_gaps(per_item, arm, study, n_boot) for arm in study.arms],
                     ignore_index=True)  # fmt: skip
    run.write_table("accuracy", accuracy)
    run.write_table("gap_recovered", gaps)
    return {"accuracy": accuracy, "gap_recovered": gaps}


def arm_items(per_item: pd.DataFrame, arm: Arm) -> pd.DataFrame:
    """The rows of plain base and of one arm: what one bootstrap resamples together."""
    return per_item[per_item["arm"].isin(["base", arm.name])]


def arm_gaps(per_item: pd.DataFrame, arm: Arm, study: Study, n_boot: int) -> pd.DataFrame:
    """Every entry of :data:`GAPS` the arm has both variants for, per forget task and their mean
    (``task == "mean"``), with intervals; column ``gap`` names the entry."""
    wanted = [(name, v, ref) for name, (v, ref) in GAPS.items() if v in arm.variants
              and (ref == "base" or ref in arm.variants)]  # fmt: skip
    table = stats.gap_recovered_intervals(
        arm_items(per_item, arm),
        unlearned=arm.label("rmu"),
        variants=[arm.label(v) for _, v, ref in wanted if ref == "base"],
        reference={arm.label(v): arm.label(ref) for _, v, ref in wanted if ref != "base"},
        forget_tasks=study.gap_tasks,
        n_boot=n_boot,
    )
    names = {(arm.label(v), "base" if ref == "base" else arm.label(ref)): name
             for name, v, ref in wanted}  # fmt: skip
    table["gap"] = [names[(v, a)] for v, a in zip(table["variant"], table["against"], strict=True)]
    return table.assign(arm=arm.name)


def step_figures(run: RunDir, study: Study, formats: Sequence[str] = ("html", "png")) -> None:
    """Write every figure of :func:`study_figures` as HTML (and PNG where export works)."""
    steps.save_figures(run, study_figures(run, study), formats)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def run_study(
    run: RunDir,
    study: Study,
    progress: bool = True,
    depth: DepthSettings | None = None,
    executor: Executor | None = None,
    source: ModelSource | None = None,
) -> dict[str, Any]:
    """Every step after loading, on an injected :class:`Study` (any model, any data): base
    accuracy, each arm's seeds (through ``executor``, :func:`run_seeds`), layer profile,
    generations and (with ``depth`` settings) the depth profile of the first seed, intervals,
    figures, report. Returns ``metrics.json``'s content.

    >>> run_study(RunDir("runs/x"), Study(model, data, arms))             # doctest: +SKIP
    """
    step_base_accuracy(run, study, progress)
    first = run_seeds(run, study, progress, executor, source)  # the first seed: for its plots
    step_layer_profile(run, study, first)
    step_generations(run, study, first)
    if depth is not None:
        step_depth(run, study, first, depth, progress)
    tables = step_intervals(run, study)
    step_figures(run, study)
    metrics = step_report(run, study, tables)
    return metrics if depth is None else with_depth(run, metrics, study.headline.config.layer)


def step_depth(
    run: RunDir, study: Study, first: RunVariants, settings: DepthSettings, progress: bool
) -> None:
    """The depth profile of the first seed's variants: the gap tasks' questions as forget
    questions, the scored retain tasks as retain ones, the study's prompts, and retain text
    for the tuned lens."""
    data = study.data
    retain = [t for t in study.tasks if t not in data.forget_tasks and t not in study.report_only]
    prompts = {"forget": data.forget_prompts, "retain": data.retain_prompts}
    inputs = study_depth_inputs(study.model, study.tasks, study.gap_tasks, retain, prompts,
                                      data.retain_corpus, study.headline.config.layer)  # fmt: skip
    depth_step(run, study.model, first, inputs, settings, progress)


def fetch_assets(
    run: RunDir, cache_dir: str | os.PathLike | None, progress: bool
) -> dict[str, Path]:
    """The model and data assets (fetched into the cache on first use); time recorded."""
    start = time.perf_counter()
    paths = asset_paths(cache_dir, progress)
    run.record_seconds("fetch", time.perf_counter() - start)
    return paths


def load_study(
    run: RunDir,
    paths: Mapping[str, Path],
    seeds: Sequence[int],
    topic: str,
    device: str | None,
    dtype: torch.dtype | None = None,
) -> Study:
    """Load the model and build the study's data (time recorded as ``data``)."""
    start = time.perf_counter()
    study = build_study(paths, seeds, topic, device, dtype)
    record_data(run, study.data)
    run.record_seconds("data", time.perf_counter() - start)
    return study


def record_data(run: RunDir, data: real_data.StudyData) -> None:
    """Corpus and task sizes, topic rule and sources in ``config.json`` (key ``data``)."""
    run.record_config("data", {"topic": data.topic, "forget_tasks": list(data.forget_tasks),
                               "counts": data.counts, "provenance": data.provenance})  # fmt: skip


def run_model_demo(
    out: str | os.PathLike,
    *,
    model: str = SMOLLM2,
    seeds: Sequence[int] = (0, 1, 2),
    topic: str = "chemistry",
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    ledger: bool | LedgerSettings = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The shallow-RMU study on a real pretrained model; returns ``metrics.json``'s content.
    ``dtype`` (default float32) is recorded in the settings when it is another. ``ledger``
    (True: :data:`~unlearn_interp.pipeline.ledger.MODEL_DEMO_SETTINGS`) runs the recovery
    ledger on the first seed last: report.md gains its section, metrics.json a ``"ledger"``.
    ``executor`` (default serial) runs the seeds and the ledger's parts; its workers load the
    model from the asset cache.

    >>> metrics = run_model_demo("runs/smollm2", seeds=(0, 1, 2))          # doctest: +SKIP
    """
    if model != SMOLLM2:
        raise UnlearnInterpError(
            f"the real-model demo knows {SMOLLM2!r} only (got {model!r}); for another checkpoint "
            "use `unlearn-interp run`"
        )
    seeds = _checked_seeds(seeds)
    run = RunDir(out, force=force)
    settings = {"job": "model_demo", "model": model, "seeds": seeds, "topic": topic,
                "rmu": smollm2_rmu_config().to_dict()}  # fmt: skip
    settings = with_dtype(settings, dtype)
    run.check_settings(settings)
    paths = fetch_assets(run, cache_dir, progress)
    study = load_study(run, paths, seeds, topic, device, dtype)
    source = ModelSource(str(paths[SMOLLM2]), device, str(dtype or torch.float32).split(".")[-1])
    metrics = run_study(run, study, progress, DEPTH_SETTINGS, executor, source)
    if not ledger:
        return metrics
    chosen = ledger if isinstance(ledger, LedgerSettings) else MODEL_DEMO_SETTINGS
    return with_ledger(run, metrics, chosen, study=study, force=force, progress=progress,
                       executor=executor)  # fmt: skip


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    values = list(seeds)
    if not values or len(set(values)) != len(values):
        raise UnlearnInterpError(f"seeds must be distinct and at least one, got {values}")
    if any(not is_int(s) or s < 0 for s in values):
        raise UnlearnInterpError(f"seeds must be non-negative integers, got {values}")
    return values


__all__ = [
    "ARM_VARIANTS", "BAR_VARIANTS", "BASE_ITEMS", "DATA_ASSETS", "DIRECTION_FILES", "FULL_VARIANTS",
    "GAPS", "GAP_LABELS", "GENERATION_VARIANTS", "MAX_ITEMS_PER_TASK", "MAX_REPORT_ONLY_ITEMS",
    "ModelSource", "SeedTask", "run_seeds", "study_fields",
    "PROFILE_VARIANTS", "RANDOM_DIRECTION_FILE", "RANDOM_SUBSPACE_FILE", "REPORT_ONLY_KINDS",
    "SEED_ITEMS", "SMOLLM2", "SMOLLM2_ADAPTIVE_BETA", "SMOLLM2_NOTE", "SMOLLM2_RMU",
    "STUDY_FIGURES", "SUBSPACE_FILE", "Arm", "Study", "Task", "arm_gaps", "arm_items",
    "compute_metrics", "default_arms", "evaluate_per_item", "fetch_assets", "load_study",
    "per_item_table", "record_data", "render_report", "run_model_demo", "run_seed", "run_study",
    "seed_variants", "smollm2_rmu_config", "step_base_accuracy", "step_directions",
    "step_figures", "step_generations", "step_intervals", "step_layer_profile", "step_report",
    "step_seed_accuracy", "study_figures", "summary_text", "with_changes",
    "with_report_only_capped",
]  # fmt: skip
