"""Pretraining the organism: its config and size presets, the texts it learns from, and the
training loop (next-token loss on right-padded batches, AdamW with warm-up and cosine decay,
stopping at the first MCQ check on target).

A run is deterministic on CPU for a given seed: batches come from seeded permutations, the
order of every random draw and floating-point operation is fixed, and it always runs on
:data:`PRETRAINING_THREADS` torch threads (the last bits depend on the thread count), so the
organism does not depend on the caller's thread setting; it still depends on the CPU's
instruction set.

    >>> cfg = OrganismConfig.for_size("test")
    >>> model = initial_model(cfg, tokenizer)                          # doctest: +SKIP
    >>> pretrain(model, texts, {"hazardous": items}, cfg).steps        # doctest: +SKIP
    250
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from unlearn_interp import activations, data, evaluation, models
from unlearn_interp.checks import check_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.organism.world import World, entity_documents, neutral_documents, qa_text

log = logging.getLogger(__name__)

# Torch threads pretraining runs on, whatever the caller's setting: the cores of the machines
# the toolkit is developed and tested on (a machine with fewer is oversubscribed, not wrong).
PRETRAINING_THREADS = 2

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism; its hash (with the world's) keys the cache.

    >>> OrganismConfig.for_size("test").n_layers
    4
    """

    size: str = "demo"
    seed: int = 0
    # -- world and corpora
    entities_per_kind: int = 12  # 4 kinds x 5 attributes: 10 * this many MCQs per domain
    docs_per_entity: int = 4  # documents per entity in the forget / retain corpora
    neutral_docs: int = 48  # filler paragraphs in the retain corpus
    qa_repeats: int = 2  # copies of each question-answer line per pretraining epoch
    vocab_size: int = 1024
    # -- model (GPT-2 style)
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    # -- pretraining: next-token loss on forget + retain + question-answer text
    lr: float = 5e-3
    weight_decay: float = 0.01
    batch_size: int = 16
    warmup_steps: int = 50
    max_steps: int = 1000  # the cosine schedule's length; raise if not on target by then
    eval_every: int = 50  # MCQ check cadence; training stops at the first check on target
    target_accuracy: float = 0.95  # both domains, continuation scoring
    # -- what the pipeline should use
    rmu_layer: int = 2  # residual stream after this block; update layers rmu_layer-2..rmu_layer

    def __post_init__(self) -> None:
        positive = (
            "entities_per_kind",
            "docs_per_entity",
            "vocab_size",
            "n_layers",
            "d_model",
            "n_heads",
            "d_mlp",
            "n_ctx",
            "batch_size",
            "max_steps",
            "eval_every",
            "qa_repeats",
        )
        for name in positive:
            check_int(getattr(self, name), f"OrganismConfig.{name}", minimum=1)
        if self.entities_per_kind < 4:
            raise UnlearnInterpError(
                f"OrganismConfig.entities_per_kind must be >= 4 (four distinct choices per "
                f"question), got {self.entities_per_kind}"
            )
        if self.neutral_docs < 0 or self.warmup_steps < 0:
            raise UnlearnInterpError("OrganismConfig.neutral_docs and warmup_steps must be >= 0")
        if self.d_model % self.n_heads:
            raise UnlearnInterpError(
                f"OrganismConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0 < self.lr < 1:
            raise UnlearnInterpError(f"OrganismConfig.lr must be in (0, 1), got {self.lr}")
        if not 0 < self.target_accuracy <= 1:
            raise UnlearnInterpError(
                f"OrganismConfig.target_accuracy must be in (0, 1], got {self.target_accuracy}"
            )
        if not 0 <= self.rmu_layer < self.n_layers:
            raise UnlearnInterpError(
                f"OrganismConfig.rmu_layer {self.rmu_layer} is out of range for {self.n_layers} layers"
            )

    @classmethod
    def for_size(cls, size: str, seed: int = 0) -> OrganismConfig:
        """The preset for ``size`` ("demo" or "test")."""
        if size not in SIZES:
            raise UnlearnInterpError(f"organism size must be one of {sorted(SIZES)}, got {size!r}")
        return cls(size=size, seed=seed, **SIZES[size])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OrganismConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UnlearnInterpError(f"unknown OrganismConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    @property
    def update_layers(self) -> tuple[int, ...]:
        """The blocks whose MLP output RMU should train (``rmu_layer-2 .. rmu_layer``, clipped)."""
        return tuple(range(max(0, self.rmu_layer - 2), self.rmu_layer + 1))


SIZES: dict[str, dict[str, Any]] = {
    "demo": {},
    "test": dict(entities_per_kind=4, neutral_docs=24, vocab_size=512, d_model=64, d_mlp=256,
                 lr=1e-2, max_steps=400),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------


def pretraining_texts(world: World, cfg: OrganismConfig) -> dict[str, list[str]]:
    """The corpora the organism learns from, by name: forget, retain and question-answer text.

    The question-answer lines (both domains) teach the format continuation scoring reads; they
    are pretraining data only, so RMU must generalise from the forget prose to the questions,
    as it must from WMDP's forget corpus to WMDP's questions.
    """
    retain = entity_documents(world, "benign", cfg.docs_per_entity, cfg.seed)
    retain += neutral_documents(cfg.neutral_docs, cfg.seed)
    random.Random(f"retain-{cfg.seed}").shuffle(retain)  # RMU batches are consecutive documents
    return {
        "forget": entity_documents(world, "hazardous", cfg.docs_per_entity, cfg.seed),
        "retain": retain,
        "qa": [qa_text(world, f) for f in world.facts] * cfg.qa_repeats,
    }


def _token_pool(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], n_ctx: int
) -> list[list[int]]:
    """Token ids of each text, BOS first (as the tokenizer adds it) and EOS last, cut to n_ctx."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [(row + [tokenizer.eos_token_id])[:n_ctx] for row in ids]


def _right_padded(
    rows: Sequence[list[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Tokens and mask of a right-padded batch: causal attention never sees the padding, so no
    attention mask is needed, only a mask on the loss."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return tokens, mask


def learning_rate(step: int, cfg: OrganismConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 10% of ``lr`` at ``max_steps``.

    >>> round(learning_rate(400, OrganismConfig(lr=1e-2, max_steps=400)), 6)
    0.001
    """
    warm = min(1.0, step / max(1, cfg.warmup_steps))
    decay = 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / cfg.max_steps)))
    return cfg.lr * warm * decay


