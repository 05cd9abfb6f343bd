"""Noise sensitivity of the layers after ``l`` (Dang et al., Adaptive RMU): how much the rest of
the network amplifies a random push of the residual stream after block ``l``.

``Phi = ||g(h + xi) - g(h)||^2 / ||g(h)||^2`` with ``h`` the residual stream after block ``l`` and
``g`` the blocks after it (:func:`activations.after_blocks`), one sweep point per layer on
:func:`run_sweep`, so a long run writes as it goes and resumes.

    >>> noise_sensitivity(model, forget_prompts, noise_scale=[0.5, 1.0])       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.activations import (
    Positions,
    after_blocks,
    iter_batches,
    run_blocks,
    select_positions,
)
from unlearn_interp.analysis.profile import layers_or_all
from unlearn_interp.analysis.sweeps import Scalar, run_sweep
from unlearn_interp.checks import check_int
from unlearn_interp.data import Batch
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.models import Model


def noise_sensitivity(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    noise_scale: float | Sequence[float] = 0.5,
    n_samples: int = 4,
    noise: str = "absolute",
    output: str = "resid",
    positions: Positions = "all",
    seed: int = 0,
    batch_size: int = 16,
    max_len: int | None = None,
    table_path: str | os.PathLike | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Noise sensitivity of the layers after ``l`` (Dang et al.): ``Phi = ||g(h + xi) - g(h)||^2
    / ||g(h)||^2`` with ``h`` the residual stream after block ``l`` and ``g`` the blocks after it.

    ``output="resid"`` (default) takes ``g(h)`` to be the final residual stream (after the last
    block, before the final LayerNorm: "the output of the layers after l"); ``"logits"`` adds
    the final LayerNorm and unembedding. ``noise="absolute"`` (default) draws the same
    ``xi ~ N(0, noise_scale^2 I)`` at every layer, which is what a steering target ``c * u`` of
    fixed size is: deeper layers, whose activations are larger, are then less sensitive, so they
    need a larger ``c``. ``noise="relative"`` scales ``xi`` to each token's own norm,
    ``xi = noise_scale * ||h|| * z / sqrt(d_model)`` (``E||xi||^2 = noise_scale^2 ||h||^2``; at
    the last layer with ``"resid"``, ``Phi`` is then about ``noise_scale^2``). ``Phi`` is the
    mean over the selected real tokens (padding masked) of the per-token ratio, one row per
    ``layer``, ``noise_scale`` and noise ``sample``; the same draws serve every scale.
    ``executor`` runs the layers (default: here, one after another; see :func:`run_sweep`).

    >>> noise_sensitivity(model, forget_prompts, noise_scale=[0.5, 1.0])       # doctest: +SKIP
    """
    scales = _checked_scales(noise_scale, n_samples, noise, output)
    layers = layers_or_all(model, layers)
    measure = functools.partial(
        _phi_rows,
        model,
        prompts,
        scales=scales,
        n_samples=n_samples,
        noise=noise,
        output=output,
        positions=positions,
        seed=seed,
        batch_size=batch_size,
        max_len=max_len,
    )
    settings = {
        "scales": scales,
        "n_samples": n_samples,
        "noise": noise,
        "output": output,
        "seed": seed,
        "positions": positions,
        "n_prompts": len(prompts),
        "max_len": max_len,
    }
    return run_sweep(
        [{"layer": layer} for layer in layers],
        measure,
        table_path=table_path,
        settings=settings,
        desc="noise sensitivity",
        progress=progress,
        executor=executor,
    )


def _checked_scales(
    noise_scale: float | Sequence[float], n_samples: int, noise: str, output: str
) -> list[float]:
    """The noise scales as a list of floats, after checking every setting of the sweep."""
    if output not in ("resid", "logits"):
        raise UnlearnInterpError(f"output must be 'resid' or 'logits', got {output!r}")
    if noise not in ("relative", "absolute"):
        raise UnlearnInterpError(f"noise must be 'relative' or 'absolute', got {noise!r}")
    check_int(n_samples, "n_samples", minimum=1)
    scales = [float(s) for s in ([noise_scale] if np.isscalar(noise_scale) else noise_scale)]
    if not scales or any(not s >= 0 for s in scales):
        raise UnlearnInterpError(f"noise_scale must be >= 0, got {noise_scale!r}")
    return scales


def _phi_rows(
    model: Model,
    prompts: Sequence[str],
    point: Mapping[str, Scalar],
    *,
    scales: list[float],
    n_samples: int,
    noise: str,
    output: str,
    positions: Positions,
    seed: int,
    batch_size: int,
    max_len: int | None,
) -> list[dict[str, Any]]:
    """One sweep point: ``Phi`` at ``point["layer"]`` per noise scale and sample."""
    layer = int(point["layer"])
    sums = torch.zeros(len(scales), n_samples, dtype=torch.float64)
    count = 0
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    for start, batch in iter_batches(model, prompts, batch_size, max_len, f"Phi, layer {layer}"):
        select = select_positions(batch, positions, first_prompt=start)
        sums += _phi_sums(model, batch, select, layer, scales, n_samples, noise, output, generator)
        count += int(select.sum())
    return [
        {"noise_scale": s, "sample": k, "phi": float(sums[i, k] / count), "n_tokens": count}
        for i, s in enumerate(scales)
        for k in range(n_samples)
    ]


def _phi_sums(
    model: Model,
    batch: Batch,
    select: Bool[Tensor, "batch pos"],
    layer: int,
    scales: list[float],
    n_samples: int,
    noise: str,
    output: str,
    generator: torch.Generator,
) -> Float[Tensor, "n_scales n_samples"]:
    """Per-token ``||g(h + xi) - g(h)||^2 / ||g(h)||^2`` summed over the selected tokens."""

    def after(resid: Tensor) -> Tensor:  # g: the blocks after `layer` (and the unembed)
        return after_blocks(model, resid, layer + 1, batch.attention_mask, output)[select].double()

    sums = torch.zeros(len(scales), n_samples, dtype=torch.float64)
    with torch.no_grad():
        h = run_blocks(model, batch.tokens, stop=layer + 1, attention_mask=batch.attention_mask)
        clean = after(h)
        clean_sq = clean.pow(2).sum(-1).clamp_min(1e-30)
        token_scale = _token_scale(model, h, noise)
        for sample in range(n_samples):
            z = torch.randn(h.shape, generator=generator).to(h.device, h.dtype)
            for i, noise_scale in enumerate(scales):
                moved = after(h + noise_scale * token_scale * z)
                sums[i, sample] = ((moved - clean).pow(2).sum(-1) / clean_sq).sum().cpu()
    return sums


def _token_scale(
    model: Model, h: Float[Tensor, "batch pos d_model"], noise: str
) -> Float[Tensor, "batch pos 1"]:
    """The noise's per-token standard deviation per unit of ``noise_scale``."""
    if noise == "relative":  # per-token std such that E||xi||^2 = scale^2 ||h||^2
        return h.norm(dim=-1, keepdim=True) / math.sqrt(models.d_model(model))
    return torch.ones_like(h[..., :1])  # absolute: the same N(0, scale^2 I) at every layer


__all__ = ["noise_sensitivity"]
