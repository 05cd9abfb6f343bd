"""The steps both pipelines run, each writing its artifacts into a run directory.

``unlearn -> directions -> accuracy -> layer profile -> generations -> figures``: the organism
demo and ``run`` (``pipeline.demo``) run them once; the real-model study (``pipeline.study``)
runs the first three per arm and seed and the others on its first seed. A step receives the
model and the run's :class:`RunVariants` (read from disk once per run) and writes only files
named in :class:`unlearn_interp.artifacts.RunFiles`.

    >>> variants = RunVariants(run)                                         # doctest: +SKIP
    >>> step_directions(run, model, variants, prompts, layer=7, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import analysis, directions, evaluation, models, plotting, rmu
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.pipeline.run_variants import RunVariants
from unlearn_interp.pipeline.rundir import FIGURES, RunDir
from unlearn_interp.variants import Variant, restore_weights


@dataclasses.dataclass(frozen=True)
class Task:
    """One knowledge test: its questions and how they are scored (``mode`` and, in continuation
    mode, the prompt template, as :func:`evaluation.mcq_accuracy` takes them)."""

    items: Sequence[MCQItem]
    mode: str
    prompt_template: str = QA_TEMPLATE


# The tasks of every variant, or a function of a variant's name giving its tasks.
TasksOf = Mapping[str, Task] | Callable[[str], Mapping[str, Task]]


def step_unlearn(
    run: RunDir,
    model: Model,
    cfg: rmu.RMUConfig,
    forget: Sequence[Sequence[str]],
    retain: Sequence[Sequence[str]],
    progress: bool = True,
) -> None:
    """Train RMU on ``model`` and save the result; the model is left on its base weights."""

    def compute() -> None:
        result = rmu.train_rmu(model, forget=forget, retain=retain, cfg=cfg, progress=progress)
        restore_weights(model, result.base_weights)
        result.save(run.root)

    outputs = [RunFiles.UNLEARNED_WEIGHTS, RunFiles.BASE_WEIGHTS, RunFiles.CONTROL_VECTORS,
               RunFiles.RMU_HISTORY]  # fmt: skip
    run.step("unlearn", outputs, compute)


def step_unlearned_checkpoint(run: RunDir, model: Model, path: str | os.PathLike) -> None:
    """The tensors in which checkpoint ``path`` differs from the base, saved to the run."""

    def compute() -> None:
        variant = models.variant_from_checkpoint(model, path, name="rmu")
        if not variant.weights:
            raise UnlearnInterpError(f"{path} has the same weights as the base model")
        models.save_weights(variant.weights, run.path(RunFiles.UNLEARNED_WEIGHTS))

    run.step("unlearn", [RunFiles.UNLEARNED_WEIGHTS], compute)


def direction_files(subspace: bool) -> list[str]:
    """What the directions step writes (the subspace files only when it extracts one)."""
    files = [RunFiles.DIRECTION, RunFiles.DIRECTION_JSON, RunFiles.RANDOM_DIRECTION]
    if subspace:
        files += [RunFiles.SUBSPACE, RunFiles.RANDOM_SUBSPACE]
    return files + [RunFiles.DIRECTION_CANDIDATES]


@dataclasses.dataclass(frozen=True)
class DirectionSettings:
    """Where and how the directions step reads: the junk direction at ``layer`` (residual
    stream after that block), the subspace of ``subspace_layers`` when given, the random
    controls drawn with ``seed``."""

    layer: int
    seed: int
    batch_size: int = 16
    subspace_layers: Sequence[int] | None = None
    step_name: str = "directions"


def step_directions(
    run: RunDir,
    model: Model,
    variants: RunVariants,
    prompts: Sequence[str],
    settings: DirectionSettings,
) -> None:
    """Per-layer difference-in-means candidates (base and rmu run once over ``prompts``), the
    junk direction at the RMU layer and, when asked, the subspace of the updated blocks'
    outputs, both from those candidates; their random controls."""

    def compute() -> None:
        plain = variants.variants(["base", "rmu"])
        controls = variants.control_vectors()
        candidates = directions.candidate_directions(
            model, plain["base"], plain["rmu"], prompts, control_vectors=controls,
            batch_size=settings.batch_size,
        )  # fmt: skip
        run.write_table("direction_candidates", candidates.scores)
        junk = candidates.direction(settings.layer)
        if controls is not None:
            junk.metadata["cos_with_control_vectors"] = control_cosines(controls, junk.vector)
        directions.random_control(junk, seed=settings.seed).save(
            run.path(RunFiles.RANDOM_DIRECTION)
        )
        if settings.subspace_layers is not None:
            _save_subspace(run, candidates.subspace(settings.subspace_layers), settings.seed)
        junk.save(run.path(RunFiles.DIRECTION))

    outputs = direction_files(settings.subspace_layers is not None)
    run.step(settings.step_name, outputs, compute)


def _save_subspace(run: RunDir, subspace: directions.Subspace, seed: int) -> None:
    random = directions.random_subspace_control(subspace, seed=seed)
    random.save(run.path(RunFiles.RANDOM_SUBSPACE))
    subspace.save(run.path(RunFiles.SUBSPACE))


def control_cosines(
    controls: Float[Tensor, "n_topics d_model"], vector: Float[Tensor, " d_model"]
) -> list[float]:
    """Cosine of ``vector`` with each control vector."""
    cos = torch.nn.functional.cosine_similarity(controls.float(), vector[None].float(), dim=-1)
    return cos.tolist()


def accuracy_tables(
    model: Model,
    variants: Sequence[Variant],
    tasks: TasksOf,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(accuracy, per_item)`` of every variant on each of its tasks, each task scored with its
    own mode and template: :func:`evaluation.accuracy_table` (the one loop) on :class:`Task`s.
    ``tasks`` is one mapping for all variants or a function of a variant's name. ``progress``
    shows one bar counting tasks."""
    tasks_of = tasks if callable(tasks) else (lambda name: tasks)
    chosen = {v.name: tasks_of(v.name) for v in variants}
    settings = {name: {"mode": t.mode, "prompt_template": t.prompt_template, "progress": False}
                for each in chosen.values() for name, t in each.items()}  # fmt: skip
    return evaluation.accuracy_table(
        model, variants, lambda name: {n: t.items for n, t in chosen[name].items()},
        batch_size=batch_size, progress=progress, task_kwargs=settings, per_item=True,
    )  # fmt: skip


