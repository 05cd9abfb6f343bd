"""The directions step: per-layer difference-in-means candidates (the base and unlearned models
run once over the forget prompts), the junk direction at the subject's layer (the blog's recipe:
mean unlearned - mean base at the last token), optionally the junk subspace of the updated
blocks' outputs, and their norm-matched random controls. The candidates' scores are kept, so the
choice can be audited.

    >>> Directions(seed=0, subspace_layers=(5, 6, 7))                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import directions
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import bullet_lines
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary


@dataclasses.dataclass(frozen=True)
class Directions:
    """The junk direction at the subject's layer (and, with ``subspace_layers``, the subspace of
    those blocks' outputs) from the per-layer candidates; random controls drawn with ``seed``
    (default the subject's)."""

    seed: int | None = None
    subspace_layers: Sequence[int] | None = None
    name: str = "directions"

    def files(self, run: Run) -> list[str]:
        files = [RunFiles.DIRECTION, RunFiles.DIRECTION_JSON, RunFiles.RANDOM_DIRECTION]
        if self.subspace_layers is not None:
            files += [RunFiles.SUBSPACE, RunFiles.RANDOM_SUBSPACE]
        return files + [RunFiles.DIRECTION_CANDIDATES]

    def compute(self, run: Run) -> StepOutput:
        subject, variants = run.subject, run.variants
        seed = subject.seed if self.seed is None else self.seed
        plain = variants.variants(["base", subject.unlearned])
        controls = variants.control_vectors()
        candidates = directions.candidate_directions(
            subject.model,
            plain["base"],
            plain[subject.unlearned],
            subject.prompts["forget"],
            control_vectors=controls,
            batch_size=subject.batch_size,
        )
        junk = candidates.direction(subject.layer)
        if controls is not None:
            junk.metadata["cos_with_control_vectors"] = control_cosines(controls, junk.vector)
        saved: dict[str, Any] = {
            RunFiles.RANDOM_DIRECTION: directions.random_control(junk, seed=seed)
        }
        if self.subspace_layers is not None:
            subspace = candidates.subspace(self.subspace_layers)
            saved[RunFiles.RANDOM_SUBSPACE] = directions.random_subspace_control(
                subspace, seed=seed
            )
            saved[RunFiles.SUBSPACE] = subspace
        saved[RunFiles.DIRECTION] = junk  # last: its file marks the step's artifacts as written
        for name, artifact in saved.items():
            artifact.save(run.dir.path(name))
        return StepOutput(tables={"direction_candidates": candidates.scores})

    def summary(self, run: Run) -> StepSummary:
        entry = junk_direction_entry(run)
        lines = ["## Junk direction", "", *bullet_lines(entry)]
        return StepSummary(metrics={"junk_direction": entry}, section="\n".join(lines))


def junk_direction_entry(run: Run) -> dict[str, Any]:
    """metrics.json's ``junk_direction``: its layer, the raw norm of the difference of means
    and, for an unlearned model with RMU control vectors, its largest |cosine| with them."""
    junk = directions.Direction.load(run.dir.path(RunFiles.DIRECTION))
    entry: dict[str, Any] = {"layer": junk.layer}
    cos_u = junk.metadata.get("cos_with_control_vectors")
    if cos_u:
        entry["cos_with_control_vector"] = max(cos_u, key=abs)
    entry["raw_norm"] = junk.raw_norm
    return entry


def control_cosines(
    controls: Float[Tensor, "n_topics d_model"], vector: Float[Tensor, " d_model"]
) -> list[float]:
    """Cosine of ``vector`` with each control vector."""
    cos = torch.nn.functional.cosine_similarity(controls.float(), vector[None].float(), dim=-1)
    return cos.tolist()
