"""Per-layer directional ablation as a recovery attack, and its matched random control.

Single-direction and subspace ablation already exist (``interventions.ablation_hooks`` with
``directions.junk_subspace`` and ``directions.random_subspace_control``). Per-layer ablation is
the Gemma-2-2B follow-up's form: every layer has its own difference-in-means candidate (the
mean unlearned minus mean base residual stream after that block, ``directions.Candidates``),
and each is removed where it was measured.

Exactly what is projected where. The chosen layers' candidates ``r_l`` are orthonormalised by
Gram-Schmidt in layer order, ``u_l`` = the unit part of ``r_l`` orthogonal to the candidates of
the chosen layers before it (``u_l = r_l`` when they are orthogonal). For each chosen layer
``l``, ``x <- x - (x . u_l) u_l`` on

* the residual stream after block ``l`` (``models.resid_hook(l)``), and
* every attention output and MLP output of the blocks after ``l``,

at every position (``interventions.downstream_ablation_hooks``). Because the ``u`` are
orthonormal, the order of the projections does not matter, and from layer ``l``'s output on the
residual stream has no component along ``r_l`` nor along any earlier chosen candidate: the
ablated subspace grows by one dimension per layer. A candidate in the span of the earlier ones
adds nothing and is skipped (logged). The random control is the same construction on unit
random directions drawn as one orthonormal set (``directions.random_subspace``), orthogonal to
every chosen candidate, one per kept layer: same layers, same count, same hook placement.

    >>> cands = directions.candidate_directions(model, base, rmu, prompts)      # doctest: +SKIP
    >>> ablated = rmu.with_hooks(per_layer_ablation(cands), name="rmu_per_layer_ablated")  # doctest: +SKIP
    >>> control = rmu.with_hooks(random_per_layer_ablation(cands, seed=0))      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp.directions.artifact import DEPENDENT_RTOL, gram_schmidt
from unlearn_interp.directions.candidates import Candidates
from unlearn_interp.directions.controls import random_subspace
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import downstream_ablation_hooks
from unlearn_interp.variants import Hook

log = logging.getLogger(__name__)


def chosen_layers(candidates: Candidates, layers: Sequence[int] | None) -> list[int]:
    """``layers`` sorted (each must be a candidate layer with a nonzero difference: otherwise
    one sentence), or every candidate layer with a nonzero difference when None."""
    if layers is None:
        chosen = [layer for layer in candidates.layers if not candidates.row(layer)["zero"]]
    else:
        chosen = sorted({int(layer) for layer in layers})
        for layer in chosen:
            candidates.direction(layer)  # an unknown layer or a zero difference: one sentence
    if not chosen:
        raise UnlearnInterpError("per-layer ablation has no layer with a candidate direction")
    return chosen


def orthonormal_by_layer(
    vectors: Float[Tensor, "n d_model"], layers: Sequence[int]
) -> dict[int, Float[Tensor, " d_model"]]:
    """``{layer: u_layer}``: ``vectors`` (one per layer, in layer order) orthonormalised by
    Gram-Schmidt in that order; a vector in the span of the earlier ones is left out (logged)."""
    v = vectors.detach().to("cpu", torch.float64)
    kept, _, dropped = gram_schmidt(v, v.norm(dim=-1), DEPENDENT_RTOL)
    for index, residual in dropped:
        log.warning(
            "per-layer ablation: the candidate of layer %d lies in the span of the earlier "
            "layers' (orthogonal share %.2g), so it adds no direction",
            layers[index],
            residual,
        )
    return {layers[index]: row.float() for index, row in kept}


def layer_ablation_hooks(units: dict[int, Float[Tensor, " d_model"]]) -> list[Hook]:
    """The hooks removing each ``u_layer`` from layer ``layer``'s output and every later write."""
    hooks: list[Hook] = []
    for layer, unit in sorted(units.items()):
        hooks.extend(downstream_ablation_hooks(unit, layer))
    return hooks


def per_layer_units(
    candidates: Candidates, layers: Sequence[int] | None = None
) -> dict[int, Float[Tensor, " d_model"]]:
    """``{layer: u_layer}``, the orthonormalised candidates :func:`per_layer_ablation` removes."""
    chosen = chosen_layers(candidates, layers)
    vectors = torch.stack([candidates.direction(layer).vector for layer in chosen])
    return orthonormal_by_layer(vectors, chosen)


def per_layer_ablation(candidates: Candidates, layers: Sequence[int] | None = None) -> list[Hook]:
    """Hooks ablating each layer's own candidate direction from that layer's output on (see the
    module docstring for exactly what is projected where), at ``layers`` (default: every
    candidate layer with a nonzero difference).

    >>> hooks = per_layer_ablation(cands)                                  # doctest: +SKIP
    >>> ablated = rmu.with_hooks(hooks, name="rmu_per_layer_ablated")      # doctest: +SKIP
    """
    return layer_ablation_hooks(per_layer_units(candidates, layers))


def random_per_layer_units(
    candidates: Candidates, seed: int = 0, layers: Sequence[int] | None = None
) -> dict[int, Float[Tensor, " d_model"]]:
    """``{layer: random unit direction}`` for the layers :func:`per_layer_units` keeps: one
    orthonormal set drawn from ``seed``, orthogonal to every chosen candidate."""
    chosen = chosen_layers(candidates, layers)
    vectors = torch.stack([candidates.direction(layer).vector for layer in chosen])
    kept = sorted(orthonormal_by_layer(vectors, chosen))
    rows = random_subspace(vectors.shape[-1], len(kept), seed, orthogonal_to=vectors)
    return dict(zip(kept, rows, strict=True))


def random_per_layer_ablation(
    candidates: Candidates, seed: int = 0, layers: Sequence[int] | None = None
) -> list[Hook]:
    """The matched control of :func:`per_layer_ablation`: random unit directions, one per layer
    it ablates, placed the same way (see the module docstring).

    >>> control = rmu.with_hooks(random_per_layer_ablation(cands, seed=0))   # doctest: +SKIP
    """
    return layer_ablation_hooks(random_per_layer_units(candidates, seed, layers))


__all__ = [
    "chosen_layers",
    "layer_ablation_hooks",
    "orthonormal_by_layer",
    "per_layer_ablation",
    "per_layer_units",
    "random_per_layer_ablation",
    "random_per_layer_units",
]
