"""The reproduction as named steps writing a run directory (DESIGN.md "The run directory").

``unlearn -> direction -> accuracy -> layer_profile -> generations -> figures -> report``: each
step writes its artifacts atomically and is skipped when they already exist, so an interrupted
run resumes where it stopped (``force=True`` recomputes everything). Later steps always read
what earlier steps wrote, so a resumed run and a fresh run are computed from the same files.

Two entry points share the steps:

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
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from unlearn_interp import (
    analysis,
    artifacts,
    directions,
    evaluation,
    models,
    organism,
    plotting,
    rmu,
)
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant, ablation_hooks

log = logging.getLogger(__name__)

TABLES, FIGURES = "tables", "figures"
STEP_TIMES = "tables/step_seconds.json"
VARIANT_NAMES = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")


@dataclasses.dataclass
class Experiment:
    """Everything the shared steps need, whatever produced the model.

    ``tasks`` maps a task name to its MCQ items; ``forget_tasks`` names the hazardous ones (gap
    recovered is reported there). ``layer`` is where the junk direction is read (the RMU layer,
    residual stream after that block).
    """

    model: HookedTransformer
    tasks: dict[str, list[MCQItem]]
    forget_tasks: tuple[str, ...]
    forget_prompts: list[str]
    retain_prompts: list[str]
    layer: int
    settings: dict[str, Any]  # recorded in config.json; a resumed run must match them
    mcq_mode: str = "letter"
    prompt_template: str = evaluation.QA_TEMPLATE
    generation_prompts: list[str] = dataclasses.field(default_factory=list)
    max_new_tokens: int = 32
    batch_size: int = 16
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# The run directory and its steps
# ---------------------------------------------------------------------------------------------


class RunDir:
    """A run directory: paths, the step runner, and the record of how long each step took."""

    def __init__(self, root: str | os.PathLike, force: bool = False) -> None:
        self.root = Path(root)
        self.force = force
        self.root.mkdir(parents=True, exist_ok=True)
        if force:  # a forced run killed half-way must not leave older steps looking finished
            self.path(STEP_TIMES).unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, outputs: Sequence[str]) -> bool:
        return all(self.path(name).exists() for name in outputs)

    def step(self, name: str, outputs: Sequence[str], compute: Callable[[], None]) -> None:
        """Run ``compute`` unless it finished before: its time is recorded and every output
        exists (and ``force`` is off)."""
        if self.done(outputs) and name in self.seconds() and not self.force:
            log.info("step %-13s skipped: %s already written", name, ", ".join(outputs))
            return
        log.info("step %-13s running", name)
        start = time.perf_counter()
        compute()
        missing = [o for o in outputs if not self.path(o).exists()]
        if missing:  # a bug, not bad input: the step did not write what it promised
            raise RuntimeError(f"step {name} finished without writing {missing}")
        self.record_seconds(name, time.perf_counter() - start)

    def record_seconds(self, name: str, seconds: float) -> None:
        times = self.seconds()
        times[name] = round(seconds, 3)
        artifacts.write_json(self.path(STEP_TIMES), times)

    def seconds(self) -> dict[str, float]:
        path = self.path(STEP_TIMES)
        return artifacts.read_json(path) if path.is_file() else {}

    def write_table(self, name: str, table: pd.DataFrame) -> None:
        with artifacts.atomic_path(self.path(f"{TABLES}/{name}.csv")) as tmp:
            table.to_csv(tmp, index=False)

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path(f"{TABLES}/{name}.csv"))

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Refuse to resume a run made with other settings (another model, size or seed)."""
        config_path = self.path("config.json")
        record = artifacts.read_json(config_path) if config_path.is_file() else {}
        previous = record.get("pipeline")
        if previous is not None and previous != _jsonable(settings) and not self.force:
            changed = sorted(
                k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
            )
            raise UnlearnInterpError(
                f"{self.root} holds a run made with other settings ({', '.join(changed)}); "
                "use a new --out directory or --force"
            )
        record["pipeline"] = _jsonable(settings)
        record["library_versions"] = artifacts.library_versions()
        artifacts.write_json(config_path, record)


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON would read it back (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(dict(settings), default=artifacts.jsonable))


