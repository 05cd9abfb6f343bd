"""Random controls: a unit direction or a k-frame drawn uniformly, reproducible from a seed,
orthogonal to the junk when asked, and wrapped as norm-matched artifacts.

    control = random_control(junk, seed=0)               # same layer and raw norm, orthogonal
    abl = rmu.with_hooks(ablation_hooks(control.vector), name="rmu_random_ablated")
    rand = random_subspace_control(sub, seed=0)          # same dimension, orthogonal to it

Every recovery number needs one: ablating the junk must beat ablating a random direction.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp.checks import check_int
from unlearn_interp.directions.artifact import Direction, Subspace
from unlearn_interp.errors import UnlearnInterpError


def _others(
    orthogonal_to: Float[Tensor, "*m d_model"], d_model: int
) -> Float[Tensor, "n_other d_model"]:
    """The rows to stay orthogonal to, float64 on the CPU."""
    return orthogonal_to.detach().to("cpu", torch.float64).reshape(-1, d_model)


def random_direction(
    d_model: int, seed: int, orthogonal_to: Float[Tensor, "*k d_model"] | None = None
) -> Float[Tensor, " d_model"]:
    """A unit Gaussian direction (uniform on the sphere), reproducible from ``seed``; exactly
    orthogonal (to float precision) to ``orthogonal_to`` (one direction or several rows) when
    given. The control every recovery number needs.

    >>> r = random_direction(4096, seed=0, orthogonal_to=junk.vector)   # doctest: +SKIP
    >>> abs(float(r @ junk.vector)) < 1e-6                               # doctest: +SKIP
    True
    """
    check_int(d_model, "d_model", minimum=1)
    generator = torch.Generator().manual_seed(int(seed))
    v = torch.randn(d_model, generator=generator, dtype=torch.float64)
    if orthogonal_to is not None:
        others = _others(orthogonal_to, d_model)
        if others.shape[0] >= d_model:
            raise UnlearnInterpError(
                f"cannot be orthogonal to {others.shape[0]} directions in {d_model} dimensions"
            )
        basis, _ = torch.linalg.qr(others.T)  # [d_model, k], orthonormal columns
        for _ in range(2):  # twice: one Gram-Schmidt pass leaves ~1e-16 * |v| behind
            v = v - basis @ (basis.T @ v)
    return (v / v.norm()).float()


def random_subspace(
    d_model: int, k: int, seed: int, orthogonal_to: Float[Tensor, "*m d_model"] | None = None
) -> Float[Tensor, "k d_model"]:
    """``k`` orthonormal rows drawn uniformly (Haar) among k-frames, reproducible from ``seed``;
    inside the orthogonal complement of ``orthogonal_to`` (rows, need not be orthonormal) when
    given. The control of matched dimension for a subspace ablation.

    >>> r = random_subspace(4096, 3, seed=0, orthogonal_to=sub.basis)   # doctest: +SKIP
    >>> float((r @ sub.basis.T).abs().max()) < 1e-6                     # doctest: +SKIP
    True
    """
    check_int(d_model, "d_model", minimum=1)
    check_int(k, "k", minimum=1)
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(d_model, k, generator=generator, dtype=torch.float64)
    if orthogonal_to is not None:
        others = _others(orthogonal_to, d_model)
        m = others.shape[0]
        if m + k > d_model:
            raise UnlearnInterpError(
                f"cannot fit {k} directions orthogonal to {m} others in {d_model} dimensions"
            )
        span, _ = torch.linalg.qr(others.T)  # [d_model, m], orthonormal columns
        for _ in range(2):  # twice, as in random_direction
            gaussian = gaussian - span @ (span.T @ gaussian)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # fixes QR's signs: Haar, not biased
    return q.T.float().contiguous()


def random_control(direction: Direction, seed: int = 0, orthogonal: bool = True) -> Direction:
    """A random control for ``direction``: same layer, positions and raw norm (norm-matched),
    a :func:`random_direction` vector orthogonal to it unless ``orthogonal=False``.

    >>> rand = random_control(junk, seed=0)                            # doctest: +SKIP
    >>> abl = rmu.with_hooks(ablation_hooks(rand.vector), name="rmu_random_ablated")  # doctest: +SKIP
    """
    vector = random_direction(
        direction.d_model, seed, orthogonal_to=direction.vector if orthogonal else None
    )
    origin = dataclasses.replace(direction.origin, n_prompts=0)
    metadata = {"seed": seed, "orthogonal_to_junk": orthogonal, "control_for": direction.method}
    return Direction.at(origin, vector, direction.raw_norm, "random", metadata)


def random_subspace_control(subspace: Subspace, seed: int = 0, orthogonal: bool = True) -> Subspace:
    """A random control for ``subspace``: same dimension, layers and raw norms, a
    :func:`random_subspace` basis orthogonal to it unless ``orthogonal=False``.

    >>> rand = random_subspace_control(sub, seed=0)                       # doctest: +SKIP
    >>> ctrl = rmu.with_hooks(ablation_hooks(rand.basis), name="rmu_random_subspace_ablated")  # doctest: +SKIP
    """
    basis = random_subspace(
        subspace.d_model, subspace.k, seed, orthogonal_to=subspace.basis if orthogonal else None
    )
    return Subspace(
        basis=basis,
        layers=subspace.layers,
        raw_norms=subspace.raw_norms,
        positions=subspace.positions,
        n_prompts=0,
        method="random",
        model_name=subspace.model_name,
        metadata={"seed": seed, "orthogonal_to_junk": orthogonal, "control_for": subspace.method},
    )
