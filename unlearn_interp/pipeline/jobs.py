"""What each ``unlearn-interp`` command does, as plain functions of plain arguments.

The command line parses options and calls one job here; the job loads what it needs, calls the
library and writes the outputs, then returns the text the command prints. The constants below
are the choices the command line offers, taken from the library so they are stated once.

    >>> text = unlearn_job("runs/rmu", model="gpt2", forget=["bio.jsonl"], retain=["wiki.txt"],
    ...                    rmu_settings={"layer": 7, "steps": 150})      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from unlearn_interp import (
    activations,
    artifacts,
    data,
    directions,
    evaluation,
    models,
    organism,
    rmu,
    sources,
)
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.checks import is_int
from unlearn_interp.data import QA_TEMPLATE
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import make_executor
from unlearn_interp.interventions import ablation_hooks
from unlearn_interp.pipeline.audit.run import SKIPPABLE, audit
from unlearn_interp.pipeline.gallery import make_figures
from unlearn_interp.pipeline.ledger.step import LEDGER_STEP
from unlearn_interp.pipeline.ledger.table import ledger_lines, ledger_summary
from unlearn_interp.pipeline.organism_demo import run_demo
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.study.config import SMOLLM2, default_arms
from unlearn_interp.pipeline.study.run import run_study
from unlearn_interp.pipeline.variants import RunVariants
from unlearn_interp.rmu import RMUConfig
from unlearn_interp.variants import Variant

# The choices the command line offers.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MCQ_MODES = evaluation.MODES
DIRECTION_METHODS = directions.METHODS
DIRECTION_PREFERENCES = directions.PREFERENCES
ORGANISM = "organism"
DEMO_MODELS = (ORGANISM, SMOLLM2)
ORGANISM_SIZES = tuple(organism.SIZES)
ASSET_NAMES = tuple(sorted(sources.ASSETS))
ADD_BOS = {"auto": None, "yes": True, "no": False}  # None: as the tokenizer adds it
RMU_CHOICES: dict[str, Sequence[str]] = {"control_vector": rmu.CONTROL_VECTOR_KINDS}
AUDIT_SKIPPABLE = SKIPPABLE

__all__ = [
    "ADD_BOS",
    "ASSET_NAMES",
    "DEMO_MODELS",
    "DIRECTION_METHODS",
    "DIRECTION_PREFERENCES",
    "DTYPES",
    "MCQ_MODES",
    "ORGANISM_SIZES",
    "RMUConfig",
    "RMU_CHOICES",
    "demo_job",
    "direction_job",
    "evaluate_job",
    "fetch_job",
    "figures_job",
    "info_job",
    "audit_job",
    "ledger_job",
    "quiet_progress_bars",
    "unlearn_job",
]


# ---------------------------------------------------------------------------------------------
# Shared pieces: output directory, model, corpora, RMU config
# ---------------------------------------------------------------------------------------------


def quiet_progress_bars() -> None:
    """Hide HuggingFace's "Loading weights" bars, whenever tqdm was imported (``-q``)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def check_out_dir(out: str | os.PathLike) -> None:
    """Refuse an ``out`` that is a file before computing anything, not when saving the result."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UnlearnInterpError(f"--out {out} is a file, not a run directory")


def load_model(name_or_path: str, device: str | None, dtype: str, **kwargs: Any) -> models.Model:
    """``models.load_model`` with the dtype given by name (a key of :data:`DTYPES`)."""
    return models.load_model(name_or_path, device=device, dtype=DTYPES[dtype], **kwargs)


def load_corpora(
    forget: Sequence[str], retain: Sequence[str], min_len: int = 0
) -> tuple[list[list[str]], list[list[str]]]:
    """One corpus per forget file and one retain corpus per topic (one retain file is shared by
    every topic); each file is read once.

    >>> forget, retain = load_corpora(["bio.jsonl", "cyber.jsonl"], ["wiki.txt"])  # doctest: +SKIP
    """
    retain_files = list(retain) * len(forget) if len(retain) == 1 else list(retain)
    if len(retain_files) != len(forget):
        raise UnlearnInterpError(
            f"--retain needs one file per --forget file or one shared by all: got "
            f"{len(forget)} forget and {len(retain)} retain files"
        )
    loaded: dict[str, list[str]] = {}
    for path in [*forget, *retain_files]:
        if path not in loaded:
            loaded[path] = data.load_corpus(path, min_len=min_len)
    return [loaded[p] for p in forget], [loaded[p] for p in retain_files]


def rmu_config(settings: Mapping[str, Any], path: str | None = None) -> RMUConfig:
    """The RMUConfig of ``settings`` (field -> value), on top of JSON file ``path`` when given;
    fields set in neither keep RMUConfig's defaults. Errors name the file when there is one.

    >>> rmu_config({"layer": 7, "steps": 10}).steps
    10
    """
    if path is None:
        return RMUConfig.from_dict(dict(settings))
    try:
        values = artifacts.read_json(path)
        if isinstance(values, Mapping):
            values = {**values, **settings}
        return RMUConfig.from_dict(values)
    except UnlearnInterpError as err:
        if str(err).startswith(path):
            raise
        raise UnlearnInterpError(f"{path}: {err}") from err


def demo_summary(metrics: Mapping[str, Any], out: str) -> str:
    """The short table printed at the end of the organism demo: accuracy per variant and task,
    gap recovered, the junk direction."""
    accuracy = metrics["accuracy"]
    tasks = list(next(iter(accuracy.values())))
    lines = [f"{'variant':<20}" + "".join(f"{t:>12}" for t in tasks)]
    for variant, by_task in accuracy.items():
        lines.append(f"{variant:<20}" + "".join(f"{by_task[t]:>12.3f}" for t in tasks))
    gaps = metrics["gap_recovered"]
    lines.append(f"gap recovered: junk {gaps['junk']:.2f}, random {gaps['random']:.2f}")
    junk = metrics["junk_direction"]
    lines.append(
        f"junk direction at layer {junk['layer']}: cos with control vector "
        f"{junk['cos_with_control_vector']:.3f}"
    )
    lines += ledger_lines(metrics.get("ledger"))
    lines.append(f"total {metrics['seconds']['total']:.0f} s; report: {out}/report.md")
    return "\n".join(lines) + "\n"


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def summary_text(metrics: Mapping[str, Any], out: str | os.PathLike) -> str:
    """What the command line prints at the end of a run with intervals (the real-model study, an
    audit): accuracy per variant and task, gap recovered with 95% intervals, the chosen layer
    when the run chose one, the ledger's headline lines, the time and where the report is."""
    accuracy = metrics["accuracy"]
    tasks = [*metrics["forget_tasks"], *metrics["retain_tasks"]]
    width = max(len(t) for t in tasks) + 2
    lines = [f"{'variant':<30}" + "".join(f"{t:>{width}}" for t in tasks)]
    for variant, by_task in accuracy.items():
        lines.append(f"{variant:<30}" + "".join(_cell(by_task.get(t), width) for t in tasks))
    lines.append(f"gap recovered (mean of {', '.join(metrics['gap_tasks'])}; 95% interval):")
    for name, value in metrics["gap_recovered"].items():
        ci = metrics["gap_recovered_ci"][name]
        lines.append(f"  {name:<26} {value:6.2f}  [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]")
    if "changes" in metrics:
        changes = metrics["changes"]
        lines.append(
            f"{changes['tensors_changed']} tensors changed in blocks {changes['blocks_changed']}; "
            f"junk direction read at layer {changes['layer']}"
        )
    lines += ledger_lines(metrics.get("ledger"))
    lines.append(f"total {metrics['seconds']['total']:.0f} s; report: {out}/report.md")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# info, fetch, figures, demo
