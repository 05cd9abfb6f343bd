"""What each ``unlearn-interp`` command does, as plain functions of plain arguments.

The command line parses options and calls one job here (``direction`` and ``evaluate``, which
read a finished run, are :mod:`unlearn_interp.pipeline.readout_jobs`'); the job loads what it
needs, calls the library and writes the outputs, then returns the text the command prints. The
constants below are the choices the command line offers, taken from the library so they are
stated once.

    >>> text = unlearn_job("runs/rmu", model="gpt2", forget=["bio.jsonl"], retain=["wiki.txt"],
    ...                    rmu_settings={"layer": 7, "steps": 150})      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unlearn_interp import (
    artifacts,
    data,
    directions,
    evaluation,
    models,
    organism,
    rmu,
    sources,
)
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import make_executor
from unlearn_interp.pipeline.demo import run_demo, run_experiment
from unlearn_interp.pipeline.gallery import make_figures
from unlearn_interp.pipeline.ledger import ledger_lines, ledger_summary, run_ledger
from unlearn_interp.pipeline.report import summary_text
from unlearn_interp.pipeline.study import run_model_demo
from unlearn_interp.pipeline.study_config import SMOLLM2
from unlearn_interp.rmu import RMUConfig

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
    "fetch_job",
    "figures_job",
    "info_job",
    "ledger_job",
    "quiet_progress_bars",
    "run_job",
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
    """The short table printed at the end of a demo or ``run``: accuracy per variant and task,
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
            out, size=size, seed=seed, work_dir=work, force=force, html=html, progress=progress,
            device=device, dtype=DTYPES[dtype], executor=runner,
        )  # fmt: skip
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
            metrics = run_model_demo(
                out, model=model, seeds=seeds, force=force, progress=progress, **placed
            )
            return summary_text(metrics, out) + "".join(
                f"{line}\n" for line in ledger_lines(metrics.get("ledger"))
            )
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
    ``executor``; returns its headline rows."""
    with make_executor(executor, workers=workers, address=ray_address) as runner:
        table = run_ledger(run, force=force, progress=progress, executor=runner)
    return ledger_summary(table, run)


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
    min_len: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> str:
    """Train RMU on ``model`` and write the run directory ``out``; returns a one-line summary.
    Recomputes the trained blocks in the backward pass: the same weights, a lower memory peak."""
    cfg = rmu_config(rmu_settings)
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


def run_job(
    out: str,
    *,
    base: str,
    forget_mcq: Sequence[str],
    prompts: str,
    unlearned: str | None = None,
    rmu_config_file: str | None = None,
    rmu_settings: Mapping[str, Any] | None = None,
    forget: Sequence[str] = (),
    retain: Sequence[str] = (),
    min_len: int = 0,
    retain_mcq: Sequence[str] = (),
    retain_prompts: str | None = None,
    mode: str = "letter",
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int = 8,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> str:
    """The demo's analysis on checkpoint ``base``: the unlearned model is checkpoint
    ``unlearned``, or RMU trained here (``rmu_settings`` over ``rmu_config_file``) on the
    ``forget``/``retain`` corpora. ``rmu_settings["layer"]`` is also the analysis layer."""
    settings = dict(rmu_settings or {})
    tasks = {Path(f).stem: data.load_mcq(f) for f in [*forget_mcq, *retain_mcq]}
    config = None if unlearned else _run_rmu_config(settings, rmu_config_file, forget, retain)
    if unlearned:
        _check_checkpoint_settings(settings)
    forget_corpora, retain_corpora = load_corpora(forget, retain, min_len) if config else ([], [])
    metrics = run_experiment(
        out, base=base, tasks=tasks, forget_tasks=[Path(f).stem for f in forget_mcq],
        prompts=data.load_prompts(prompts),
        retain_prompts=data.load_prompts(retain_prompts) if retain_prompts else None,
        layer=settings.get("layer"), unlearned=unlearned, rmu_config=config,
        forget_corpora=forget_corpora, retain_corpora=retain_corpora, mcq_mode=mode,
        device=device, dtype=DTYPES[dtype], batch_size=batch_size, seed=seed, force=force,
        progress=progress,
    )  # fmt: skip
    return demo_summary(metrics, out)


def _run_rmu_config(
    settings: Mapping[str, Any], path: str | None, forget: Sequence[str], retain: Sequence[str]
) -> RMUConfig:
    """The config ``run`` trains RMU with; it needs corpora to train on."""
    if not forget or not retain:
        raise UnlearnInterpError(
            "training RMU needs --forget and --retain corpora (or give --unlearned)"
        )
    return rmu_config(settings, path)


def _check_checkpoint_settings(settings: Mapping[str, Any]) -> None:
    """With an unlearned checkpoint nothing is trained: an RMU option other than the layer
    would be ignored, so it is an error."""
    unused = sorted(name for name in settings if name != "layer")
    if unused:
        raise UnlearnInterpError(
            f"RMU option {unused[0]!r} trains RMU here; it has no effect with --unlearned"
        )
