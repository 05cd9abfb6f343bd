"""The two ``unlearn-interp`` commands that read a finished run: ``direction`` (the junk
direction of an unlearned run or checkpoint against its base model) and ``evaluate`` (MCQ
accuracy of base, unlearned and ablated). The shared pieces (output directory, model loading,
the command line's choices) are :mod:`unlearn_interp.pipeline.jobs`'.

    >>> text = direction_job("runs/dir", model="gpt2", prompts="bio.txt", run="runs/rmu")  # doctest: +SKIP
    >>> text = evaluate_job("gpt2", ["bio.jsonl"], run="runs/rmu", ablate="runs/dir")      # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from unlearn_interp import activations, artifacts, data, directions, evaluation, models
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import ablation_hooks
from unlearn_interp.pipeline.jobs import ADD_BOS, check_out_dir, load_model
from unlearn_interp.variants import Variant

__all__ = ["direction_job", "direction_vector", "evaluate_job"]


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
        loaded, Variant("base"), unlearned_variant, prompt_list, layer=layer,
        all_layers=all_layers, positions=positions, method=method, retain_prompts=retain,
        outlier_z=outlier_z, control_vectors=controls, min_raw_norm=min_raw_norm,
        min_cos_control=min_cos_control, prefer=prefer, batch_size=batch_size, max_len=max_len,
    )  # fmt: skip
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
        loaded, variants, tasks, mode=mode, batch_size=batch_size, progress=progress,
        add_bos=ADD_BOS[add_bos],
    )  # fmt: skip
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
