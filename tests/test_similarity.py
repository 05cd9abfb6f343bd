"""Linear CKA and the per-layer representation similarity (analysis.similarity): the CKA
formula against the textbook HSIC form, its invariances, a model against itself, a model
against random weights, RMU on forget vs retain prompts of the test organism, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn_interp import organism, rmu
from unlearn_interp.analysis import linear_cka, representation_similarity
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.organism_demo import organism_rmu_config
from unlearn_interp.variants import Variant, restore_weights


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al.'s definition, written out: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))
    with K = XX^T, L = YY^T and the centring matrix H."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum()))


@pytest.mark.parametrize("n, d1, d2", [(200, 6, 9), (7, 40, 30)])  # feature form, Gram form
def test_linear_cka_matches_the_hsic_definition_in_both_forms(n, d1, d2):
    x = torch.randn(n, d1)
    y = x @ torch.randn(d1, d2) + torch.randn(n, d2)
    expected = hsic_cka(x, y)
    assert 0.05 < expected < 0.999  # a pair neither unrelated nor identical
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-10)


def test_linear_cka_is_invariant_to_rotation_and_isotropic_scaling_and_translation():
    x = torch.randn(60, 16, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(16, 12, dtype=torch.float64))
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    before = linear_cka(x, y)
    assert linear_cka(x, 7.5 * y @ rotation + 3.0) == pytest.approx(before, abs=1e-12)
    assert linear_cka(x, x @ torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]) == (
        pytest.approx(1.0, abs=1e-12)
    )
    assert before < 0.95


def test_linear_cka_is_not_invariant_to_an_anisotropic_scaling():
    x = torch.randn(80, 5, dtype=torch.float64)
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0, 0.1], dtype=torch.float64)
    assert linear_cka(x, stretched) < 0.9


def test_linear_cka_of_independent_noise_is_small_with_many_rows():
    x, y = torch.randn(2000, 8), torch.randn(2000, 8)
    assert linear_cka(x, y) < 0.02  # bias ~ d/n = 0.004


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.randn(5, 3), torch.randn(6, 3), "same inputs"),
        (torch.randn(1, 3), torch.randn(1, 3), "at least 2"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), torch.randn(2, 2), "NaN"),
        (torch.ones(4, 3), torch.randn(4, 3), "the same"),
    ],
)
def test_linear_cka_rejects_bad_input_in_one_sentence(x, y, message):
    with pytest.raises(UnlearnInterpError, match=message):
        linear_cka(x, y)


# --- on the test organism ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def org(organism_test):
    """Our own copy of the test organism (the RMU fixture trains its weights in place)."""
    cache = organism_test.cache_path.parent
    return organism.load_organism("test", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def rmu_variant(org):
    """The demo's RMU recipe on the test organism (~20 s); base weights put back afterwards."""
    result = rmu.train_rmu(
        org.model,
        [org.forget_corpus],
        [org.retain_corpus],
        organism_rmu_config(org),
        progress=False,
    )
    restore_weights(org.model, result.base_weights)
    return Variant("rmu", weights=result.unlearned_weights)


def prompt_sets(org):
    return {"forget": org.hazardous_prompts, "retain": org.benign_prompts}


def random_weights(org, seed: int = 0) -> Variant:
    """Every parameter replaced by a seeded standard-normal tensor of the same shape."""
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for name, p in org.model.named_parameters()
    }
    return Variant("random", weights=weights)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_a_model_has_cka_and_cosine_one_with_itself_at_every_layer(org, positions):
    again = Variant("base_again")  # a second, separate forward pass of the same weights
    sim = representation_similarity(
        org.model, [Variant("base"), again], prompt_sets(org), positions=positions
    )
    assert list(sim.columns) == ["variant", "prompt_set", "layer", "cka", "mean_cos", "n_tokens"]
    rows = sim[sim["variant"] == "base_again"]
    assert len(rows) == 2 * org.config.n_layers
    assert (rows["cka"] - 1).abs().max() < 1e-6
    assert (rows["mean_cos"] - 1).abs().max() < 1e-6
    assert (rows["n_tokens"] >= len(org.hazardous_prompts)).all()


def test_cka_falls_well_below_one_for_a_random_weights_model(org):
    # Every real token (77 forget, 92 retain): with the 8 last tokens alone CKA is biased up.
    sim = representation_similarity(
        org.model, [Variant("base"), random_weights(org)], prompt_sets(org), positions="all"
    )
    random_rows = sim[sim["variant"] == "random"]
    assert random_rows["cka"].max() < 0.6  # measured 0.33..0.47
    assert random_rows["mean_cos"].abs().max() < 0.2  # measured |cos| <= 0.04


def test_rmu_lowers_forget_prompt_cka_at_its_layer_far_more_than_retain(org, rmu_variant):
    sim = representation_similarity(org.model, [Variant("base"), rmu_variant], prompt_sets(org))
    at_layer = sim[(sim["variant"] == "rmu") & (sim["layer"] == org.rmu_layer)]
    cka = dict(zip(at_layer["prompt_set"], at_layer["cka"], strict=True))
    cos = dict(zip(at_layer["prompt_set"], at_layer["mean_cos"], strict=True))
    assert cka["retain"] > 0.95 and cos["retain"] > 0.9  # measured 0.99, 0.96
    assert cka["forget"] < cka["retain"] - 0.2  # measured 0.55
    assert cos["forget"] < 0.3  # measured 0.06


def test_representation_similarity_rejects_bad_input(org):
    base, prompts = Variant("base"), prompt_sets(org)
    with pytest.raises(UnlearnInterpError, match="reference variant 'base' is not among"):
        representation_similarity(org.model, [Variant("rmu")], prompts)
    with pytest.raises(UnlearnInterpError, match="not unique"):
        representation_similarity(org.model, [base, Variant("base")], prompts)
    with pytest.raises(UnlearnInterpError, match="layer"):
        representation_similarity(org.model, [base], prompts, layers=[org.config.n_layers])
    with pytest.raises(UnlearnInterpError, match="empty"):
        representation_similarity(org.model, [base], {"forget": []})
    with pytest.raises(UnlearnInterpError, match="at least 2"):
        representation_similarity(org.model, [base], {"forget": prompts["forget"][:1]})
    with pytest.raises(UnlearnInterpError, match="prompt-set name"):
        representation_similarity(org.model, [base], {})
