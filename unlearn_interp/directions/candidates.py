"""Difference-in-means candidates at every layer, scored, and an auditable selection among them.

    cands = candidate_directions(model, base, rmu, prompts, control_vectors=result.control_vectors)
    d = select_direction(cands, min_cos_control=0.9)    # d.metadata["selection"] says why
    d7 = cands.direction(7)                              # any scored layer, no further pass

Candidates are computed once per run: :func:`junk_direction` (``candidates=``), the subspace and
the selection all read them instead of running the two forward passes again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.activations import (
    MaskedSums,
    Positions,
    activation_sums,
    check_layers,
    check_positions,
)
from unlearn_interp.directions.artifact import (
    DEPENDENT_RTOL,
    Direction,
    Origin,
    Subspace,
    json_ready,
)
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant

log = logging.getLogger(__name__)

PREFERENCES = ("raw_norm", "relative_norm", "norm_jump", "cos_control")
# A difference this small relative to the activations' own norm is float noise, not a direction.
ZERO_NORM_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Difference-in-means candidates at several layers and one row of scores per layer.

    ``vectors[i]`` is the unit candidate at ``scores.layer[i]`` (zero where there was no
    difference). ``scores`` columns: ``layer``; ``raw_norm`` (length of mean unlearned minus
    mean base); ``base_norm`` / ``unlearned_norm`` (mean per-token activation norms);
    ``relative_norm`` (raw_norm / base_norm); ``norm_jump`` (raw_norm minus the previous
    layer's: the layer where the difference is written stands out even when it persists
    downstream); ``cos_mean_activations`` (cosine of the two mean
    activations); ``cos_ones`` (cosine with the all-ones direction: about 0.87 for RMU's
    uniform-[0,1) control vector, about 0 for a Gaussian one); ``cos_control`` (largest |cosine|
    with the run's control vectors, NaN without them) and ``control_index`` (which one);
    ``zero`` (the difference is float noise).
    """

    vectors: Float[Tensor, "layer d_model"]
    scores: pd.DataFrame
    positions: Positions
    n_prompts: int
    model_name: str

    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.scores["layer"]]

    def row(self, layer: int) -> dict[str, Any]:
        """The scores of ``layer`` as a plain dict."""
        if layer not in self.layers:
            raise UnlearnInterpError(f"layer {layer} is not among the candidates {self.layers}")
        return json_ready(self.scores.iloc[self.layers.index(layer)].to_dict())

    def direction(self, layer: int, metadata: Mapping[str, Any] | None = None) -> Direction:
        """The candidate at ``layer`` as a :class:`Direction`, without another forward pass
        (the vector :func:`junk_direction` would compute); a zero difference is an error.

        >>> cands.direction(7).metadata["scores"]["cos_control"]   # doctest: +SKIP
        """
        row = self.row(layer)
        if row["zero"]:
            raise zero_norm_error(layer, self.n_prompts, row["raw_norm"], row["base_norm"])
        origin = Origin(layer, self.positions, self.n_prompts, self.model_name)
        vector = self.vectors[self.layers.index(layer)]
        metadata = {"scores": row, **(metadata or {})}
        return Direction.at(origin, vector, row["raw_norm"], "diff_in_means", metadata)

    def subspace(self, layers: Sequence[int], rtol: float = DEPENDENT_RTOL) -> Subspace:
        """The span of the candidates at ``layers``, orthonormalised in that order, without
        another forward pass (see :meth:`Subspace.from_vectors`; layers with no difference or
        no new dimension are dropped and listed in ``metadata["dropped"]``).

        >>> cands = candidate_directions(model, base, rmu, prompts)          # doctest: +SKIP
        >>> sub = cands.subspace([5, 6, 7]); sub.k, sub.layers                # doctest: +SKIP
        (3, (5, 6, 7))
        """
        layers = [int(layer) for layer in layers]
        rows = [self.row(layer) for layer in layers]  # an unknown layer: one sentence
        index = [self.layers.index(layer) for layer in layers]
        return Subspace.from_vectors(
            self.vectors[index],
            layers,
            raw_norms=[row["raw_norm"] for row in rows],
            rtol=rtol,
            positions=self.positions,
            n_prompts=self.n_prompts,
            model_name=self.model_name,
            metadata={"scores": rows},
        )


