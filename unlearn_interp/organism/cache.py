"""The trained organism and its on-disk cache.

:func:`load_organism` builds the world and texts, then loads the weights from the cache entry
keyed by :func:`cache_key` (a hash of the world, the config and :data:`FORMAT_VERSION`), or
pretrains and writes the entry atomically (a temporary sibling directory renamed into place).
An entry holds :data:`MODEL_FILE`, :data:`TOKENIZER_DIR`, :data:`WORLD_FILE`,
:data:`CONFIG_FILE` and :data:`TRAINING_FILE`.

    >>> org = load_organism("test")                                   # doctest: +SKIP
    >>> org.cache_path.name                                           # doctest: +SKIP
    'organism-test-1cfefaa922daa6699175'
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from unlearn_interp import data, models
from unlearn_interp.artifacts import cache_root, library_versions, read_json, write_json
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.organism.pretraining import (
    OrganismConfig,
    initial_model,
    pretrain,
    pretraining_texts,
)
from unlearn_interp.organism.world import (
    DOMAINS,
    QA_TEMPLATE,
    World,
    canonical_json,
    cloze_prompts,
    make_world,
    mcq_items,
)
from unlearn_interp.variants import restore_weights

log = logging.getLogger(__name__)

# Bumped whenever the generator or the training recipe changes in a way the config does not
# capture, so stale caches are never reused (3: pretrained at a fixed thread count with the
# toolkit's embeddings, whose gradients do not depend on thread timing).
FORMAT_VERSION = 3

MODEL_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
WORLD_FILE = "world.json"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"


@dataclasses.dataclass
class Organism:
    """A trained model organism and everything an experiment on it needs.

    ``forget_corpus`` / ``retain_corpus`` are RMU's corpora (hazardous prose; benign prose plus
    neutral filler); ``hazardous_mcq`` / ``benign_mcq`` are scored with
    ``evaluation.mcq_accuracy(model, items, mode="continuation", prompt_template=qa_template)``;
    ``hazardous_prompts`` / ``benign_prompts`` are open statements for junk-direction
    extraction, layer profiles and generations. ``rmu_layer`` / ``update_layers`` are the
    recommended RMU placement (layer = residual stream after that block).

    >>> org = load_organism("demo")                                  # doctest: +SKIP
    >>> cfg = rmu.RMUConfig(layer=org.rmu_layer, steering_coef=800.0, alpha=100.0, lr=1e-2,
    ...                     steps=300, max_len=org.config.n_ctx)        # doctest: +SKIP
    >>> result = rmu.train_rmu(org.model, [org.forget_corpus], [org.retain_corpus], cfg)  # doctest: +SKIP
    """

    model: Model
    tokenizer: PreTrainedTokenizerFast
    world: World
    config: OrganismConfig
    forget_corpus: list[str]
    retain_corpus: list[str]
    hazardous_mcq: list[data.MCQItem]
    benign_mcq: list[data.MCQItem]
    hazardous_prompts: list[str]
    benign_prompts: list[str]
    training: dict[str, Any]  # PretrainResult.to_dict() of the run that made the weights
    cache_path: Path | None = None
    qa_template: str = QA_TEMPLATE
    mcq_mode: str = "continuation"

    @property
    def rmu_layer(self) -> int:
        return self.config.rmu_layer

    @property
    def update_layers(self) -> tuple[int, ...]:
        return self.config.update_layers

    @property
    def mcq(self) -> dict[str, list[data.MCQItem]]:
        """Both MCQ sets by domain name."""
        return {"hazardous": self.hazardous_mcq, "benign": self.benign_mcq}


# Kept importable under its old name; the rule lives in artifacts.cache_root.
default_cache_dir = cache_root


def cache_key(world: World, cfg: OrganismConfig) -> str:
    """Hash of everything that determines the trained weights: the world, the config and the
    generator/recipe version."""
    payload = {"format": FORMAT_VERSION, "world": world.fingerprint(), "config": cfg.to_dict()}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def load_organism(
    size: str = "demo",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    config: OrganismConfig | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Organism:
    """The trained organism of ``size`` ("demo" or "test"): from the cache, else pretrained now
    and cached.

    ``cache_dir`` defaults to :func:`artifacts.cache_root`; ``force`` retrains even when cached;
    ``config`` replaces the size preset entirely (``size`` and ``seed`` are then ignored).
    The organism trains and is cached in float32 on the CPU; ``device`` and ``dtype`` say where
    and in what precision the returned model runs (default: as cached).
    Raises :class:`UnlearnInterpError` if pretraining misses the MCQ accuracy target.

    >>> org = load_organism("test")                     # doctest: +SKIP
    >>> org.training["accuracy"]                        # doctest: +SKIP
    {'hazardous': 1.0, 'benign': 0.975}
    """
    cfg = config if config is not None else OrganismConfig.for_size(size, seed)
    world = make_world(cfg.seed, cfg.entities_per_kind)
    texts = pretraining_texts(world, cfg)
    path = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    path = path / f"organism-{cfg.size}-{cache_key(world, cfg)}"
    if path.is_dir() and not force:
        log.info("loading the %r organism from %s", cfg.size, path)
        model, training = read_entry(path, cfg)
    else:
        model, training = _train(world, texts, cfg, progress)
        write_entry(path, model, world, cfg, training, replace=force)
    models.place(model, device, dtype)
    return _assemble(model, world, cfg, texts, training, path)


def _train(
    world: World, texts: Mapping[str, list[str]], cfg: OrganismConfig, progress: bool
) -> tuple[Model, dict[str, Any]]:
    every_text = [t for corpus in texts.values() for t in corpus]
    tokenizer = data.train_tokenizer(every_text, vocab_size=cfg.vocab_size)
    model = initial_model(cfg, tokenizer)
    mcq = {domain: mcq_items(world, domain, cfg.seed) for domain in DOMAINS}
    result = pretrain(model, every_text, mcq, cfg, progress)
    return model, {**result.to_dict(), "versions": library_versions()}


def write_entry(
    path: Path,
    model: Model,
    world: World,
    cfg: OrganismConfig,
    training: dict[str, Any],
    replace: bool,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the cache entry into a temporary sibling directory, then rename it into place, so
    a half-written entry is never seen. ``replace`` (``force``) removes an existing entry
    first; otherwise an entry another process finished first wins. ``extra`` maps further
    file names of the entry to the JSON they hold (the oracle twin's split)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        models.save_weights(dict(model.named_parameters()), tmp / MODEL_FILE, {"size": cfg.size})
        model.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        write_json(tmp / WORLD_FILE, world.to_dict())
        write_json(tmp / CONFIG_FILE, {"format": FORMAT_VERSION, **cfg.to_dict()})
        write_json(tmp / TRAINING_FILE, training)
        for name, value in (extra or {}).items():
            write_json(tmp / name, value)
        if replace and path.is_dir():
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            log.info("another process cached %s first; keeping its copy", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(
    path: Path, cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[Model, dict[str, Any]]:
    """The model and training record of the cache entry at ``path``, checked against ``cfg``;
    ``tokenizer`` (default: the entry's own) is attached to the model."""
    stored = read_json(path / CONFIG_FILE)
    if stored != {"format": FORMAT_VERSION, **cfg.to_dict()}:
        raise UnlearnInterpError(
            f"{path / CONFIG_FILE} does not match the requested organism config; delete {path} "
            "or pass force=True"
        )
    if tokenizer is None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path / TOKENIZER_DIR)
    model = initial_model(cfg, tokenizer)
    state = models.load_weights(path / MODEL_FILE)
    params = dict(model.named_parameters())
    if set(state) != set(params) or any(state[k].shape != params[k].shape for k in params):
        raise UnlearnInterpError(f"{path / MODEL_FILE} does not fit the organism config")
    restore_weights(model, state)
    return model, read_json(path / TRAINING_FILE)


def _assemble(
    model: Model,
    world: World,
    cfg: OrganismConfig,
    texts: Mapping[str, list[str]],
    training: dict[str, Any],
    path: Path,
) -> Organism:
    model.eval()
    return Organism(
        model=model,
        tokenizer=model.tokenizer,
        world=world,
        config=cfg,
        forget_corpus=list(texts["forget"]),
        retain_corpus=list(texts["retain"]),
        hazardous_mcq=mcq_items(world, "hazardous", cfg.seed),
        benign_mcq=mcq_items(world, "benign", cfg.seed),
        hazardous_prompts=cloze_prompts(world, "hazardous"),
        benign_prompts=cloze_prompts(world, "benign"),
        training=training,
        cache_path=path,
    )
