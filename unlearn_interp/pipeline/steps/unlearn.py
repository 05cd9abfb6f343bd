"""Where a run's unlearned model comes from: RMU trained here on the subject's corpora
(:class:`Unlearn`), or the tensors in which a second checkpoint differs from the base
(:class:`CheckpointDifference`). Either writes ``unlearned_weights.safetensors``, which every
later step reads through the run's variants.

    >>> steps = [Unlearn(rmu.RMUConfig(layer=7)), Directions(...)]           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from unlearn_interp import models, plotting, rmu
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.variants import restore_weights

TRAINING_FIGURE = "training_curves"


@dataclasses.dataclass(frozen=True)
class Unlearn:
    """RMU with ``config`` on the subject's forget and retain corpora; the model is left on its
    base weights. Writes the RMU result's files and the training curves."""

    config: rmu.RMUConfig
    name: str = "unlearn"

    def files(self, run: Run) -> list[str]:
        trained = [
            RunFiles.UNLEARNED_WEIGHTS,
            RunFiles.BASE_WEIGHTS,
            RunFiles.CONTROL_VECTORS,
            RunFiles.RMU_HISTORY,
        ]
        return trained + figure_files([TRAINING_FIGURE])

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        result = rmu.train_rmu(
            subject.model,
            forget=subject.forget_corpora,
            retain=subject.retain_corpora,
            cfg=self.config,
            progress=run.progress,
        )
        restore_weights(subject.model, result.base_weights)
        result.save(run.dir.root)
        return StepOutput(figures={TRAINING_FIGURE: plotting.plot_training_curves(result.history)})

    def summary(self, run: Run) -> StepSummary:
        return StepSummary(section=rmu_section(self.config, run.dir.table("rmu_history")))


def rmu_section(cfg: rmu.RMUConfig, history: pd.DataFrame) -> str:
    """The report's unlearning section: RMU's settings and where its training ended."""
    last = history.iloc[-1]
    coef = f"beta = {cfg.adaptive_beta}" if cfg.adaptive_beta else f"c = {cfg.steering_coef}"
    return "\n".join(
        [
            "## Unlearning",
            "",
            f"RMU at layer {cfg.layer} (residual stream after that block), update layers "
            f"{list(cfg.update_layers)}, {coef}, alpha = {cfg.alpha}, lr = {cfg.lr}, {cfg.steps} "
            f"steps, seed {cfg.seed}. Last step: forget loss {last.forget_loss:.4g}, retain loss "
            f"{last.retain_loss:.4g}, cos(forget, u) {last.cos_forget_u:.3f}, cos(retain, frozen) "
            f"{last.cos_retain_frozen:.4f}; curves: [{TRAINING_FIGURE}]({figure_files([TRAINING_FIGURE])[0]}).",
        ]
    )


@dataclasses.dataclass(frozen=True)
class CheckpointDifference:
    """The unlearned model is checkpoint ``path``: the tensors in which it differs from the base
    model are saved as the run's unlearned weights (nothing is trained)."""

    path: str | os.PathLike
    name: str = "unlearn"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.UNLEARNED_WEIGHTS]

    def compute(self, run: Run) -> StepOutput:
        variant = models.variant_from_checkpoint(run.subject.model, self.path, name="rmu")
        if not variant.weights:
            raise UnlearnInterpError(f"{self.path} has the same weights as the base model")

        def write(tmp: Path) -> None:
            models.save_weights(variant.weights, tmp)

        return StepOutput(files={RunFiles.UNLEARNED_WEIGHTS: write})

    def summary(self, run: Run) -> StepSummary:
        changed = models.load_weights(run.dir.path(RunFiles.UNLEARNED_WEIGHTS))
        return StepSummary(
            section=f"## Unlearning\n\nThe unlearned model is {self.path}: it differs from the "
            f"base model in {len(changed)} tensors ({', '.join(sorted(changed)[:8])}"
            f"{', ...' if len(changed) > 8 else ''})."
        )
