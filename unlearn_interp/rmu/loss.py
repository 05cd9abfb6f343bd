"""The pieces of the RMU algorithm: control vectors, the data schedule, the loss and its metrics.

The loss is the reference's, exactly (docs/methods.md, "RMU")::

    L = forget_term + alpha_t * retain_term
      = mse(h_upd(x_F), c_t * u_t) + alpha_t * mse(h_upd(x_R), h_frz(x_R))

:func:`forget_term` and :func:`retain_term` are the two halves the training step back-propagates
one after the other (so only one graph is alive at a time); :func:`rmu_loss` composes them.

>>> [schedule(i, 2) for i in range(4)]
[(0, 0), (1, 0), (0, 1), (1, 1)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.rmu.config import CONTROL_VECTOR_KINDS

# ---------------------------------------------------------------------------------------------
# Control vectors and the data schedule
# ---------------------------------------------------------------------------------------------


def make_control_vectors(
    n_topics: int, d_model: int, kind: str = "uniform", seed: int = 42
) -> Float[Tensor, "n_topics d_model"]:
    """One unit control vector per topic, from a generator seeded by ``seed`` (float32, CPU).

    ``"uniform"`` draws each coordinate in [0, 1) as the reference does (so ``u`` lies in the
    positive orthant, cosine ~0.87 with the all-ones direction); ``"gaussian"`` draws N(0, 1).

    >>> u = make_control_vectors(2, 4096)
    >>> u.shape, bool(torch.allclose(u.norm(dim=-1), torch.ones(2)))
    (torch.Size([2, 4096]), True)
    """
    if kind not in CONTROL_VECTOR_KINDS:
        raise UnlearnInterpError(f"control vector kind must be one of {CONTROL_VECTOR_KINDS}")
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand if kind == "uniform" else torch.randn
    vectors = torch.stack([draw(d_model, generator=generator) for _ in range(n_topics)])
    return vectors / vectors.norm(dim=-1, keepdim=True)


def schedule(step: int, n_topics: int) -> tuple[int, int]:
    """``(topic, batch index)`` of training step ``step``: topics alternate, as in the reference.

    >>> [schedule(i, 2) for i in range(4)]
    [(0, 0), (1, 0), (0, 1), (1, 1)]
    """
    return step % n_topics, step // n_topics


def topic_batch(corpus: Sequence[str], index: int, batch_size: int) -> list[str]:
    """Batch ``index`` of ``corpus``: ``batch_size`` consecutive documents, wrapping around.

    >>> topic_batch(["a", "b", "c"], 1, 2)
    ['c', 'a']
    """
    start = index * batch_size
    return [corpus[(start + k) % len(corpus)] for k in range(batch_size)]


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def masked_mse(
    x: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """``F.mse_loss(x, target)`` in float32; with ``mask``, the mean over real tokens only.

    Without a mask this is exactly the reference's loss (a mean over batch, positions and
    ``d_model``, padding included). With one it is the same mean over the unmasked positions:
    ``sum(mask * (x - target)^2) / (sum(mask) * d_model)``.
    """
    x32 = x.float()
    target32 = target.float().expand_as(x32)
    if mask is None:
        return F.mse_loss(x32, target32)
    weights = mask.to(x32.dtype).unsqueeze(-1)
    return ((x32 - target32).pow(2) * weights).sum() / (weights.sum() * x32.shape[-1])


def forget_term(
    h_forget: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, " d_model"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """``mse(h_upd(x_F), c * u)``: pulls the forget activations to the target ``c * u``."""
    return masked_mse(h_forget, target, mask)


def retain_term(
    h_retain: Float[Tensor, "batch pos d_model"],
    h_retain_frozen: Float[Tensor, "batch pos d_model"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """``mse(h_upd(x_R), h_frz(x_R))``, before ``alpha``: keeps the retain activations."""
    return masked_mse(h_retain, h_retain_frozen, mask)


def rmu_loss(
    h_forget: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, " d_model"],
    h_retain: Float[Tensor, "batch pos_r d_model"],
    h_retain_frozen: Float[Tensor, "batch pos_r d_model"],
    alpha: float,
    forget_mask: Int[Tensor, "batch pos"] | None = None,
    retain_mask: Int[Tensor, "batch pos_r"] | None = None,
) -> tuple[Float[Tensor, ""], Float[Tensor, ""], Float[Tensor, ""]]:
    """``(loss, forget_loss, retain_loss)`` with ``loss = forget_loss + alpha * retain_loss``.

    ``target`` is ``c * u``. Pass the attention masks to exclude padding, ``None`` for the
    reference's unmasked mean.
    """
    forget_loss = forget_term(h_forget, target, forget_mask)
    retain_loss = retain_term(h_retain, h_retain_frozen, retain_mask)
    return forget_loss + alpha * retain_loss, forget_loss, retain_loss


# ---------------------------------------------------------------------------------------------
# Metrics over real tokens (float64)
# ---------------------------------------------------------------------------------------------


def mean_token_norm(
    h: Float[Tensor, "batch pos d_model"], mask: Int[Tensor, "batch pos"] | None = None
) -> float:
    """Mean L2 norm of the activation over tokens, in float64 (real tokens only with ``mask``).

    This is what Adaptive RMU multiplies by ``beta``.
    """
    return token_mean(h.double().norm(dim=-1), mask)


def token_mean(values: Float[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"] | None) -> float:
    """Mean of a per-token value in float64, over real tokens only when ``mask`` is given."""
    if mask is None:
        return values.double().mean().item()
    weights = mask.to(torch.float64)
    return ((values.double() * weights).sum() / weights.sum()).item()


def cos_mean(
    a: Float[Tensor, "batch pos d_model"],
    b: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    mask: Int[Tensor, "batch pos"],
) -> float:
    """Mean cosine similarity of ``a`` and ``b`` (or one vector ``b``) over real tokens, float64."""
    a64 = a.double()
    cos = F.cosine_similarity(a64, b.double().expand_as(a64), dim=-1)
    return token_mean(cos, mask)


__all__ = [
    "cos_mean",
    "forget_term",
    "make_control_vectors",
    "masked_mse",
    "mean_token_norm",
    "retain_term",
    "rmu_loss",
    "schedule",
    "token_mean",
    "topic_batch",
]