def _epoch_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """One epoch of batches: a seeded permutation, cut into windows of 8 batches whose texts are
    sorted by length before batching (little padding), batches in seeded random order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = 8 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def lm_loss(
    model: Model, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over the real (unpadded) target tokens of a right-padded
    batch (``mask`` False on padding).

    >>> tokens, mask = _right_padded([[1, 5, 7], [1, 6]], pad_id=2)       # doctest: +SKIP
    >>> lm_loss(model, tokens, mask).backward()                          # doctest: +SKIP
    """
    logits = activations.unembed(model, activations.run_blocks(model, tokens))[:, :-1]
    targets, weight = tokens[:, 1:], mask[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return (losses * weight.reshape(-1)).sum() / weight.sum()


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    """How pretraining went: steps taken, seconds, final MCQ accuracy per domain, and one
    history row per MCQ check (``step``, ``loss``, ``hazardous``, ``benign``)."""

    steps: int
    seconds: float
    accuracy: dict[str, float]
    history: list[dict[str, Any]]  # step (int), loss, one accuracy per domain

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` inside the block, put back on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    model: Model,
    texts: Sequence[str],
    mcq: Mapping[str, Sequence[data.MCQItem]],
    cfg: OrganismConfig,
    progress: bool = True,
    *,
    steps: int | None = None,
) -> PretrainResult:
    """Train ``model`` in place with next-token loss on ``texts`` until every MCQ set in ``mcq``
    reaches ``cfg.target_accuracy`` (continuation scoring, checked every ``cfg.eval_every``
    steps), or raise after ``cfg.max_steps``. With ``steps``, train exactly that many steps on
    the same schedule instead (no early stop, no target check: the oracle twin's recipe).

    AdamW with the :func:`learning_rate` schedule; batches drawn from seeded permutations of
    ``texts`` (one per epoch). Torch runs on :data:`PRETRAINING_THREADS` threads whatever the
    caller's setting (restored afterwards): the reduction order, and so the last bits, depend
    on the thread count, and a run at one thread count gives the same bits every time, so the
    organism is the same on any machine with the same CPU instruction set.

    >>> mcq = {"hazardous": org.hazardous_mcq, "benign": org.benign_mcq}   # doctest: +SKIP
    >>> pretrain(model, texts, mcq, OrganismConfig.for_size("test")).steps  # doctest: +SKIP
    250
    """
    last = cfg.max_steps if steps is None else check_int(steps, "steps", minimum=1)
    pool = _token_pool(model.tokenizer, texts, cfg.n_ctx)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = _batch_stream(pool, cfg.batch_size, data.pad_token_id(model.tokenizer), generator)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
    )
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=last, desc="pretraining organism", disable=None if progress else True)
    with bar, torch_threads(PRETRAINING_THREADS):
        for step in range(1, last + 1):
            loss = _train_step(model, optimizer, *next(batches), lr=learning_rate(step, cfg))
            bar.update()
            if step % cfg.eval_every and step != last:
                continue
            accuracy = _mcq_check(model, mcq)
            history.append({"step": step, "loss": loss.item(), **accuracy})
            bar.set_postfix(
                loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in accuracy.items()}
            )
            if steps is None and min(accuracy.values()) >= cfg.target_accuracy:
                break
    seconds = time.perf_counter() - start
    if steps is None:
        _check_on_target(accuracy, cfg)
    log.info("organism pretrained in %d steps, %.1f s: %s", step, seconds, accuracy)
    return PretrainResult(steps=step, seconds=seconds, accuracy=accuracy, history=history)


def _batch_stream(
    pool: Sequence[list[int]], batch_size: int, pad_id: int, generator: torch.Generator
) -> Iterator[tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]]:
    """Right-padded batches of ``pool``, epoch after epoch (:func:`_epoch_batches`, taken from
    the end); an epoch's permutations are drawn from ``generator`` when its first batch is due."""
    lengths = [len(row) for row in pool]
    while True:
        batches = _epoch_batches(lengths, batch_size, generator)
        while batches:
            yield _right_padded([pool[i] for i in batches.pop()], pad_id)


def _train_step(
    model: Model,
    optimizer: torch.optim.Optimizer,
    tokens: Int[Tensor, "batch pos"],
    mask: Bool[Tensor, "batch pos"],
    *,
    lr: float,
) -> Float[Tensor, ""]:
    """One AdamW step on :func:`lm_loss` at learning rate ``lr``; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = models.model_device(model)
    loss = lm_loss(model, tokens.to(device), mask.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _check_on_target(accuracy: Mapping[str, float], cfg: OrganismConfig) -> None:
    """Raise, with the accuracy reached, when some MCQ set is below ``cfg.target_accuracy``."""
    if min(accuracy.values()) < cfg.target_accuracy:
        measured = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
        raise UnlearnInterpError(
            f"the {cfg.size!r} organism reached only {measured} MCQ accuracy after "
            f"{cfg.max_steps} pretraining steps (target {cfg.target_accuracy})"
        )


def _mcq_check(model: Model, mcq: Mapping[str, Sequence[data.MCQItem]]) -> dict[str, float]:
    with torch.no_grad():
        return {
            name: evaluation.mcq_accuracy(
                model, items, mode="continuation", progress=False
            ).accuracy
            for name, items in mcq.items()
        }


def initial_model(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast) -> Model:
    """The organism's untrained model: GPT-2 style, sized by ``cfg``, seeded by ``cfg.seed``
    (the same initial weights every time), on the CPU, with ``tokenizer`` attached.

    >>> model = initial_model(OrganismConfig.for_size("test"), tokenizer)  # doctest: +SKIP
    """
    torch.manual_seed(cfg.seed)
    return models.random_model(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        seed=cfg.seed,
        tokenizer=tokenizer,
        device="cpu",
    )
