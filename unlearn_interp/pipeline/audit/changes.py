"""Where did unlearning write? The audit's first look at a pair: each changed tensor's relative
change (:func:`analysis.weight_changes`), the forget and retain prompts' residual norm ratio and
cosine to base at every layer, and the layer the junk direction is read at, chosen from that
table by :data:`LAYER_RULE` (every candidate's score kept) unless the user names one. The
junk subspace takes one direction per changed block, the largest changes first, at most
:data:`MAX_SUBSPACE_BLOCKS`.

    >>> WeightChanges(layer=None)                                          # doctest: +SKIP
    >>> chosen_layer(run_dir), subspace_layers(run_dir)                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from unlearn_interp import analysis, models, plotting
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import markdown_table
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files

FIGURE = "weight_changes"
TABLES = ("weight_changes", "layer_choice")
MAX_SUBSPACE_BLOCKS = 8
LAYER_RULE = (
    "the output of the changed block where the forget prompts move furthest from base relative "
    "to the retain prompts: score = cos_retain - cos_forget, the last token's cosine to base "
    "(every layer is a candidate when no block changed; a tie goes to the later layer)"
)


@dataclasses.dataclass(frozen=True)
class WeightChanges:
    """The change table, the per-layer divergence on forget and retain prompts and the chosen
    layer (``layer`` when given, else :data:`LAYER_RULE`)."""

    layer: int | None = None
    name: str = "changes"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.table(name) for name in TABLES] + figure_files([FIGURE])

    def compute(self, run: Run) -> StepOutput:
        subject = run.subject
        plain = run.variants.plain()
        unlearned = plain[subject.unlearned]
        changes = analysis.weight_changes(subject.model, unlearned.weights)
        profile = analysis.layer_profile(
            subject.model,
            [plain["base"], unlearned],
            subject.prompts,
            batch_size=subject.batch_size,
        )
        blocks = analysis.block_changes(changes, models.n_layers(subject.model))
        choice = layer_choice(blocks, profile, subject.unlearned, self.layer)
        figure = plotting.plot_weight_changes(changes, choice, chosen(choice))
        return StepOutput(
            tables={"weight_changes": changes, "layer_choice": choice}, figures={FIGURE: figure}
        )

    def summary(self, run: Run) -> StepSummary:
        changes = run.dir.table("weight_changes")
        choice = run.dir.table("layer_choice")
        entry = changes_entry(changes, choice, self.layer)
        return StepSummary(metrics={"changes": entry}, section=changes_section(changes, entry))


def layer_choice(
    blocks: pd.DataFrame, profile: pd.DataFrame, unlearned: str, given: int | None
) -> pd.DataFrame:
    """One row per layer: whether its block changed, the sum of its relative changes, the
    forget and retain prompts' cosine to base and norm ratio, the score of :data:`LAYER_RULE`,
    and ``chosen`` (``given`` when not None)."""
    at = profile[profile["variant"] == unlearned].pivot(
        index="layer", columns="prompt_set", values="cos_to_reference"
    )
    norms = profile.pivot_table(index="layer", columns=["variant", "prompt_set"], values="norm")
    table = blocks.rename(columns={"block": "layer"}).copy()
    table["changed"] = table["tensors_changed"] > 0
    table["cos_forget"] = table["layer"].map(at["forget"])
    table["cos_retain"] = table["layer"].map(at["retain"])
    for prompt_set in ("forget", "retain"):
        ratio = norms[(unlearned, prompt_set)] / norms[("base", prompt_set)]
        table[f"norm_ratio_{prompt_set}"] = table["layer"].map(ratio)
    table["score"] = table["cos_retain"] - table["cos_forget"]
    candidates = table[table["changed"]] if table["changed"].any() else table
    best = candidates.loc[candidates["score"] == candidates["score"].max(), "layer"].max()
    table["candidate"] = table["layer"].isin(candidates["layer"])
    table["chosen"] = table["layer"] == (best if given is None else given)
    return table


def chosen(choice: pd.DataFrame) -> int:
    """The layer a layer-choice table marks as chosen."""
    return int(choice.loc[choice["chosen"], "layer"].iloc[0])


def chosen_layer(run_dir: RunDir) -> int:
    """The layer the run's change step chose (or was given)."""
    return chosen(run_dir.table("layer_choice"))


def subspace_layers(run_dir: RunDir) -> tuple[int, ...]:
    """One layer per changed block (its output), the largest total relative changes first, at
    most :data:`MAX_SUBSPACE_BLOCKS`, in layer order; the chosen layer alone when no block
    changed."""
    choice = run_dir.table("layer_choice")
    changed = choice[choice["changed"]].sort_values(
        ["relative_change", "layer"], ascending=[False, True]
    )
    layers = sorted(int(v) for v in changed["layer"].head(MAX_SUBSPACE_BLOCKS))
    return tuple(layers) or (chosen(choice),)


def changes_entry(changes: pd.DataFrame, choice: pd.DataFrame, given: int | None) -> dict[str, Any]:
    """metrics.json's ``changes``: how many tensors and which blocks changed, the five largest
    relative changes, the chosen layer and how it was chosen, every candidate's score."""
    largest = changes.sort_values("relative_change", ascending=False).head(5)
    return {
        "tensors_changed": int(len(changes)),
        "blocks_changed": [int(b) for b in choice.loc[choice["changed"], "layer"]],
        "largest": [
            {"tensor": r.tensor, "relative_change": float(r.relative_change)}
            for r in largest.itertuples()
        ],
        "layer": chosen(choice),
        "layer_rule": "given (--layer)" if given is not None else LAYER_RULE,
        "layer_scores": {
            int(r.layer): float(r.score) for r in choice[choice["candidate"]].itertuples()
        },
    }


def changes_section(changes: pd.DataFrame, entry: dict[str, Any]) -> str:
    """The report's section: the largest changes, the rule and the layer it chose."""
    top = changes.head(10)[["tensor", "relative_change", "change_norm"]]
    blocks = entry["blocks_changed"]
    said = f"blocks {blocks}" if len(blocks) <= 12 else f"{len(blocks)} blocks"
    return "\n".join(
        [
            "## Where did unlearning write?",
            "",
            f"{entry['tensors_changed']} tensors differ from the base model, in {said}. The "
            "largest relative changes (||W_unlearned - W_base|| / ||W_base||):",
            "",
            markdown_table(top),
            "",
            f"The junk direction is read at layer {entry['layer']}, chosen as "
            f"{entry['layer_rule']}. Every candidate's score: "
            f"[{RunFiles.table('layer_choice')}]({RunFiles.table('layer_choice')}); every "
            f"changed tensor: [{RunFiles.table('weight_changes')}]"
            f"({RunFiles.table('weight_changes')}); figure: "
            f"[{FIGURE}]({figure_files([FIGURE])[0]}).",
        ]
    )
