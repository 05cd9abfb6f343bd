"""interventions.py: ablation hooks, their weight-orthogonalisation twin, and Variant hygiene."""

from __future__ import annotations

import pytest
import torch

from unlearn_interp import data, interventions, models
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant

PROMPTS = ["the cat sat on the mat", "a dog ran", "Answer: A. B. C. D."]


def run(model, prompts=PROMPTS, **kwargs):
    batch = data.encode_batch(model.tokenizer, prompts)
    with torch.no_grad():
        return model(batch.tokens, attention_mask=batch.attention_mask, **kwargs), batch


def all_hook_names(model):
    return [name for name, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks]


def residual_components(model, prompts=PROMPTS):
    """Every activation that is or writes into the residual stream, from one cached pass."""
    batch = data.encode_batch(model.tokenizer, prompts)
    keep = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
    with torch.no_grad():
        _, cache = model.run_with_cache(
            batch.tokens,
            attention_mask=batch.attention_mask,
            names_filter=lambda n: n.endswith(keep),
        )
    return cache, batch.attention_mask.bool()


@pytest.fixture(params=["gpt2-style", "llama-style"])
def model(request, tokenizer):
    style = {} if request.param == "gpt2-style" else {
        "normalization_type": "RMS", "positional_embedding_type": "rotary", "act_fn": "silu"
    }  # fmt: skip
    return models.random_model(n_layers=3, d_model=32, tokenizer=tokenizer, **style)


def test_project_out_hook_removes_exactly_the_component():
    r = torch.randn(16)
    x = torch.randn(2, 5, 16)
    out = interventions.project_out_hook(r)(x, hook=None)
    r_hat = r / r.norm()
    assert (out @ r_hat).abs().max() < 1e-5
    assert torch.allclose(out + (x @ r_hat)[..., None] * r_hat, x, atol=1e-5)


def test_add_vector_hook_adds_scaled_vector_at_chosen_positions():
    v = torch.randn(8)
    x = torch.zeros(2, 4, 8)
    out = interventions.add_vector_hook(v, scale=3.0, positions=-1)(x, hook=None)
    assert torch.allclose(out[:, -1], 3.0 * v.expand(2, 8))
    assert out[:, :-1].abs().max() == 0 and x.abs().max() == 0  # input untouched


def test_ablation_leaves_no_component_along_direction_anywhere(model):
    r = torch.randn(models.d_model(model))
    with Variant("ablated", hooks=interventions.ablation_hooks(r)).applied(model):
        cache, real = residual_components(model)
    r_hat = r / r.norm()
    for name, act in cache.items():
        ratio = (act[real] @ r_hat).abs().max() / act[real].norm(dim=-1).max()
        assert ratio < 1e-5, name


def test_ablation_hooks_only_touch_chosen_layers(model):
    r = torch.randn(models.d_model(model))
    with Variant("l1", hooks=interventions.ablation_hooks(r, layers=[1])).applied(model):
        cache, real = residual_components(model)
    r_hat = r / r.norm()
    assert (cache["blocks.1.hook_attn_out"][real] @ r_hat).abs().max() < 1e-4
    assert (cache["blocks.2.hook_mlp_out"][real] @ r_hat).abs().max() > 1e-3


def test_orthogonalised_weights_match_ablation_hooks_within_1e4(model):
    r = torch.randn(models.d_model(model))
    with Variant("hooks", hooks=interventions.ablation_hooks(r)).applied(model):
        hooked, batch = run(model)
    interventions.orthogonalize_weights(model, r)
    orthogonal, _ = run(model)
    real = batch.attention_mask.bool()
    assert (hooked[real] - orthogonal[real]).abs().max() < 1e-4
    cache, real = residual_components(model)
    r_hat = r / r.norm()
    for name, act in cache.items():
        assert (act[real] @ r_hat).abs().max() < 1e-4, name


def test_orthogonalize_covers_every_residual_writer_including_biases(model):
    names = models.residual_writers(model)
    assert "embed.W_E" in names and "blocks.2.attn.b_O" in names and "blocks.0.mlp.b_out" in names
    has_pos = model.cfg.positional_embedding_type == "standard"
    assert ("pos_embed.W_pos" in names) == has_pos


def test_orthogonalize_rejects_wrong_d_model_and_zero_vector(model):
    with pytest.raises(UnlearnInterpError, match="d_model is 32"):
        interventions.orthogonalize_weights(model, torch.randn(7))
    with pytest.raises(UnlearnInterpError, match="zero or non-finite norm"):
        interventions.orthogonalize_weights(model, torch.zeros(32))


def test_variant_swaps_weights_and_restores_them(model):
    name = models.mlp_out_param(1)
    before = models.get_param(model, name).detach().clone()
    new = torch.randn_like(before)
    with Variant("v", weights={name: new}).applied(model):
        assert torch.equal(models.get_param(model, name), new)
    assert torch.equal(models.get_param(model, name), before)


