"""Fine-tuning attacks: train a (variant of a) model on some text and watch what comes back.

* :func:`finetune_curve` applies a :class:`~unlearn_interp.variants.Variant`, trains the model in
  place with next-token loss on ``texts`` (AdamW through :func:`training.trainable`; the forward
  pass through :mod:`unlearn_interp.activations`), calls the caller's ``evaluate(model)`` at step 0,
  every ``eval_every`` steps and at the last step, and returns one row per evaluation. The model's
  weights are always put back exactly as they were on exit, after an error too.
* :func:`relearning_attack` ("retraining on T", Deeb & Roger 2024): fine-tune on text about the
  held-out half T of the forget facts and score multiple-choice accuracy on every evaluation set
  (V above all: facts the training text never states) over the steps.
* :func:`benign_finetune` (Lucki et al. 2024): the same schedule on retain text only.
* :func:`lr_grid`: one run per learning rate, concatenated with an ``lr`` column (grids are
  reported whole, never only their best point).

Batches are drawn with ``cfg.seed``: each pass over ``texts`` is a fresh seeded permutation,
``batch_size`` consecutive texts per step, so a run is deterministic and covers every text
equally often. The loss is the mean next-token cross-entropy in float32 over real tokens (a
token counts when it and the token before it are not padding).

    >>> cfg = FinetuneConfig(steps=50, lr=1e-4, params="mlp_out", eval_every=10)     # doctest: +SKIP
    >>> curve = relearning_attack(org.model, rmu, t_docs, {"V": v_items}, cfg,
    ...                           {"mode": "continuation", "prompt_template": org.qa_template})  # doctest: +SKIP
    >>> curve.pivot(index="step", columns="task", values="accuracy")                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from unlearn_interp import activations, models, training
from unlearn_interp.checks import check_int
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import accuracy_table
from unlearn_interp.models import Model
from unlearn_interp.training import check_texts, next_token_loss, text_batches
from unlearn_interp.variants import Variant, applied, restored_weights, snapshot_weights

PARAMS = ("all", "mlp_out")
Evaluate = Callable[[Model], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune: ``steps`` optimiser steps of ``batch_size`` texts (cut to ``max_len``
    tokens) at learning rate ``lr`` (AdamW, no weight decay), training every parameter
    (``params="all"``) or only the MLP output matrices of every block (``"mlp_out"``, the
    tensors RMU edits); evaluated every ``eval_every`` steps; batches drawn with ``seed``."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8
    max_len: int = 128
    params: str = "all"
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("steps", "batch_size", "max_len", "eval_every"):
            check_int(getattr(self, field), f"FinetuneConfig.{field}", minimum=1)
        check_int(self.seed, "FinetuneConfig.seed", minimum=0)
        check_lr(self.lr)
        if self.params not in PARAMS:
            raise UnlearnInterpError(
                f"FinetuneConfig.params must be 'all' or 'mlp_out', got {self.params!r}"
            )


def check_lr(lr: Any) -> float:
    """``lr`` when it is a positive finite number, else one sentence saying so."""
    number = isinstance(lr, int | float) and not isinstance(lr, bool)
    if not number or not math.isfinite(lr) or lr <= 0:
        raise UnlearnInterpError(f"FinetuneConfig.lr must be a positive finite number, got {lr!r}")
    return float(lr)


def trained_names(model: Model, params: str) -> list[str]:
    """The parameters a run with ``params`` trains: every one (``"all"``) or every block's MLP
    output matrix (``"mlp_out"``)."""
    if params == "mlp_out":
        return [models.mlp_out_param(layer) for layer in range(models.n_layers(model))]
    if params == "all":
        return [name for name, _ in model.named_parameters()]
    raise UnlearnInterpError(f"params must be 'all' or 'mlp_out', got {params!r}")


def finetune_curve(
    model: Model,
    variant: Variant | None,
    texts: Sequence[str],
    cfg: FinetuneConfig,
    evaluate: Evaluate,
) -> pd.DataFrame:
    """Fine-tune ``variant`` (None: the model as it is) on ``texts`` and evaluate along the way.

    Returns one row per evaluation (step 0, every ``cfg.eval_every`` steps and the last step):
    ``step`` and the metrics ``evaluate(model)`` returned. Training happens in place, but on
    exit (an error or ``KeyboardInterrupt`` included) every parameter is exactly as it was
    before the call; a NaN or infinite loss raises one sentence.

    >>> curve = finetune_curve(model, rmu, t_docs, FinetuneConfig(steps=20),
    ...                        lambda m: {"loss": evaluation.retain_loss(m, t_docs)})  # doctest: +SKIP
    """
    texts = check_texts(texts)
    names = trained_names(model, cfg.params)
    rows = []
    # The snapshot is taken with the variant applied, so it is also trainable's entry copy.
    with applied(variant, model), restored_weights(model, names) as entry:
        rows.append(_evaluated(model, 0, evaluate))
        with training.trainable(model, names, lr=cfg.lr, entry=entry) as optimizer:
            batches = text_batches(texts, cfg.batch_size, cfg.seed)
            for step in range(1, cfg.steps + 1):
                _train_step(model, optimizer, next(batches), cfg.max_len, step)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    rows.append(_evaluated(model, step, evaluate))
    return pd.DataFrame(rows)


def finetuned_variant(
    model: Model, variant: Variant, texts: Sequence[str], cfg: FinetuneConfig, name: str
) -> Variant:
    """``variant`` fine-tuned on ``texts`` as :func:`finetune_curve` trains it, kept as a
    :class:`Variant` called ``name`` holding the trained tensors (every parameter ``cfg.params``
    trains) on top of ``variant``'s hooks; the model is as it was afterwards. What lets an
    analysis look inside a model after an attack.

    >>> relearned = finetuned_variant(model, rmu, t_docs, FinetuneConfig(steps=50), "relearned")  # doctest: +SKIP
    """
    names = trained_names(model, cfg.params)
    trained: dict[str, Tensor] = {}

    def keep_last(network: Model) -> dict[str, float]:
        trained.clear()
        trained.update(snapshot_weights(network, names))
        return {}

    finetune_curve(model, variant, texts, dataclasses.replace(cfg, eval_every=cfg.steps), keep_last)
    return dataclasses.replace(variant, name=name, weights={**variant.weights, **trained})


def _train_step(
    model: Model, optimizer: torch.optim.Optimizer, texts: list[str], max_len: int, step: int
) -> None:
    batch = activations.encode_within_context(model, texts, max_len)
    loss = next_token_loss(model, batch)
    training.check_finite(loss, f"the fine-tuning loss at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _evaluated(model: Model, step: int, evaluate: Evaluate) -> dict[str, Any]:
    with torch.no_grad():
        metrics = dict(evaluate(model))
    if "step" in metrics:
        raise UnlearnInterpError("evaluate returned a metric named 'step', the curve's own column")
    return {"step": step, **{name: float(value) for name, value in metrics.items()}}


def relearning_attack(
    model: Model,
    variant: Variant | None,
    t_texts: Sequence[str],
    eval_sets: Mapping[str, Sequence[MCQItem]],
    cfg: FinetuneConfig,
    mcq_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Relearning on held-out facts (RTT): fine-tune ``variant`` on ``t_texts`` (documents about
    the T half of the forget facts) and score every set of ``eval_sets`` (e.g. ``{"T": ..,
    "V": .., "retain": ..}``) along the way.

    Returns one row per (evaluation step, task): ``step``, ``task``, ``accuracy``, ``n``.
    ``mcq_kwargs`` go to :func:`evaluation.accuracy_table` (for the organism ``{"mode":
    "continuation", "prompt_template": org.qa_template}``). The weights are restored on exit.
    """
    texts = check_texts(t_texts, "t_texts")
    return _accuracy_curve(model, variant, texts, eval_sets, cfg, mcq_kwargs)


