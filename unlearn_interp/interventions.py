"""Interventions on a HookedTransformer: hook factories, directional ablation, weight
orthogonalisation, and ``Variant`` (one network run several ways).

A variant is parameter overrides plus forward hooks, applied to one model inside a context
manager that restores both on exit, also after an exception::

    rmu = Variant("rmu", weights=result.unlearned_weights)       # only the changed tensors
    ablated = rmu.with_hooks(ablation_hooks(direction.vector), name="rmu_ablated")
    for v in (base, rmu, ablated):
        with v.applied(model):
            acc[v.name] = evaluation.mcq_accuracy(model, items).accuracy

Ablation takes one direction ``[d_model]`` or an orthonormal basis ``[k, d_model]`` (a
subspace, e.g. ``directions.junk_subspace(...).basis``); both go through the one projection
``x <- x - (x B^T) B``::

    ablated = rmu.with_hooks(ablation_hooks(subspace.basis), name="rmu_subspace_ablated")
    permanent = rmu.with_weights(orthogonalized_weights(model, subspace.basis))

Hooks are pure factories: they are only ever installed through ``Variant.applied`` (or
TransformerLens' own ``model.hooks``), so no hook outlives the block that needed it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from unlearn_interp import models
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.variants import Hook, HookFn, get_param, restore_weights
from unlearn_interp.variants import Variant as Variant  # public API: interventions.Variant
from unlearn_interp.variants import run_variants as run_variants

# Where the blog ablates: every block's input, every attention output and every MLP output.
ABLATION_POINTS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
# What a block writes into the residual stream: its attention output and its MLP output.
WRITE_POINTS = ("hook_attn_out", "hook_mlp_out")
# A basis is orthonormal when B B^T is the identity to this tolerance (float32 rows: ~1e-7).
ORTHONORMAL_ATOL = 1e-4


def unit(vector: Float[Tensor, " d_model"], field: str = "direction") -> Float[Tensor, " d_model"]:
    """``vector`` scaled to unit norm; a zero or non-finite vector is an error naming ``field``."""
    norm = vector.float().norm()
    if not torch.isfinite(norm) or norm == 0:
        raise UnlearnInterpError(f"{field} has zero or non-finite norm, so it defines no direction")
    return vector / norm.to(vector.dtype)


def as_basis(directions: Float[Tensor, "*k d_model"]) -> Float[Tensor, "k d_model"]:
    """What to project out, as orthonormal rows ``[k, d_model]`` (float32, detached).

    A ``[d_model]`` direction is scaled to unit norm (any length is accepted, as ever); a
    ``[k, d_model]`` basis must already be orthonormal and is refused otherwise, because
    projecting out non-orthonormal rows removes the wrong thing and silently orthonormalising
    would hide a bug upstream (``directions.Subspace.from_vectors`` orthonormalises on purpose).

    >>> as_basis(torch.tensor([3.0, 4.0]))
    tensor([[0.6000, 0.8000]])
    >>> as_basis(torch.ones(2, 2))
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: basis rows are not orthonormal (max |B B^T - I| = 2); orthonormalise them first, e.g. with directions.Subspace.from_vectors
    """
    directions = directions.detach()
    if directions.ndim == 1:
        return unit(directions.float())[None]
    if directions.ndim != 2 or directions.shape[0] == 0:
        raise UnlearnInterpError(
            f"expected a direction [d_model] or a basis [k, d_model] with k >= 1, got shape "
            f"{tuple(directions.shape)}"
        )
    if not torch.isfinite(directions).all():
        raise UnlearnInterpError("basis contains NaN or infinite values")
    basis = directions.float()
    gram = basis.double() @ basis.double().T
    error = float((gram - torch.eye(len(basis), dtype=torch.float64)).abs().max())
    if error > ORTHONORMAL_ATOL:
        raise UnlearnInterpError(
            f"basis rows are not orthonormal (max |B B^T - I| = {error:.3g}); orthonormalise "
            "them first, e.g. with directions.Subspace.from_vectors"
        )
    return basis


def project_out(
    x: Float[Tensor, "*batch d_model"], basis: Float[Tensor, "k d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """``x - (x B^T) B``: ``x`` without its component in the span of orthonormal rows ``B``
    (for one unit row ``r``: ``x - (x . r) r``). Computed in ``x``'s dtype on ``x``'s device;
    the one projection behind both the hooks and the orthogonalised weights.

    >>> project_out(torch.tensor([[1.0, 2.0, 3.0]]), torch.eye(3)[:2])
    tensor([[0., 0., 3.]])
    """
    b = basis.to(device=x.device, dtype=x.dtype)
    return x - (x @ b.T) @ b


def project_out_hook(direction: Float[Tensor, "*k d_model"]) -> HookFn:
    """Hook removing the component along unit ``direction`` (``x <- x - (x . r) r``), or the
    span of an orthonormal basis ``[k, d_model]`` (``x <- x - (x B^T) B``).

    >>> with model.hooks([("blocks.3.hook_resid_pre", project_out_hook(r))]):   # doctest: +SKIP
    ...     logits = model(tokens)
    """
    basis = as_basis(direction)
    what = "direction" if direction.ndim == 1 else "basis"

    def hook(activation: Tensor, hook: HookPoint | None = None) -> Tensor:
        _check_width(basis, activation, hook, what)
        return project_out(activation, basis)

    return hook


def add_vector_hook(
    vector: Float[Tensor, " d_model"], scale: float = 1.0, positions: slice | int | None = None
) -> HookFn:
    """Hook adding ``scale * vector`` to the activation (at ``positions`` only, if given).

    >>> steer = ("blocks.7.hook_resid_post", add_vector_hook(u, scale=6.5))     # doctest: +SKIP
    """
    delta = (scale * vector.detach()).clone()
    where = slice(None) if positions is None else positions

    def hook(activation: Tensor, hook: HookPoint | None = None) -> Tensor:
        _check_width(delta, activation, hook)
        activation = activation.clone()
        activation[:, where] += delta.to(device=activation.device, dtype=activation.dtype)
        return activation

    return hook


def _check_width(
    vector: Tensor, activation: Tensor, hook: HookPoint | None, what: str = "direction"
) -> None:
    """One sentence instead of a matmul error when a vector comes from another model."""
    if vector.shape[-1] != activation.shape[-1]:
        where = f" at {hook.name}" if hook is not None else ""
        raise UnlearnInterpError(
            f"{what} has d_model {vector.shape[-1]} but the activation{where} has "
            f"{activation.shape[-1]} (a {what} from another model?)"
        )


def ablation_hooks(
    vector: Float[Tensor, "*k d_model"], layers: Sequence[int] | None = None
) -> tuple[Hook, ...]:
    """Directional ablation: project ``vector`` (one direction ``[d_model]``, or an orthonormal
    basis ``[k, d_model]`` for a subspace) out at every block input, attention output and MLP
    output, at every position, in every block (or only in ``layers``).

    The hook names are matched by a filter, so the same hooks fit any model depth. A basis whose
    rows are not orthonormal is refused (see :func:`as_basis`).

    >>> ablated = rmu.with_hooks(ablation_hooks(direction.vector))   # doctest: +SKIP
    >>> ablated = rmu.with_hooks(ablation_hooks(subspace.basis))     # doctest: +SKIP
    """
    blocks = None if layers is None else {int(layer) for layer in layers}
    hook = project_out_hook(vector)

    def where(name: str) -> bool:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] not in ABLATION_POINTS:
            return False
        return blocks is None or int(parts[1]) in blocks

    return ((where, hook),)


def downstream_ablation_hooks(vector: Float[Tensor, "*k d_model"], layer: int) -> tuple[Hook, ...]:
    """Project ``vector`` (a direction, or an orthonormal basis ``[k, d_model]``) out of the
    residual stream after block ``layer`` and out of every attention and MLP output of the
    blocks after it, at every position: from layer ``layer``'s output on, the stream has no
    component along it (what per-layer ablation places at each layer).

    >>> hooks = downstream_ablation_hooks(cands.direction(5).vector, layer=5)   # doctest: +SKIP
    """
    hook = project_out_hook(vector)

    def later_write(name: str) -> bool:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] not in WRITE_POINTS:
            return False
        return int(parts[1]) > layer

    return ((models.resid_hook(layer), hook), (later_write, hook))


def orthogonalized_weights(
    model: HookedTransformer, vector: Float[Tensor, "*k d_model"]
) -> dict[str, Tensor]:
    """New values for every residual-stream writer with ``vector``'s direction (or the span of
    an orthonormal basis ``[k, d_model]``) removed.

    ``W <- W - (W B^T) B`` on the embedding, positional embedding, each attention ``W_O`` and
    each MLP ``W_out``, and ``b <- b - (b B^T) B`` on their biases (for one unit direction
    ``r``: ``W <- W - (W r) r^T``). Use it as a ``Variant``'s weights to get the permanent form
    of :func:`ablation_hooks` without touching the model.

    >>> ortho = rmu.with_weights(orthogonalized_weights(model, subspace.basis))  # doctest: +SKIP
    """
    width = models.d_model(model)
    if vector.ndim not in (1, 2) or vector.shape[-1] != width:
        what = "basis" if vector.ndim == 2 else "direction"
        raise UnlearnInterpError(
            f"{what} has shape {tuple(vector.shape)} but the model's d_model is {width}"
        )
    basis = as_basis(vector)
    new = {}
    with torch.no_grad():
        for name in models.residual_writers(model):
            w = get_param(model, name)
            new[name] = project_out(w.float(), basis).to(w.dtype)
    return new


def orthogonalize_weights(model: HookedTransformer, vector: Float[Tensor, "*k d_model"]) -> None:
    """Permanently remove ``vector``'s direction (or a basis' span) from every residual-stream
    writer, in place.

    Equivalent to running with :func:`ablation_hooks` (tested to 1e-4 on the logits), and free at
    inference time.

    >>> orthogonalize_weights(model, direction.vector)              # doctest: +SKIP
    """
    restore_weights(model, orthogonalized_weights(model, vector))
