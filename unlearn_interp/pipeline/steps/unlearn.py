"""RMU trained on the subject's corpora as a run's first step (:class:`Unlearn`): it writes
``unlearned_weights.safetensors`` (and the base weights, control vectors and training history),
which every later step reads through the run's variants. (An audit's unlearned model comes from
a second checkpoint instead: :mod:`unlearn_interp.pipeline.audit.pair`.)

    >>> steps = [Unlearn(rmu.RMUConfig(layer=7)), Directions(...)]           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from unlearn_interp import plotting, rmu
from unlearn_interp.artifacts import RunFiles
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