def test_variant_restores_weights_and_hooks_after_an_exception(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = torch.randn(32)
    variant = Variant("v", weights={models.mlp_out_param(0): torch.randn(128, 32)})
    variant = variant.with_hooks(interventions.ablation_hooks(r), name="v_ablated")
    with pytest.raises(RuntimeError, match="boom"), variant.applied(model):
        assert all_hook_names(model)  # hooks really were installed
        run(model)
        raise RuntimeError("boom")
    assert all_hook_names(model) == []
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_variant_with_wrong_shapes_or_names_fails_before_touching_the_model(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = models.mlp_out_param(0)
    bad_shape = Variant(
        "x", weights={good: torch.randn(128, 32), models.mlp_out_param(1): torch.randn(3)}
    )
    with pytest.raises(UnlearnInterpError, match="another model"), bad_shape.applied(model):
        pass
    with (
        pytest.raises(UnlearnInterpError, match="no parameter"),
        Variant("y", weights={"nope": torch.ones(1)}).applied(model),
    ):
        pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_variants_compose_and_run_in_turn(model):
    r = torch.randn(32)
    base = Variant("base")
    ablated = base.with_hooks(interventions.ablation_hooks(r), name="ablated")
    outs = interventions.run_variants(model, [base, ablated], lambda m: run(m)[0][:, -1])
    assert set(outs) == {"base", "ablated"}
    assert not torch.allclose(outs["base"], outs["ablated"])
    assert all_hook_names(model) == []


# --- a subspace: an orthonormal basis [k, d_model] -----------------------------------------------


def orthonormal_rows(k: int, d: int = 32, seed: int = 3) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # [k, d]


def test_project_out_removes_the_span_and_keeps_the_complement():
    basis = orthonormal_rows(3)
    x = torch.randn(2, 5, 32)
    out = interventions.project_out(x, basis)
    assert (out @ basis.T).abs().max() < 1e-5  # nothing left in the span
    inside = (x @ basis.T) @ basis
    assert torch.allclose(out + inside, x, atol=1e-5)  # and nothing else removed
    # Projecting out three orthonormal rows equals projecting out each row in turn.
    one_by_one = x
    for row in basis:
        one_by_one = interventions.project_out_hook(row)(one_by_one, hook=None)
    assert torch.allclose(out, one_by_one, atol=1e-5)


def test_subspace_ablation_leaves_no_component_in_the_span_anywhere(model):
    basis = orthonormal_rows(3)
    with Variant("ablated", hooks=interventions.ablation_hooks(basis)).applied(model):
        cache, real = residual_components(model)
    for name, act in cache.items():
        ratio = (act[real] @ basis.T).abs().max() / act[real].norm(dim=-1).max()
        assert ratio < 1e-5, name


def test_subspace_hooks_and_orthogonalised_weights_give_equal_logits_k3(model):
    basis = orthonormal_rows(3)
    plain, batch = run(model)
    with Variant("hooks", hooks=interventions.ablation_hooks(basis)).applied(model):
        hooked, _ = run(model)
    permanent = Variant("ortho", weights=interventions.orthogonalized_weights(model, basis))
    with permanent.applied(model):
        orthogonal, _ = run(model)
    real = batch.attention_mask.bool()
    assert (hooked[real] - orthogonal[real]).abs().max() < 1e-4
    assert (hooked[real] - plain[real]).abs().max() > 1e-2  # the ablation did something
    interventions.orthogonalize_weights(model, basis)
    in_place, _ = run(model)
    assert torch.equal(in_place, orthogonal)
    for name in models.residual_writers(model):
        w = models.get_param(model, name).detach()
        assert (w @ basis.T).abs().max() < 1e-5, name  # biases too


def test_a_one_row_basis_is_the_same_ablation_as_its_direction(model):
    r = torch.randn(32)
    with Variant("d", hooks=interventions.ablation_hooks(r)).applied(model):
        by_direction, _ = run(model)
    with Variant("b", hooks=interventions.ablation_hooks((r / r.norm())[None])).applied(model):
        by_basis, _ = run(model)
    assert torch.allclose(by_direction, by_basis, atol=1e-6)


def test_a_non_orthonormal_basis_is_refused_in_one_sentence(model):
    skewed = orthonormal_rows(2)
    skewed[1] = (skewed[0] + skewed[1]) / 2**0.5  # unit rows, but at 45 degrees
    for build in (
        lambda: interventions.ablation_hooks(skewed),
        lambda: interventions.orthogonalized_weights(model, skewed),
    ):
        with pytest.raises(UnlearnInterpError, match=r"not orthonormal \(max \|B B\^T - I\| = 0.7"):
            build()
    with pytest.raises(UnlearnInterpError, match="NaN"):
        interventions.ablation_hooks(torch.full((2, 32), float("nan")))
    with pytest.raises(UnlearnInterpError, match=r"k >= 1, got shape \(0, 32\)"):
        interventions.ablation_hooks(torch.zeros(0, 32))


def test_a_basis_of_the_wrong_width_is_one_sentence_and_leaves_no_hook(model):
    with pytest.raises(UnlearnInterpError, match=r"basis has shape \(2, 16\) but .* d_model is 32"):
        interventions.orthogonalized_weights(model, orthonormal_rows(2, d=16))
    hooks = interventions.ablation_hooks(orthonormal_rows(2, d=16))
    with (
        pytest.raises(UnlearnInterpError, match="basis has d_model 16 but the activation at"),
        Variant("v", hooks=hooks).applied(model),
    ):
        run(model)
    assert all_hook_names(model) == []


def test_no_subspace_hook_survives_an_exception(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    basis = orthonormal_rows(3)
    ortho = interventions.orthogonalized_weights(model, basis)
    variant = Variant("v", weights=ortho, hooks=interventions.ablation_hooks(basis))
    with pytest.raises(RuntimeError, match="boom"), variant.applied(model):
        assert all_hook_names(model)
        run(model)
        raise RuntimeError("boom")
    assert all_hook_names(model) == []
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
