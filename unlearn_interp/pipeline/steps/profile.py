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
        figures = profile_figures(profile, subject.layer, self.note)
        return StepOutput(tables={"layer_profile": profile}, figures=figures)

    def summary(self, run: Run) -> StepSummary:
        entry = profile_summary(run.dir.table("layer_profile"), run.subject.layer)
        links = ", ".join(
            f"[{name}]({path})" for name, path in zip(FIGURES, figure_files(FIGURES), strict=True)
        )
        section = "\n".join(
            ["## Layer profile", "", *bullet_lines(entry, ".3f"), "", f"Figures: {links}."]
        )
        return StepSummary(metrics={"layer_profile": entry}, section=section)


def profile_figures(profile: pd.DataFrame, layer: int, note: str = "") -> dict[str, Any]:
    """The four plots: cosine to base and residual norm by layer, base and unlearned only, then
    with every ablated variant of the profile."""
    before = profile[profile["variant"].isin(["base", "rmu"])]
    about = f" ({note})" if note else ""
    after = "After ablation"
    return {
        "layer_cosines_rmu": plotting.plot_layer_cosines(
            before,
            rmu_layer=layer,
            title=f"RMU splits from base at its layer: cosine to base{about}",
        ),
        "layer_norms_rmu": plotting.plot_layer_norms(
            before, rmu_layer=layer, title=f"RMU's junk: residual norm by layer{about}"
        ),
        "layer_cosines_ablated": plotting.plot_layer_cosines(
            profile, rmu_layer=layer, title=f"{after}: cosine to base{about}"
        ),
        "layer_norms_ablated": plotting.plot_layer_norms(
            profile, rmu_layer=layer, title=f"{after}: residual norm{about}"
        ),
    }


def profile_summary(profile: pd.DataFrame, layer: int) -> dict[str, float]:
    """The numbers the blog's plots show: norm ratio at the RMU layer, cosines after ablation."""
    forget = profile[profile["prompt_set"] == "forget"].set_index(["variant", "layer"])
    norm = forget["norm"]
    cos = forget["cos_to_reference"]
    return {
        "norm_ratio_rmu_vs_base_at_layer": float(norm[("rmu", layer)] / norm[("base", layer)]),
        "norm_ratio_ablated_vs_base_at_layer": float(
            norm[("rmu_ablated", layer)] / norm[("base", layer)]
        ),
        "min_cos_rmu_to_base": float(cos.loc["rmu"].min()),
        "min_cos_ablated_to_base": float(cos.loc["rmu_ablated"].min()),
    }