# ---------------------------------------------------------------------------------------------
# Shared steps: direction -> accuracy -> layer profile -> generations -> figures -> report
# ---------------------------------------------------------------------------------------------


def unlearned_variants(run: RunDir, model: HookedTransformer) -> dict[str, Variant]:
    """base / rmu / rmu_ablated / rmu_random_ablated from the files earlier steps wrote."""
    unlearned = models.load_weights(run.path(rmu.UNLEARNED_WEIGHTS_FILE))
    base_file = run.path(rmu.BASE_WEIGHTS_FILE)
    base_weights = models.load_weights(base_file) if base_file.is_file() else {}
    base = Variant("base", weights=base_weights)
    unl = Variant("rmu", weights=unlearned)
    variants = {"base": base, "rmu": unl}
    if run.path(directions.TENSOR_FILE).is_file():
        junk = directions.Direction.load(run.root)
        random = directions.Direction.load(run.path("random_direction.safetensors"))
        variants["rmu_ablated"] = unl.with_hooks(ablation_hooks(junk.vector), name="rmu_ablated")
        variants["rmu_random_ablated"] = unl.with_hooks(
            ablation_hooks(random.vector), name="rmu_random_ablated"
        )
    return variants


def step_direction(run: RunDir, exp: Experiment) -> None:
    """Junk direction (blog recipe: mean rmu - mean base, last token, forget prompts, RMU layer)
    with per-layer candidates for the audit, and its norm-matched random control."""

    def compute() -> None:
        variants = unlearned_variants(run, exp.model)
        base, unl = variants["base"], variants["rmu"]
        controls = control_vectors(run)
        candidates = directions.candidate_directions(
            exp.model,
            base,
            unl,
            exp.forget_prompts,
            control_vectors=controls,
            batch_size=exp.batch_size,
        )
        run.write_table("direction_candidates", candidates.scores)
        junk = directions.junk_direction(
            exp.model, base, unl, exp.forget_prompts, exp.layer, batch_size=exp.batch_size
        )
        if controls is not None:
            cos = torch.nn.functional.cosine_similarity(controls.float(), junk.vector[None], dim=-1)
            junk.metadata["cos_with_control_vectors"] = cos.tolist()
        directions.random_control(junk, seed=exp.seed).save(
            run.path("random_direction.safetensors")
        )
        junk.save(run.root)

    run.step(
        "direction",
        [directions.TENSOR_FILE, directions.JSON_FILE, "random_direction.safetensors"],
        compute,
    )


def control_vectors(run: RunDir) -> torch.Tensor | None:
    """The run's RMU control vectors ``[n_topics, d_model]``, or None when it has none."""
    path = run.path(rmu.CONTROL_VECTORS_FILE)
    return models.load_weights(path)["control_vectors"] if path.is_file() else None


def step_accuracy(run: RunDir, exp: Experiment) -> None:
    """MCQ accuracy of every variant on every task, with per-item predictions."""

    def compute() -> None:
        variants = unlearned_variants(run, exp.model)
        rows, per_item = [], []
        for variant in variants.values():
            with variant.applied(exp.model):
                for task, items in exp.tasks.items():
                    result = evaluation.mcq_accuracy(
                        exp.model, items, mode=exp.mcq_mode, batch_size=exp.batch_size,
                        prompt_template=exp.prompt_template, progress=False,
                    )  # fmt: skip
                    rows.append(
                        {
                            "variant": variant.name,
                            "task": task,
                            "accuracy": result.accuracy,
                            "n": result.n,
                        }
                    )
                    per_item.append(result.per_item.assign(variant=variant.name, task=task))
        run.write_table("mcq_per_item", pd.concat(per_item, ignore_index=True))
        run.write_table("accuracy", pd.DataFrame(rows))

    run.step("accuracy", [f"{TABLES}/accuracy.csv", f"{TABLES}/mcq_per_item.csv"], compute)