# ---------------------------------------------------------------------------------------------


def info_job() -> str:
    """Versions of the toolkit and its main dependencies, and whether CUDA is there."""
    lines = [f"{package} {found}" for package, found in artifacts.library_versions().items()]
    lines.append(f"cuda available: {torch.cuda.is_available()}")
    return "\n".join(lines) + "\n"


def fetch_job(
    names: Sequence[str], *, list_assets: bool = False, force: bool = False, progress: bool = True
) -> str:
    """Fetch each named asset into the cache (an unknown name fails before any download);
    ``list_assets`` lists every known asset and whether it is cached."""
    lines = [_listing_line(row) for row in sources.listing()] if list_assets else []
    if not names and not list_assets:
        raise UnlearnInterpError(
            f"name at least one asset to fetch ({', '.join(ASSET_NAMES)}) or pass --list"
        )
    for name in names:
        sources.get_asset(name)
    for name in names:
        lines.append(f"{name} {sources.fetch(name, force=force, progress=progress)}")
    return "".join(f"{line}\n" for line in lines)


def _listing_line(row: Mapping[str, Any]) -> str:
    cached = f"cached {row['path']}" if row["cached"] else "not cached"
    return (
        f"{row['name']:<20} {row['kind']:<6} {row['requirement']:<24} {row['license']} | {cached}"
    )


