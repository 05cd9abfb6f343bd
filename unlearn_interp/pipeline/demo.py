"""The reproduction on one model: the organism demo and ``run`` on a real checkpoint.

``unlearn -> direction -> accuracy -> layer_profile -> generations -> figures -> report``
(and, for the organism, the recovery ledger last: :mod:`unlearn_interp.pipeline.ledger`), each a
step of :mod:`unlearn_interp.pipeline.steps` writing a run directory (DESIGN.md "The run
directory"). Later steps always read what earlier steps wrote (once per run, through one
:class:`RunVariants`), so a resumed run and a fresh run are computed from the same files.

* :func:`run_demo` trains the model organism (cached), unlearns its hazardous domain with RMU and
  tells the whole "RMU is mostly shallow" story on a laptop CPU;
* :func:`run_experiment` does the same for a real checkpoint and the user's MCQ files, with the
  unlearned model either trained here (an ``RMUConfig`` and corpora) or read from a second
  checkpoint (``models.variant_from_checkpoint``).

    >>> metrics = run_demo("runs/demo")                                    # doctest: +SKIP
    >>> metrics["gap_recovered"]                                           # doctest: +SKIP
    {'junk': 0.9, 'random': 0.0}
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

import unlearn_interp.pipeline.steps as steps
from unlearn_interp import artifacts, models, organism, rmu
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.models import Model
from unlearn_interp.pipeline.depth import DepthSettings, organism_depth_inputs, step_depth
from unlearn_interp.pipeline.depth_report import with_depth
from unlearn_interp.pipeline.figures import FIGURE_NAMES, demo_figures
from unlearn_interp.pipeline.ledger import LedgerSettings, ledger_metrics, run_ledger
from unlearn_interp.pipeline.metrics import demo_metrics
from unlearn_interp.pipeline.report import write_demo_report
from unlearn_interp.pipeline.run_variants import RunVariants
from unlearn_interp.pipeline.rundir import FIGURES, RunDir, with_dtype
from unlearn_interp.pipeline.steps import step_unlearn
from unlearn_interp.variants import Variant

log = logging.getLogger(__name__)

VARIANT_NAMES = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")


@dataclasses.dataclass
class Experiment:
    """Everything the shared steps need, whatever produced the model.

    ``tasks`` maps a task name to its MCQ items; ``forget_tasks`` names the hazardous ones (gap
    recovered is reported there). ``layer`` is where the junk direction is read (the RMU layer,
    residual stream after that block).
    """

    model: Model
    tasks: dict[str, list[MCQItem]]
    forget_tasks: tuple[str, ...]
    forget_prompts: list[str]
    retain_prompts: list[str]
    layer: int
    settings: dict[str, Any]  # recorded in config.json; a resumed run must match them
    mcq_mode: str = "letter"
    prompt_template: str = QA_TEMPLATE
    generation_prompts: list[str] = dataclasses.field(default_factory=list)
    max_new_tokens: int = 32
    batch_size: int = 16
    seed: int = 0

    def scored_tasks(self) -> dict[str, steps.Task]:
        """Every task with this experiment's scoring mode and prompt template."""
        return {name: steps.Task(items, self.mcq_mode, self.prompt_template)
                for name, items in self.tasks.items()}  # fmt: skip


def unlearned_variants(run: RunDir, model: Model | None = None) -> dict[str, Variant]:
    """base / rmu / rmu_ablated / rmu_random_ablated, as far as the files earlier steps wrote go."""
    variants = RunVariants(run)
    available = variants.available()
    return variants.variants([name for name in VARIANT_NAMES if name in available])


def step_direction(run: RunDir, exp: Experiment, variants: RunVariants | None = None) -> None:
    """Junk direction (blog recipe: mean rmu - mean base, last token, forget prompts, RMU layer)
    from per-layer candidates kept for the audit, and its norm-matched random control."""
    settings = steps.DirectionSettings(exp.layer, exp.seed, exp.batch_size, step_name="direction")
    steps.step_directions(run, exp.model, variants or RunVariants(run), exp.forget_prompts,
                          settings)  # fmt: skip