def step_layer_profile(run: RunDir, exp: Experiment) -> None:
    """Norm and cosine to base at every layer, last token, forget and retain prompts."""

    def compute() -> None:
        variants = unlearned_variants(run, exp.model)
        junk = directions.Direction.load(run.root)
        profile = analysis.layer_profile(
            exp.model,
            list(variants.values()),
            {"forget": exp.forget_prompts, "retain": exp.retain_prompts},
            directions={"direction": junk.vector},
            control_vectors=control_vectors(run),
            batch_size=exp.batch_size,
        )
        run.write_table("layer_profile", profile)

    run.step("layer_profile", [f"{TABLES}/layer_profile.csv"], compute)


def step_generations(run: RunDir, exp: Experiment) -> None:
    """Greedy continuations of hazardous prompts under every variant, side by side."""

    def compute() -> None:
        variants = unlearned_variants(run, exp.model)
        prompts = exp.generation_prompts or exp.forget_prompts[:4]
        table = evaluation.compare_generations(
            exp.model, list(variants.values()), prompts, max_new_tokens=exp.max_new_tokens
        )
        run.write_table("generations", table)

    run.step("generations", [f"{TABLES}/generations.csv"], compute)


FIGURE_NAMES = (
    "layer_cosines_rmu", "layer_norms_rmu", "layer_cosines_ablated", "layer_norms_ablated",
    "accuracy_bars", "training_curves",
)  # fmt: skip


def step_figures(run: RunDir, exp: Experiment, formats: Sequence[str] = ("html", "png")) -> None:
    """The blog's four layer plots (before and after ablation), accuracy bars, training curves."""

    def compute() -> None:
        for name, fig in demo_figures(run.root, exp.layer).items():
            plotting.save_figure(fig, run.path(f"{FIGURES}/{name}.html"), formats=formats)

    run.step("figures", [f"{FIGURES}/{name}.html" for name in FIGURE_NAMES], compute)


def demo_figures(root: str | os.PathLike, rmu_layer: int) -> dict[str, Any]:
    """Plotly figures drawn from a run directory's tables (nothing is recomputed)."""
    run = RunDir(root)
    profile = run.table("layer_profile")
    before = profile[profile["variant"].isin(["base", "rmu"])]
    after = profile[profile["variant"].isin(["base", "rmu", "rmu_ablated"])]
    figures = {
        "layer_cosines_rmu": plotting.plot_layer_cosines(before, rmu_layer=rmu_layer),
        "layer_norms_rmu": plotting.plot_layer_norms(before, rmu_layer=rmu_layer),
        "layer_cosines_ablated": plotting.plot_layer_cosines(
            after, rmu_layer=rmu_layer, title="After ablating the junk direction: cosine to base"
        ),
        "layer_norms_ablated": plotting.plot_layer_norms(
            after, rmu_layer=rmu_layer, title="After ablating the junk direction: residual norm"
        ),
        "accuracy_bars": plotting.plot_accuracy_bars(run.table("accuracy")),
    }
    history = run.path(rmu.HISTORY_FILE)
    if history.is_file():
        figures["training_curves"] = plotting.plot_training_curves(pd.read_csv(history))
    else:
        figures["training_curves"] = plotting.generations_table(run.table("generations"))
    return figures


def compute_metrics(run: RunDir, exp: Experiment) -> dict[str, Any]:
    """metrics.json (DESIGN.md schema): accuracies, gap recovered, junk direction, timings."""
    acc = run.table("accuracy")
    accuracy = {
        variant: {row.task: float(row.accuracy) for row in group.itertuples()}
        for variant, group in acc.groupby("variant", sort=False)
    }
    gaps = {
        name: {task: _gap(accuracy, variant, task) for task in exp.forget_tasks}
        for name, variant in (("junk", "rmu_ablated"), ("random", "rmu_random_ablated"))
    }
    junk = directions.Direction.load(run.root)
    cos_u = junk.metadata.get("cos_with_control_vectors") or [float("nan")]
    metrics = {
        "accuracy": accuracy,
        "gap_recovered": {k: _mean_or_only(v) for k, v in gaps.items()},
        "gap_recovered_per_task": gaps,
        "junk_direction": {
            "layer": junk.layer,
            "cos_with_control_vector": max(cos_u, key=abs),
            "raw_norm": junk.raw_norm,
        },
        "layer_profile": profile_summary(run.table("layer_profile"), exp.layer),
        "seconds": _seconds_summary(run.seconds()),
    }
    return metrics


