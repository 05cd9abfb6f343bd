"""Where unlearning wrote: how much each tensor of an unlearned model differs from the base
model's, by name, block and component.

The relative change of a tensor is its Frobenius-norm difference over the base tensor's norm,
``||W_unlearned - W_base|| / ||W_base||``, in float64.

    >>> changes = weight_changes(model, unlearned.weights)                  # doctest: +SKIP
    >>> changes.groupby("block")["relative_change"].sum()                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model

COLUMNS = ("tensor", "block", "component", "numel", "base_norm", "change_norm", "relative_change")


def weight_changes(model: Model, weights: Mapping[str, Tensor]) -> pd.DataFrame:
    """One row per tensor of ``weights`` (the unlearned model's tensors that differ) against the
    model's own (the base): ``tensor``, ``block`` (-1 outside the blocks), ``component``
    (``attn``, ``mlp``, ``ln1``, ``embed``, ...), ``numel``, ``base_norm``, ``change_norm`` and
    ``relative_change`` (NaN where the base tensor is zero), largest change first."""
    params = dict(model.named_parameters())
    rows = []
    for name, value in weights.items():
        if name not in params:
            raise UnlearnInterpError(f"the unlearned weights hold {name!r}, which the model lacks")
        base = params[name].detach().to(device="cpu", dtype=torch.float64)
        delta = value.detach().to(device="cpu", dtype=torch.float64) - base
        base_norm, change_norm = float(base.norm()), float(delta.norm())
        block, component = _place(name)
        rows.append(
            {
                "tensor": name,
                "block": block,
                "component": component,
                "numel": base.numel(),
                "base_norm": base_norm,
                "change_norm": change_norm,
                "relative_change": change_norm / base_norm if base_norm > 0 else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("change_norm", ascending=False, kind="stable").reset_index(drop=True)


def block_changes(changes: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per block (every block of a model with ``n_layers``): how many of its tensors changed
    and the sum of their relative changes (0 for an untouched block)."""
    inside = changes[changes["block"] >= 0]
    summed = inside.groupby("block").agg(
        tensors_changed=("tensor", "size"), relative_change=("relative_change", "sum")
    )
    full = summed.reindex(range(n_layers), fill_value=0)
    return full.rename_axis("block").reset_index()


def _place(name: str) -> tuple[int, str]:
    """``("blocks.5.mlp.W_out")`` -> ``(5, "mlp")``; ``"embed.W_E"`` -> ``(-1, "embed")``."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return -1, parts[0]


__all__ = ["COLUMNS", "block_changes", "weight_changes"]
