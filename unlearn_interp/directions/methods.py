"""One junk direction at one layer, by method: the blog's difference in means, the first
principal axis of per-token differences, or forget minus retain; and the ``direction`` step that
scores candidates and takes the direction from them.

    d = junk_direction(model, base=base, unlearned=rmu, prompts=prompts, layer=7)
    d = junk_direction(model, base, rmu, prompts, layer=7, candidates=cands)   # no forward pass
    d = junk_direction(model, base, rmu, prompts, layer=7, positions="all",
                       method="pca", outlier_z=3.0)
    d, cands = extract_direction(model, base, rmu, prompts, all_layers=True)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.activations import (
    Positions,
    activation_sums,
    capture_resid,
    check_positions,
    iter_batches,
    select_positions,
)
from unlearn_interp.directions.artifact import Direction, Origin
from unlearn_interp.directions.candidates import (
    Candidates,
    candidate_directions,
    is_zero,
    select_direction,
    zero_norm_error,
)
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant

log = logging.getLogger(__name__)

METHODS = ("diff_in_means", "forget_minus_retain", "pca")
# Difference norms spread less than this (relative to their mean) are equal up to float noise.
SPREAD_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class _Prompts:
    """The prompts, tokens and batching every method shares."""

    prompts: Sequence[str]
    layer: int
    positions: Positions
    batch_size: int
    max_len: int | None

    def origin(self, model: Model) -> Origin:
        return Origin(self.layer, self.positions, len(self.prompts), models.model_name(model))


def junk_direction(
    model: Model,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layer: int,
    positions: Positions = "last",
    method: str = "diff_in_means",
    retain_prompts: Sequence[str] | None = None,
    outlier_z: float | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
    *,
    candidates: Candidates | None = None,
) -> Direction:
    """The junk direction at ``layer``: by default the blog's mean unlearned activation minus mean
    base activation on the same ``prompts`` (last token), normalised.

    ``method``:

    * ``"diff_in_means"``: the blog's recipe. With ``candidates`` (from
      :func:`candidate_directions` on the same variants, prompts and positions, covering
      ``layer``) the direction is read from them without another forward pass; the vector and
      raw norm are the same bits, and ``metadata["scores"]`` is the candidates' row.
    * ``"forget_minus_retain"``: mean *unlearned* activation on ``prompts`` minus on
      ``retain_prompts`` (``base`` is not used and may be None).
    * ``"pca"``: first principal axis of the per-token differences (unlearned minus base on the
      same token), sign aligned with their mean. Uncentred (the second moment), because the junk
      is a shift: centring would throw away the very component being looked for.

    ``outlier_z`` (with ``"diff_in_means"`` or ``"pca"``, meant for ``positions="all"``) first
    drops tokens whose difference norm has a z-score above it; ``metadata`` records how many.

    >>> d = junk_direction(model, base=base, unlearned=rmu, prompts=prompts, layer=7)  # doctest: +SKIP
    >>> d = junk_direction(model, base, rmu, prompts, layer=7, positions="all",
    ...                    method="pca", outlier_z=3.0)                             # doctest: +SKIP
    """
    models.check_layer(model, layer, field="layer")
    check_positions(positions)
    if method not in METHODS:
        raise UnlearnInterpError(f"method {method!r} is not one of {', '.join(METHODS)}")
    asked = _Prompts(prompts, layer, positions, batch_size, max_len)
    if method == "forget_minus_retain":
        return _forget_minus_retain(model, unlearned, asked, retain_prompts, outlier_z)
    if base is None:
        raise UnlearnInterpError(f"method {method!r} needs a base variant")
    if method == "diff_in_means" and outlier_z is None:
        if candidates is None:
            candidates = candidate_directions(
                model,
                base,
                unlearned,
                prompts,
                [layer],
                positions,
                batch_size=batch_size,
                max_len=max_len,
            )
        return _from_candidates(candidates, asked)
    return _from_token_differences(model, base, unlearned, asked, method, outlier_z)


def _from_candidates(candidates: Candidates, asked: _Prompts) -> Direction:
    """The candidate at the layer asked, after checking the candidates measured what was asked."""
    if (candidates.positions, candidates.n_prompts) != (asked.positions, len(asked.prompts)):
        raise UnlearnInterpError(
            f"the candidates were scored at positions {candidates.positions!r} on "
            f"{candidates.n_prompts} prompts, not at {asked.positions!r} on {len(asked.prompts)}"
        )
    return candidates.direction(asked.layer)


def _from_token_differences(
    model: Model,
    base: Variant,
    unlearned: Variant,
    asked: _Prompts,
    method: str,
    outlier_z: float | None,
) -> Direction:
    """``"diff_in_means"`` with an outlier filter, or ``"pca"``: from the per-token differences."""

    def rows() -> Iterator[tuple[Tensor, Tensor]]:
        return _paired_rows(model, base, unlearned, asked)

    moments, info = _difference_moments(rows, models.d_model(model), method == "pca", outlier_z)
    mean = moments.total / moments.count
    base_norm = moments.base_norm_total / moments.count
    vector, raw, extra = (
        _pca_axis(moments, mean) if method == "pca" else (mean, float(mean.norm()), {})
    )
    spread = float(moments.second.trace().sqrt()) if moments.second is not None else raw
    if is_zero(max(raw, spread), base_norm):
        raise zero_norm_error(asked.layer, len(asked.prompts), raw, base_norm)
    metadata = {"base_norm": base_norm, **extra, **info}
    return Direction.at(asked.origin(model), vector, raw, method, metadata)


# ---------------------------------------------------------------------------------------------
# Per-token differences: moments, outliers, the principal axis
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Moments:
    """Float64 moments of per-token differences (unlearned minus base) at one layer."""

    total: Float[Tensor, " d_model"]
    second: Float[Tensor, "d_model d_model"] | None
    base_norm_total: float = 0.0
    count: int = 0

    def add(self, diff: Tensor, base_rows: Tensor) -> None:
        self.total += diff.sum(dim=0).cpu()
        if self.second is not None:
            self.second += (diff.T @ diff).cpu()
        self.base_norm_total += float(base_rows.norm(dim=-1).sum())
        self.count += diff.shape[0]


def _paired_rows(
    model: Model, base: Variant, unlearned: Variant, asked: _Prompts
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per batch, ``(unlearned - base, base)`` at the selected tokens of the layer, float64."""
    found: list[Tensor] = []  # this batch's rows: base, then unlearned

    def keep(_: int, rows: Tensor) -> None:
        found.append(rows.double())

    batches = iter_batches(
        model, asked.prompts, asked.batch_size, asked.max_len, "token differences"
    )
    for start, batch in batches:
        select = select_positions(batch, asked.positions, first_prompt=start)
        found.clear()
        for variant in (base, unlearned):
            capture_resid(model, batch, [asked.layer], select, variant, keep)
        base_rows, unlearned_rows = found
        yield unlearned_rows - base_rows, base_rows


