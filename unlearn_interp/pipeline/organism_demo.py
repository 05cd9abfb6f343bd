"""The organism demo: the whole "RMU is mostly shallow" story on a model the toolkit trains itself,
on a laptop CPU (``unlearn-interp demo``).

The organism is pretrained (cached), then the shared steps run on it, each resumable:

``unlearn -> directions -> accuracy -> layer profile -> generations -> depth profile ->
recovery ledger``

    >>> metrics = run_demo("runs/demo", size="test")                        # doctest: +SKIP
    >>> metrics["gap_recovered"]                                           # doctest: +SKIP
    {'junk': 0.9, 'random': 0.0}
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from unlearn_interp import organism, rmu
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.depth.step import (
    DEFAULT_DEPTH,
    Depth,
    DepthSettings,
    organism_depth_inputs,
)
from unlearn_interp.pipeline.ledger.step import (
    DEFAULT_SETTINGS,
    Ledger,
    LedgerSettings,
    OrganismLedgerSubject,
    check_ledger_settings,
)
from unlearn_interp.pipeline.report import bullet_lines
from unlearn_interp.pipeline.rundir import RunDir, with_dtype
from unlearn_interp.pipeline.step import Report, Run, Step, run_pipeline
from unlearn_interp.pipeline.steps.accuracy import Accuracy
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.steps.generations import Generations
from unlearn_interp.pipeline.steps.profile import LayerProfile
from unlearn_interp.pipeline.steps.unlearn import Unlearn
from unlearn_interp.pipeline.subject import Subject, Task

VARIANT_NAMES = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")

ORGANISM_RMU: dict[str, dict[str, Any]] = {
    # adam_eps 1e-8 (torch's default), the value these settings were chosen with (RMUConfig's
    # default is the reference's 1e-6).
    "demo": dict(steering_coef=500.0, alpha=100.0, lr=1e-2, adam_eps=1e-8, batch_size=4,
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


def organism_rmu_config(
    org: organism.Organism | organism.OrganismConfig, seed: int = 0
) -> rmu.RMUConfig:
    """RMU settings for the organism, chosen by the unlearning objective alone.

    The reference recipe (one topic, update layers ``l-2..l``, the reference loss with masked
    padding) at the organism's RMU layer. Demo: ``studies/select_organism_rmu.py`` trained a
    grid of coefficients (250-1000) and alphas (100-1600) with 3 seeds each; c = 500, alpha =
    100 had the lowest hazardous accuracy among the points whose benign accuracy stayed within
    0.03 of base (hazardous 0.983 -> 0.333, 0.317-0.350 over the seeds; benign 0.950 -> 0.931);
    c = 1000 forgot more (0.283) but cost 0.081 of benign accuracy. Test: c = 400, chosen the
    same way on one seed before the selection study existed. How much ablation recovers played
    no part in either choice.
    """
    config = org.config if isinstance(org, organism.Organism) else org
    settings = ORGANISM_RMU[config.size]
    return rmu.RMUConfig(
        **settings, layer=config.rmu_layer, update_layers=config.update_layers, seed=seed
    )


def demo_subject(org: organism.Organism, seed: int) -> Subject:
    """The organism as a run's subject: its hazardous (forget) and benign domains, their prompts
    and corpora, its RMU layer."""
    tasks = {name: Task(items, org.mcq_mode, org.qa_template) for name, items in org.mcq.items()}
    return Subject(
        model=org.model,
        title=f"the model organism ({org.config.size})",
        tasks=tasks,
        forget_tasks=("hazardous",),
        prompts={"forget": org.hazardous_prompts, "retain": org.benign_prompts},
        layer=org.rmu_layer,
        generation_prompts=org.hazardous_prompts[:4],
        forget_corpora=[org.forget_corpus],
        retain_corpora=[org.retain_corpus],
        batch_size=32,
        max_new_tokens=16,
        seed=seed,
    )


def demo_steps(
    org: organism.Organism,
    seed: int,
    depth: DepthSettings | None = DEFAULT_DEPTH,
    ledger: LedgerSettings | None = DEFAULT_SETTINGS,
    executor: Executor | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[Step]:
    """The demo's steps, in order (``depth`` or ``ledger`` None: without them); ``executor``
    runs the ledger's parts."""
    steps: list[Step] = [
        Unlearn(organism_rmu_config(org, seed)),
        Directions(),
        Accuracy(VARIANT_NAMES),
        LayerProfile(VARIANT_NAMES, f"the {org.config.size} organism"),
        Generations(VARIANT_NAMES, "Greedy continuations of hazardous prompts"),
    ]
    if depth is not None:
        steps.append(Depth(lambda subject: organism_depth_inputs(org, depth.seed), depth))
    if ledger is not None:
        steps.append(Ledger(OrganismLedgerSubject(org, cache_dir), ledger, executor))
    return steps