def _gap(accuracy: Mapping[str, Mapping[str, float]], variant: str, task: str) -> float:
    return evaluation.gap_recovered(
        accuracy["base"][task], accuracy["rmu"][task], accuracy[variant][task]
    )


def _mean_or_only(per_task: Mapping[str, float]) -> float:
    values = list(per_task.values())
    return values[0] if len(values) == 1 else float(sum(values) / len(values))


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


def _seconds_summary(seconds: Mapping[str, float]) -> dict[str, float]:
    pretrain = seconds.get("organism", 0.0)
    unlearn = seconds.get("unlearn", 0.0)
    analysis_steps = ("direction", "accuracy", "layer_profile", "generations", "figures")
    other = sum(seconds.get(s, 0.0) for s in analysis_steps)
    return {"pretrain": pretrain, "rmu": unlearn, "analysis": round(other, 3),
            "total": round(pretrain + unlearn + other, 3)}  # fmt: skip


def step_report(
    run: RunDir, exp: Experiment, title: str, targets: Mapping[str, str] | None = None
) -> dict:
    """report.md (the story on one page) and metrics.json; always rewritten (cheap)."""
    metrics = compute_metrics(run, exp)
    artifacts.write_json(run.path("metrics.json"), metrics)
    artifacts.write_text(run.path("report.md"), render_report(run, metrics, title, targets or {}))
    return metrics


