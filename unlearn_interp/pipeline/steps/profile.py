"""The layer profile step: residual norm and cosine to base at every layer (last token) of the
run's variants, on the forget and the retain prompts, and the blog's four plots: the unlearned
model splits from base at its layer (cosine) with a norm bump there, and ablation brings both
back.

    >>> LayerProfile(("base", "rmu", "rmu_ablated"))                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from unlearn_interp import analysis, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import bullet_lines
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files

FIGURES = ("layer_cosines_rmu", "layer_norms_rmu", "layer_cosines_ablated", "layer_norms_ablated")


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Norm and cosine to base at every layer of the run's ``variants`` (each prompt set of the
    subject), with the cosine to the junk direction and control vectors; ``note`` goes into
    the figures' titles (which model, which seed)."""

    variants: tuple[str, ...]
    note: str = ""
    name: str = "layer_profile"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.LAYER_PROFILE, *figure_files(FIGURES)]

    def compute(self, run: Run) -> StepOutput:
        subject, variants = run.subject, run.variants
        profile = analysis.layer_profile(
            subject.model,
            list(variants.variants(self.variants).values()),
            dict(subject.prompts),
            directions={"direction": variants.junk().vector},
            control_vectors=variants.control_vectors(),
            batch_size=subject.batch_size,
        )
        figures = profile_figures(profile, subject.layer, self.note, subject.unlearned)
        return StepOutput(tables={"layer_profile": profile}, figures=figures)

    def summary(self, run: Run) -> StepSummary:
        entry = profile_summary(
            run.dir.table("layer_profile"), run.subject.layer, run.subject.unlearned
        )
        links = ", ".join(
            f"[{name}]({path})" for name, path in zip(FIGURES, figure_files(FIGURES), strict=True)
        )
        section = "\n".join(
            ["## Layer profile", "", *bullet_lines(entry, ".3f"), "", f"Figures: {links}."]
        )
        return StepSummary(metrics={"layer_profile": entry}, section=section)


def profile_figures(
    profile: pd.DataFrame, layer: int, note: str = "", unlearned: str = "rmu"
) -> dict[str, Any]:
    """The four plots: cosine to base and residual norm by layer, base and the unlearned model
    (called ``unlearned``) only, then with every ablated variant of the profile."""
    before = profile[profile["variant"].isin(["base", unlearned])]
    who = "RMU" if unlearned == "rmu" else "The unlearned model"
    about = f" ({note})" if note else ""
    common = {"rmu_layer": layer, "unlearned": unlearned}
    return {
        "layer_cosines_rmu": plotting.plot_layer_cosines(
            before, **common, title=f"{who} splits from base at its layer: cosine to base{about}"
        ),
        "layer_norms_rmu": plotting.plot_layer_norms(
            before, **common, title=f"{who}: residual norm by layer{about}"
        ),
        "layer_cosines_ablated": plotting.plot_layer_cosines(
            profile, **common, title=f"After ablation: cosine to base{about}"
        ),
        "layer_norms_ablated": plotting.plot_layer_norms(
            profile, **common, title=f"After ablation: residual norm{about}"
        ),
    }


def profile_summary(profile: pd.DataFrame, layer: int, unlearned: str = "rmu") -> dict[str, float]:
    """The numbers the blog's plots show: the forget prompts' norm ratio to base at ``layer``
    (the unlearned model's and its junk-ablated twin's), and their lowest cosine to base."""
    forget = profile[profile["prompt_set"] == "forget"].set_index(["variant", "layer"])
    norm = forget["norm"]
    cos = forget["cos_to_reference"]
    u, ablated = unlearned, f"{unlearned}_ablated"
    return {
        f"norm_ratio_{u}_vs_base_at_layer": float(norm[(u, layer)] / norm[("base", layer)]),
        "norm_ratio_ablated_vs_base_at_layer": float(
            norm[(ablated, layer)] / norm[("base", layer)]
        ),
        f"min_cos_{u}_to_base": float(cos.loc[u].min()),
        "min_cos_ablated_to_base": float(cos.loc[ablated].min()),
    }
