"""The demo's steps on a real checkpoint and the user's MCQ files (``unlearn-interp run``): the
unlearned model is a second checkpoint of the same architecture (only the tensors that differ
are kept) or RMU trained here on the user's corpora.

``unlearn (or the checkpoint's difference) -> directions -> accuracy -> layer profile ->
generations``

    >>> run_checkpoint("runs/zephyr", base="/ckpts/zephyr-7b-beta", unlearned="/ckpts/Zephyr_RMU",
    ...                tasks={"wmdp_bio": bio, "mmlu": mmlu}, forget_tasks=["wmdp_bio"],
    ...                prompts=bio_prompts, layer=7, dtype=torch.bfloat16)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from unlearn_interp import models, rmu
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.step import Report, Run, Step, run_pipeline
from unlearn_interp.pipeline.steps.accuracy import Accuracy
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.steps.generations import Generations
from unlearn_interp.pipeline.steps.profile import LayerProfile
from unlearn_interp.pipeline.steps.unlearn import CheckpointDifference, Unlearn
from unlearn_interp.pipeline.subject import Subject, Task

VARIANT_NAMES = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")


def run_checkpoint(
    out: str | os.PathLike,
    *,
    base: str | os.PathLike,
    tasks: Mapping[str, Sequence[MCQItem]],
    forget_tasks: Sequence[str],
    prompts: Sequence[str],
    retain_prompts: Sequence[str] | None = None,
    layer: int | None = None,
    unlearned: str | os.PathLike | None = None,
    rmu_config: rmu.RMUConfig | None = None,
    forget_corpora: Sequence[Sequence[str]] = (),
    retain_corpora: Sequence[Sequence[str]] = (),
    mcq_mode: str = "letter",
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The demo's steps on checkpoint ``base`` and the user's MCQ ``tasks``; returns
    ``metrics.json``'s content. The unlearned model comes from ``unlearned`` (a second
    checkpoint of the same architecture, e.g. a released RMU model) or is trained here with
    ``rmu_config`` on ``forget_corpora`` / ``retain_corpora``."""
    layer = _checked_layer(tasks, forget_tasks, layer, unlearned, rmu_config)
    run_dir = RunDir(out, force=force)
    model = models.load_model(base, device=device, dtype=dtype)
    models.check_layer(model, layer)
    settings = {
        "job": "run",
        "base": str(base),
        "unlearned": str(unlearned) if unlearned else None,
        "rmu": rmu_config.to_dict() if rmu_config else None,
        "layer": layer,
        "seed": seed,
        "mcq_mode": mcq_mode,
        "tasks": {k: len(v) for k, v in tasks.items()},
    }
    run_dir.check_settings(settings)
    subject = Subject(
        model=model,
        title=models.model_name(model),
        tasks={name: Task(list(items), mcq_mode) for name, items in tasks.items()},
        forget_tasks=tuple(forget_tasks),
        prompts={"forget": list(prompts), "retain": list(retain_prompts or prompts)},
        layer=layer,
        generation_prompts=list(prompts[:4]),
        forget_corpora=[list(c) for c in forget_corpora],
        retain_corpora=[list(c) for c in retain_corpora],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    first: Step = Unlearn(rmu_config) if rmu_config is not None else CheckpointDifference(unlearned)
    steps = [
        first,
        Directions(),
        Accuracy(VARIANT_NAMES),
        LayerProfile(VARIANT_NAMES),
        Generations(VARIANT_NAMES),
    ]
    report = Report(f"RMU is mostly shallow: {subject.title}")
    return run_pipeline(Run(run_dir, subject, progress), steps, report)


def _checked_layer(
    tasks: Mapping[str, Sequence[MCQItem]],
    forget_tasks: Sequence[str],
    layer: int | None,
    unlearned: str | os.PathLike | None,
    rmu_config: rmu.RMUConfig | None,
) -> int:
    """The layer the junk direction is read at, after checking the run's arguments."""
    if (unlearned is None) == (rmu_config is None):
        raise UnlearnInterpError("give exactly one of an unlearned checkpoint and an RMU config")
    unknown = [t for t in forget_tasks if t not in tasks]
    if unknown:
        raise UnlearnInterpError(
            f"forget task(s) {unknown} are not among the MCQ tasks {sorted(tasks)}"
        )
    layer = rmu_config.layer if rmu_config is not None else layer
    if layer is None:
        raise UnlearnInterpError(
            "layer is required with an unlearned checkpoint (e.g. 7 for Zephyr RMU)"
        )
    return layer