def benign_finetune(
    model: Model,
    variant: Variant | None,
    retain_texts: Sequence[str],
    eval_sets: Mapping[str, Sequence[MCQItem]],
    cfg: FinetuneConfig,
    mcq_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Benign fine-tuning: :func:`relearning_attack`'s schedule on ``retain_texts`` (text that
    states no forget fact), the same rows. What it recovers, the unlearning only hid."""
    texts = check_texts(retain_texts, "retain_texts")
    return _accuracy_curve(model, variant, texts, eval_sets, cfg, mcq_kwargs)


def _accuracy_curve(
    model: Model,
    variant: Variant | None,
    texts: list[str],
    eval_sets: Mapping[str, Sequence[MCQItem]],
    cfg: FinetuneConfig,
    mcq_kwargs: Mapping[str, Any] | None,
) -> pd.DataFrame:
    if not eval_sets or any(not items for items in eval_sets.values()):
        raise UnlearnInterpError("eval_sets must name at least one non-empty list of questions")
    sizes = {task: len(items) for task, items in eval_sets.items()}
    settings = {"progress": False, **(mcq_kwargs or {})}

    def evaluate(m: Model) -> dict[str, float]:
        table = accuracy_table(m, [Variant("model")], eval_sets, **settings)
        return dict(zip(table["task"], table["accuracy"], strict=True))

    wide = finetune_curve(model, variant, texts, cfg, evaluate)
    long = wide.melt(id_vars="step", var_name="task", value_name="accuracy")
    long["n"] = long["task"].map(sizes)
    return long.sort_values(["step", "task"], kind="stable").reset_index(drop=True)


def lr_grid(
    run: Callable[[FinetuneConfig], pd.DataFrame], cfg: FinetuneConfig, lrs: Sequence[float]
) -> pd.DataFrame:
    """``run(cfg with lr)`` for every learning rate in ``lrs``, concatenated with an ``lr``
    column first, in the order given (every point reported, not only the best).

    >>> lr_grid(lambda c: relearning_attack(model, rmu, t_docs, sets, c, kw), cfg,
    ...         [1e-5, 1e-4, 1e-3])                                             # doctest: +SKIP
    """
    if isinstance(lrs, str) or not lrs:
        raise UnlearnInterpError("lrs must be a non-empty list of learning rates")
    if len(set(lrs)) != len(lrs):
        raise UnlearnInterpError(f"lrs {list(lrs)} contains a learning rate twice")
    configs = [dataclasses.replace(cfg, lr=check_lr(lr)) for lr in lrs]
    frames = [run(c).assign(lr=c.lr) for c in configs]
    table = pd.concat(frames, ignore_index=True)
    return table[["lr", *[c for c in table.columns if c != "lr"]]]


__all__ = [
    "PARAMS",
    "FinetuneConfig",
    "benign_finetune",
    "check_lr",
    "finetune_curve",
    "lr_grid",
    "next_token_loss",
    "relearning_attack",
    "text_batches",
    "trained_names",
]
