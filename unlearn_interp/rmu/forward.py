"""RMU's truncated forward passes: the residual stream after block ``layer``, computed cheaply.

* blocks before the first updated layer run once per batch, without gradient (:meth:`prefix`);
* only blocks ``first..layer`` run with gradient (:meth:`suffix`), and nothing after ``layer``;
  with ``recompute`` each of them runs under activation checkpointing (``run_blocks``'
  ``recompute``): only block inputs are kept, and the backward pass rebuilds one block's graph
  at a time (same weights bitwise, less memory, one more forward pass of those blocks);
* the frozen model is the same model with the saved base tensors swapped in for one no-grad pass
  (:meth:`frozen_suffix`, through ``training.frozen_blocks``), never a second copy of the model.

>>> fwd = SplitForward(model, first=5, layer=7, base=base_weights)    # doctest: +SKIP
>>> batch = fwd.encode(texts, max_len=512)                            # doctest: +SKIP
>>> h, h_frozen = fwd.suffix(fwd.prefix(batch), batch), fwd.frozen_suffix(fwd.prefix(batch), batch)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import activations, data, models, training
from unlearn_interp.models import Model


@dataclasses.dataclass(frozen=True)
class SplitForward:
    """Blocks ``first..layer`` of ``model``, on top of a no-grad prefix; ``base`` holds the
    frozen model's values of the trained tensors (name -> tensor); ``recompute``: the trained
    blocks keep only their inputs for the backward pass, which reruns them (a memory/time
    trade-off; refused while forward hooks are installed, since they would fire twice)."""

    model: Model
    first: int  # the first block whose weights train
    layer: int  # the steered layer: the residual stream after this block is the output
    base: Mapping[str, Tensor]
    recompute: bool = False

    def encode(self, texts: list[str], max_len: int) -> data.Batch:
        """``texts`` tokenised, cut at ``max_len`` tokens, on the model's device."""
        batch = activations.encode_within_context(self.model, texts, max_len)
        return batch.to(models.model_device(self.model))

    def prefix(self, batch: data.Batch) -> Float[Tensor, "batch pos d_model"]:
        """Residual stream entering block ``first`` (no gradient: nothing before it trains)."""
        with torch.no_grad():
            return activations.run_blocks(
                self.model, batch.tokens, stop=self.first, attention_mask=batch.attention_mask
            )

    def suffix(
        self, resid: Float[Tensor, "batch pos d_model"], batch: data.Batch
    ) -> Float[Tensor, "batch pos d_model"]:
        """Blocks ``first..layer`` on top of the prefix: the residual stream after ``layer``."""
        return activations.run_blocks(
            self.model,
            resid,
            start=self.first,
            stop=self.layer + 1,
            attention_mask=batch.attention_mask,
            recompute=self.recompute,
        )

    def frozen_suffix(
        self, resid: Float[Tensor, "batch pos d_model"], batch: data.Batch
    ) -> Float[Tensor, "batch pos d_model"]:
        """The same blocks with the base tensors swapped in: the frozen model, no gradient."""
        return training.frozen_blocks(
            self.model, self.base, resid, self.first, self.layer + 1, batch.attention_mask
        )


__all__ = ["SplitForward"]
