"""Linear probes per layer (analysis.probes) on the test organism: the base model's answers are
linearly readable at the last layer, the shuffled-label control sits at chance, RMU breaks the
base readout; folds keep an entity together; bad input is refused in one sentence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn_interp import organism, rmu
from unlearn_interp.analysis import probes
from unlearn_interp.analysis.questions import question_set
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.organism_demo import organism_rmu_config
from unlearn_interp.variants import Variant

BASE = Variant("base")


@pytest.fixture(scope="module")
def sets(organism_test):
    return probes.organism_readouts(organism_test, "hazardous")


@pytest.fixture(scope="module")
def base_table(organism_test, sets):
    """The base organism's probes on both question sets (on the test organism every attribute
    uses 4 values, so "value" holds the same candidates as "choice" in another order)."""
    return probes.layer_probes(organism_test.model, [BASE], sets, progress=False)


@pytest.fixture(scope="module")
def rmu_table(organism_test, sets):
    """Base and RMU probes on the four-choice set: our own copy of the test organism (RMU
    trains in place) unlearned with the demo's test settings (about 20-30 s on one thread)."""
    org = organism.load_organism("test", cache_dir=organism_test.cache_path.parent, progress=False)
    result = rmu.train_rmu(
        org.model, [org.forget_corpus], [org.retain_corpus], organism_rmu_config(org),
        progress=False,
    )  # fmt: skip
    variants = [Variant("base", result.base_weights), Variant("rmu", result.unlearned_weights)]
    return probes.layer_probes(org.model, variants, {"choice": sets["choice"]}, progress=False)


def row(table: pd.DataFrame, variant: str, probe: str, layer: int, label: str = "choice"):
    query = "variant == @variant and probe == @probe and layer == @layer and label == @label"
    found = table.query(query)
    assert len(found) == 1
    return found.iloc[0]


def test_the_table_has_a_row_per_variant_label_probe_and_layer_with_an_interval(base_table):
    assert list(base_table.columns) == list(probes.COLUMNS)
    assert len(base_table) == 2 * 3 * 4  # labels x probes x layers
    assert (base_table["ci_low"] <= base_table["accuracy"] + 1e-12).all()
    assert (base_table["accuracy"] <= base_table["ci_high"] + 1e-12).all()
    assert (base_table["n"] == 40).all() and (base_table["chance"] == 0.25).all()


@pytest.mark.parametrize("label", ["choice", "value"])
def test_base_own_probe_reads_hazardous_answers_at_the_last_layer(base_table, label):
    own = row(base_table, "base", "own", 3, label)
    assert own["accuracy"] >= 0.9  # measured 0.95 (38 of 40) on both sets
    shuffled = row(base_table, "base", "shuffled", 3, label)
    assert shuffled["accuracy"] <= shuffled["chance"] + 0.1  # measured 0.28 choice, 0.26 value


def test_the_reference_variants_reference_probe_is_its_own_probe(base_table):
    own = base_table[base_table["probe"] == "own"]["accuracy"].to_numpy()
    reference = base_table[base_table["probe"] == "reference"]["accuracy"].to_numpy()
    assert np.array_equal(own, reference)


@pytest.mark.slow
def test_rmu_breaks_the_base_readout_after_its_layer(rmu_table):
    # RMU's layer is 2: after it the base probe reads RMU's activations at about chance, while
    # a probe trained on RMU's own activations still finds some of the answers.
    for layer in (2, 3):
        assert row(rmu_table, "rmu", "reference", layer)["accuracy"] <= 0.35  # measured 0.225
        assert row(rmu_table, "base", "reference", layer)["accuracy"] >= 0.9  # measured 0.95
        assert row(rmu_table, "rmu", "own", layer)["accuracy"] >= 0.45  # measured 0.575
    assert row(rmu_table, "rmu", "shuffled", 3)["accuracy"] <= 0.35  # measured 0.24


def test_value_items_ask_the_same_question_among_every_value_of_the_attribute(organism_test, sets):
    org = organism_test
    items = organism.value_items(org, "hazardous")
    facts = org.world.facts_in("hazardous")
    assert [item.choices[item.answer] for item in items] == [f.value for f in facts]
    assert all(
        set(i.choices) == set(org.world.attribute(f).values)
        for i, f in zip(items, facts, strict=True)
    )
    assert organism.fact_entities(org, "hazardous") == [f.entity for f in facts]
    # The same questions, so the same readout contexts as the four-choice set.
    assert set(sets["value"].contexts) == set(sets["choice"].contexts)