def zero_norm_error(layer: int, n_prompts: int, raw: float, scale: float) -> UnlearnInterpError:
    """The sentence for two variants whose mean activations at ``layer`` do not differ."""
    return UnlearnInterpError(
        f"the unlearned and base variants give the same activations at layer {layer} on these "
        f"{n_prompts} prompts (difference norm {raw:.3g} against activation norm {scale:.3g}), "
        f"so there is no direction to extract"
    )


def is_zero(raw_norm: float, scale: float) -> bool:
    """Whether a difference of length ``raw_norm`` is float noise next to activations of
    length ``scale``."""
    return raw_norm <= ZERO_NORM_RTOL * max(scale, 1e-12)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def candidate_directions(
    model: Model,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Positions = "last",
    control_vectors: Float[Tensor, "*topic d_model"] | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Candidates:
    """Difference-in-means candidates at ``layers`` (default: every layer), scored.

    Two forward passes per batch (base and unlearned), each stopped after the deepest layer.

    >>> cands = candidate_directions(model, base, rmu, prompts,
    ...                              control_vectors=result.control_vectors)   # doctest: +SKIP
    >>> cands.scores[["layer", "raw_norm", "cos_control"]]                    # doctest: +SKIP
    """
    layers = check_layers(model, range(models.n_layers(model)) if layers is None else layers)
    check_positions(positions)
    args = (model, prompts, layers, positions)
    base_sums = activation_sums(*args, base, batch_size, max_len)
    unl_sums = activation_sums(*args, unlearned, batch_size, max_len)
    vectors, scores = _score(layers, base_sums, unl_sums, control_vectors)
    return Candidates(vectors.float(), scores, positions, len(prompts), models.model_name(model))


def _score(
    layers: Sequence[int],
    base_sums: MaskedSums,
    unl_sums: MaskedSums,
    control_vectors: Tensor | None,
) -> tuple[Float[Tensor, "layer d_model"], pd.DataFrame]:
    """Unit float64 differences of the two means (zero where the difference is float noise)
    and their table of scores (see :class:`Candidates`)."""
    diff = unl_sums.mean - base_sums.mean  # [layer, d_model]
    raw = diff.norm(dim=-1)
    base_norm = base_sums.mean_norm
    zero = raw <= ZERO_NORM_RTOL * base_norm.clamp_min(1e-12)
    vectors = torch.where(zero.unsqueeze(1), 0.0, diff / raw.clamp_min(1e-30).unsqueeze(1))
    cos_control, control_index = control_scores(vectors, control_vectors)
    scores = {
        "layer": layers,
        "raw_norm": raw.tolist(),
        "base_norm": base_norm.tolist(),
        "unlearned_norm": unl_sums.mean_norm.tolist(),
        "relative_norm": (raw / base_norm.clamp_min(1e-30)).tolist(),
        "norm_jump": norm_jumps(layers, raw.tolist()),
        "cos_mean_activations": torch.cosine_similarity(
            unl_sums.mean, base_sums.mean, dim=-1
        ).tolist(),
        "cos_ones": (vectors.sum(dim=-1) / math.sqrt(vectors.shape[-1])).tolist(),
        "cos_control": cos_control,
        "control_index": pd.array(control_index, dtype="Int64"),
        "zero": zero.tolist(),
    }
    return vectors, pd.DataFrame(scores)


def control_scores(
    vectors: Float[Tensor, "layer d_model"], control_vectors: Tensor | None
) -> tuple[list[float], list[int | None]]:
    """Per candidate, the largest |cosine| with the control vectors and which one it is
    (NaN / None for a zero candidate or without control vectors)."""
    if control_vectors is None:
        return [math.nan] * len(vectors), [None] * len(vectors)
    controls = control_vectors.detach().to("cpu", torch.float64)
    controls = controls.reshape(-1, controls.shape[-1])
    if controls.shape[-1] != vectors.shape[-1]:
        raise UnlearnInterpError(
            f"control_vectors have width {controls.shape[-1]} but the model's d_model is "
            f"{vectors.shape[-1]}"
        )
    controls = controls / controls.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cosines = (vectors.double() @ controls.T).abs()  # [layer, topic]
    best, which = cosines.max(dim=1)
    zero_rows = vectors.norm(dim=-1) == 0
    return (
        [math.nan if z else float(b) for b, z in zip(best, zero_rows, strict=True)],
        [None if z else int(w) for w, z in zip(which, zero_rows, strict=True)],
    )


def norm_jumps(layers: Sequence[int], raw: Sequence[float]) -> list[float]:
    """raw_norm minus the previous layer's (NaN where that layer was not scored; layer 0 counts
    from an unchanged embedding): large where a variant writes its difference."""
    by_layer = dict(zip(layers, raw, strict=True))
    previous = {layer: 0.0 if layer == 0 else by_layer.get(layer - 1, math.nan) for layer in layers}
    return [by_layer[layer] - previous[layer] for layer in layers]


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def select_direction(
    candidates: Candidates,
    min_raw_norm: float = 0.0,
    min_relative_norm: float | None = None,
    min_cos_control: float | None = None,
    prefer: str = "raw_norm",
) -> Direction:
    """Pick one candidate by named thresholds, keeping every score and the reasons.

    A candidate survives when its difference is not float noise, ``raw_norm > min_raw_norm``,
    ``relative_norm >= min_relative_norm`` and ``cos_control >= min_cos_control`` (the last two
    only when given). Among survivors the largest ``prefer`` score wins (ties: the earlier
    layer). ``metadata["selection"]`` records the thresholds, the chosen row, the runner-up and
    the whole table with ``passes``/``selected`` columns; when nothing survives the error names
    the thresholds and the best scores seen.

    >>> d = select_direction(cands, min_cos_control=0.9)            # doctest: +SKIP
    >>> d.metadata["selection"]["runner_up"]["layer"]               # doctest: +SKIP
    """
    _check_preference(candidates, prefer, min_cos_control)
    thresholds = {
        "min_raw_norm": min_raw_norm,
        "min_relative_norm": min_relative_norm,
        "min_cos_control": min_cos_control,
    }
    table = candidates.scores.copy()
    table["passes"] = passes = _passing(table, thresholds)
    if not passes.any():
        raise UnlearnInterpError(_nothing_survives(table, thresholds))
    ranked = table[passes].sort_values([prefer, "layer"], ascending=[False, True])
    chosen = int(ranked["layer"].iloc[0])
    table["selected"] = table["layer"] == chosen
    runner_up = int(ranked["layer"].iloc[1]) if len(ranked) > 1 else None
    selection = {
        "prefer": prefer,
        "thresholds": {k: v for k, v in thresholds.items() if v is not None},
        "chosen": candidates.row(chosen),
        "runner_up": candidates.row(runner_up) if runner_up is not None else None,
        "n_candidates": len(table),
        "n_passing": int(passes.sum()),
        "table": json_ready(table.to_dict(orient="records")),
    }
    log.info(
        "selected layer %d by %s (%d of %d candidates pass)",
        chosen,
        prefer,
        int(passes.sum()),
        len(table),
    )
    return candidates.direction(chosen, metadata={"selection": selection})


def _check_preference(candidates: Candidates, prefer: str, min_cos_control: float | None) -> None:
    if prefer not in PREFERENCES:
        raise UnlearnInterpError(f"prefer {prefer!r} is not one of {', '.join(PREFERENCES)}")
    has_controls = candidates.scores["cos_control"].notna().any()
    if (min_cos_control is not None or prefer == "cos_control") and not has_controls:
        raise UnlearnInterpError(
            "selecting by cos_control needs control vectors, but these candidates were scored "
            "without any"
        )


def _passing(table: pd.DataFrame, thresholds: Mapping[str, float | None]) -> pd.Series:
    """Which rows are not float noise and meet every threshold given."""
    passes = ~table["zero"] & (table["raw_norm"] > thresholds["min_raw_norm"])
    if thresholds["min_relative_norm"] is not None:
        passes &= table["relative_norm"] >= thresholds["min_relative_norm"]
    if thresholds["min_cos_control"] is not None:
        passes &= table["cos_control"].fillna(-1.0) >= thresholds["min_cos_control"]
    return passes


def _nothing_survives(table: pd.DataFrame, thresholds: Mapping[str, float | None]) -> str:
    given = ", ".join(f"{k}={v}" for k, v in thresholds.items() if v is not None)
    best = table.loc[table["raw_norm"].idxmax()]
    text = f"best raw_norm {best['raw_norm']:.3g} at layer {int(best['layer'])}"
    if table["cos_control"].notna().any():
        top = table.loc[table["cos_control"].idxmax()]
        text += f", best cos_control {top['cos_control']:.3g} at layer {int(top['layer'])}"
    return f"no candidate layer passes the thresholds {given} ({text})"
