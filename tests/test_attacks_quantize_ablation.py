"""Recovery attacks: RTN group quantisation (attacks.quantize) and per-layer ablation
(attacks.ablation), on tiny random models and the test-size organism."""

from __future__ import annotations

import pytest
import torch

from unlearn_interp import activations, attacks, directions, evaluation, models
from unlearn_interp.attacks.quantize import quantize_linear
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import add_vector_hook
from unlearn_interp.variants import Variant, get_param, snapshot_weights

PROMPTS = [
    "The quick brown fox",
    "A multiple choice question about biology has four answers.",
    "Residual",
    "Answer: A. B.",
    "the lazy dog jumps over the fox and the cat",
    "biology",
]


def all_weights(model) -> dict[str, torch.Tensor]:
    return snapshot_weights(model, [name for name, _ in model.named_parameters()])


def total_change(model, weights: dict[str, torch.Tensor]) -> float:
    return sum(float((w - get_param(model, n).detach()).abs().sum()) for n, w in weights.items())


# ---------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------


def test_every_block_linear_matrix_is_quantised_in_its_own_shape(tiny_model):
    quantized = attacks.quantized_weights(tiny_model, bits=4)
    assert set(quantized) == set(models.linear_weight_inputs(tiny_model))
    assert len(quantized) == 6 * models.n_layers(tiny_model)  # W_Q W_K W_V W_O W_in W_out
    for name, value in quantized.items():
        original = get_param(tiny_model, name)
        assert value.shape == original.shape and value.dtype == original.dtype
        assert not torch.equal(value, original)


def test_four_bits_change_the_weights_more_than_eight(tiny_model):
    change = {bits: total_change(tiny_model, attacks.quantized_weights(tiny_model, bits))
              for bits in (8, 4)}  # fmt: skip
    assert 0 < change[8] < change[4] / 4


@pytest.mark.parametrize(("bits", "group_size", "width"), [(4, 4, 10), (8, 64, 64), (2, 16, 40)])
def test_error_per_element_is_at_most_half_a_step(bits, group_size, width):
    rows = torch.randn(7, width, generator=torch.Generator().manual_seed(bits))
    quantized = attacks.quantize_rows(rows, bits, group_size)
    starts = range(0, width, group_size)  # the last group holds the remainder
    for start in starts:
        group = rows[:, start : start + group_size]
        scale = (group.amax(dim=1) - group.amin(dim=1)) / (2**bits - 1)
        error = (quantized[:, start : start + group_size] - group).abs().amax(dim=1)
        assert (error <= scale / 2 * (1 + 1e-5) + 1e-7).all()
        levels = torch.unique(quantized[0, start : start + group_size]).numel()
        assert levels <= 2**bits


def test_group_larger_than_the_row_is_one_group_per_row():
    rows = torch.randn(3, 10)
    assert torch.equal(attacks.quantize_rows(rows, 4, 1000), attacks.quantize_rows(rows, 4, 10))


def test_groups_run_along_the_inputs_of_each_output():
    """W_O [head, d_head, d_model]: each output's inputs are (head, d_head), flattened head-major
    as nn.Linear's in_features; W_in [d_model, d_mlp]: the inputs are its rows."""
    w_o = torch.randn(2, 3, 5)
    as_linear = w_o.reshape(6, 5).T  # [out, in]
    expected = attacks.quantize_rows(as_linear, 4, 3).T.reshape(2, 3, 5)
    assert torch.equal(quantize_linear(w_o, (0, 1), 4, 3), expected)
    w_in = torch.randn(6, 4)
    assert torch.equal(quantize_linear(w_in, (0,), 4, 3), attacks.quantize_rows(w_in.T, 4, 3).T)


def test_variant_puts_the_weights_back(tiny_model):
    before = all_weights(tiny_model)
    w4 = attacks.quantized_variant(tiny_model, Variant("base"), bits=4)
    assert w4.name == "base_rtn4_g64"
    with w4.applied(tiny_model):
        assert total_change(tiny_model, before) > 0
    assert all(torch.equal(get_param(tiny_model, n), w) for n, w in before.items())


def test_quantised_unlearned_variant_rounds_the_unlearned_weights(tiny_model):
    name = models.mlp_out_param(1)
    base = get_param(tiny_model, name).detach().clone()
    unlearned_w = base + 0.5 * torch.randn_like(base)
    embed = {"embed.W_E": torch.zeros_like(get_param(tiny_model, "embed.W_E"))}
    hook = (models.resid_hook(0), add_vector_hook(torch.ones(32)))
    unlearned = Variant("rmu", weights={name: unlearned_w, **embed}, hooks=(hook,))
    w4 = attacks.quantized_variant(tiny_model, unlearned, bits=4, name="rmu_w4")
    assert torch.equal(w4.weights[name], quantize_linear(unlearned_w, (0,), 4, 64))
    assert not torch.equal(w4.weights[name], quantize_linear(base, (0,), 4, 64))
    assert torch.equal(w4.weights["embed.W_E"], embed["embed.W_E"])  # other overrides kept
    assert w4.hooks == unlearned.hooks and w4.name == "rmu_w4"
    assert torch.equal(get_param(tiny_model, name), base)