def test_candidates_are_read_before_the_token_that_tells_them_apart(sets):
    assert probes.deciding_positions([(5, 1), (5, 2), (7,)]) == [1, 1, 0]
    choice = sets["choice"]
    for i in range(len(choice)):
        assert len(set(choice.tokens[i].tolist())) == 4  # distinct tokens: no built-in tie
    # Organism answers mostly start with " the": read one token after the question's context.
    assert len(choice.contexts) > len(choice)


def test_a_question_set_is_read_through_first_tokens_at_the_last_context_token(organism_test):
    org = organism_test
    qs = question_set(org.model, org.hazardous_mcq[:3], org.mcq_mode, org.qa_template)
    readout = probes.first_token_readouts(qs)
    assert readout.rows.tolist() == [[0] * 4, [1] * 4, [2] * 4]
    assert torch.equal(readout.tokens, qs.choice_tokens)


def test_the_probe_is_deterministic_for_a_seed(organism_test, sets):
    org, variants = organism_test, [BASE]
    one = {"choice": sets["choice"]}
    run = [probes.layer_probes(org.model, variants[:1], one, layers=[1], n_shuffles=2, n_boot=50,
                               progress=False) for _ in range(2)]  # fmt: skip
    pd.testing.assert_frame_equal(run[0], run[1])


def test_folds_keep_every_group_on_one_side():
    groups = [f"e{i % 7}" for i in range(40)]
    folds = probes.entity_folds(groups, n_folds=5, seed=3)
    for g in set(groups):
        assert len({f for f, h in zip(folds, groups, strict=True) if h == g}) == 1
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    assert (folds == probes.entity_folds(groups, 5, seed=3)).all()
    assert not (folds == probes.entity_folds(groups, 5, seed=4)).all()


def test_bad_input_is_refused_in_one_sentence(organism_test, sets):
    org, variants = organism_test, [BASE]
    one = {"choice": sets["choice"]}
    with pytest.raises(UnlearnInterpError, match="groups cannot fill"):
        probes.entity_folds(["a", "b"], n_folds=3)
    with pytest.raises(UnlearnInterpError, match="groups cannot fill"):
        probes.layer_probes(org.model, variants, one, n_folds=9, progress=False)  # 8 entities
    with pytest.raises(UnlearnInterpError, match="reference variant 'oracle'"):
        probes.layer_probes(org.model, variants, one, reference="oracle", progress=False)
    with pytest.raises(UnlearnInterpError, match="l2 0.0 must be"):
        probes.layer_probes(org.model, variants, one, l2=0.0, progress=False)
    with pytest.raises(UnlearnInterpError, match="layer"):
        probes.layer_probes(org.model, variants, one, layers=[4], progress=False)
    with pytest.raises(UnlearnInterpError, match="3 groups given for 2 questions"):
        probes.readouts(org.model, org.hazardous_mcq[:2], groups=["a", "b", "c"])
    r = sets["choice"]
    with pytest.raises(UnlearnInterpError, match="not one of the 4 candidates"):
        probes.Readouts(r.contexts, r.rows, r.tokens, r.answers + 4, r.groups)
    with pytest.raises(UnlearnInterpError, match="do not describe the same questions"):
        probes.Readouts(r.contexts, r.rows, r.tokens, r.answers, r.groups[:5])


def test_the_fitted_probe_is_the_penalised_optimum():
    gen = torch.Generator().manual_seed(0)
    resid = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    rows = torch.arange(30).reshape(10, 3)
    vectors = torch.randn(10, 3, 8, generator=gen, dtype=torch.float64)
    answers = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    probe = probes.fit_probe(resid, rows, vectors, answers, l2=1e-2)
    weight = probe.weight.clone().requires_grad_(True)
    features = probe.features(resid, rows, vectors)
    loss = torch.nn.functional.cross_entropy(features @ weight, answers) + 1e-2 * weight @ weight
    (grad,) = torch.autograd.grad(loss, weight)
    assert grad.abs().max() < 1e-9
    assert probe.weight.abs().max() > 0.1  # not the trivial zero start
