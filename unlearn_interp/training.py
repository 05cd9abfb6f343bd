"""Training a few tensors of a model in place: what RMU, Adaptive RMU and any fine-tuning or
relearning attack share.

* :func:`trainable` scopes ``requires_grad`` to the named tensors, builds their optimiser, and
  puts the tensors back to their values at entry if anything inside raises (a NaN loss, a
  ``KeyboardInterrupt``), so a failed run never leaves a half-trained model behind.
* :func:`frozen_blocks` runs blocks ``start..stop-1`` with saved tensors in place of the trained
  ones (a frozen copy of the model through ``functional_call``, never a second model in memory).
* :func:`check_finite` turns a NaN or infinite loss into one sentence.
* :func:`next_token_loss` on a batch of texts, :func:`text_batches` drawn from them in a seeded
  order: what fine-tuning and the methods that train on text share.
* :class:`UnlearningResult`: what an unlearning method (other than RMU, whose result carries its
  control vectors) produced, and its files in a run directory.

    >>> names = [models.mlp_out_param(l) for l in (5, 6, 7)]             # doctest: +SKIP
    >>> with trainable(model, names, lr=1e-3) as optimizer:              # doctest: +SKIP
    ...     loss = my_loss(model); loss.backward(); optimizer.step()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from unlearn_interp import activations, artifacts, data, models
from unlearn_interp.artifacts import RunFiles
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


def text_batches(texts: Sequence[str], batch_size: int, seed: int) -> Iterator[list[str]]:
    """Endless batches of ``batch_size`` texts: seeded permutations of ``texts`` one after the
    other, cut into consecutive runs (a batch may span two passes)."""
    rng = random.Random(seed)
    pool: list[int] = []
    while True:
        while len(pool) < batch_size:
            order = list(range(len(texts)))
            rng.shuffle(order)
            pool += order
        yield [texts[i] for i in pool[:batch_size]]
        pool = pool[batch_size:]


def next_token_loss(model: Model, batch: data.Batch) -> Float[Tensor, ""]:
    """Mean float32 next-token cross-entropy over the real tokens of a left-padded batch (a
    target counts when it and the token before it are real)."""
    batch = batch.to(models.model_device(model))
    logits = activations.logits(model, batch)[:, :-1].float()
    keep = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch.tokens[:, 1:].reshape(-1), reduction="none"
    )
    weight = keep.reshape(-1).float()
    return (losses * weight).sum() / weight.sum().clamp(min=1.0)


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """``texts`` as a list when it is a non-empty sequence of strings, else one sentence."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise UnlearnInterpError(f"{what} must be a non-empty list of strings")
    return list(texts)


@dataclasses.dataclass
class UnlearningResult:
    """What an unlearning run of ``method`` produced: its settings (``config``, as recorded),
    the base and unlearned values of the tensors it trained, one row per step (``history``).
    ``Variant(method, weights=result.unlearned_weights)`` on the base model is the unlearned
    model.

    >>> result.save("runs/grad_diff")                                       # doctest: +SKIP
    """

    method: str
    config: dict[str, Any]
    base_weights: dict[str, Tensor]
    unlearned_weights: dict[str, Tensor]
    history: pd.DataFrame

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` (key ``method`` and the settings under the method's name; other keys
        kept), ``unlearned_weights.safetensors``, ``base_weights.safetensors`` and
        ``tables/<method>_history.csv``, each atomically."""
        root = Path(directory)
        path = root / RunFiles.CONFIG
        record = artifacts.read_json(path) if path.is_file() else {}
        record.update(
            {
                "method": self.method,
                self.method: self.config,
                "library_versions": artifacts.library_versions(),
            }
        )
        artifacts.write_json(path, record)
        models.save_weights(self.unlearned_weights, root / RunFiles.UNLEARNED_WEIGHTS)
        models.save_weights(self.base_weights, root / RunFiles.BASE_WEIGHTS)
        with artifacts.atomic_path(root / RunFiles.table(f"{self.method}_history")) as tmp:
            self.history.to_csv(tmp, index=False)
        return root


__all__ = [
    "UnlearningResult",
    "check_finite",
    "check_holds_exactly",
    "check_texts",
    "frozen_blocks",
    "next_token_loss",
    "text_batches",
    "trainable",
]
