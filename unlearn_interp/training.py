"""Training a few tensors of a model in place: what RMU, Adaptive RMU and any fine-tuning or
relearning attack share.

* :func:`trainable` scopes ``requires_grad`` to the named tensors, builds their optimiser, and
  puts the tensors back to their values at entry if anything inside raises (a NaN loss, a
  ``KeyboardInterrupt``), so a failed run never leaves a half-trained model behind.
* :func:`frozen_blocks` runs blocks ``start..stop-1`` with saved tensors in place of the trained
  ones (a frozen copy of the model through ``functional_call``, never a second model in memory).
* :func:`check_finite` turns a NaN or infinite loss into one sentence.

    >>> names = [models.mlp_out_param(l) for l in (5, 6, 7)]             # doctest: +SKIP
    >>> with trainable(model, names, lr=1e-3) as optimizer:              # doctest: +SKIP
    ...     loss = my_loss(model); loss.backward(); optimizer.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlearn_interp import activations
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import get_param, restore_weights, snapshot_weights


@contextlib.contextmanager
def trainable(
    model: Model,
    names: Sequence[str],
    lr: float,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    entry: Mapping[str, Tensor] | None = None,
) -> Iterator[torch.optim.Optimizer]:
    """Inside: only the parameters ``names`` require grad, and an AdamW over them is yielded.
    On exit every ``requires_grad`` flag is as it was and the gradients are freed; after an
    error the named parameters are also back at their values at entry. ``entry``: a copy of
    those values the caller already keeps (RMU's base weights, a ``restored_weights``
    snapshot), restored from instead of a copy of its own: one copy of the trained tensors
    less (for an all-parameter fine-tuning, one copy of the model)."""
    for name in names:
        get_param(model, name)  # one sentence for a name the model lacks
    if entry is not None:
        check_holds_exactly(entry, names, "entry")
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    entry = snapshot_weights(model, names) if entry is None else entry
    for name, p in params.items():
        p.requires_grad_(name in names)
    trained = [params[name] for name in names]
    optimizer = torch.optim.AdamW(trained, lr=lr, eps=eps, weight_decay=weight_decay)
    try:
        yield optimizer
    except BaseException:
        restore_weights(model, entry)
        raise
    finally:
        for p in trained:
            p.grad = None
        for name, p in params.items():
            p.requires_grad_(flags[name])


def check_holds_exactly(copy: Mapping[str, Tensor], names: Sequence[str], what: str) -> None:
    """One sentence unless the caller's ``copy`` (called ``what``) holds exactly ``names``."""
    if set(copy) != set(names):
        raise ValueError(f"{what} holds {sorted(copy)}, not the trained tensors {sorted(names)}")


def frozen_blocks(
    model: Model,
    frozen: Mapping[str, Tensor],
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    stop: int,
    attention_mask: Int[Tensor, "batch pos"] | None,
) -> Float[Tensor, "batch pos d_model"]:
    """Blocks ``start..stop-1`` on ``resid`` with ``frozen`` (name -> tensor, e.g. the base
    weights) in place of the model's own tensors: the frozen model's residual stream after
    block ``stop - 1``, without a gradient."""
    with torch.no_grad():
        return activations.run_blocks(
            model, resid, start=start, stop=stop, attention_mask=attention_mask, weights=frozen
        )


def check_finite(loss: Tensor, where: str, advice: str = "lower the learning rate") -> None:
    """Raise one sentence when ``loss`` is NaN or infinite (``where`` says which loss)."""
    if not torch.isfinite(loss):
        raise UnlearnInterpError(f"{where} is {loss.item()}; {advice}")


__all__ = ["check_finite", "check_holds_exactly", "frozen_blocks", "trainable"]