def _difference_moments(
    rows: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    d_model: int,
    second_moment: bool,
    outlier_z: float | None,
) -> tuple[_Moments, dict[str, Any]]:
    """Moments of the per-token differences, after dropping outlier tokens when asked.

    The outlier filter needs every token's difference norm before it can set the cut, so it
    costs one extra pass (norms only, one float per token) instead of keeping activations.
    """
    keep, info = None, {}
    if outlier_z is not None:
        norms = torch.cat([diff.norm(dim=-1).cpu() for diff, _ in rows()])
        keep, info = _outlier_filter(norms, outlier_z)
    moments = _Moments(
        torch.zeros(d_model, dtype=torch.float64),
        torch.zeros(d_model, d_model, dtype=torch.float64) if second_moment else None,
    )
    seen = 0
    for diff, base_rows in rows():
        if keep is not None:
            kept = keep[seen : seen + diff.shape[0]].to(diff.device)
            seen += diff.shape[0]
            diff, base_rows = diff[kept], base_rows[kept]
        moments.add(diff, base_rows)
    return moments, info


def _outlier_filter(
    norms: Float[Tensor, " token"], outlier_z: float
) -> tuple[Tensor, dict[str, Any]]:
    """Keep tokens whose difference norm is at most ``outlier_z`` standard deviations above the
    mean: attention-sink tokens (BOS) carry huge activations that would otherwise dominate."""
    if not outlier_z > 0:
        raise UnlearnInterpError(f"outlier_z {outlier_z!r} must be positive")
    mean, std = norms.mean(), norms.std(unbiased=False)
    if std <= SPREAD_RTOL * mean:  # all norms equal up to float noise: z-scores mean nothing
        keep = torch.ones_like(norms, dtype=torch.bool)
    else:
        keep = (norms - mean) / std <= outlier_z
    info = {
        "outlier_z": outlier_z,
        "n_tokens": len(norms),
        "n_dropped": int((~keep).sum()),
        "norm_mean": float(mean),
        "norm_std": float(std),
    }
    log.info("outlier filter dropped %d of %d tokens", info["n_dropped"], len(norms))
    return keep, info


