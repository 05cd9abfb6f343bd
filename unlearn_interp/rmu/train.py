"""The RMU training loop: check the inputs, build the trainer's state, take ``cfg.steps`` steps.

Step ``i`` uses topic ``i % n_topics`` and that topic's batch ``i // n_topics`` (consecutive
documents), as the reference does. Only the trained tensors require grad (``training.trainable``,
which also puts the base weights back after any error), and the forget and retain terms are
back-propagated one after the other, so only one of their graphs is alive at a time.

The frozen model's pass over the forget batch feeds only two history columns
(``frozen_forget_norm``, ``cos_forget_frozen``), never the loss, so it runs on every
``cfg.frozen_forget_every``-th batch of each topic and on each topic's last step; the other rows
hold NaN in those two columns (plots and means skip NaN). Trained weights are bitwise the same
for any ``frozen_forget_every``: the pass runs without gradient and touches no state. Why 10 by
default: the pass is 3 of the ~30 block passes of a step (about 7-10% of it in
``benchmarks/bench_rmu.py``); every 10th batch costs ~1% and still leaves 9 points per topic in
a 150-step, two-topic run, the final ones included. The frozen norm is a property of the batch,
not of training, so sampling it loses no trend.

>>> cfg = RMUConfig(layer=7, steps=150)                                      # doctest: +SKIP
>>> result = train_rmu(model, forget=[bio, cyber], retain=[wiki, wiki], cfg=cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlearn_interp import data, models, training
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.rmu.config import Number, RMUConfig
from unlearn_interp.rmu.forward import SplitForward
from unlearn_interp.rmu.loss import (
    cos_mean,
    forget_term,
    make_control_vectors,
    mean_token_norm,
    retain_term,
    schedule,
    topic_batch,
)
from unlearn_interp.rmu.result import RMUResult
from unlearn_interp.variants import get_param, snapshot_weights

log = logging.getLogger(__package__)  # "unlearn_interp.rmu", the name its messages always had

# ---------------------------------------------------------------------------------------------
# What one step records
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One row of ``RMUResult.history``: what step ``step`` minimised and where it left the model."""

    step: int
    topic: int
    batch: int
    forget_loss: float  # mse(h_upd(x_F), c u), unscaled
    retain_loss: float  # mse(h_upd(x_R), h_frz(x_R)), before multiplying by alpha
    loss: float  # forget_loss + alpha * retain_loss: what was minimised
    forget_norm: float  # mean ||h_upd(x_F)|| over real tokens
    frozen_forget_norm: float  # mean ||h_frz(x_F)|| over real tokens; NaN off diagnostic steps
    cos_forget_frozen: float  # NaN off diagnostic steps (RMUConfig.frozen_forget_every)
    cos_forget_u: float
    cos_retain_frozen: float

    def as_row(self) -> dict[str, Number]:
        """The history row, keyed by :data:`HISTORY_COLUMNS`."""
        return dataclasses.asdict(self)


HISTORY_COLUMNS = tuple(field.name for field in dataclasses.fields(StepRecord))


@dataclasses.dataclass(frozen=True)
class StepTensors:
    """What one step computed on a topic's forget batch and retain batch."""

    step: int
    topic: int
    batch: int
    alpha: float
    target: Float[Tensor, " d_model"]  # c * u of the topic
    forget_loss: Float[Tensor, ""]
    retain_loss: Float[Tensor, ""]
    h_forget: Float[Tensor, "batch pos d_model"]
    h_forget_frozen: Float[Tensor, "batch pos d_model"] | None  # None: no diagnostics this step
    h_retain: Float[Tensor, "batch pos_r d_model"]
    h_retain_frozen: Float[Tensor, "batch pos_r d_model"]
    forget_mask: Int[Tensor, "batch pos"]  # attention masks: the metrics count real tokens only
    retain_mask: Int[Tensor, "batch pos_r"]

    def record(self) -> StepRecord:
        """The history row: losses as floats, norms and cosines as float64 token means."""
        forget, retain = self.forget_loss.item(), self.retain_loss.item()
        h_f, f_frozen, f_mask = self.h_forget, self.h_forget_frozen, self.forget_mask
        nan = float("nan")
        with torch.no_grad():
            return StepRecord(
                step=self.step,
                topic=self.topic,
                batch=self.batch,
                forget_loss=forget,
                retain_loss=retain,
                loss=forget + self.alpha * retain,
                forget_norm=mean_token_norm(h_f, f_mask),
                frozen_forget_norm=nan if f_frozen is None else mean_token_norm(f_frozen, f_mask),
                cos_forget_frozen=nan if f_frozen is None else cos_mean(h_f, f_frozen, f_mask),
                cos_forget_u=cos_mean(h_f, self.target, f_mask),
                cos_retain_frozen=cos_mean(self.h_retain, self.h_retain_frozen, self.retain_mask),
            )