def render_report(
    run: RunDir, metrics: Mapping[str, Any], title: str, targets: Mapping[str, str]
) -> str:
    acc = run.table("accuracy").pivot(index="variant", columns="task", values="accuracy")
    acc = acc.reindex([v for v in VARIANT_NAMES if v in acc.index])
    gens = run.table("generations")
    lines = [
        f"# {title}",
        "",
        "RMU was applied, the junk direction was read at layer "
        f"{metrics['junk_direction']['layer']} (residual stream after that block) as mean(rmu) - "
        "mean(base) at the last token of forget prompts, and projected out of every block input, "
        "attention output and MLP output. A norm-matched random direction is the control.",
        "",
        "## Accuracy",
        "",
        markdown_table(acc.reset_index()),
        "",
        f"Gap recovered (ablated - rmu) / (base - rmu): junk {metrics['gap_recovered']['junk']:.2f}, "
        f"random {metrics['gap_recovered']['random']:.2f}.",
        "",
        "## Layer profile",
        "",
        *[f"- {k}: {v:.3f}" for k, v in metrics["layer_profile"].items()],
        f"- cos(junk direction, control vector): {metrics['junk_direction']['cos_with_control_vector']:.3f}",
        "",
        "## Figures",
        "",
        *[f"- [{name}]({FIGURES}/{name}.html)" for name in FIGURE_NAMES],
        "",
        "## Generations on forget prompts",
        "",
        plotting.generations_markdown(gens),
        "",
        "## Timing (seconds)",
        "",
        *[f"- {k}: {v}" for k, v in metrics["seconds"].items()],
    ]
    if targets:
        lines += ["", "## Targets", "", *[f"- {k}: {v}" for k, v in targets.items()]]
    return "\n".join(lines) + "\n"


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (floats rounded to ``digits``)."""

    def cell(value: Any) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def run_analysis(
    run: RunDir, exp: Experiment, title: str, targets: Mapping[str, str] | None = None
) -> dict:
    """Every step after unlearning; returns metrics."""
    step_direction(run, exp)
    step_accuracy(run, exp)
    step_layer_profile(run, exp)
    step_generations(run, exp)
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
    "demo": dict(
        steering_coef=1000.0,
        alpha=100.0,
        lr=1e-2,
        adam_eps=1e-8,
        batch_size=4,
        steps=300,
        max_len=128,
    ),
    "test": dict(
        steering_coef=400.0,
        alpha=100.0,
        lr=1e-2,
        adam_eps=1e-8,
        batch_size=4,
        steps=200,
        max_len=128,
    ),
}

DEMO_TARGETS = {
    "base accuracy": ">= 0.95 on both domains",
    "rmu accuracy": "hazardous <= 0.35 (chance 0.25), benign >= base - 0.03",
    "gap recovered": "junk >= 0.60, random <= 0.10",
    "junk direction": "cos with control vector >= 0.9",
    "layer profile": "norm at RMU layer >= 3x base; every cosine to base > 0.9 after ablation",
}


def organism_experiment(org: organism.Organism, seed: int, settings: dict[str, Any]) -> Experiment:
    return Experiment(
        model=org.model,
        tasks=org.mcq,
        forget_tasks=("hazardous",),
        forget_prompts=org.hazardous_prompts,
        retain_prompts=org.benign_prompts,
        layer=org.rmu_layer,
        settings=settings,
        mcq_mode=org.mcq_mode,
        prompt_template=org.qa_template,
        generation_prompts=org.hazardous_prompts[:4],
        max_new_tokens=16,
        batch_size=32,
        seed=seed,
    )


def run_demo(
    out: str | os.PathLike,
    *,
    size: str = "demo",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The whole story on the model organism; returns ``metrics.json``'s content.

    >>> metrics = run_demo("runs/demo", size="test")                        # doctest: +SKIP
    """
    run = RunDir(out, force=force)
    org_config = organism.OrganismConfig.for_size(size, seed)
    cfg = organism_rmu_config(org_config, seed)
    settings = {"job": "demo", "size": size, "seed": seed, "rmu": cfg.to_dict(),
                "organism": org_config.to_dict()}  # fmt: skip
    run.check_settings(settings)  # before any training: a mismatch fails at once
    start = time.perf_counter()
    org = organism.load_organism(size, seed, cache_dir=cache_dir, progress=progress)
    if "organism" not in run.seconds():
        run.record_seconds("organism", time.perf_counter() - start)
    exp = organism_experiment(org, seed, settings)
    step_unlearn(
        run,
        exp.model,
        cfg,
        forget=[org.forget_corpus],
        retain=[org.retain_corpus],
        progress=progress,
    )
    metrics = run_analysis(
        run, exp, f"RMU is mostly shallow: the model organism ({size})", DEMO_TARGETS
    )
    log.info("demo finished in %.1f s; see %s", time.perf_counter() - start, run.path("report.md"))
    return metrics


def step_unlearn(
    run: RunDir,
    model: HookedTransformer,
    cfg: rmu.RMUConfig,
    forget: Sequence[Sequence[str]],
    retain: Sequence[Sequence[str]],
    progress: bool = True,
) -> None:
    """Train RMU on ``model`` and save the result; the model is left on its base weights."""

    def compute() -> None:
        result = rmu.train_rmu(model, forget=forget, retain=retain, cfg=cfg, progress=progress)
        with torch.no_grad():
            for name, value in result.base_weights.items():
                models.get_param(model, name).copy_(value)
        result.save(run.root)

    outputs = [
        rmu.UNLEARNED_WEIGHTS_FILE,
        rmu.BASE_WEIGHTS_FILE,
        rmu.CONTROL_VECTORS_FILE,
        rmu.HISTORY_FILE,
    ]
    run.step("unlearn", outputs, compute)


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


def step_unlearned_checkpoint(run: RunDir, exp: Experiment, path: str | os.PathLike) -> None:
    """The tensors in which checkpoint ``path`` differs from the base, saved to the run."""

    def compute() -> None:
        variant = models.variant_from_checkpoint(exp.model, path, name="rmu")
        if not variant.weights:
            raise UnlearnInterpError(f"{path} has the same weights as the base model")
        models.save_weights(variant.weights, run.path(rmu.UNLEARNED_WEIGHTS_FILE))

    run.step("unlearn", [rmu.UNLEARNED_WEIGHTS_FILE], compute)