def step_layer_profile(
    run: RunDir,
    model: Model,
    variants: RunVariants,
    names: Sequence[str],
    prompt_sets: Mapping[str, Sequence[str]],
    batch_size: int = 16,
) -> None:
    """Norm and cosine to base at every layer (last token) of the variants ``names`` for each
    prompt set, with the cosine to the run's junk direction and control vectors."""

    def compute() -> None:
        profile = analysis.layer_profile(
            model, list(variants.variants(names).values()), dict(prompt_sets),
            directions={"direction": variants.junk().vector},
            control_vectors=variants.control_vectors(), batch_size=batch_size,
        )  # fmt: skip
        run.write_table("layer_profile", profile)

    run.step("layer_profile", [RunFiles.LAYER_PROFILE], compute)


def step_generations(
    run: RunDir,
    model: Model,
    variants: RunVariants,
    names: Sequence[str],
    prompts: Sequence[str],
    **generate_kwargs: Any,
) -> None:
    """Greedy continuations of ``prompts`` under the variants ``names``, side by side."""

    def compute() -> None:
        chosen = list(variants.variants(names).values())
        table = evaluation.compare_generations(model, chosen, prompts, **generate_kwargs)
        run.write_table("generations", table)

    run.step("generations", [RunFiles.GENERATIONS], compute)


def save_figures(
    run: RunDir, figures: Mapping[str, Any], formats: Sequence[str] = ("html", "png")
) -> None:
    """Write each figure as ``figures/<name>.html`` (and PNG where static export works)."""
    for name, fig in figures.items():
        plotting.save_figure(fig, run.path(f"{FIGURES}/{name}.html"), formats=formats)
