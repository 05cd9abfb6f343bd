"""The generations step: greedy continuations of the subject's generation prompts under each of
the run's variants, side by side (RMU's "The\\n\\nThe ..." beside the ablated model's text).

    >>> Generations(("base", "rmu", "rmu_ablated"))                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from unlearn_interp import evaluation, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files

FIGURE = "generations"


@dataclasses.dataclass(frozen=True)
class Generations:
    """Greedy continuations (``subject.max_new_tokens`` tokens) of the subject's generation
    prompts (its first four forget prompts when it has none) under the run's ``variants``."""

    variants: tuple[str, ...]
    title: str = "Greedy continuations of forget prompts"
    name: str = "generations"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.GENERATIONS, *figure_files([FIGURE])]

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        prompts = subject.generation_prompts or subject.prompts["forget"][:4]
        chosen = list(run.variants.variants(self.variants).values())
        table = evaluation.compare_generations(
            subject.model, chosen, prompts, max_new_tokens=subject.max_new_tokens, progress=False
        )
        figure = plotting.generations_table(table, title=self.title)
        return StepOutput(tables={"generations": table}, figures={FIGURE: figure})

    def summary(self, run: Run) -> StepSummary:
        table = run.dir.table("generations")
        return StepSummary(section=f"## {self.title}\n\n{plotting.generations_markdown(table)}")
