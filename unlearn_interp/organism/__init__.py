"""The model organism: a small transformer that knows an entirely fictional world.

Real RMU runs need 7B weights and gated corpora. This package makes a stand-in that trains on a
laptop CPU in minutes and goes through exactly the same code paths (a real BPE tokenizer saved
as a HuggingFace ``PreTrainedTokenizerFast``, the toolkit's model class, WMDP-format MCQ items):

* ``world``: a seeded **world** of invented entities: a "hazardous" domain (fictional pathogens
  and exploit kits) and a "benign" domain (fictional towns and festivals), each entity with one
  value per attribute drawn from the attribute's value set. Nothing in it is real, let alone
  hazardous. From it, the **corpora** (forget: documents about the hazardous entities; retain:
  documents about the benign entities plus neutral filler; several sentence templates per
  attribute so the model learns facts rather than strings) and the **MCQ sets**, one question
  per fact, four choices from the attribute's value set;
* ``pretraining``: :class:`OrganismConfig` and its size presets, and :func:`pretrain`, which
  trains until the model answers both domains' questions (continuation scoring) at >= 95%;
* ``cache``: :func:`load_organism` returns the trained :class:`Organism`, from an on-disk cache
  keyed by a hash of the world and the config, or pretrained now and cached;
* ``oracle``: the T/V split of the hazardous facts by entity (:func:`split_facts`) and the
  **oracle twin** (:func:`load_oracle`), the organism pretrained without any V fact: the control
  for what a relearning attack teaches by itself.

    >>> org = load_organism("test")                                   # doctest: +SKIP
    >>> evaluation.mcq_accuracy(org.model, org.hazardous_mcq, mode="continuation").accuracy  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from unlearn_interp.organism.cache import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    TOKENIZER_DIR,
    TRAINING_FILE,
    WORLD_FILE,
    Organism,
    cache_key,
    default_cache_dir,
    load_organism,
)
from unlearn_interp.organism.oracle import (
    SPLIT_FILE,
    FactSplit,
    load_oracle,
    oracle_key,
    oracle_texts,
    split_facts,
    split_items,
    t_documents,
)
from unlearn_interp.organism.pretraining import (
    SIZES,
    OrganismConfig,
    PretrainResult,
    initial_model,
    learning_rate,
    lm_loss,
    pretrain,
    pretraining_texts,
)
from unlearn_interp.organism.values import fact_entities, value_items
from unlearn_interp.organism.world import (
    DOMAINS,
    HAZARD_BLOCKLIST,
    KINDS,
    QA_TEMPLATE,
    Attribute,
    Fact,
    Kind,
    World,
    cloze_prompts,
    entity_documents,
    make_world,
    mcq_items,
    neutral_documents,
    qa_text,
    question,
    state_fact,
)

__all__ = [
    "CONFIG_FILE",
    "DOMAINS",
    "FORMAT_VERSION",
    "HAZARD_BLOCKLIST",
    "KINDS",
    "MODEL_FILE",
    "QA_TEMPLATE",
    "SIZES",
    "SPLIT_FILE",
    "TOKENIZER_DIR",
    "TRAINING_FILE",
    "WORLD_FILE",
    "Attribute",
    "Fact",
    "FactSplit",
    "Kind",
    "Organism",
    "OrganismConfig",
    "PretrainResult",
    "World",
    "cache_key",
    "cloze_prompts",
    "default_cache_dir",
    "entity_documents",
    "fact_entities",
    "initial_model",
    "learning_rate",
    "lm_loss",
    "load_oracle",
    "load_organism",
    "make_world",
    "mcq_items",
    "neutral_documents",
    "oracle_key",
    "oracle_texts",
    "pretrain",
    "pretraining_texts",
    "qa_text",
    "question",
    "split_facts",
    "split_items",
    "state_fact",
    "t_documents",
    "value_items",
]
