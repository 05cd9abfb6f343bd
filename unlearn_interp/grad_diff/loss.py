"""The gradient-difference loss: ascent on the forget text's next-token loss (capped), descent
on the retain text's.

    L = -min(NLL(forget), ceiling) + retain_weight * NLL(retain)

    >>> loss, parts = grad_diff_loss(model, forget_batch, retain_batch, cfg, ceiling=10.8)  # doctest: +SKIP
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from unlearn_interp import data
from unlearn_interp.grad_diff.config import GradDiffConfig
from unlearn_interp.models import Model
from unlearn_interp.training import next_token_loss


def grad_diff_loss(
    model: Model,
    forget: data.Batch,
    retain: data.Batch,
    cfg: GradDiffConfig,
    ceiling: float,
) -> tuple[Float[Tensor, ""], dict[str, float]]:
    """The loss to minimise and its parts: ``forget_loss`` and ``retain_loss`` (mean
    next-token NLL over real tokens, float32) and whether the ceiling held the forget term."""
    forget_nll = next_token_loss(model, forget)
    retain_nll = next_token_loss(model, retain)
    capped = forget_nll.clamp(max=ceiling)
    loss = -capped + cfg.retain_weight * retain_nll
    parts = {
        "forget_loss": float(forget_nll.detach()),
        "retain_loss": float(retain_nll.detach()),
        "at_ceiling": float(forget_nll.detach() >= ceiling),
    }
    return loss, parts