# ---------------------------------------------------------------------------------------------
# The trainer's state and its step
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RMUTrainer:
    """The fixed state of one RMU run: the split forward, the corpora, per-topic settings."""

    forward: SplitForward
    forget: Sequence[Sequence[str]]
    retain: Sequence[Sequence[str]]
    cfg: RMUConfig
    names: list[str]  # the trained tensors, blocks.{l}.mlp.W_out for l in cfg.update_layers
    alphas: list[float]
    forget_len: list[int]  # per topic, within the model's context
    retain_len: int
    coefficients: list[float]  # c_t: fixed, or beta * frozen forget norm (Adaptive RMU)
    targets: list[Float[Tensor, " d_model"]]  # c_t * u_t on the model's device

    def batches(self, step: int) -> tuple[int, int, data.Batch, data.Batch]:
        """``(topic, batch index, forget batch, retain batch)`` of step ``step``."""
        topic, index = schedule(step, len(self.forget))
        bs, encode = self.cfg.batch_size, self.forward.encode
        fb = encode(topic_batch(self.forget[topic], index, bs), self.forget_len[topic])
        rb = encode(topic_batch(self.retain[topic], index, bs), self.retain_len)
        return topic, index, fb, rb

    def diagnoses(self, step: int) -> bool:
        """Whether step ``step`` runs the frozen forget pass (history diagnostics only): every
        ``cfg.frozen_forget_every``-th batch of its topic, and each topic's last step."""
        n_topics = len(self.forget)
        _, index = schedule(step, n_topics)
        last = step >= self.cfg.steps - n_topics
        return last or index % self.cfg.frozen_forget_every == 0

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> StepRecord:
        """One optimiser step on topic ``step % n_topics``; returns its history row."""
        topic, index, fb, rb = self.batches(step)
        fwd, alpha = self.forward, self.alphas[topic]
        f0, r0 = fwd.prefix(fb), fwd.prefix(rb)
        f_frozen = fwd.frozen_suffix(f0, fb) if self.diagnoses(step) else None
        r_frozen = fwd.frozen_suffix(r0, rb)
        f_mask = fb.attention_mask if self.cfg.mask_padding else None
        r_mask = rb.attention_mask if self.cfg.mask_padding else None
        optimizer.zero_grad(set_to_none=True)
        # Back-propagate each term on its own, so only one graph is alive at a time; the summed
        # gradient is that of rmu_loss, forget_term + alpha * retain_term.
        h_f = fwd.suffix(f0, fb)
        forget_loss = forget_term(h_f, self.targets[topic], f_mask)
        _check_finite(forget_loss, step, topic, "forget")
        forget_loss.backward()
        h_r = fwd.suffix(r0, rb)
        retain_loss = retain_term(h_r, r_frozen, r_mask)
        _check_finite(retain_loss, step, topic, "retain")
        (alpha * retain_loss).backward()
        optimizer.step()
        return StepTensors(
            step=step,
            topic=topic,
            batch=index,
            alpha=alpha,
            target=self.targets[topic],
            forget_loss=forget_loss,
            retain_loss=retain_loss,
            h_forget=h_f,
            h_forget_frozen=f_frozen,
            h_retain=h_r,
            h_retain_frozen=r_frozen,
            forget_mask=fb.attention_mask,
            retain_mask=rb.attention_mask,
        ).record()


def _check_finite(loss: Tensor, step: int, topic: int, term: str) -> None:
    training.check_finite(
        loss,
        f"RMU step {step} (topic {topic}): the {term} loss",
        "lower lr or the steering coefficient (the model is back on its base weights)",
    )


