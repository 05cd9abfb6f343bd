"""The real-model study: RMU on a pretrained model with real, published data, over several seeds,
with every ablation against its controls and a 95% interval on every figure.

``unlearn-interp demo --model smollm2-135m --out RUN`` runs :func:`run_study`: the assets are
fetched (``fetch``), the model and data loaded (``data``), then the study's steps run, each
resumable (a finished step is skipped when run again):

``base accuracy -> seeds (per arm and seed: unlearn -> directions -> per-item scores) ->
intervals -> layer profile -> generations -> depth profile -> recovery ledger``

What is compared (variants, gap-recovered entries, arms): :mod:`.config`.

    >>> metrics = run_study("runs/smollm2")                                # doctest: +SKIP
    >>> metrics["gap_recovered"]["subspace"], metrics["gap_recovered_ci"]["subspace"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from unlearn_interp import models
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.depth.step import (
    REAL_MODEL_SETTINGS,
    Depth,
    DepthSettings,
    question_depth_inputs,
)
from unlearn_interp.pipeline.ledger.step import (
    MODEL_DEMO_SETTINGS,
    Ledger,
    LedgerSettings,
    check_ledger_settings,
    question_ledger_subject,
)
from unlearn_interp.pipeline.report import bullet_lines
from unlearn_interp.pipeline.rundir import RunDir, with_dtype
from unlearn_interp.pipeline.step import Report, Run, Step, run_pipeline
from unlearn_interp.pipeline.steps.generations import Generations
from unlearn_interp.pipeline.steps.profile import LayerProfile
from unlearn_interp.pipeline.study.config import (
    GENERATION_VARIANTS,
    PROFILE_VARIANTS,
    SMOLLM2,
    Study,
    smollm2_rmu_config,
)
from unlearn_interp.pipeline.study.data import asset_paths, build_study, record_data
from unlearn_interp.pipeline.study.intervals import Intervals
from unlearn_interp.pipeline.study.seeds import BaseAccuracy, ModelSource, Seeds

T = TypeVar("T")


def study_steps(
    study: Study,
    depth: DepthSettings | None = REAL_MODEL_SETTINGS,
    ledger: LedgerSettings | None = MODEL_DEMO_SETTINGS,
    executor: Executor | None = None,
    source: ModelSource | None = None,
) -> list[Step]:
    """The study's steps, in order (``depth`` and ``ledger`` None: without them); ``executor``
    runs the seeds and the ledger's parts, its workers loading the model from ``source``."""
    note = f"{study.title}, first seed; layer l = residual stream after block l"
    steps: list[Step] = [
        BaseAccuracy(),
        Seeds(study, executor, source),
        Intervals(study),
        LayerProfile(PROFILE_VARIANTS, note),
        Generations(GENERATION_VARIANTS, "Generations on forget-topic prompts (first seed)"),
    ]
    if depth is not None:
        steps.append(Depth(question_depth_inputs, depth))
    if ledger is not None:
        steps.append(Ledger(question_ledger_subject, ledger, executor))
    return steps


def study_report(study: Study) -> Report:
    """The study's report frame: what was run on what, the facts of its metrics.json (model,
    forget, gap and retain tasks) and the data's sources."""
    cfg, data = study.headline.config, study.data
    intro = (
        f"Model: {study.title}. {study.model_note} RMU at layer {cfg.layer} (residual stream "
        f"after block {cfg.layer}), update layers {list(cfg.update_layers)}, c = "
        f"{cfg.steering_coef}, alpha = {cfg.alpha}, lr = {cfg.lr}, {cfg.steps} steps, seeds "
        f"{list(study.headline.seeds)}. Forget topic: {data.topic}; forget tasks: "
        f"{', '.join(data.forget_tasks)}."
    )
    subject = study.subject()
    facts = {
        "model": models.model_name(study.model),
        "forget_tasks": list(data.forget_tasks),
        "gap_tasks": list(subject.gap_tasks),
        "retain_tasks": [t for t in study.tasks if t not in data.forget_tasks],
    }
    closing = "\n".join(["## Data", "", *bullet_lines(data.provenance)])
    title = f"Is RMU shallow on a real model? {study.title} on real data"
    return Report(title, intro, facts, closing)


def run_loaded_study(
    run_dir: RunDir,
    study: Study,
    progress: bool = True,
    depth: DepthSettings | None = REAL_MODEL_SETTINGS,
    ledger: LedgerSettings | None = None,
    executor: Executor | None = None,
    source: ModelSource | None = None,
) -> dict[str, Any]:
    """Every step of the study on an injected :class:`Study` (any model, any data); returns
    ``metrics.json``'s content.

    >>> run_loaded_study(RunDir("runs/x"), Study(model, data, arms))       # doctest: +SKIP
    """
    if ledger is not None:
        check_ledger_settings(run_dir, ledger)
    steps = study_steps(study, depth, ledger, executor, source)
    return run_pipeline(Run(run_dir, study.subject(), progress), steps, study_report(study))


def run_study(
    out: str | os.PathLike,
    *,
    model: str = SMOLLM2,
    seeds: Sequence[int] = (0, 1, 2),
    topic: str = "chemistry",
    device: str | None = None,
    force: bool = False,
    recompute: Sequence[str] = (),
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    ledger: bool | LedgerSettings = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The shallow-RMU study on a real pretrained model; returns ``metrics.json``'s content.
    ``dtype`` (default float32) is recorded in the settings when it is another. ``ledger``
    (True: :data:`~unlearn_interp.pipeline.ledger.step.MODEL_DEMO_SETTINGS`) runs the recovery
    ledger on the first seed last. ``executor`` (default serial) runs the seeds and the
    ledger's parts; its workers load the model from the asset cache. ``recompute`` names steps
    to compute again (``force``: all of them).

    >>> metrics = run_study("runs/smollm2", seeds=(0, 1, 2))               # doctest: +SKIP
    """
    if model != SMOLLM2:
        raise UnlearnInterpError(
            f"the real-model demo knows {SMOLLM2!r} only (got {model!r}); for another checkpoint "
            "use `unlearn-interp run`"
        )
    seeds = _checked_seeds(seeds)
    run_dir = RunDir(out, force=force, recompute=recompute)
    settings = {
        "job": "model_demo",
        "model": model,
        "seeds": seeds,
        "topic": topic,
        "rmu": smollm2_rmu_config().to_dict(),
    }
    run_dir.check_settings(with_dtype(settings, dtype))
    paths = timed(run_dir, "fetch", lambda: asset_paths(cache_dir, progress))
    study = timed(run_dir, "data", lambda: build_study(paths, seeds, topic, device, dtype))
    record_data(run_dir, study.data)
    source = ModelSource(str(paths[SMOLLM2]), device, str(dtype or torch.float32).split(".")[-1])
    chosen = (
        ledger if isinstance(ledger, LedgerSettings) else MODEL_DEMO_SETTINGS if ledger else None
    )
    return run_loaded_study(run_dir, study, progress, REAL_MODEL_SETTINGS, chosen, executor, source)


def timed(run_dir: RunDir, name: str, work: Callable[[], T]) -> T:
    """``work()``, its wall time recorded as step ``name`` (loading, not a resumable step)."""
    start = time.perf_counter()
    result = work()
    run_dir.record_seconds(name, time.perf_counter() - start)
    return result


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    values = list(seeds)
    if not values or len(set(values)) != len(values):
        raise UnlearnInterpError(f"seeds must be distinct and at least one, got {values}")
    if any(not is_int(s) or s < 0 for s in values):
        raise UnlearnInterpError(f"seeds must be non-negative integers, got {values}")
    return values