def step_accuracy(run: RunDir, exp: Experiment, variants: RunVariants | None = None) -> None:
    """MCQ accuracy of every variant on every task, with per-item predictions."""

    def compute() -> None:
        chosen = (variants or RunVariants(run)).variants(VARIANT_NAMES).values()
        table, per_item = steps.accuracy_tables(exp.model, list(chosen), exp.scored_tasks(),
                                                exp.batch_size, progress=False)  # fmt: skip
        run.write_table("mcq_per_item", per_item)
        run.write_table("accuracy", table)

    run.step("accuracy", [RunFiles.ACCURACY, RunFiles.MCQ_PER_ITEM], compute)


def step_layer_profile(run: RunDir, exp: Experiment, variants: RunVariants | None = None) -> None:
    """Norm and cosine to base at every layer, last token, forget and retain prompts."""
    sets = {"forget": exp.forget_prompts, "retain": exp.retain_prompts}
    steps.step_layer_profile(run, exp.model, variants or RunVariants(run), VARIANT_NAMES, sets,
                             exp.batch_size)  # fmt: skip


def step_generations(run: RunDir, exp: Experiment, variants: RunVariants | None = None) -> None:
    """Greedy continuations of hazardous prompts under every variant, side by side."""
    prompts = exp.generation_prompts or exp.forget_prompts[:4]
    steps.step_generations(run, exp.model, variants or RunVariants(run), VARIANT_NAMES, prompts,
                           max_new_tokens=exp.max_new_tokens)  # fmt: skip


def step_figures(run: RunDir, exp: Experiment, formats: Sequence[str] = ("html", "png")) -> None:
    """The blog's four layer plots (before and after ablation), accuracy bars, training curves."""
    outputs = [f"{FIGURES}/{name}.html" for name in FIGURE_NAMES]
    run.step("figures", outputs,
             lambda: steps.save_figures(run, demo_figures(run.root, exp.layer), formats))  # fmt: skip


def step_report(
    run: RunDir, exp: Experiment, title: str, targets: Mapping[str, str] | None = None
) -> dict:
    """report.md (the story on one page) and metrics.json; always rewritten (cheap)."""
    return write_demo_report(run, exp.forget_tasks, exp.layer, title, targets or {})


def compute_metrics(run: RunDir, exp: Experiment) -> dict[str, Any]:
    """metrics.json (DESIGN.md schema): accuracies, gap recovered, junk direction, timings."""
    return demo_metrics(run, exp.forget_tasks, exp.layer)


def step_unlearned_checkpoint(run: RunDir, exp: Experiment, path: str | os.PathLike) -> None:
    """The tensors in which checkpoint ``path`` differs from the base, saved to the run."""
    steps.step_unlearned_checkpoint(run, exp.model, path)


def run_analysis(
    run: RunDir, exp: Experiment, title: str, targets: Mapping[str, str] | None = None
) -> dict:
    """Every step after unlearning, on variants read once from the run; returns metrics."""
    variants = RunVariants(run)
    step_direction(run, exp, variants)
    step_accuracy(run, exp, variants)
    step_layer_profile(run, exp, variants)
    step_generations(run, exp, variants)
    step_figures(run, exp)
    return step_report(run, exp, title, targets)


# ---------------------------------------------------------------------------------------------
# The model organism demo
# ---------------------------------------------------------------------------------------------


def organism_rmu_config(
    org: organism.Organism | organism.OrganismConfig, seed: int = 0
) -> rmu.RMUConfig:
    """RMU settings for the organism, chosen by the unlearning objective alone.

    The reference recipe (one topic, update layers ``l-2..l``, the reference loss with masked
    padding) at the organism's RMU layer. Among the settings tried on the demo organism, these
    gave the lowest hazardous accuracy while benign accuracy stayed within 0.03 of base (demo:
    hazardous 0.975 -> 0.30, benign 0.975 -> 0.983); the coefficient is about 10x the natural
    forget-activation norm at the layer (~100 demo, ~30 test), as c = 6.5 is about 2x Zephyr's.
    How much ablation recovers played no part in the choice.
    """
    config = org.config if isinstance(org, organism.Organism) else org
    settings = ORGANISM_RMU[config.size]
    return rmu.RMUConfig(
        **settings, layer=config.rmu_layer, update_layers=config.update_layers, seed=seed
    )