@pytest.mark.parametrize("bits", [1, 9, 16, -4, True])  # non-ints: beartype refuses first
def test_bad_bits_is_one_sentence(tiny_model, bits):
    with pytest.raises(
        UnlearnInterpError, match=r"^bits must be an integer from 2 to 8, got"
    ) as err:
        attacks.quantized_variant(tiny_model, Variant("base"), bits=bits)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("group_size", [0, -8, True])
def test_bad_group_size_is_one_sentence(tiny_model, group_size):
    with pytest.raises(UnlearnInterpError, match=r"^group_size must be a positive integer") as err:
        attacks.quantized_weights(tiny_model, bits=4, group_size=group_size)
    assert "\n" not in str(err.value)


def test_eight_bits_keep_the_organism_accuracy(organism_test):
    org = organism_test

    def accuracies() -> dict[str, float]:
        return {task: evaluation.mcq_accuracy(org.model, items, mode=org.mcq_mode, progress=False,
                                              prompt_template=org.qa_template).accuracy
                for task, items in org.mcq.items()}  # fmt: skip

    full = accuracies()
    with attacks.quantized_variant(org.model, Variant("base"), bits=8).applied(org.model):
        eight = accuracies()
    assert set(full) == {"hazardous", "benign"}
    for task in full:
        assert abs(eight[task] - full[task]) <= 0.02, (task, full, eight)


# ---------------------------------------------------------------------------------------------
# Per-layer ablation
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def candidates(tiny_model):
    """Candidates of a stand-in unlearned model writing its own vector at layers 0 and 1."""
    hooks = tuple(
        (models.resid_hook(layer), add_vector_hook(directions.random_direction(32, seed=layer),
                                                   scale=5.0))
        for layer in (0, 1)
    )  # fmt: skip
    return directions.candidate_directions(
        tiny_model, Variant("base"), Variant("steered", hooks=hooks), PROMPTS, positions="all"
    )


def residual_along(model, hooks, layer: int, direction: torch.Tensor) -> float:
    """Largest |x . direction| over every real token of PROMPTS, after block ``layer``."""
    largest = []
    unit = direction.double() / direction.double().norm()
    for start, batch in activations.iter_batches(model, PROMPTS, 8, None, "test"):
        select = activations.select_positions(batch, "all", first_prompt=start)
        activations.capture_resid(model, batch, [layer], select, Variant("x", hooks=tuple(hooks)),
                                  lambda _, rows: largest.append((rows.double() @ unit).abs().max()))  # fmt: skip
    return float(max(largest))


def test_per_layer_ablation_removes_each_direction_from_its_layer_on(tiny_model, candidates):
    hooks = attacks.per_layer_ablation(candidates)
    assert candidates.layers == [0, 1, 2] and len(hooks) == 2 * 3
    for layer in candidates.layers:
        r = candidates.direction(layer).vector
        assert residual_along(tiny_model, [], layer, r) > 1.0  # there to remove
        for later in range(layer, models.n_layers(tiny_model)):
            assert residual_along(tiny_model, hooks, later, r) < 1e-4


def test_per_layer_ablation_at_chosen_layers_only(tiny_model, candidates):
    hooks = attacks.per_layer_ablation(candidates, layers=[1])
    r1 = candidates.direction(1).vector
    assert len(hooks) == 2 and residual_along(tiny_model, hooks, 1, r1) < 1e-4
    assert residual_along(tiny_model, hooks, 0, r1) > 1.0  # untouched before layer 1
    with pytest.raises(UnlearnInterpError, match="not among the candidates"):
        attacks.per_layer_ablation(candidates, layers=[7])


def test_random_controls_are_unit_distinct_and_matched(candidates):
    junk = attacks.per_layer_units(candidates)
    random = attacks.random_per_layer_units(candidates, seed=0)
    assert list(random) == list(junk) == [0, 1, 2]
    rows = torch.stack(list(random.values())).double()
    assert torch.allclose(rows @ rows.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert float((rows @ candidates.vectors.double().T).abs().max()) < 1e-6
    other = torch.stack(list(attacks.random_per_layer_units(candidates, seed=1).values()))
    assert not torch.allclose(other.double(), rows)
    hooks = attacks.random_per_layer_ablation(candidates, seed=0)
    assert len(hooks) == len(attacks.per_layer_ablation(candidates))
