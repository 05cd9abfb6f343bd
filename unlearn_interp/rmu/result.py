"""RMUResult: what an RMU run produced, and its files in a run directory.

>>> result.save("runs/rmu"); same = RMUResult.load("runs/rmu")      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import artifacts, models
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.rmu.config import LEGACY_ADAM_EPS, RMUConfig

log = logging.getLogger(__name__)

# The old names of the run-directory files RMU writes (the names themselves live in RunFiles).
CONFIG_FILE = RunFiles.CONFIG
CONTROL_VECTORS_FILE = RunFiles.CONTROL_VECTORS
UNLEARNED_WEIGHTS_FILE = RunFiles.UNLEARNED_WEIGHTS
BASE_WEIGHTS_FILE = RunFiles.BASE_WEIGHTS
HISTORY_FILE = RunFiles.RMU_HISTORY

VECTOR_KEYS = ("control_vectors", "coefficients")  # the tensors of control_vectors.safetensors


@dataclasses.dataclass
class RMUResult:
    """What an RMU run produced; enough to rebuild every variant of the model.

    ``base_weights`` and ``unlearned_weights`` hold only the trained tensors (``W_out`` of
    ``config.update_layers``), so ``Variant("rmu", weights=result.unlearned_weights)`` applied to
    the base model is the unlearned model.

    >>> result.save("runs/rmu"); same = RMUResult.load("runs/rmu")      # doctest: +SKIP
    """

    base_weights: dict[str, Tensor]
    unlearned_weights: dict[str, Tensor]
    control_vectors: Float[Tensor, "n_topics d_model"]  # unit, one per topic
    coefficients: Float[Tensor, " n_topics"]  # c_t (fixed, or beta * frozen norm if adaptive)
    config: RMUConfig
    history: pd.DataFrame  # one row per step, columns HISTORY_COLUMNS; frozen_forget_norm and
    # cos_forget_frozen are NaN off diagnostic steps (RMUConfig.frozen_forget_every)
    model_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # name, d_model, n_layers

    @property
    def targets(self) -> Float[Tensor, "n_topics d_model"]:
        """The points the forget activations are pulled to: ``c_t * u_t``."""
        return self.coefficients.to(self.control_vectors.dtype).unsqueeze(-1) * self.control_vectors

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the run-directory files (docs/architecture.md), each atomically.

        ``config.json`` (config, seed, coefficients, model, library versions; keys other steps
        wrote there are kept), ``control_vectors.safetensors`` (``control_vectors`` and
        ``coefficients``), ``unlearned_weights.safetensors``, ``base_weights.safetensors`` and
        ``tables/rmu_history.csv``.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        config_path = root / RunFiles.CONFIG
        record = artifacts.read_json(config_path) if config_path.is_file() else {}
        record.update(self._config_record())
        artifacts.write_json(config_path, record)
        vectors = {"control_vectors": self.control_vectors, "coefficients": self.coefficients}
        meta = {"layer": str(self.config.layer)}
        models.save_weights(vectors, root / RunFiles.CONTROL_VECTORS, meta)
        models.save_weights(self.unlearned_weights, root / RunFiles.UNLEARNED_WEIGHTS, meta)
        models.save_weights(self.base_weights, root / RunFiles.BASE_WEIGHTS, meta)
        with artifacts.atomic_path(root / RunFiles.RMU_HISTORY) as tmp:
            self.history.to_csv(tmp, index=False)
        return root

    def _config_record(self) -> dict[str, Any]:
        return {
            "rmu": self.config.to_dict(),
            "seed": self.config.seed,
            "coefficients": self.coefficients.tolist(),
            "model": dict(self.model_info),
            "library_versions": artifacts.library_versions(),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RMUResult:
        """Read what :meth:`save` wrote; a missing or malformed file is named in the error."""
        root = Path(directory)
        record = artifacts.read_json(root / RunFiles.CONFIG)
        if not isinstance(record, dict) or "rmu" not in record:
            raise UnlearnInterpError(f"{root / RunFiles.CONFIG} has no 'rmu' section")
        vectors = models.load_weights(root / RunFiles.CONTROL_VECTORS)
        for key in VECTOR_KEYS:
            if key not in vectors:
                raise UnlearnInterpError(f"{root / RunFiles.CONTROL_VECTORS} has no tensor {key!r}")
        history_path = root / RunFiles.RMU_HISTORY
        if not history_path.is_file():
            raise UnlearnInterpError(f"{history_path} does not exist")
        settings = _settings_with_eps(record["rmu"], root / RunFiles.CONFIG)
        return cls(
            base_weights=models.load_weights(root / RunFiles.BASE_WEIGHTS),
            unlearned_weights=models.load_weights(root / RunFiles.UNLEARNED_WEIGHTS),
            control_vectors=vectors["control_vectors"],
            coefficients=vectors["coefficients"],
            config=RMUConfig.from_dict(settings),
            history=pd.read_csv(history_path),
            model_info=dict(record.get("model", {})),
        )


def _settings_with_eps(settings: Any, path: Path) -> Any:
    """A saved run's settings; one written before ``adam_eps`` existed gets the eps it used."""
    if isinstance(settings, Mapping) and "adam_eps" not in settings:
        # Written before the field existed, so trained with torch's default eps: say so,
        # rather than let the new default claim a setting the run never used.
        log.info("%s has no adam_eps: the run used %g", path, LEGACY_ADAM_EPS)
        settings = {**settings, "adam_eps": LEGACY_ADAM_EPS}
    return settings


__all__ = [
    "BASE_WEIGHTS_FILE",
    "CONFIG_FILE",
    "CONTROL_VECTORS_FILE",
    "HISTORY_FILE",
    "RMUResult",
    "UNLEARNED_WEIGHTS_FILE",
]
