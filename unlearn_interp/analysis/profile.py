"""The blog's per-layer picture of a model and its variants, as a tidy DataFrame.

:func:`layer_profile`: for each variant and each layer (the residual stream *after* block ``l``),
the mean activation norm and the cosine similarity to the reference variant's activation on the
same prompt and token, on forget and retain prompts side by side. RMU shows a norm bump and a
cosine split at its layer; ablating the junk direction brings both back.

    >>> profile = layer_profile(model, [base, rmu, ablated], {"forget": hazardous, "retain": benign},
    ...                         directions={"junk": d.vector})          # doctest: +SKIP
    >>> plotting.plot_layer_norms(profile, rmu_layer=7)                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.activations import (
    Positions,
    capture_resid,
    check_layers,
    iter_batches,
    select_positions,
)
from unlearn_interp.data import Batch
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant

PromptSets = Sequence[str] | Mapping[str, Sequence[str]]
Sums = dict[str, dict[str, Tensor]]  # {variant: {statistic: [n_layers] float64 sums}}


def layer_profile(
    model: Model,
    variants: Sequence[Variant],
    prompts: PromptSets,
    *,
    positions: Positions = "last",
    reference: str = "base",
    directions: Mapping[str, Float[Tensor, " d_model"]] | None = None,
    control_vectors: Float[Tensor, "n_topics d_model"] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> pd.DataFrame:
    """Per variant, prompt set and layer: mean residual norm and mean cosine to the reference.

    Columns: ``variant, prompt_set, layer, norm, cos_to_reference, n_tokens`` plus
    ``cos_to_<name>`` for each entry of ``directions`` (``cos_to_direction`` when there is one
    called ``direction``) and ``cos_to_control`` (largest over topics) when ``control_vectors``
    are given. Cosines are averaged over tokens (``positions``: ``"last"`` real token of each
    prompt, ``"all"`` real tokens, or an index). Each variant runs one forward pass per batch,
    caching only the residual hooks asked for; sums accumulate in float64.

    ``prompts`` is a list (one set called ``"forget"``) or ``{"forget": [...], "retain": [...]}``.
    """
    check_variant_names(variants, reference)
    layers = layers_or_all(model, layers)
    axes = _comparison_axes(model, directions, control_vectors)
    prompt_sets = {"forget": prompts} if not isinstance(prompts, Mapping) else prompts
    rows = []
    for set_name, texts in prompt_sets.items():
        sums = _profile_sums(
            model, variants, reference, texts, layers, positions, axes, batch_size, max_len
        )
        rows += _profile_rows(sums, set_name, layers)
    return pd.DataFrame(rows)


def layers_or_all(model: Model, layers: Sequence[int] | None) -> list[int]:
    """``layers`` as a list of distinct valid layer indices; every layer when None."""
    return list(range(models.n_layers(model))) if layers is None else check_layers(model, layers)


def check_variant_names(variants: Sequence[Variant], reference: str) -> None:
    """One sentence unless ``reference`` is among the variants and their names are unique."""
    names = [v.name for v in variants]
    if reference not in names:
        raise UnlearnInterpError(f"reference variant {reference!r} is not among {names}")
    if len(set(names)) != len(names):
        raise UnlearnInterpError(f"variant names {names} are not unique")


def _comparison_axes(
    model: Model,
    directions: Mapping[str, Float[Tensor, " d_model"]] | None,
    control_vectors: Float[Tensor, "n_topics d_model"] | None,
) -> dict[str, Float[Tensor, "k d_model"]]:
    """Unit vectors to report cosines against: ``{column name: [k, d_model]}``."""
    axes = {}
    for name, vector in (directions or {}).items():
        axes[f"cos_to_{name}"] = vector.reshape(1, -1)
    if control_vectors is not None:
        axes["cos_to_control"] = control_vectors.reshape(-1, control_vectors.shape[-1])
    for column, vectors in axes.items():
        if vectors.shape[-1] != models.d_model(model):
            raise UnlearnInterpError(
                f"{column}: vector has d_model {vectors.shape[-1]} but the model's is {models.d_model(model)}"
            )
    return {k: torch.nn.functional.normalize(v.double(), dim=-1) for k, v in axes.items()}


def _profile_sums(
    model: Model,
    variants: Sequence[Variant],
    reference: str,
    prompts: Sequence[str],
    layers: list[int],
    positions: Positions,
    axes: Mapping[str, Tensor],
    batch_size: int,
    max_len: int | None,
) -> Sums:
    """Float64 sums over tokens, ``{variant: {statistic: [n_layers]}}``, plus the token count."""
    columns = ["norm", "cos_to_reference", *axes]
    sums = {
        v.name: {c: torch.zeros(len(layers), dtype=torch.float64) for c in columns}
        for v in variants
    }
    ordered = sorted(variants, key=lambda v: v.name != reference)  # reference first in each batch
    count = 0
    for start, batch in iter_batches(model, prompts, batch_size, max_len, "layer profile"):
        select = select_positions(batch, positions, first_prompt=start)
        reference_rows: dict[int, Tensor] = {}
        for variant in ordered:
            captured = _residual_rows(model, batch, layers, select, variant)
            if variant.name == reference:
                reference_rows = captured
            for i, rows in captured.items():
                _accumulate(sums[variant.name], i, rows, reference_rows[i], axes)
        count += int(select.sum())
    for variant_sums in sums.values():
        variant_sums["n_tokens"] = torch.full((len(layers),), float(count), dtype=torch.float64)
    return sums


def _residual_rows(
    model: Model,
    batch: Batch,
    layers: list[int],
    select: Bool[Tensor, "batch pos"],
    variant: Variant,
) -> dict[int, Float[Tensor, "n_selected d_model"]]:
    """``{layer index: [n_selected, d_model] float64}`` from one forward pass of ``variant``."""
    captured: dict[int, Tensor] = {}

    def keep(i: int, rows: Tensor) -> None:
        captured[i] = rows.double().cpu()

    capture_resid(model, batch, layers, select, variant, keep)
    return captured


def _accumulate(
    sums: dict[str, Tensor],
    i: int,
    rows: Float[Tensor, "n_selected d_model"],
    reference: Float[Tensor, "n_selected d_model"],
    axes: Mapping[str, Tensor],
) -> None:
    """Add one batch's rows at layer index ``i`` to the norm and cosine sums."""
    unit_rows = torch.nn.functional.normalize(rows, dim=-1)
    sums["norm"][i] += rows.norm(dim=-1).sum()
    sums["cos_to_reference"][i] += (
        unit_rows * torch.nn.functional.normalize(reference, dim=-1)
    ).sum()
    for column, vectors in axes.items():
        sums[column][i] += (unit_rows @ vectors.T).amax(dim=-1).sum()


def _profile_rows(
    sums: Mapping[str, Mapping[str, Tensor]], prompt_set: str, layers: list[int]
) -> list[dict]:
    """One row per variant and layer: each sum divided by the token count."""
    rows = []
    for variant, stats in sums.items():
        count = stats["n_tokens"]
        for i, layer in enumerate(layers):
            row = {
                "variant": variant,
                "prompt_set": prompt_set,
                "layer": layer,
                "n_tokens": int(count[i]),
            }
            row |= {c: float(v[i] / count[i]) for c, v in stats.items() if c != "n_tokens"}
            rows.append(row)
    return rows


__all__ = ["PromptSets", "layer_profile", "layers_or_all"]
