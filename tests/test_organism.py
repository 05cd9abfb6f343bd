"""organism: a deterministic, entirely fictional world; well-formed MCQ sets consistent with
its facts; a real tokenizer; a "test" organism that knows both domains; an atomic, keyed cache."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest
import torch

from unlearn_interp import data, evaluation, models, organism
from unlearn_interp.artifacts import read_json, write_json
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.organism import cache as organism_cache
from unlearn_interp.organism.pretraining import torch_threads

# Checked independently of organism.HAZARD_BLOCKLIST, so editing that list cannot hide a leak.
REAL_HAZARD_TERMS = (
    "anthrax", "smallpox", "ebola", "plague", "botulinum", "ricin", "sarin", "novichok",
    "influenza", "h5n1", "coronavirus", "pathogen x", "stuxnet", "wannacry", "mirai",
    "metasploit", "cobalt strike", "mimikatz",
)  # fmt: skip


@pytest.fixture(scope="module")
def world():
    return organism.make_world(seed=0, entities_per_kind=4)


@pytest.fixture(scope="module")
def texts(world):
    return organism.pretraining_texts(world, organism.OrganismConfig.for_size("test"))


def all_text(world, texts):
    mcq = [i for d in organism.DOMAINS for i in organism.mcq_items(world, d)]
    prompts = [p for d in organism.DOMAINS for p in organism.cloze_prompts(world, d)]
    pieces = [t for corpus in texts.values() for t in corpus] + prompts
    pieces += [i.question + " " + " ".join(i.choices) for i in mcq]
    return "\n".join(pieces).lower()


# --- the world -----------------------------------------------------------------------------


def test_world_and_corpora_are_deterministic_per_seed(world, texts):
    cfg = organism.OrganismConfig.for_size("test")
    again = organism.make_world(seed=0, entities_per_kind=4)
    assert again == world and again.fingerprint() == world.fingerprint()
    assert organism.pretraining_texts(again, cfg) == texts
    assert organism.mcq_items(again, "hazardous") == organism.mcq_items(world, "hazardous")
    other = organism.make_world(seed=1, entities_per_kind=4)
    assert other.fingerprint() != world.fingerprint()
    assert {f.entity for f in other.facts} != {f.entity for f in world.facts}


def test_world_round_trips_through_json(world):
    import json

    restored = organism.World.from_dict(json.loads(json.dumps(world.to_dict())))
    assert restored == world and restored.fingerprint() == world.fingerprint()


def test_world_contains_no_real_hazard_terms(world, texts):
    text = all_text(world, texts)
    found = [t for t in REAL_HAZARD_TERMS + organism.HAZARD_BLOCKLIST if t in text]
    assert found == []


def test_every_entity_has_one_value_per_attribute_from_its_value_set(world):
    per_entity = Counter((f.kind, f.entity) for f in world.facts)
    for (kind, _), count in per_entity.items():
        assert count == len(world.kind(kind).attributes)
    assert len(per_entity) == 4 * len(organism.KINDS)
    assert len({entity for _, entity in per_entity}) == len(per_entity)  # names are unique
    for fact in world.facts:
        assert fact.value in world.attribute(fact).values
        assert fact.domain == world.kind(fact.kind).domain
    for kind in world.kinds:
        assert (
            kind.name_format == next(k for k in organism.KINDS if k.name == kind.name).name_format
        )
    for kind in organism.KINDS:
        for attribute in kind.attributes:
            assert len(set(attribute.values)) == len(attribute.values) >= 4
            assert len(attribute.templates) >= 3


@pytest.mark.parametrize("entities_per_kind", [4, 12])
def test_every_value_of_an_attribute_is_used_equally_often(entities_per_kind):
    """A model that knows the corpus but not the facts must score chance: no value is rarer (or
    missing from the text) and so easier to rule out as a distractor."""
    world = organism.make_world(seed=0, entities_per_kind=entities_per_kind)
    for kind in world.kinds:
        for attribute in kind.attributes:
            used = Counter(
                f.value
                for f in world.facts
                if f.kind == kind.name and f.attribute == attribute.name
            )
            assert set(used) == set(attribute.values) and len(used) >= 4
            assert len(set(used.values())) == 1


def test_a_world_whose_values_cannot_be_shared_equally_is_refused():
    with pytest.raises(UnlearnInterpError, match="entities_per_kind 3"):
        organism.make_world(seed=0, entities_per_kind=3)


def test_forget_corpus_is_hazardous_and_retain_corpus_is_not(world, texts):
    hazardous = [e for _, e in world.entities("hazardous")]
    benign = [e for _, e in world.entities("benign")]
    for doc in texts["forget"]:
        assert any(e.lower() in doc.lower() for e in hazardous)
        assert not any(e.lower() in doc.lower() for e in benign)
    for doc in texts["retain"]:
        assert not any(e.lower() in doc.lower() for e in hazardous)
    n_benign_docs = sum(any(e.lower() in d.lower() for e in benign) for d in texts["retain"])
    assert 0 < n_benign_docs < len(texts["retain"])  # benign documents plus neutral filler


def test_documents_state_every_fact_of_their_entity(world, texts):
    doc = texts["forget"][0]
    kind, entity = world.entities("hazardous")[0]
    facts = [f for f in world.facts if f.entity == entity]
    assert len(facts) == len(world.kind(kind).attributes)
    for fact in facts:
        assert fact.value in doc


def test_cloze_prompts_name_one_entity_of_their_domain(world):
    for domain in organism.DOMAINS:
        prompts = organism.cloze_prompts(world, domain)
        entities = [e for _, e in world.entities(domain)]
        assert len(prompts) == len(entities)
        for prompt, entity in zip(prompts, entities, strict=True):
            assert entity.lower() in prompt.lower() and not prompt.endswith(".")


# --- MCQ sets ------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", organism.DOMAINS)
def test_mcq_items_are_well_formed_and_agree_with_the_world(world, domain):
    items = organism.mcq_items(world, domain)
    facts = world.facts_in(domain)
    assert len(items) == len(facts) == 4 * 2 * 5
    for item, fact in zip(items, facts, strict=True):
        assert isinstance(item, data.MCQItem)
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert 0 <= item.answer < 4
        assert item.choices[item.answer] == fact.value
        assert set(item.choices) <= set(world.attribute(fact).values)
        assert fact.entity in item.question and item.question.endswith("?")
        assert item.subject == world.kind(fact.kind).subject
    positions = Counter(item.answer for item in items)
    assert len(positions) == 4 and max(positions.values()) <= len(items) // 2


def test_pretraining_text_asks_questions_exactly_as_continuation_scoring_does(world, texts):
    item = organism.mcq_items(world, "hazardous")[0]
    prompt = evaluation.qa_prompt(item, organism.QA_TEMPLATE)
    assert prompt + " " + item.choices[item.answer] in texts["qa"]


# --- config --------------------------------------------------------------------------------


def test_config_rejects_bad_fields_naming_them():
    with pytest.raises(UnlearnInterpError, match="rmu_layer"):
        organism.OrganismConfig(rmu_layer=4, n_layers=4)
    with pytest.raises(UnlearnInterpError, match="d_model"):
        organism.OrganismConfig(d_model=130, n_heads=4)
    with pytest.raises(UnlearnInterpError, match="size"):
        organism.OrganismConfig.for_size("huge")
    with pytest.raises(UnlearnInterpError, match="bogus"):
        organism.OrganismConfig.from_dict({"bogus": 1})
    cfg = organism.OrganismConfig.for_size("demo", seed=3)
    assert organism.OrganismConfig.from_dict(cfg.to_dict()) == cfg


def test_cache_key_changes_when_the_world_or_config_changes(world):
    cfg = organism.OrganismConfig.for_size("test")
    key = organism.cache_key(world, cfg)
    assert organism.cache_key(organism.make_world(0, 4), cfg) == key
    assert organism.cache_key(world, dataclasses.replace(cfg, lr=cfg.lr / 2)) != key
    assert organism.cache_key(world, dataclasses.replace(cfg, n_layers=5)) != key
    assert organism.cache_key(organism.make_world(1, 4), cfg) != key


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_INTERP_CACHE", str(tmp_path / "a"))
    assert organism.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("UNLEARN_INTERP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert organism.default_cache_dir() == tmp_path / "xdg" / "unlearn_interp"


# --- pretraining ---------------------------------------------------------------------------


def tiny_config(**overrides):
    base = dict(size="test", entities_per_kind=4, docs_per_entity=1, neutral_docs=4,
                vocab_size=400, n_layers=2, rmu_layer=1, d_model=32, d_mlp=64, batch_size=8, max_steps=4,
                eval_every=4, target_accuracy=0.01)  # fmt: skip
    return organism.OrganismConfig(**{**base, **overrides})


def test_pretraining_gives_the_same_bits_whatever_the_callers_thread_count(tmp_path):
    # pretraining runs at PRETRAINING_THREADS threads, and at a fixed count the toolkit's
    # embeddings make it repeat bit for bit (TransformerLens' indexing backward did not at 2)
    organisms = []
    for threads, cache in ((1, "a"), (2, "b")):
        with torch_threads(threads):
            cfg = tiny_config()
            organisms.append(
                organism.load_organism(config=cfg, cache_dir=tmp_path / cache, progress=False)
            )
            assert torch.get_num_threads() == threads  # the caller's setting is put back
    a, b = organisms
    assert a.training["steps"] == 4
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    initial = organism.initial_model(a.config, a.tokenizer)
    assert not torch.equal(initial.embed.W_E, a.model.embed.W_E)  # it did train


def test_pretraining_that_misses_the_target_raises_with_the_accuracy(tmp_path):
    cfg = tiny_config(target_accuracy=1.0, max_steps=2, eval_every=2)
    with pytest.raises(UnlearnInterpError, match=r"reached only hazardous \d\.\d{3}, benign"):
        organism.load_organism(config=cfg, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_cache_entry_is_complete_and_leaves_no_temporary_files(tmp_path):
    org = organism.load_organism(config=tiny_config(), cache_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [org.cache_path.name]
    names = {p.name for p in org.cache_path.iterdir()}
    assert names == {"model.safetensors", "tokenizer", "world.json", "config.json", "training.json"}
    stored = organism.World.from_dict(read_json(org.cache_path / "world.json"))
    assert stored == org.world


def test_force_retrains_and_replaces_the_cache_entry(tmp_path, monkeypatch):
    first = organism.load_organism(config=tiny_config(), cache_dir=tmp_path, progress=False)
    calls = []
    real_pretrain = organism.pretrain
    monkeypatch.setattr(
        organism_cache, "pretrain", lambda *a, **k: calls.append(1) or real_pretrain(*a, **k)
    )
    organism.load_organism(config=tiny_config(), cache_dir=tmp_path, progress=False)
    assert calls == []  # cached
    again = organism.load_organism(
        config=tiny_config(), cache_dir=tmp_path, force=True, progress=False
    )
    assert calls == [1] and again.cache_path == first.cache_path
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]
    assert torch.equal(again.model.embed.W_E, first.model.embed.W_E)  # deterministic


def test_a_cache_entry_for_another_config_is_refused(tmp_path):
    org = organism.load_organism(config=tiny_config(), cache_dir=tmp_path, progress=False)
    write_json(org.cache_path / "config.json", {"format": -1})
    with pytest.raises(UnlearnInterpError, match="force=True"):
        organism.load_organism(config=tiny_config(), cache_dir=tmp_path, progress=False)


# --- the trained "test" organism -------------------------------------------------------------


def test_tokenizer_round_trips_the_world_text(organism_test):
    tok = organism_test.tokenizer
    samples = organism_test.forget_corpus[:3] + organism_test.retain_corpus[-3:]
    samples += [organism.qa_text(organism_test.world, organism_test.world.facts[0])]
    for text in samples:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.padding_side == "left" and organism_test.model.tokenizer is tok
    reloaded = type(tok).from_pretrained(organism_test.cache_path / "tokenizer")
    assert reloaded(samples)["input_ids"] == tok(samples)["input_ids"]
    assert reloaded.padding_side == "left"


def test_test_organism_answers_both_domains(organism_test):
    for domain, items in organism_test.mcq.items():
        res = evaluation.mcq_accuracy(
            organism_test.model, items, mode="continuation", progress=False
        )
        assert res.accuracy >= 0.95, domain
        recorded = organism_test.training["accuracy"][domain]
        assert res.accuracy == pytest.approx(recorded, abs=1.5 / len(items))
    assert organism_test.config.n_layers >= 4  # layers before and after the RMU layer
    assert 0 < organism_test.rmu_layer < organism_test.config.n_layers - 1


def test_second_load_hits_the_cache_with_identical_weights(organism_test, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrained again instead of loading the cache")

    monkeypatch.setattr(organism_cache, "pretrain", no_training)
    start = time.perf_counter()
    again = organism.load_organism(
        "test", cache_dir=organism_test.cache_path.parent, progress=False
    )
    assert time.perf_counter() - start < 20
    assert again.cache_path == organism_test.cache_path
    for name, param in organism_test.model.named_parameters():
        assert torch.equal(param, dict(again.model.named_parameters())[name]), name
    assert again.hazardous_mcq == organism_test.hazardous_mcq
    assert again.forget_corpus == organism_test.forget_corpus
    assert again.training == organism_test.training


def test_load_organism_places_the_cached_model_where_asked(organism_test):
    cache = organism_test.cache_path.parent
    placed = organism.load_organism("test", cache_dir=cache, progress=False, dtype=torch.float64)
    assert models.model_dtype(placed.model) == torch.float64
    assert placed.model.embed.W_E.dtype == torch.float64
    assert torch.equal(placed.model.embed.W_E.float(), organism_test.model.embed.W_E)
