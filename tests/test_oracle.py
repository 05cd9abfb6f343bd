"""The T/V split of the hazardous facts and the oracle twin (organism.oracle), on the test-size
organism. The oracle trains once per session (about a minute), into the organism's temporary
cache directory."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn_interp import evaluation, organism
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.organism import oracle as oracle_module

CHANCE = 0.25


@pytest.fixture(scope="session")
def split(organism_test):
    return organism.split_facts(organism_test.world, fraction_v=0.5, seed=0)


@pytest.fixture(scope="session")
def oracle(organism_test, split):
    return organism.load_oracle(organism_test, split, progress=False)


def bare_name(entity: str) -> str:
    """The invented word of an entity ("Drera" of "the Drera virus"): stricter to search for
    than the entity phrase, and independent of the module's own matching."""
    return next(word for word in entity.split() if word[0].isupper())


def names_in(text: str, entities) -> list[str]:
    return [e for e in entities if bare_name(e).lower() in text.lower()]


def accuracy(model, items) -> float:
    return evaluation.mcq_accuracy(model, items, mode="continuation", progress=False).accuracy


# --- the split -------------------------------------------------------------------------------


def test_the_split_is_by_entity_disjoint_covering_and_deterministic(organism_test, split):
    world = organism_test.world
    entities = [e for _, e in world.entities("hazardous")]
    assert not set(split.t_entities) & set(split.v_entities)
    assert sorted(split.t_entities + split.v_entities) == sorted(entities)
    for kind in ("pathogen", "exploit"):  # every kind half in V
        of_kind = {e for k, e in world.entities("hazardous") if k == kind}
        assert len(of_kind & set(split.v_entities)) == len(of_kind) // 2
    assert organism.split_facts(world, fraction_v=0.5, seed=0) == split
    others = {organism.split_facts(world, fraction_v=0.5, seed=s).v_entities for s in range(1, 6)}
    assert others - {split.v_entities}  # the seed draws V


def test_split_items_are_the_mcq_items_of_each_part_in_order(organism_test, split):
    parts = organism.split_items(organism_test, split)
    assert len(parts["T"]) + len(parts["V"]) == len(organism_test.hazardous_mcq)
    for part, entities in (("T", split.t_entities), ("V", split.v_entities)):
        assert parts[part] and all(names_in(item.question, entities) for item in parts[part])
        positions = [organism_test.hazardous_mcq.index(item) for item in parts[part]]
        assert positions == sorted(positions)


def test_t_documents_are_the_forget_documents_about_t_entities(organism_test, split):
    docs = organism.t_documents(organism_test, split)
    assert docs and set(docs) <= set(organism_test.forget_corpus)
    assert not any(names_in(doc, split.v_entities) for doc in docs)
    about_t = [d for d in organism_test.forget_corpus if not names_in(d, split.v_entities)]
    assert docs == about_t


# --- the oracle twin -------------------------------------------------------------------------


def test_the_oracle_corpus_has_no_v_sentence_and_every_t_text(organism_test, split, oracle):
    texts = organism.oracle_texts(organism_test, split)
    for text in texts:  # every sentence of every text
        assert names_in(text, split.v_entities) == [], text
    everything = organism.pretraining_texts(organism_test.world, organism_test.config)
    organism_texts = [t for corpus in everything.values() for t in corpus]
    t_texts = [t for t in organism_texts if not names_in(t, split.v_entities)]
    assert texts == t_texts  # the organism's own T texts, in its order
    assert len(texts) < len(organism_texts) and oracle.training["texts"] == len(texts)
    t_lines = [t for t in texts if t.startswith("Question:") and names_in(t, split.t_entities)]
    per_entity = len(organism_test.world.kind("pathogen").attributes)  # one question per fact
    assert len(t_lines) == organism_test.config.qa_repeats * per_entity * len(split.t_entities)
    assert not any(names_in(doc, split.v_entities) for doc in oracle.forget_corpus)


def test_the_oracle_knows_t_but_never_learned_v(organism_test, split, oracle):
    parts = organism.split_items(oracle, split)
    t_acc, v_acc = accuracy(oracle.model, parts["T"]), accuracy(oracle.model, parts["V"])
    assert v_acc <= CHANCE + 0.1
    assert t_acc >= 0.9
    assert accuracy(organism_test.model, parts["V"]) >= 0.9  # the organism knows V
    assert oracle.training["steps"] == organism_test.training["steps"]  # no early stop
    assert oracle.tokenizer is organism_test.tokenizer


def test_a_second_load_reads_the_oracle_from_its_cache(organism_test, split, oracle, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the oracle was trained again")

    monkeypatch.setattr(oracle_module, "pretrain", no_training)
    again = organism.load_oracle(organism_test, split, progress=False)
    assert again.cache_path == oracle.cache_path
    assert oracle.cache_path.parent == organism_test.cache_path.parent  # beside the organism
    for name, param in oracle.model.named_parameters():
        assert torch.equal(dict(again.model.named_parameters())[name], param)
    entry = {p.name for p in oracle.cache_path.iterdir()}
    assert organism.SPLIT_FILE in entry and organism.MODEL_FILE in entry
    assert not [p for p in oracle.cache_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_oracle_key_names_the_held_out_entities(organism_test, split):
    other = organism.split_facts(organism_test.world, fraction_v=0.5, seed=1)
    assert other.v_entities != split.v_entities
    steps = organism_test.training["steps"]
    key = organism.oracle_key(organism_test, split, steps)
    assert key == organism.oracle_key(organism_test, split, steps)
    assert key != organism.oracle_key(organism_test, other, steps)


def test_pretrain_with_steps_trains_exactly_that_many(organism_test):
    cfg = organism.OrganismConfig(**{**organism_test.config.to_dict(), "target_accuracy": 0.01})
    model = organism.initial_model(cfg, organism_test.tokenizer)
    mcq = {"benign": organism_test.benign_mcq[:4]}
    texts = organism_test.retain_corpus[:16]
    result = organism.pretrain(model, texts, mcq, cfg, progress=False, steps=3)
    assert result.steps == 3 and [row["step"] for row in result.history] == [3]


# --- bad input: one sentence -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fraction_v=0.0), "fraction_v"),
        (dict(fraction_v=1.0), "fraction_v"),
        (dict(fraction_v=1.5), "fraction_v"),
        (dict(fraction_v=-0.2), "fraction_v"),
        (dict(fraction_v=math.nan), "fraction_v"),
        (dict(fraction_v=0.05), "leaves T or V empty"),
        (dict(domain="chemistry"), "domain must be one of"),
        (dict(seed=True), "split seed"),
    ],
)
def test_bad_split_settings_give_one_sentence(kwargs, match):
    with pytest.raises(UnlearnInterpError, match=match) as error:
        organism.split_facts(organism.make_world(seed=0, entities_per_kind=4), **kwargs)
    assert "\n" not in str(error.value)


def test_a_split_of_another_world_is_refused(organism_test):
    foreign = organism.split_facts(organism.make_world(seed=7, entities_per_kind=4))
    for call in (organism.split_items, organism.t_documents, organism.load_oracle):
        with pytest.raises(UnlearnInterpError, match="split_facts\\(org.world") as error:
            call(organism_test, foreign)
        assert "\n" not in str(error.value)
    with pytest.raises(UnlearnInterpError, match="disjoint"):
        organism.FactSplit("hazardous", ("the Drera virus",), ("the Drera virus",), seed=0)