ORGANISM_RMU: dict[str, dict[str, Any]] = {
    # adam_eps 1e-8 (torch's default): the value these settings were chosen with, before the
    # reference's 1e-6 became RMUConfig's default; kept so the demo's numbers stay as published.
    "demo": dict(steering_coef=1000.0, alpha=100.0, lr=1e-2, adam_eps=1e-8, batch_size=4,
                 steps=300, max_len=128),
    "test": dict(steering_coef=400.0, alpha=100.0, lr=1e-2, adam_eps=1e-8, batch_size=4,
                 steps=200, max_len=128),
}  # fmt: skip

DEMO_TARGETS = {
    "base accuracy": ">= 0.95 on both domains",
    "rmu accuracy": "hazardous <= 0.35 (chance 0.25), benign >= base - 0.03",
    "gap recovered": "junk >= 0.60, random <= 0.10",
    "junk direction": "cos with control vector >= 0.9",
    "layer profile": "norm at RMU layer >= 3x base; every cosine to base > 0.9 after ablation",
}


def organism_experiment(org: organism.Organism, seed: int, settings: dict[str, Any]) -> Experiment:
    return Experiment(
        model=org.model, tasks=org.mcq, forget_tasks=("hazardous",),
        forget_prompts=org.hazardous_prompts, retain_prompts=org.benign_prompts,
        layer=org.rmu_layer, settings=settings, mcq_mode=org.mcq_mode,
        prompt_template=org.qa_template, generation_prompts=org.hazardous_prompts[:4],
        max_new_tokens=16, batch_size=32, seed=seed,
    )  # fmt: skip


def run_demo(
    out: str | os.PathLike,
    *,
    size: str = "demo",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    ledger: bool | LedgerSettings = True,
    depth: bool | DepthSettings = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The whole story on the model organism; returns ``metrics.json``'s content.

    The organism is pretrained and cached in float32 on the CPU; ``device`` and ``dtype`` say
    where and in what precision the demo runs it (a dtype other than float32 is recorded in the
    run's settings, so a run is never resumed in another precision). ``depth`` (True: the
    default :class:`DepthSettings`) adds the depth profile after the analysis and ``ledger``
    (True: the default :class:`LedgerSettings`) runs the recovery ledger on the run last:
    each adds its report.md section and a metrics.json entry (``"depth"``, ``"ledger"``),
    every other key as without them. The organism has one RMU seed, so ``executor`` (default
    serial) runs only the ledger's parts.

    >>> metrics = run_demo("runs/demo", size="test")                        # doctest: +SKIP
    """
    run = RunDir(out, force=force)
    org_config = organism.OrganismConfig.for_size(size, seed)
    cfg = organism_rmu_config(org_config, seed)
    settings = {"job": "demo", "size": size, "seed": seed, "rmu": cfg.to_dict(),
                "organism": org_config.to_dict()}  # fmt: skip
    settings = with_dtype(settings, dtype)
    run.check_settings(settings)  # before any training: a mismatch fails at once
    start = time.perf_counter()
    org = organism.load_organism(
        size, seed, cache_dir=cache_dir, progress=progress, device=device, dtype=dtype
    )
    if "organism" not in run.seconds():
        run.record_seconds("organism", time.perf_counter() - start)
    exp = organism_experiment(org, seed, settings)
    step_unlearn(run, exp.model, cfg, [org.forget_corpus], [org.retain_corpus], progress)
    title = f"RMU is mostly shallow: the model organism ({size})"
    metrics = run_analysis(run, exp, title, DEMO_TARGETS)
    if depth:
        chosen_depth = depth if isinstance(depth, DepthSettings) else DepthSettings()
        metrics = step_depth_report(run, org, chosen_depth, progress, metrics)
    if ledger:
        chosen = ledger if isinstance(ledger, LedgerSettings) else LedgerSettings()
        metrics = step_ledger(run, org, chosen, cache_dir, force, progress, metrics, executor)
    log.info(
        "demo finished in %.1f s; see %s", time.perf_counter() - start, run.path(RunFiles.REPORT)
    )
    return metrics


def step_depth_report(
    run: RunDir,
    org: organism.Organism,
    settings: DepthSettings,
    progress: bool,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """The depth profile of the demo's run (its report section and a ``"depth"`` entry in
    metrics.json)."""
    inputs = organism_depth_inputs(org, settings.seed)
    step_depth(run, org.model, RunVariants(run), inputs, settings, progress)
    return with_depth(run, metrics, org.rmu_layer)


def step_ledger(
    run: RunDir,
    org: organism.Organism,
    settings: LedgerSettings,
    cache_dir: str | os.PathLike | None,
    force: bool,
    progress: bool,
    metrics: Mapping[str, Any],
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The recovery ledger on the demo's own run (resumable part by part, its parts run by
    ``executor``; its report section appended to report.md) and metrics.json with a
    ``"ledger"`` entry added."""
    table = run_ledger(run.root, settings=settings, cache_dir=cache_dir, org=org, force=force,
                       progress=progress, executor=executor)  # fmt: skip
    metrics = {**metrics, "ledger": ledger_metrics(table)}
    artifacts.write_json(run.path(RunFiles.METRICS), metrics)
    return metrics


