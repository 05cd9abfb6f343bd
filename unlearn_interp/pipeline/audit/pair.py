"""The pair an audit reads: which unlearned model, and the tensors in which it differs from the
base model, saved into the run as its unlearned weights (the base model is the one loaded).

The unlearned model is a local HuggingFace checkpoint of the same architecture (its safetensors
are read one tensor at a time, so memory holds the base model plus the changed tensors), a
model asset fetched from the package index, or a run directory written by ``unlearn-interp
unlearn`` (its ``unlearned_weights.safetensors``, with the RMU control vectors beside them), or
the changed tensors themselves (from a notebook).

    >>> PairWeights("/ckpts/zephyr-rmu")                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from unlearn_interp import artifacts, models, sources
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary

# What the report calls each kind of unlearned model.
KINDS = {
    "run": "an `unlearn-interp unlearn` run",
    "checkpoint": "a HuggingFace checkpoint",
    "asset": "a checkpoint fetched from the package index",
    "tensors": "tensors given to the audit",
}
Unlearned = str | os.PathLike | Mapping[str, Tensor]


def unlearned_source(unlearned: Unlearned) -> tuple[str, Path | None]:
    """``("run", dir)`` for a run directory of ``unlearn``, ``("checkpoint", dir)`` for a
    HuggingFace checkpoint directory, ``("asset", name)`` for a model asset (fetched on use),
    ``("tensors", None)`` for the changed tensors themselves; one sentence otherwise."""
    if isinstance(unlearned, Mapping):
        return "tensors", None
    name = str(unlearned)
    if name in sources.ASSETS and not Path(name).exists():
        if sources.get_asset(name).kind != "model":
            raise UnlearnInterpError(f"asset {name!r} is data, not a model")
        return "asset", Path(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise UnlearnInterpError(f"--unlearned {name} does not exist")
    if (path / RunFiles.UNLEARNED_WEIGHTS).is_file():
        return "run", path
    if (path / "config.json").is_file():
        return "checkpoint", path
    raise UnlearnInterpError(
        f"--unlearned {name} is neither a HuggingFace checkpoint (no config.json) nor a run "
        f"directory of `unlearn-interp unlearn` (no {RunFiles.UNLEARNED_WEIGHTS})"
    )


def run_record(path: Path) -> dict[str, Any]:
    """An ``unlearn`` run directory's config.json (one sentence when it is missing or corrupt)."""
    record = artifacts.read_json(path / RunFiles.CONFIG)
    if not isinstance(record, dict):
        raise UnlearnInterpError(f"{path / RunFiles.CONFIG} is not a JSON object")
    return record


@dataclasses.dataclass(frozen=True)
class PairWeights:
    """The tensors in which ``unlearned`` differs from the run's base model, as the run's
    unlearned weights (and, from an ``unlearn`` run directory, its control vectors)."""

    unlearned: Unlearned
    name: str = "unlearn"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.UNLEARNED_WEIGHTS]

    def compute(self, run: Run) -> StepOutput:
        kind, path = unlearned_source(self.unlearned)
        if kind == "tensors":
            return _weights_file(dict(self.unlearned))
        if kind == "run":
            return _from_run(run, path)
        if kind == "asset":
            path = sources.fetch(str(path), progress=run.progress)
        variant = models.variant_from_checkpoint(run.subject.model, path, name="unlearned")
        if not variant.weights:
            raise UnlearnInterpError(f"{path} has the same weights as the base model")
        return _weights_file(variant.weights)

    def summary(self, run: Run) -> StepSummary:
        changed = models.load_weights(run.dir.path(RunFiles.UNLEARNED_WEIGHTS))
        kind, path = unlearned_source(self.unlearned)
        where = "" if path is None else f"{self.unlearned} "
        entry = {"unlearned": where.strip() or kind, "kind": kind, "tensors_changed": len(changed)}
        text = (
            f"## The pair\n\nBase model: {run.subject.title}. Unlearned model: {where}"
            f"({KINDS[kind]}); it differs from the base model in {len(changed)} tensors."
        )
        return StepSummary(metrics={"pair": entry}, section=text)


def _weights_file(weights: Mapping[str, Tensor]) -> StepOutput:
    """The unlearned tensors as the run's ``unlearned_weights.safetensors``."""
    if not weights:
        raise UnlearnInterpError("the unlearned model has the same weights as the base model")
    return StepOutput(
        files={RunFiles.UNLEARNED_WEIGHTS: lambda tmp: models.save_weights(weights, tmp)}
    )


def _from_run(run: Run, path: Path) -> StepOutput:
    """An ``unlearn`` run's tensors (checked against the base model's shapes) and control
    vectors, copied into the audit's run."""
    run_record(path)  # a corrupt config.json is one sentence here, not a silent start
    weights = models.load_weights(path / RunFiles.UNLEARNED_WEIGHTS)
    params = dict(run.subject.model.named_parameters())
    for name, tensor in weights.items():
        if name not in params or params[name].shape != tensor.shape:
            raise UnlearnInterpError(
                f"{path / RunFiles.UNLEARNED_WEIGHTS}: tensor {name} "
                f"{tuple(tensor.shape)} does not fit the base model"
            )
    files = dict(_weights_file(weights).files)
    if (path / RunFiles.CONTROL_VECTORS).is_file():
        source = path / RunFiles.CONTROL_VECTORS
        files = {RunFiles.CONTROL_VECTORS: lambda tmp: shutil.copyfile(source, tmp), **files}
    return StepOutput(files=files)