def build_trainer(
    model: Model,
    forget: Sequence[Sequence[str]],
    retain: Sequence[Sequence[str]],
    cfg: RMUConfig,
    vectors: Float[Tensor, "n_topics d_model"],
    recompute_blocks: bool = False,
    base_weights: Mapping[str, Tensor] | None = None,
) -> RMUTrainer:
    """The trainer's state for ``model`` (checked), with its base weights saved and targets set;
    ``recompute_blocks``, ``base_weights``: see :func:`train_rmu`."""
    _check_model(model, cfg)
    n_topics = len(forget)
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    base = _base_copy(model, names, base_weights)
    forward = SplitForward(model, min(cfg.update_layers), cfg.layer, base, recompute_blocks)
    forget_len = [min(n, models.n_ctx(model)) for n in cfg.per_topic("max_len", n_topics)]
    coefficients = _coefficients(forward, forget, cfg, forget_len)
    device = models.model_device(model)
    log.info(
        "RMU: %d topics, %d steps, layer %d, updating W_out of blocks %s, coefficients %s",
        n_topics,
        cfg.steps,
        cfg.layer,
        list(cfg.update_layers),
        [round(c, 4) for c in coefficients],
    )
    return RMUTrainer(
        forward=forward,
        forget=forget,
        retain=retain,
        cfg=cfg,
        names=names,
        alphas=[float(a) for a in cfg.per_topic("alpha", n_topics)],
        forget_len=forget_len,
        retain_len=min(forget_len),
        coefficients=coefficients,
        targets=[(c * vectors[t]).to(device=device) for t, c in enumerate(coefficients)],
    )