# ---------------------------------------------------------------------------------------------
# Real checkpoints
# ---------------------------------------------------------------------------------------------


def run_experiment(
    out: str | os.PathLike,
    *,
    base: str | os.PathLike,
    tasks: Mapping[str, Sequence[MCQItem]],
    forget_tasks: Sequence[str],
    prompts: Sequence[str],
    retain_prompts: Sequence[str] | None = None,
    layer: int | None = None,
    unlearned: str | os.PathLike | None = None,
    rmu_config: rmu.RMUConfig | None = None,
    forget_corpora: Sequence[Sequence[str]] = (),
    retain_corpora: Sequence[Sequence[str]] = (),
    mcq_mode: str = "letter",
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The demo's steps on a real checkpoint ``base`` and the user's MCQ files.

    The unlearned model comes from ``unlearned`` (a second checkpoint of the same architecture,
    e.g. a released RMU model; only the tensors that differ are kept) or is trained here with
    ``rmu_config`` on ``forget_corpora`` / ``retain_corpora``.

    >>> run_experiment("runs/zephyr", base="/ckpts/zephyr-7b-beta", unlearned="/ckpts/Zephyr_RMU",
    ...                tasks={"wmdp_bio": bio, "mmlu": mmlu}, forget_tasks=["wmdp_bio"],
    ...                prompts=bio_prompts, layer=7, dtype=torch.bfloat16)   # doctest: +SKIP
    """
    layer = _checked_experiment(tasks, forget_tasks, layer, unlearned, rmu_config)
    run = RunDir(out, force=force)
    model = models.load_model(base, device=device, dtype=dtype)
    models.check_layer(model, layer)
    settings = {"job": "run", "base": str(base), "unlearned": str(unlearned) if unlearned else None,
                "rmu": rmu_config.to_dict() if rmu_config else None, "layer": layer, "seed": seed,
                "mcq_mode": mcq_mode, "tasks": {k: len(v) for k, v in tasks.items()}}  # fmt: skip
    run.check_settings(settings)
    exp = Experiment(
        model=model, tasks={k: list(v) for k, v in tasks.items()}, forget_tasks=tuple(forget_tasks),
        forget_prompts=list(prompts), retain_prompts=list(retain_prompts or prompts), layer=layer,
        settings=settings, mcq_mode=mcq_mode, generation_prompts=list(prompts[:4]),
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    if rmu_config is not None:
        step_unlearn(run, model, rmu_config, forget_corpora, retain_corpora, progress)
    else:
        step_unlearned_checkpoint(run, exp, unlearned)
    return run_analysis(run, exp, f"RMU is mostly shallow: {models.model_name(model)}")


def _checked_experiment(
    tasks: Mapping[str, Sequence[MCQItem]],
    forget_tasks: Sequence[str],
    layer: int | None,
    unlearned: str | os.PathLike | None,
    rmu_config: rmu.RMUConfig | None,
) -> int:
    """The layer the junk direction is read at, after checking the experiment's arguments."""
    if (unlearned is None) == (rmu_config is None):
        raise UnlearnInterpError("give exactly one of an unlearned checkpoint and an RMU config")
    unknown = [t for t in forget_tasks if t not in tasks]
    if unknown:
        raise UnlearnInterpError(
            f"forget task(s) {unknown} are not among the MCQ tasks {sorted(tasks)}"
        )
    layer = rmu_config.layer if rmu_config is not None else layer
    if layer is None:
        raise UnlearnInterpError(
            "layer is required with an unlearned checkpoint (e.g. 7 for Zephyr RMU)"
        )
    return layer