def _pca_axis(moments: _Moments, mean: Tensor) -> tuple[Tensor, float, dict[str, Any]]:
    """Top eigenvector of the uncentred second moment, pointing along the mean difference."""
    second = moments.second / moments.count
    eigenvalues, eigenvectors = torch.linalg.eigh(second)
    axis = eigenvectors[:, -1]
    if float(axis @ mean) < 0:
        axis = -axis
    explained = float(eigenvalues[-1] / eigenvalues.sum().clamp_min(1e-300))
    # raw_norm: the mean difference's length along the axis, comparable to diff_in_means'.
    return axis, abs(float(axis @ mean)), {"explained_second_moment": explained}


# ---------------------------------------------------------------------------------------------
# Forget minus retain
# ---------------------------------------------------------------------------------------------


def _forget_minus_retain(
    model: Model,
    unlearned: Variant,
    asked: _Prompts,
    retain_prompts: Sequence[str] | None,
    outlier_z: float | None,
) -> Direction:
    if not retain_prompts:
        raise UnlearnInterpError("method 'forget_minus_retain' needs retain_prompts")
    if outlier_z is not None:
        raise UnlearnInterpError(
            "outlier_z applies to per-token differences, not to 'forget_minus_retain'"
        )
    common = dict(
        layers=[asked.layer],
        positions=asked.positions,
        variant=unlearned,
        batch_size=asked.batch_size,
        max_len=asked.max_len,
    )
    forget = activation_sums(model, asked.prompts, **common)
    retain = activation_sums(model, retain_prompts, **common)
    diff = (forget.mean - retain.mean)[0]
    raw, scale = float(diff.norm()), float(retain.mean_norm[0])
    if is_zero(raw, scale):
        raise UnlearnInterpError(
            f"the unlearned variant's mean activation at layer {asked.layer} is the same on the "
            f"forget and the retain prompts (difference norm {raw:.3g}), so there is no direction"
        )
    metadata = {"n_retain_prompts": len(retain_prompts), "retain_norm": scale}
    return Direction.at(asked.origin(model), diff, raw, "forget_minus_retain", metadata)


# ---------------------------------------------------------------------------------------------
# The `direction` step: candidates once, then the direction from them
# ---------------------------------------------------------------------------------------------


def extract_direction(
    model: Model,
    base: Variant,
    unlearned: Variant,
    prompts: Sequence[str],
    layer: int | None = None,
    all_layers: bool = False,
    positions: Positions = "last",
    method: str = "diff_in_means",
    retain_prompts: Sequence[str] | None = None,
    outlier_z: float | None = None,
    control_vectors: Tensor | None = None,
    min_raw_norm: float = 0.0,
    min_cos_control: float | None = None,
    prefer: str = "raw_norm",
    batch_size: int = 16,
    max_len: int | None = None,
) -> tuple[Direction, Candidates]:
    """The ``direction`` command: score candidates at ``layer`` (or every layer with
    ``all_layers``) and return the direction with its candidates table.

    Without ``layer`` (``all_layers`` only) :func:`select_direction` picks the layer by the
    thresholds (its reasons stay in ``metadata["selection"]``); the direction is then taken at
    that layer by ``method``.

    >>> d, cands = extract_direction(model, base, rmu, prompts, all_layers=True)  # doctest: +SKIP
    """
    if layer is None and not all_layers:
        raise UnlearnInterpError("give a layer, or ask for all layers to select one")
    if layer is not None:
        models.check_layer(model, layer, field="layer")
    cands = candidate_directions(
        model,
        base,
        unlearned,
        prompts,
        None if all_layers else [layer],
        positions,
        control_vectors,
        batch_size,
        max_len,
    )
    by_candidates = method == "diff_in_means" and outlier_z is None
    extra: dict[str, Any] = {}
    if layer is None:
        chosen = select_direction(
            cands, min_raw_norm=min_raw_norm, min_cos_control=min_cos_control, prefer=prefer
        )
        if by_candidates:
            return chosen, cands
        layer, extra = chosen.layer, {"selection": chosen.metadata["selection"]}
    if by_candidates:
        return cands.direction(layer), cands
    direction = junk_direction(
        model,
        base,
        unlearned,
        prompts,
        layer,
        positions,
        method,
        retain_prompts,
        outlier_z,
        batch_size,
        max_len,
    )
    direction.metadata.update(scores=cands.row(layer), **extra)
    return direction, cands
