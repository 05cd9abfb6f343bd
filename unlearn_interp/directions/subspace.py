"""Junk subspaces: RMU trains several blocks and each writes its own junk, so the span of the
difference-in-means directions at those blocks' outputs can recover more than one direction.

    sub = junk_subspace(model, base, rmu, prompts, layers=subspace_layers(result.config))
    sub = cands.subspace(subspace_layers(result.config))     # the same, from existing candidates
    ablated = rmu.with_hooks(ablation_hooks(sub.basis), name="rmu_subspace_ablated")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from unlearn_interp.activations import Positions, check_layers
from unlearn_interp.directions.artifact import DEPENDENT_RTOL, Subspace
from unlearn_interp.directions.candidates import candidate_directions
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant


def subspace_layers(config: Any) -> list[int]:
    """The layers whose junk directions span the default subspace of an RMU run: the output of
    each updated block (the residual stream after it), i.e. ``config.update_layers``.

    ``config`` is an ``rmu.RMUConfig`` (or ``RMUResult.config``) or the ``"rmu"`` section of a run's
    ``config.json``.

    >>> subspace_layers({"layer": 7, "update_layers": [5, 6, 7]})
    [5, 6, 7]
    """
    layers = config.get("update_layers") if isinstance(config, Mapping) else None
    if not isinstance(config, Mapping):
        layers = getattr(config, "update_layers", None)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise UnlearnInterpError(
            f"the RMU config names no update_layers (got {layers!r}), so there is no default "
            "subspace; give the layers"
        )
    return [int(layer) for layer in layers]


def junk_subspace(
    model: Model,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    positions: Positions = "last",
    control_vectors: Float[Tensor, "*topic d_model"] | None = None,
    rtol: float = DEPENDENT_RTOL,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Subspace:
    """The span of the difference-in-means junk directions at ``layers`` (default choice:
    :func:`subspace_layers`, one per updated block), orthonormalised in the order given.

    Each direction is :func:`junk_direction`'s (mean unlearned minus mean base activation at
    ``positions``, padding excluded), all from one forward pass per variant and batch, stopped
    after the deepest layer. Layers with no difference, or whose direction lies in the span of
    the earlier ones, are dropped and listed in ``metadata["dropped"]``. With
    ``control_vectors`` the cosine of each with the subspace is kept in
    ``metadata["cos_with_control_vectors"]``.

    >>> sub = junk_subspace(model, base, rmu, prompts, layers=[6, 7])        # doctest: +SKIP
    >>> ablated = rmu.with_hooks(ablation_hooks(sub.basis))                   # doctest: +SKIP
    """
    layers = check_layers(model, layers)
    cands = candidate_directions(
        model, base, unlearned, prompts, layers, positions, control_vectors, batch_size, max_len
    )
    sub = cands.subspace(layers, rtol=rtol)
    if control_vectors is not None:
        sub.metadata["cos_with_control_vectors"] = sub.cos_with(control_vectors).tolist()
    return sub
