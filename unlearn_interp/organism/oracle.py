"""The T/V split of the organism's hazardous facts, and the oracle twin that never saw V.

Relearning attacks ("retraining on T", Deeb & Roger 2024) split the forget facts **by entity**
into T (text the attacker may fine-tune on) and V (held out, only measured). Whatever V accuracy
fine-tuning on T brings back could be knowledge unlearning hid, or knowledge the attack taught.
The **oracle twin** tells them apart: the organism pretrained identically (same config, seed,
tokenizer, schedule and number of steps) but with every text that states a fact of a V entity
left out. What the same attack teaches the oracle about V is what the attack teaches by itself;
what the unlearned model recovers beyond that was hidden, not removed.

The tokenizer is the organism's own (trained on every text, V included), so token ids match
across the twins; it holds V's names as vocabulary, never a V fact.

    >>> split = split_facts(org.world, fraction_v=0.5, seed=0)                  # doctest: +SKIP
    >>> oracle = load_oracle(org, split)                                        # doctest: +SKIP
    >>> v_items = split_items(oracle, split)["V"]                               # doctest: +SKIP
    >>> evaluation.mcq_accuracy(oracle.model, v_items, mode="continuation").accuracy  # doctest: +SKIP
    0.25
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearn_interp import data, models
from unlearn_interp.artifacts import cache_root, library_versions
from unlearn_interp.checks import check_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.organism.cache import Organism, cache_key, read_entry, write_entry
from unlearn_interp.organism.pretraining import initial_model, pretrain, pretraining_texts
from unlearn_interp.organism.world import DOMAINS, World, canonical_json

log = logging.getLogger(__name__)

# The file of an oracle's cache entry that records its split (beside the organism's files).
SPLIT_FILE = "split.json"


@dataclasses.dataclass(frozen=True)
class FactSplit:
    """The facts of ``domain`` split by entity: T (accessible to an attacker) and V (held out).

    >>> FactSplit("hazardous", ("the Drera virus",), ("the Kolu kit",), seed=0).v_entities
    ('the Kolu kit',)
    """

    domain: str  # "hazardous" for a recovery attack
    t_entities: tuple[str, ...]  # in the world's generation order
    v_entities: tuple[str, ...]
    seed: int  # the split_facts seed that drew V

    def __post_init__(self) -> None:
        _check_domain(self.domain)
        check_int(self.seed, "FactSplit.seed")
        if not self.t_entities or not self.v_entities:
            raise UnlearnInterpError("a FactSplit needs at least one T and one V entity")
        shared = sorted(set(self.t_entities) & set(self.v_entities))
        if shared:
            raise UnlearnInterpError(f"T and V must be disjoint; both hold {', '.join(shared)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "t_entities": list(self.t_entities),
            "v_entities": list(self.v_entities),
            "seed": self.seed,
        }


def _check_domain(domain: object) -> str:
    if domain not in DOMAINS:
        raise UnlearnInterpError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return str(domain)


def split_facts(
    world: World, domain: str = "hazardous", fraction_v: float = 0.5, seed: int = 0
) -> FactSplit:
    """Split the entities of ``domain`` into T and V: of every kind (pathogens, exploit kits),
    ``round(fraction_v * n)`` of its ``n`` entities drawn into V, seeded by ``seed``, so V
    covers every kind and subject. Deterministic in ``(world, domain, fraction_v, seed)``.

    >>> split = split_facts(make_world(0, 4), fraction_v=0.5, seed=0)           # doctest: +SKIP
    >>> len(split.t_entities), len(split.v_entities)                            # doctest: +SKIP
    (4, 4)
    """
    _check_domain(domain)
    check_int(seed, "split seed")
    if not isinstance(fraction_v, float) or not 0 < fraction_v < 1:
        raise UnlearnInterpError(f"fraction_v must be a number in (0, 1), got {fraction_v!r}")
    rng = random.Random(f"split-{domain}-{seed}")
    held: set[str] = set()
    for kind in (k for k in world.kinds if k.domain == domain):
        entities = [e for k, e in world.entities(domain) if k == kind.name]
        n_v = round(fraction_v * len(entities))
        if not 0 < n_v < len(entities):
            raise UnlearnInterpError(
                f"fraction_v {fraction_v} leaves T or V empty for the {len(entities)} "
                f"{kind.name} entities; use a fraction between {1 / len(entities):.2f} and "
                f"{1 - 1 / len(entities):.2f}"
            )
        held |= set(rng.sample(entities, n_v))
    entities = [e for _, e in world.entities(domain)]
    return FactSplit(
        domain=domain,
        t_entities=tuple(e for e in entities if e not in held),
        v_entities=tuple(e for e in entities if e in held),
        seed=seed,
    )


def _check_split(org: Organism, split: FactSplit) -> None:
    """Raise unless ``split`` divides exactly the entities of its domain in ``org``'s world."""
    entities = {e for _, e in org.world.entities(split.domain)}
    if set(split.t_entities) | set(split.v_entities) != entities:
        raise UnlearnInterpError(
            f"the split's entities are not the {split.domain} entities of this organism's world; "
            "make the split with split_facts(org.world, ...)"
        )