def _base_copy(
    model: Model, names: Sequence[str], saved: Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    """The values of ``names`` now: the caller's ``saved`` copy, checked equal to them, or a
    new copy."""
    if saved is None:
        return snapshot_weights(model, names)
    training.check_holds_exactly(saved, names, "base_weights")
    if not all(_same(saved[name], get_param(model, name)) for name in names):
        raise ValueError("base_weights differs from the model's current trained tensors")
    return dict(saved)


def _same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _check_model(model: Model, cfg: RMUConfig) -> None:
    """The layers exist, a tokenizer is attached, positions are not shortformer-style."""
    models.check_layer(model, cfg.layer, "layer")
    for layer in cfg.update_layers:
        models.check_layer(model, layer, "update_layers")
    if model.tokenizer is None:
        raise UnlearnInterpError(
            "the model has no tokenizer; attach one with models.attach_tokenizer"
        )
    if models.positional_embedding_type(model) == "shortformer":
        raise UnlearnInterpError("shortformer positional embeddings are not supported by train_rmu")


def _coefficients(
    forward: SplitForward,
    forget: Sequence[Sequence[str]],
    cfg: RMUConfig,
    forget_len: list[int],
) -> list[float]:
    """Fixed ``steering_coef``, or ``beta`` times the frozen forget norm on batch 0."""
    if cfg.adaptive_beta is None:
        return [float(c) for c in cfg.per_topic("steering_coef", len(forget))]
    coefficients = []
    for topic, corpus in enumerate(forget):
        batch = forward.encode(topic_batch(corpus, 0, cfg.batch_size), forget_len[topic])
        frozen = forward.frozen_suffix(forward.prefix(batch), batch)
        mask = batch.attention_mask if cfg.mask_padding else None
        coefficients.append(cfg.adaptive_beta * mean_token_norm(frozen, mask))
    return coefficients


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train_rmu(
    model: Model,
    forget: Sequence[Sequence[str]],
    retain: Sequence[Sequence[str]],
    cfg: RMUConfig,
    control_vectors: Float[Tensor, "n_topics d_model"] | None = None,
    progress: bool = True,
    recompute_blocks: bool = False,
    base_weights: Mapping[str, Tensor] | None = None,
) -> RMUResult:
    """Unlearn ``forget`` (one corpus per topic) while keeping ``retain`` (one per topic).

    Trains ``model`` in place: only ``blocks.{l}.mlp.W_out`` for ``l`` in ``cfg.update_layers``
    change. ``control_vectors`` (``[n_topics, d_model]``, normalised here) replaces the seeded
    draw. On any error, a non-finite loss included, the model is put back on its base weights.
    Parameters' ``requires_grad`` flags are restored on exit. ``recompute_blocks``: the trained
    blocks run under activation checkpointing (their graphs are rebuilt one block at a time in
    the backward pass): bitwise the same weights and history, less memory, one more forward pass
    of those blocks per term; refused while forward hooks are installed (they would fire twice).
    A memory/time setting, not part of ``cfg`` (runs and their resume checks do not record it).
    ``base_weights``: a copy of the trained tensors' current values the caller already keeps
    (``variants.restored_weights``' snapshot), used as the frozen model's instead of a copy of
    its own (one copy of those tensors less); checked equal to the model's.

    >>> cfg = RMUConfig(layer=7, steps=150)                                      # doctest: +SKIP
    >>> result = train_rmu(model, forget=[bio, cyber], retain=[wiki, wiki], cfg=cfg)  # doctest: +SKIP
    >>> result.history[["forget_norm", "cos_retain_frozen"]].tail(1)             # doctest: +SKIP
    """
    n_topics = _check_corpora(forget, retain)
    vectors = _control_vectors(model, cfg, n_topics, control_vectors)
    trainer = build_trainer(model, forget, retain, cfg, vectors, recompute_blocks, base_weights)
    records = _run_steps(model, trainer, progress)
    return RMUResult(
        base_weights=dict(trainer.forward.base),
        unlearned_weights=snapshot_weights(model, trainer.names),
        control_vectors=vectors.cpu(),
        coefficients=torch.tensor(trainer.coefficients, dtype=torch.float64),
        config=cfg,
        history=pd.DataFrame([r.as_row() for r in records], columns=list(HISTORY_COLUMNS)),
        model_info={
            "name": models.model_name(model),
            "d_model": models.d_model(model),
            "n_layers": models.n_layers(model),
        },
    )


def _run_steps(model: Model, trainer: RMUTrainer, progress: bool) -> list[StepRecord]:
    """``cfg.steps`` optimiser steps (AdamW as the reference's: no weight decay, its eps)."""
    cfg, records = trainer.cfg, []
    with (
        training.trainable(
            model,
            trainer.names,
            lr=cfg.lr,
            eps=cfg.adam_eps,
            weight_decay=0.0,
            entry=trainer.forward.base,
        ) as optimizer,
        tqdm(total=cfg.steps, desc="RMU", disable=None if progress else True) as bar,
    ):
        for step in range(cfg.steps):
            records.append(trainer.step(optimizer, step))
            bar.set_postfix(
                forget=f"{records[-1].forget_loss:.4g}", retain=f"{records[-1].retain_loss:.3g}"
            )
            bar.update()
    return records


def _check_corpora(forget: Sequence[Sequence[str]], retain: Sequence[Sequence[str]]) -> int:
    """Number of topics, after checking both lists hold that many non-empty lists of text."""
    if not forget:
        raise UnlearnInterpError(
            "forget must hold at least one corpus (one list of texts per topic)"
        )
    if len(retain) != len(forget):
        raise UnlearnInterpError(
            f"retain must hold one corpus per forget corpus: got {len(forget)} forget and "
            f"{len(retain)} retain corpora"
        )
    for kind, corpora in (("forget", forget), ("retain", retain)):
        for topic, corpus in enumerate(corpora):
            _check_corpus(kind, topic, corpus)
    return len(forget)


def _check_corpus(kind: str, topic: int, corpus: Sequence[str]) -> None:
    if isinstance(corpus, str):
        raise UnlearnInterpError(
            f"{kind} must be a list of corpora (one list of texts per topic), but its "
            f"item {topic} is a string; wrap a single corpus as [texts]"
        )
    if len(corpus) == 0:
        raise UnlearnInterpError(f"{kind} corpus {topic} is empty")
    bad = next((i for i, text in enumerate(corpus) if not isinstance(text, str) or not text), None)
    if bad is not None:
        raise UnlearnInterpError(f"{kind} corpus {topic}, document {bad} is not a non-empty string")


def _control_vectors(
    model: Model, cfg: RMUConfig, n_topics: int, given: Tensor | None
) -> Float[Tensor, "n_topics d_model"]:
    """The seeded draw of ``cfg.control_vector``, or ``given`` checked and normalised (CPU)."""
    width = models.d_model(model)
    if given is None:
        return make_control_vectors(n_topics, width, cfg.control_vector, cfg.seed)
    if tuple(given.shape) != (n_topics, width):
        raise UnlearnInterpError(
            f"control_vectors has shape {tuple(given.shape)}, expected ({n_topics}, {width}) "
            "(one vector of d_model per topic)"
        )
    norms = given.detach().float().cpu().norm(dim=-1, keepdim=True)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise UnlearnInterpError("control_vectors contains a zero or non-finite vector")
    return given.detach().float().cpu() / norms


__all__ = [
    "HISTORY_COLUMNS",
    "RMUTrainer",
    "StepRecord",
    "StepTensors",
    "build_trainer",
    "train_rmu",
]