def demo_report(org: organism.Organism) -> Report:
    """The demo's report frame: its title, what was done, and the targets."""
    intro = (
        f"RMU was applied at layer {org.rmu_layer} (residual stream after that block); the "
        "junk direction was read there as mean(rmu) - mean(base) at the last token of forget "
        "prompts and projected out of every block input, attention output and MLP output. A "
        "norm-matched random direction is the control."
    )
    closing = "\n".join(["## Targets", "", *bullet_lines(DEMO_TARGETS)])
    return Report(
        f"RMU is mostly shallow: the model organism ({org.config.size})", intro, closing=closing
    )


def run_demo(
    out: str | os.PathLike,
    *,
    size: str = "demo",
    seed: int = 0,
    force: bool = False,
    recompute: Sequence[str] = (),
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    ledger: bool | LedgerSettings = True,
    depth: bool | DepthSettings = True,
    executor: Executor | None = None,
    org: organism.Organism | None = None,
) -> dict[str, Any]:
    """The whole story on the model organism; returns ``metrics.json``'s content.

    The organism is pretrained and cached in float32 on the CPU; ``device`` and ``dtype`` say
    where and in what precision the demo runs it (a dtype other than float32 is recorded in the
    run's settings, so a run is never resumed in another precision). ``depth`` (True: the
    default :class:`DepthSettings`) adds the depth profile and ``ledger`` (True: the default
    :class:`LedgerSettings`) the recovery ledger, each with its report section and metrics
    entry (``"depth"``, ``"ledger"``), every other key as without them. ``executor`` (default
    serial) runs the ledger's parts. ``recompute`` names steps to compute again (``force``:
    all of them). ``org`` is the organism when it is already loaded (it must be of ``size``
    and ``seed``); otherwise it is loaded from the cache (``cache_dir``), or trained.

    >>> metrics = run_demo("runs/demo", size="test")                        # doctest: +SKIP
    """
    run_dir = RunDir(out, force=force, recompute=recompute)
    org_config = organism.OrganismConfig.for_size(size, seed)
    settings = {
        "job": "demo",
        "size": size,
        "seed": seed,
        "rmu": organism_rmu_config(org_config, seed).to_dict(),
        "organism": org_config.to_dict(),
    }
    run_dir.check_settings(with_dtype(settings, dtype))  # before any training
    ledger_settings = ledger if isinstance(ledger, LedgerSettings) else DEFAULT_SETTINGS
    if ledger:
        check_ledger_settings(run_dir, ledger_settings)
    start = time.perf_counter()
    if org is None:
        org = organism.load_organism(
            size, seed, cache_dir=cache_dir, progress=progress, device=device, dtype=dtype
        )
    _check_organism(org, size, seed)
    if "organism" not in run_dir.seconds():
        run_dir.record_seconds("organism", time.perf_counter() - start)
    depth_settings = depth if isinstance(depth, DepthSettings) else DEFAULT_DEPTH
    steps = demo_steps(
        org,
        seed,
        depth_settings if depth else None,
        ledger_settings if ledger else None,
        executor,
        cache_dir,
    )
    return run_pipeline(Run(run_dir, demo_subject(org, seed), progress), steps, demo_report(org))


def _check_organism(org: organism.Organism, size: str, seed: int) -> None:
    if (org.config.size, org.config.seed) != (size, seed):
        raise UnlearnInterpError(
            f"the organism given is size {org.config.size!r} seed {org.config.seed}, but the "
            f"run is size {size!r} seed {seed}"
        )