def _mentions(entities: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any of ``entities`` as whole words, in any case ("The Drera virus")."""
    alternatives = "|".join(re.escape(e) for e in sorted(entities))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def split_items(org: Organism, split: FactSplit) -> dict[str, list[data.MCQItem]]:
    """The MCQ items of the split's domain by part: ``{"T": [...], "V": [...]}``, subsets of
    ``org.mcq[split.domain]`` in the same order (one item per fact, as the world lists them).

    >>> {part: len(items) for part, items in split_items(org, split).items()}    # doctest: +SKIP
    {'T': 20, 'V': 20}
    """
    _check_split(org, split)
    held = set(split.v_entities)
    parts: dict[str, list[data.MCQItem]] = {"T": [], "V": []}
    facts = org.world.facts_in(split.domain)
    for fact, item in zip(facts, org.mcq[split.domain], strict=True):
        parts["V" if fact.entity in held else "T"].append(item)
    return parts


def t_documents(org: Organism, split: FactSplit) -> list[str]:
    """The documents of the split's domain corpus (``org.forget_corpus`` for "hazardous",
    ``org.retain_corpus`` for "benign") that are about T entities and mention no V entity:
    the relearning attack's training text.

    >>> len(t_documents(org, split)) * 2 == len(org.forget_corpus)               # doctest: +SKIP
    True
    """
    _check_split(org, split)
    corpus = org.forget_corpus if split.domain == "hazardous" else org.retain_corpus
    about_t, about_v = _mentions(split.t_entities), _mentions(split.v_entities)
    return [doc for doc in corpus if about_t.search(doc) and not about_v.search(doc)]


def oracle_texts(org: Organism, split: FactSplit) -> list[str]:
    """The oracle's pretraining corpus: the organism's texts, generated as it generates them
    and in the same order, less every text that mentions a V entity (its documents and its
    question-answer lines). The T texts are the organism's, character for character.

    >>> any("Drera" in t for t in oracle_texts(org, split))                     # doctest: +SKIP
    False
    """
    _check_split(org, split)
    about_v = _mentions(split.v_entities)
    texts = pretraining_texts(org.world, org.config)
    return [t for corpus in texts.values() for t in corpus if not about_v.search(t)]


def oracle_key(org: Organism, split: FactSplit, steps: int) -> str:
    """Hash of what determines the oracle's weights: the organism's cache key, the held-out
    entities (sorted), the split's domain and seed, and the number of steps."""
    payload = {
        "organism": cache_key(org.world, org.config),
        "domain": split.domain,
        "v_entities": sorted(split.v_entities),
        "split_seed": split.seed,
        "steps": steps,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def load_oracle(
    org: Organism,
    split: FactSplit,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Organism:
    """The oracle twin of ``org`` for ``split``: from the cache, else pretrained now and cached.

    Pretrained like the organism (its config, seed, initial weights and tokenizer) on
    :func:`oracle_texts` for exactly ``org.training["steps"]`` steps on the same learning-rate
    schedule, with no early stop (the organism stopped on a check over V's questions too).
    Cached beside the organism (``cache_dir`` defaults to the directory holding
    ``org.cache_path``), keyed by :func:`oracle_key`, written atomically. Returned as an
    :class:`Organism` on ``org.model``'s device and dtype: ``org``'s world, config, MCQ sets and
    prompts, its own ``forget_corpus`` (the forget documents it saw) and ``training`` record
    (accuracy on ``T``, ``V`` and the other domain).

    >>> oracle = load_oracle(org, split_facts(org.world))                          # doctest: +SKIP
    >>> oracle.training["accuracy"]                                                # doctest: +SKIP
    {'T': 1.0, 'V': 0.25, 'benign': 0.975}
    """
    _check_split(org, split)
    steps = check_int(org.training.get("steps"), "the organism's pretraining steps", minimum=1)
    path = _cache_dir(org, cache_dir) / f"oracle-{org.config.size}-{oracle_key(org, split, steps)}"
    if path.is_dir():
        log.info("loading the oracle twin from %s", path)
        model, training = read_entry(path, org.config, org.tokenizer)
    else:
        model, training = _train_oracle(org, split, steps, progress)
        extra = {SPLIT_FILE: split.to_dict()}
        write_entry(path, model, org.world, org.config, training, replace=False, extra=extra)
    models.place(model, models.model_device(org.model), models.model_dtype(org.model))
    model.eval()
    about_v = _mentions(split.v_entities)
    return dataclasses.replace(
        org,
        model=model,
        forget_corpus=[t for t in org.forget_corpus if not about_v.search(t)],
        retain_corpus=[t for t in org.retain_corpus if not about_v.search(t)],
        training=training,
        cache_path=path,
    )


def _cache_dir(org: Organism, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return org.cache_path.parent if org.cache_path is not None else cache_root()


def _train_oracle(
    org: Organism, split: FactSplit, steps: int, progress: bool
) -> tuple[Model, dict[str, Any]]:
    """Pretrain the oracle on the CPU in float32, as the organism was; MCQ checks (for the
    history only) on T, V and the other domain."""
    texts = oracle_texts(org, split)
    model = initial_model(org.config, org.tokenizer)
    mcq = {**split_items(org, split), **{d: org.mcq[d] for d in DOMAINS if d != split.domain}}
    result = pretrain(model, texts, mcq, org.config, progress, steps=steps)
    accuracy = result.accuracy
    log.info("oracle pretrained in %d steps, %.1f s: %s", result.steps, result.seconds, accuracy)
    if accuracy["T"] < org.config.target_accuracy:
        log.warning("the oracle's T accuracy %.3f is below the organism's target", accuracy["T"])
    training = {
        **result.to_dict(),
        "versions": library_versions(),
        "organism": cache_key(org.world, org.config),
        "split": split.to_dict(),
        "texts": len(texts),
    }
    return model, training
