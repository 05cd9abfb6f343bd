"""How alike two variants' residual streams are, layer by layer: linear CKA and mean cosine.

:func:`linear_cka` is Kornblith et al. (2019)'s linear centred kernel alignment between two sets
of representations of the same ``n`` inputs: 1 when one is a rotation and isotropic rescaling of
the other, near 0 when they share no linear structure. :func:`representation_similarity` runs
the reference variant (``base``) and each other variant over the same prompts and reports, per
prompt set and layer, the CKA between their residual streams at the selected tokens and the
mean cosine between matching tokens. CKA sees the geometry of the whole set of prompts (has
RMU scrambled how forget prompts relate to each other?); the mean cosine sees each prompt's
own activation turned away (the junk RMU writes).

    >>> sim = representation_similarity(model, [base, rmu], {"forget": hazardous, "retain": benign})  # doctest: +SKIP
    >>> sim.query("variant == 'rmu' and prompt_set == 'forget'")[["layer", "cka", "mean_cos"]]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp.activations import (
    Positions,
    capture_resid,
    iter_batches,
    select_positions,
)
from unlearn_interp.analysis.profile import check_variant_names, layers_or_all
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant

COLUMNS = ("variant", "prompt_set", "layer", "cka", "mean_cos", "n_tokens")
Rows = list[Float[Tensor, "n_tokens d_model"]]  # one [n_tokens, d_model] float32 tensor per layer


def linear_cka(x: Float[Tensor, "n_x d1"], y: Float[Tensor, "n_y d2"]) -> float:
    """Linear CKA between the rows of ``x`` and ``y`` (the same inputs, ``n_x == n_y``; any widths).

    Columns are centred and the sums run in float64. With ``n > d`` the feature-space form
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` is cheaper, otherwise the equal Gram form
    ``<XX^T, YY^T>_F / (||XX^T||_F ||YY^T||_F)``; the cheaper one is used.

    >>> x = torch.randn(50, 8)
    >>> round(linear_cka(x, 3.0 * x), 6)
    1.0
    """
    x, y = _centred(x, "x"), _centred(y, "y")
    if x.shape[0] != y.shape[0]:
        raise UnlearnInterpError(
            f"linear_cka needs the same inputs on both sides, got {x.shape[0]} and {y.shape[0]} rows"
        )
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    if n * (d1 * d2 + d1 * d1 + d2 * d2) <= n * n * (d1 + d2):  # cost of each form's products
        cross, self_x, self_y = y.T @ x, x.T @ x, y.T @ y
        numerator = cross.pow(2).sum()
    else:
        self_x, self_y = x @ x.T, y @ y.T
        numerator = (self_x * self_y).sum()
    denominator = torch.linalg.matrix_norm(self_x) * torch.linalg.matrix_norm(self_y)
    return float(numerator / denominator)


def _centred(rows: Tensor, name: str) -> Float[Tensor, "n d"]:
    """``rows`` as float64 with each column's mean removed, after checking it can be compared."""
    if rows.ndim != 2:
        raise UnlearnInterpError(
            f"linear_cka: {name} must be [n, d], got shape {tuple(rows.shape)}"
        )
    if rows.shape[0] < 2:
        raise UnlearnInterpError(
            f"linear_cka: {name} has {rows.shape[0]} rows; it needs at least 2"
        )
    rows = rows.detach().to("cpu", torch.float64)
    if not torch.isfinite(rows).all():
        raise UnlearnInterpError(f"linear_cka: {name} holds NaN or infinite values")
    rows = rows - rows.mean(dim=0, keepdim=True)
    if not rows.abs().amax() > 0:
        raise UnlearnInterpError(
            f"linear_cka: every row of {name} is the same, so CKA is undefined"
        )
    return rows


def mean_cosine(x: Float[Tensor, "n d"], y: Float[Tensor, "n d"]) -> float:
    """Mean over rows of the cosine between ``x[i]`` and ``y[i]``, in float64."""
    if x.shape != y.shape:
        raise UnlearnInterpError(
            f"mean_cosine: shapes {tuple(x.shape)} and {tuple(y.shape)} differ"
        )
    x, y = x.double(), y.double()
    return float(torch.nn.functional.cosine_similarity(x, y, dim=-1).mean())


def representation_similarity(
    model: Model,
    variants: Sequence[Variant],
    prompts: Mapping[str, Sequence[str]],
    *,
    reference: str = "base",
    layers: Sequence[int] | None = None,
    positions: Positions = "last",
    batch_size: int = 16,
    max_len: int | None = None,
) -> pd.DataFrame:
    """Per variant, prompt set and layer: linear CKA and mean cosine to the ``reference`` variant.

    Columns: ``variant, prompt_set, layer, cka, mean_cos, n_tokens``. ``prompts`` maps a set
    name (``"forget"``, ``"retain"``) to its prompts; ``positions`` picks the tokens compared
    (``"last"`` real token of each prompt, ``"all"`` real tokens, or a token index); layer ``l``
    is the residual stream after block ``l``. The reference must be among ``variants`` (its rows
    read 1 and 1). Each variant runs one forward pass per batch. The reference's residual
    streams and one other variant's are held at a time (float32, CPU: ``2 x n_tokens x
    n_layers x d_model`` floats), since CKA needs every token at once; with ``positions="all"``
    on a large model, pass fewer ``layers`` or prompts.

    >>> sim = representation_similarity(model, [base, rmu], {"forget": f, "retain": r},
    ...                                 layers=[2, 3])                  # doctest: +SKIP
    """
    check_variant_names(variants, reference)
    if not isinstance(prompts, Mapping) or not prompts:
        raise UnlearnInterpError("prompts must map at least one prompt-set name to its prompts")
    layers = layers_or_all(model, layers)
    settings = (layers, positions, batch_size, max_len)
    reference_variant = next(v for v in variants if v.name == reference)
    rows = []
    for set_name, texts in prompts.items():
        reference_rows = _collect_rows(model, reference_variant, texts, *settings)
        for variant in variants:
            if variant.name == reference:
                own = reference_rows
            else:
                own = _collect_rows(model, variant, texts, *settings)
            rows += _similarity_rows(variant.name, set_name, layers, reference_rows, own)
            del own  # hold at most two variants' streams
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _collect_rows(
    model: Model,
    variant: Variant,
    prompts: Sequence[str],
    layers: list[int],
    positions: Positions,
    batch_size: int,
    max_len: int | None,
) -> Rows:
    """``variant``'s residual stream after each of ``layers`` at the selected tokens of every
    prompt, in prompt order: one ``[n_tokens, d_model]`` float32 CPU tensor per layer."""
    kept: list[list[Tensor]] = [[] for _ in layers]

    def keep(i: int, rows: Tensor) -> None:
        kept[i].append(rows.detach().float().cpu())

    for start, batch in iter_batches(model, prompts, batch_size, max_len, "similarity"):
        select = select_positions(batch, positions, first_prompt=start)
        capture_resid(model, batch, layers, select, variant, keep)
    return [torch.cat(parts) for parts in kept]


def _similarity_rows(
    variant: str, prompt_set: str, layers: list[int], reference: Rows, own: Rows
) -> list[dict]:
    """One row per layer: CKA and mean cosine of ``own`` to ``reference``."""
    return [
        {
            "variant": variant,
            "prompt_set": prompt_set,
            "layer": layer,
            "cka": linear_cka(reference[i], own[i]),
            "mean_cos": mean_cosine(reference[i], own[i]),
            "n_tokens": int(own[i].shape[0]),
        }
        for i, layer in enumerate(layers)
    ]


__all__ = ["linear_cka", "mean_cosine", "representation_similarity"]
