"""Training a gradient-difference unlearning run in place.

>>> result = train_grad_diff(model, forget_docs, retain_docs, GradDiffConfig(steps=100))  # doctest: +SKIP
>>> result.save("runs/grad_diff")                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from unlearn_interp import activations, models, training
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.grad_diff.config import GradDiffConfig
from unlearn_interp.grad_diff.loss import grad_diff_loss
from unlearn_interp.models import Model
from unlearn_interp.training import UnlearningResult, check_texts, text_batches
from unlearn_interp.variants import snapshot_weights

METHOD = "grad_diff"


def trained_names(model: Model, cfg: GradDiffConfig) -> list[str]:
    """The parameters ``cfg`` trains, by name."""
    if cfg.params == "all":
        return [name for name, _ in model.named_parameters()]
    layers = range(models.n_layers(model)) if cfg.layers is None else cfg.layers
    for layer in layers:
        models.check_layer(model, layer, "GradDiffConfig.layers")
    kinds = ("W_out",) if cfg.params == "mlp_out" else ("W_in", "W_gate", "W_out")
    params = dict(model.named_parameters())
    names = [f"blocks.{layer}.mlp.{kind}" for layer in layers for kind in kinds]
    return [name for name in names if name in params]  # W_gate only in gated MLPs


def train_grad_diff(
    model: Model,
    forget: Sequence[str],
    retain: Sequence[str],
    cfg: GradDiffConfig,
    progress: bool = True,
) -> UnlearningResult:
    """Unlearn ``forget`` by gradient difference, keeping ``retain``; trains ``model`` in place
    (the returned result holds the base and unlearned values of what trained). A NaN loss is
    one sentence and leaves the model as it was."""
    forget, retain = check_texts(forget, "forget"), check_texts(retain, "retain")
    names = trained_names(model, cfg)
    if not names:
        raise UnlearnInterpError("GradDiffConfig trains no parameter of this model")
    ceiling = cfg.max_forget_loss or math.log(models.d_vocab(model))
    base = snapshot_weights(model, names)
    rows = []
    forget_batches = text_batches(forget, cfg.batch_size, cfg.seed)
    retain_batches = text_batches(retain, cfg.batch_size, cfg.seed + 1)
    with training.trainable(model, names, lr=cfg.lr, entry=base) as optimizer:
        for step in tqdm(range(cfg.steps), desc="grad_diff", disable=not progress):
            forget_batch = activations.encode_within_context(
                model, next(forget_batches), cfg.max_len
            )
            retain_batch = activations.encode_within_context(
                model, next(retain_batches), cfg.max_len
            )
            loss, parts = grad_diff_loss(model, forget_batch, retain_batch, cfg, ceiling)
            training.check_finite(loss, f"the gradient-difference loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rows.append({"step": step, "loss": float(loss.detach()), **parts})
    unlearned = snapshot_weights(model, names)
    return UnlearningResult(METHOD, cfg.to_dict(), base, unlearned, pd.DataFrame(rows))