def figures_job(
    out: str,
    *,
    size: str = "demo",
    seed: int = 0,
    work: str | None = None,
    force: bool = False,
    html: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: str = "float32",
    executor: str = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
) -> str:
    """Every committed figure as a PNG in ``out``; returns their paths, one a line."""
    with make_executor(executor, workers=workers, address=ray_address) as runner:
        paths = make_figures(
            out,
            size=size,
            seed=seed,
            work_dir=work,
            force=force,
            html=html,
            progress=progress,
            device=device,
            dtype=DTYPES[dtype],
            executor=runner,
        )
    return "".join(f"{p}\n" for p in paths)


def demo_job(
    out: str,
    *,
    model: str = ORGANISM,
    size: str = "demo",
    seed: int = 0,
    seeds: Sequence[int] = (0, 1, 2),
    device: str | None = None,
    dtype: str = "float32",
    force: bool = False,
    progress: bool = True,
    executor: str = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
) -> str:
    """The organism demo (``model`` = :data:`ORGANISM`) or the real-model study, its seeds and
    ledger parts on ``executor``; returns the summary table."""
    with make_executor(executor, workers=workers, address=ray_address) as runner:
        placed = {"device": device, "dtype": DTYPES[dtype], "executor": runner}
        if model != ORGANISM:
            metrics = run_study(
                out, model=model, seeds=seeds, force=force, progress=progress, **placed
            )
            return summary_text(metrics, out)
        metrics = run_demo(out, size=size, seed=seed, force=force, progress=progress, **placed)
    return demo_summary(metrics, out)


def ledger_job(
    run: str,
    *,
    force: bool = False,
    progress: bool = True,
    executor: str = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
) -> str:
    """The recovery ledger of demo run ``run`` (organism or real model), its parts on
    ``executor``: the demo's own pipeline resumed with the ledger as its last step (every
    finished step is skipped; ``force`` recomputes the ledger); returns its headline rows."""
    settings = finished_demo_settings(run)
    dtype = getattr(torch, str(settings.get("dtype", "float32")))
    recompute = [LEDGER_STEP] if force else []
    with make_executor(executor, workers=workers, address=ray_address) as runner:
        common = {"progress": progress, "dtype": dtype, "executor": runner, "recompute": recompute}
        if settings["job"] == "demo":
            depth = Path(run, RunFiles.table("depth_probes")).is_file()
            run_demo(run, size=settings["size"], seed=settings["seed"], depth=depth, **common)
        else:
            run_study(run, seeds=settings["seeds"], topic=settings["topic"], **common)
    return ledger_summary(pd.read_csv(Path(run, RunFiles.LEDGER)), run)


DEMO_JOBS = {"demo": ("size", "seed"), "model_demo": ("seeds", "topic")}
WEIGHT_FILES = (
    RunFiles.UNLEARNED_WEIGHTS,
    RunFiles.BASE_WEIGHTS,
    RunFiles.DIRECTION,
    RunFiles.RANDOM_DIRECTION,
)


def finished_demo_settings(run: str | os.PathLike) -> dict[str, Any]:
    """The demo settings of ``run`` (``job`` "demo" or "model_demo", size or seeds, dtype), or
    one sentence saying why ``run`` is not a finished demo run the ledger can attack."""
    if not Path(run).is_dir():
        raise UnlearnInterpError(
            f"{run} is not a run directory; make one with `unlearn-interp demo --out {run}`"
        )
    run_dir = RunDir(run)
    if not run_dir.path(RunFiles.CONFIG).is_file():
        raise UnlearnInterpError(
            f"{run} is not a run directory (no {RunFiles.CONFIG}); make one with "
            f"`unlearn-interp demo --out {run}`"
        )
    pipeline = run_dir.config().get("pipeline")
    job = pipeline.get("job") if isinstance(pipeline, Mapping) else None
    if job not in DEMO_JOBS or not all(key in pipeline for key in DEMO_JOBS[job]):
        raise UnlearnInterpError(
            f"{run} is not an organism or real-model demo run ({RunFiles.CONFIG} has no "
            "demo settings); the ledger attacks a demo's unlearned model"
        )
    folder = run_dir.path(_weights_folder(run_dir, pipeline))
    missing = [
        str((folder / n).relative_to(run_dir.root))
        for n in WEIGHT_FILES
        if not (folder / n).is_file()
    ]
    if missing:
        option = "" if job == "demo" else " --model smollm2-135m"
        raise UnlearnInterpError(
            f"{run} lacks {', '.join(missing)}: finish the demo first "
            f"(`unlearn-interp demo{option} --out {run}` resumes it)"
        )
    RunVariants(RunDir(folder)).plain()  # unreadable weights: one sentence before any loading
    return dict(pipeline)


