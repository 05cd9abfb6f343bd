"""Run-directory reading and writing for the ``direction`` command: the unlearned variant and
control vectors a run saved, and the direction with its candidates table.

    rmu, controls = unlearned_from_run(model, "runs/demo")
    save_extraction("runs/demo", direction, candidates)
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from unlearn_interp import models
from unlearn_interp.artifacts import RunFiles, atomic_path, read_json
from unlearn_interp.directions.artifact import Direction
from unlearn_interp.directions.candidates import Candidates
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant


def save_extraction(
    out: str | os.PathLike, direction: Direction, candidates: Candidates
) -> dict[str, Path]:
    """Write ``direction.safetensors``, ``direction.json`` and ``tables/direction_candidates.csv``
    into run directory ``out``; the table marks the chosen layer (and, after a selection,
    which layers passed the thresholds)."""
    out = Path(out)
    table = candidates.scores.copy()
    selection = direction.metadata.get("selection")
    if selection:
        table["passes"] = [row["passes"] for row in selection["table"]]
    table["selected"] = table["layer"] == direction.layer
    csv_path = out / RunFiles.DIRECTION_CANDIDATES
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    tensor_path = direction.save(out)
    return {
        "direction": tensor_path,
        "metadata": out / RunFiles.DIRECTION_JSON,
        "candidates": csv_path,
    }


def unlearned_from_run(model: Model, run_dir: str | os.PathLike) -> tuple[Variant, Tensor | None]:
    """The unlearned variant stored in run directory ``run_dir``
    (``unlearned_weights.safetensors``) and its control vectors
    (``control_vectors.safetensors``, key ``"control_vectors"``) when the run saved them.

    >>> rmu, controls = unlearned_from_run(model, "runs/demo")     # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if (run_dir / RunFiles.CONFIG).is_file():
        read_json(run_dir / RunFiles.CONFIG)  # a corrupt record is one sentence, not ignored
    weights_path = run_dir / RunFiles.UNLEARNED_WEIGHTS
    if not weights_path.is_file():
        raise UnlearnInterpError(
            f"{run_dir} has no {RunFiles.UNLEARNED_WEIGHTS}, so it is not an RMU run"
        )
    variant = Variant("unlearned", weights=models.load_weights(weights_path))
    controls_path = run_dir / RunFiles.CONTROL_VECTORS
    if not controls_path.is_file():
        return variant, None
    tensors = models.load_weights(controls_path)
    if "control_vectors" not in tensors:
        raise UnlearnInterpError(f"{controls_path} has no tensor named 'control_vectors'")
    return variant, tensors["control_vectors"]