def _weights_folder(run_dir: RunDir, pipeline: Mapping[str, Any]) -> str:
    """Where a demo run's attacked weights lie: the run itself for the organism, the headline
    arm's first seed (``seeds/rmu-seed<first>``) for a real-model demo."""
    if pipeline["job"] == "demo":
        return ""
    seeds = pipeline["seeds"]
    if not isinstance(seeds, list) or not seeds or not is_int(seeds[0]):
        raise UnlearnInterpError(f"{run_dir.root}/{RunFiles.CONFIG} has no valid seeds ({seeds})")
    return default_arms(seeds)[0].seed_dir(seeds[0])


# ---------------------------------------------------------------------------------------------
# unlearn, run
# ---------------------------------------------------------------------------------------------


def unlearn_job(
    out: str,
    *,
    model: str,
    forget: Sequence[str],
    retain: Sequence[str],
    rmu_settings: Mapping[str, Any],
    rmu_config_file: str | None = None,
    min_len: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> str:
    """Train RMU on ``model`` (``rmu_settings`` over ``rmu_config_file``'s) and write the run
    directory ``out``; returns a one-line summary. Recomputes the trained blocks in the backward
    pass: the same weights, a lower memory peak."""
    cfg = rmu_config(rmu_settings, rmu_config_file)
    check_out_dir(out)
    corpora = load_corpora(forget, retain, min_len)  # (forget corpora, retain corpora)
    try:  # only blocks 0..layer, where RMU's loss stops: the same weights (load_model logs it)
        loaded = load_model(model, device, dtype, first_blocks=cfg.layer + 1)
    except models.BlocksOutOfRange as err:
        raise err.of_layer(cfg.layer, "layer") from None
    result = rmu.train_rmu(loaded, *corpora, cfg, progress=progress, recompute_blocks=True)
    result.save(out)
    last = result.history.iloc[-1]
    return (
        f"RMU at layer {cfg.layer}, {cfg.steps} steps, coefficients "
        f"{[round(c, 4) for c in result.coefficients.tolist()]}: final forget loss "
        f"{last.forget_loss:.4g}, retain loss {last.retain_loss:.4g}, cos(forget, u) "
        f"{last.cos_forget_u:.3f}, cos(retain, frozen) {last.cos_retain_frozen:.4f} -> {out}\n"
    )


def audit_job(
    out: str,
    *,
    base: str,
    unlearned: str,
    forget_mcq: Sequence[str],
    retain_mcq: Sequence[str],
    forget_corpus: str | None = None,
    retain_corpus: str | None = None,
    forget_prompts: str | None = None,
    retain_prompts: str | None = None,
    layer: int | None = None,
    mode: str = "letter",
    prompt_template: str = QA_TEMPLATE,
    skip: Sequence[str] = (),
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int = 8,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    executor: str = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
) -> str:
    """The audit of ``unlearned`` against ``base`` on the MCQ files (and corpora); returns the
    summary table."""
    check_out_dir(out)
    with make_executor(executor, workers=workers, address=ray_address) as runner:
        metrics = audit(
            out,
            base=base,
            unlearned=unlearned,
            forget_mcq=forget_mcq,
            retain_mcq=retain_mcq,
            forget_corpus=forget_corpus,
            retain_corpus=retain_corpus,
            forget_prompts=forget_prompts,
            retain_prompts=retain_prompts,
            layer=layer,
            mode=mode,
            prompt_template=prompt_template,
            device=device,
            dtype=DTYPES[dtype],
            skip=skip,
            batch_size=batch_size,
            seed=seed,
            executor=runner,
            force=force,
            progress=progress,
        )
    return summary_text(metrics, out)


# ---------------------------------------------------------------------------------------------
# direction, evaluate: read a finished run
# ---------------------------------------------------------------------------------------------


def direction_job(
    out: str,
    *,
    model: str,
    prompts: str,
    run: str | None = None,
    unlearned: str | None = None,
    layer: int | None = None,
    all_layers: bool = False,
    positions: str | int = "last",
    method: str = "diff_in_means",
    retain_prompts: str | None = None,
    outlier_z: float | None = None,
    min_raw_norm: float = 0.0,
    min_cos_control: float | None = None,
    prefer: str = "raw_norm",
    batch_size: int = 16,
    max_len: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> str:
    """The junk direction of run ``run`` (or checkpoint ``unlearned``) against base ``model``,
    written into ``out`` with its per-layer candidates; returns a one-line summary."""
    check_out_dir(out)
    activations.check_positions(positions)
    prompt_list = data.load_prompts(prompts)
    if not prompt_list:
        raise UnlearnInterpError(f"{prompts} holds no prompts")
    retain = data.load_prompts(retain_prompts) if retain_prompts else None
    loaded = load_model(model, device, dtype)
    unlearned_variant, controls = _unlearned_variant(loaded, run, unlearned)
    direction, candidates = directions.extract_direction(
        loaded,
        Variant("base"),
        unlearned_variant,
        prompt_list,
        layer=layer,
        all_layers=all_layers,
        positions=positions,
        method=method,
        retain_prompts=retain,
        outlier_z=outlier_z,
        control_vectors=controls,
        min_raw_norm=min_raw_norm,
        min_cos_control=min_cos_control,
        prefer=prefer,
        batch_size=batch_size,
        max_len=max_len,
    )
    paths = directions.save_extraction(out, direction, candidates)
    return (
        f"direction at layer {direction.layer} ({direction.method}, raw norm "
        f"{direction.raw_norm:.4g}, {direction.n_prompts} prompts) -> {paths['direction']}\n"
    )


def _unlearned_variant(
    model: models.Model, run: str | None, checkpoint: str | None
) -> tuple[Variant, torch.Tensor | None]:
    """The unlearned variant of run directory ``run`` (with its control vectors), else the
    tensors in which ``checkpoint`` differs from ``model``."""
    if run:
        return directions.unlearned_from_run(model, run)
    return models.variant_from_checkpoint(model, checkpoint), None


def evaluate_job(
    model: str,
    mcq: Sequence[str],
    *,
    run: str | None = None,
    ablate: str | None = None,
    mode: str = "letter",
    subject: str | None = None,
    add_bos: str = "auto",
    batch_size: int = 16,
    device: str | None = None,
    dtype: str = "float32",
    out: str | None = None,
    progress: bool = True,
) -> str:
    """MCQ accuracy of the base ``model``, run ``run``'s unlearned weights and, with ``ablate``,
    the direction projected out of the last of them; returns the table as text (and writes it
    as CSV to ``out``)."""
    tasks = _mcq_tasks(mcq, subject)
    loaded = load_model(model, device, dtype)
    variants = [Variant("base")]
    if run:
        variants.append(directions.unlearned_from_run(loaded, run)[0])
    if ablate:
        vector = _checked_vector(loaded, model, ablate)
        source = variants[-1]
        variants.append(source.with_hooks(ablation_hooks(vector), name=f"{source.name}_ablated"))
    table = evaluation.evaluate_variants(
        loaded,
        variants,
        tasks,
        mode=mode,
        batch_size=batch_size,
        progress=progress,
        add_bos=ADD_BOS[add_bos],
    )
    text = evaluation.format_accuracy_table(table) + "\n"
    if out:
        with artifacts.atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
        text += f"wrote {out}\n"
    return text


def _mcq_tasks(paths: Sequence[str], subject: str | None) -> dict[str, list[data.MCQItem]]:
    """One task per file, named by the file name up to its first dot (made unique)."""
    tasks: dict[str, list[data.MCQItem]] = {}
    for path in paths:
        name = Path(path).name.split(".")[0]
        tasks[name if name not in tasks else f"{name}_{len(tasks)}"] = data.load_mcq(
            path, subject=subject
        )
    return tasks


def _checked_vector(model: models.Model, model_name: str, path: str) -> torch.Tensor:
    """The direction vector in ``path``, checked to fit ``model``'s width."""
    vector = direction_vector(path)
    if vector.shape[-1] != models.d_model(model):
        raise UnlearnInterpError(
            f"{path}: the direction has d_model {vector.shape[-1]} but {model_name} "
            f"has {models.d_model(model)}"
        )
    return vector


def direction_vector(path: str | os.PathLike) -> torch.Tensor:
    """The ``vector`` of a direction file: a ``Direction`` (with its JSON twin, or a run
    directory) through ``Direction.load``, else any safetensors file with a ``vector`` tensor."""
    path_ = Path(path)
    if path_.is_dir() or path_.with_suffix(".json").is_file():
        return directions.Direction.load(path_).vector
    tensors = models.load_weights(path_)
    if "vector" not in tensors:
        raise UnlearnInterpError(f"{path} has no tensor named 'vector'")
    return tensors["vector"]
