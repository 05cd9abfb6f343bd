"""rmu: the reference's loss and schedule exactly, the science RMU should produce on a small
model, only W_out of update_layers changing, the split forward equal to the full one, Adaptive
RMU's coefficient, determinism, failure recovery, config validation and the run directory."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch

from unlearn_interp import data, models, rmu
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant
from unlearn_interp.rmu import train as rmu_train
from unlearn_interp.variants import restored_weights

HAZARD = [
    "virus",
    "gene",
    "protein",
    "cell",
    "enzyme",
    "toxin",
    "pathogen",
    "spore",
    "culture",
    "strain",
    "host",
    "vector",
]
BENIGN = [
    "river",
    "mountain",
    "city",
    "music",
    "garden",
    "table",
    "window",
    "story",
    "market",
    "bridge",
    "cloud",
    "train",
]


def _docs(words: list[str], n: int, seed: int) -> list[str]:
    """Documents of 8-20 words, so batches are left padded."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) for _ in range(n)]


FORGET_A = _docs(HAZARD, 16, seed=1)
FORGET_B = _docs(HAZARD[6:] + BENIGN[:3], 16, seed=2)
RETAIN = _docs(BENIGN, 16, seed=3)


@pytest.fixture(scope="module")
def word_tokenizer():
    """Vocabulary large enough that every word is one token (no token shared across corpora)."""
    return data.train_tokenizer(FORGET_A + FORGET_B + RETAIN, vocab_size=400)


def _model(tokenizer, rotary: bool = False, n_layers: int = 3, d_model: int = 32):
    arch = {"positional_embedding_type": "rotary", "normalization_type": "RMS", "act_fn": "silu"}
    return models.random_model(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=4,
        n_ctx=64,
        tokenizer=tokenizer,
        **(arch if rotary else {}),
    )


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _layer_output(model, texts: list[str], layer: int, max_len: int = 64):
    """Residual stream after block ``layer`` from a *full* forward pass and a hook, as the
    reference captures it, with the batch's attention mask."""
    batch = data.encode_batch(model.tokenizer, texts, max_len)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, names_filter=models.resid_hook(layer)
        )
    return cache[models.resid_hook(layer)], batch.attention_mask


# --- configuration ------------------------------------------------------------------------------


def test_update_layers_default_to_layer_minus_two_to_layer_clamped_at_zero():
    assert rmu.RMUConfig(layer=7).update_layers == (5, 6, 7)
    assert rmu.RMUConfig(layer=1).update_layers == (0, 1)
    assert rmu.RMUConfig(layer=4, update_layers=[4, 2]).update_layers == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": (1200.0, -5.0)}, "alpha"),
        ({"steps": 0}, "steps"),
        ({"update_layers": (6, 8)}, "update_layers"),
        ({"update_layers": ()}, "update_layers"),
        ({"update_layers": (5, 5)}, "update_layers"),
        ({"steering_coef": 0.0}, "steering_coef"),
        ({"steering_coef": float("nan")}, "steering_coef"),
        ({"lr": 0.0}, "lr"),
        ({"adam_eps": 0.0}, "adam_eps"),
        ({"adam_eps": -1e-6}, "adam_eps"),
        ({"adam_eps": float("inf")}, "adam_eps"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_len": 0}, "max_len"),
        ({"adaptive_beta": -2.0}, "adaptive_beta"),
        ({"control_vector": "normal"}, "control_vector"),
        ({"layer": -1}, "layer"),
        ({"frozen_forget_every": 0}, "frozen_forget_every"),
        ({"alpha": (1.0, 2.0), "steering_coef": (1.0, 2.0, 3.0)}, "steering_coef"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(UnlearnInterpError, match=field):
        rmu.RMUConfig(**{"layer": 7, **kwargs})


def test_config_round_trips_through_json():
    cfg = rmu.RMUConfig(
        layer=7, steering_coef=(6.5, 8.0), alpha=1200.0, max_len=(512, 768), adaptive_beta=5.0
    )
    again = rmu.RMUConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.per_topic("max_len", 2) == [512, 768]
    with pytest.raises(UnlearnInterpError, match="steering_coeff"):
        rmu.RMUConfig.from_dict({**cfg.to_dict(), "steering_coeff": 1.0})


def test_diagnostics_cadence_is_recorded_only_when_it_is_not_the_default():
    # runs recorded before the field existed compare equal, so they still resume
    assert "frozen_forget_every" not in rmu.RMUConfig(layer=7).to_dict()
    every_step = rmu.RMUConfig(layer=7, frozen_forget_every=1)
    assert every_step.to_dict()["frozen_forget_every"] == 1
    assert rmu.RMUConfig.from_dict(every_step.to_dict()) == every_step


def test_adam_eps_defaults_to_the_reference_and_is_recorded():
    cfg = rmu.RMUConfig(layer=7)
    assert cfg.adam_eps == 1e-6 and cfg.to_dict()["adam_eps"] == 1e-6
    assert rmu.RMUConfig.from_dict({"layer": 7, "adam_eps": 1e-8}).adam_eps == 1e-8
    assert rmu.RMUConfig.from_dict({"layer": 7}).adam_eps == 1e-6  # a config for a new run


class _SpyAdamW(torch.optim.AdamW):
    """torch's AdamW, recording its eps and the gradients of its first step."""

    seen: list[dict] = []

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        _SpyAdamW.seen.append({"kwargs": kwargs, "grads": None})

    def step(self, closure=None):
        record = _SpyAdamW.seen[-1]
        if record["grads"] is None:
            record["grads"] = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def test_the_optimiser_receives_adam_eps_and_its_first_step_is_lr_g_over_abs_g_plus_eps(
    word_tokenizer, monkeypatch
):
    """Adam's first step is exactly -lr * g / (|g| + eps) (bias-corrected moments g and g^2):
    the trained weights show which eps was used."""
    monkeypatch.setattr(torch.optim, "AdamW", _SpyAdamW)
    _SpyAdamW.seen.clear()
    cfg = rmu.RMUConfig(layer=1, steering_coef=6.5, alpha=1200.0, lr=5e-5, steps=1, batch_size=2)
    result = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
    (record,) = _SpyAdamW.seen
    assert record["kwargs"] == {"lr": 5e-5, "eps": 1e-6, "weight_decay": 0.0}
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    for name, g in zip(names, record["grads"], strict=True):
        before, after = result.base_weights[name].double(), result.unlearned_weights[name].double()
        rounding = 2 * torch.finfo(torch.float32).eps * torch.maximum(before.abs(), after.abs())
        g = g.double()
        with_1e6, with_1e8 = (before - 5e-5 * g / (g.abs() + eps) for eps in (1e-6, 1e-8))
        assert ((after - with_1e6).abs() <= rounding).all()  # every element: eps 1e-6
        # Where the two eps give steps further apart than float32 can blur (gradients below
        # ~1e-3: 6-9% of the elements here), eps 1e-8 is ruled out.
        apart = (with_1e6 - with_1e8).abs() > 4 * rounding
        assert apart.double().mean() > 0.02
        assert ((after - with_1e8).abs() > rounding)[apart].all()


def test_adam_eps_1e6_and_1e8_train_different_weights(word_tokenizer):
    runs = {}
    for eps in (1e-6, 1e-8):
        cfg = rmu.RMUConfig(layer=1, lr=5e-5, steps=6, batch_size=2, adam_eps=eps)
        runs[eps] = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
    for name, base in runs[1e-6].base_weights.items():
        step_6, step_8 = (runs[eps].unlearned_weights[name] - base for eps in (1e-6, 1e-8))
        # Measured 0.1-0.2% on this model (float noise: ~1e-7); the smaller eps steps further.
        assert float((step_6 - step_8).norm() / step_6.norm()) > 2e-4
        assert step_8.norm() > step_6.norm()


def test_a_run_saved_before_adam_eps_existed_loads_with_the_eps_it_used(word_tokenizer, tmp_path):
    cfg = rmu.RMUConfig(layer=1, steps=1, batch_size=2)
    rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False).save(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["rmu"]["adam_eps"] == 1e-6
    assert rmu.RMUResult.load(tmp_path).config.adam_eps == 1e-6
    del record["rmu"]["adam_eps"]
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert rmu.RMUResult.load(tmp_path).config.adam_eps == rmu.LEGACY_ADAM_EPS == 1e-8


def test_gaussian_control_vectors_train_end_to_end_and_are_recorded(word_tokenizer, tmp_path):
    cfg = rmu.RMUConfig(layer=1, control_vector="gaussian", steering_coef=20.0, steps=2,
                        batch_size=2, seed=5)  # fmt: skip
    result = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
    u = result.control_vectors[0]
    assert torch.equal(u, rmu.make_control_vectors(1, 32, "gaussian", seed=5)[0])
    assert (u < 0).sum() > 5  # not in the positive orthant, unlike the reference's uniform draw
    assert abs(float(u.sum()) / 32**0.5) < 0.5  # cos with all-ones: ~0, not ~0.87
    result.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rmu"]["control_vector"] == "gaussian"
    loaded = rmu.RMUResult.load(tmp_path)
    assert loaded.config.control_vector == "gaussian"
    assert torch.equal(loaded.control_vectors, result.control_vectors)


def test_layer_out_of_range_for_the_model_is_one_sentence_naming_layer(word_tokenizer):
    model = _model(word_tokenizer)
    with pytest.raises(UnlearnInterpError, match=r"layer 5 is out of range.*3 blocks"):
        rmu.train_rmu(model, [FORGET_A], [RETAIN], rmu.RMUConfig(layer=5), progress=False)


@pytest.mark.parametrize(
    ("forget", "retain", "message"),
    [
        ([FORGET_A], [RETAIN, RETAIN], "one corpus per forget corpus"),
        ([[]], [RETAIN], "forget corpus 0 is empty"),
        (FORGET_A, [RETAIN] * len(FORGET_A), "is a string"),
        ([FORGET_A], [["fine", ""]], "retain corpus 0, document 1"),
    ],
)
def test_bad_corpora_are_named(word_tokenizer, forget, retain, message):
    model = _model(word_tokenizer)
    with pytest.raises(UnlearnInterpError, match=message):
        rmu.train_rmu(model, forget, retain, rmu.RMUConfig(layer=1, steps=1), progress=False)


# --- pieces -------------------------------------------------------------------------------------


def test_control_vectors_are_seeded_unit_and_uniform_in_the_positive_orthant():
    u = rmu.make_control_vectors(2, 512, "uniform", seed=42)
    assert torch.allclose(u.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert (u >= 0).all()
    ones = torch.ones(512) / 512**0.5
    assert 0.83 < float(u[0] @ ones) < 0.9  # E[x]/sqrt(E[x^2]) = sqrt(3)/2 ~ 0.87
    assert torch.equal(u, rmu.make_control_vectors(2, 512, "uniform", seed=42))
    assert not torch.equal(u, rmu.make_control_vectors(2, 512, "uniform", seed=43))
    assert abs(float(u[0] @ u[1])) < 0.9 < float(u[0] @ u[1]) + 0.2  # distinct, both positive
    g = rmu.make_control_vectors(1, 512, "gaussian", seed=42)
    assert (g < 0).any() and abs(float(g[0] @ ones)) < 0.2


def test_topic_batches_are_consecutive_documents_wrapping_around():
    corpus = ["d0", "d1", "d2", "d3", "d4"]
    assert [rmu.topic_batch(corpus, i, 2) for i in range(3)] == [
        ["d0", "d1"],
        ["d2", "d3"],
        ["d4", "d0"],
    ]


def test_split_forward_equals_full_forward_with_left_padding(word_tokenizer):
    """Prefix (no grad) + suffix from start_at_layer, with the attention mask, is the full
    forward; the frozen suffix still sees the base weights after W_out moved."""
    for rotary in (False, True):
        model = _model(word_tokenizer, rotary=rotary, n_layers=4)
        cfg = rmu.RMUConfig(layer=2, update_layers=(1, 2))
        vectors = torch.ones(1, 32) / 32**0.5
        fwd = rmu_train.build_trainer(model, [FORGET_A], [RETAIN], cfg, vectors).forward
        batch = fwd.encode(FORGET_A[:4], 64)
        assert (batch.attention_mask == 0).any()  # left padding is exercised
        full, _ = _layer_output(model, FORGET_A[:4], layer=2)
        split = fwd.suffix(fwd.prefix(batch), batch)
        assert torch.allclose(split, full, atol=1e-6, rtol=0)
        # Without the mask, TransformerLens would attend to pads: the mask is what makes it exact.
        unmasked = model(fwd.prefix(batch), start_at_layer=1, stop_at_layer=3)
        assert (unmasked - full).abs().max() > 1e-2
        with torch.no_grad():
            models.get_param(model, "blocks.1.mlp.W_out").add_(0.5)
        frozen = fwd.frozen_suffix(fwd.prefix(batch), batch)
        assert torch.allclose(frozen, full, atol=1e-6, rtol=0)
        assert (fwd.suffix(fwd.prefix(batch), batch) - full).abs().max() > 1e-2


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_padding", [True, False])
def test_loss_on_a_batch_equals_the_formula_computed_directly(word_tokenizer, mask_padding):
    """Step 1 (topic 1, after one update on topic 0) against F.mse_loss-style means computed by
    hand from full forward passes of the updated and the frozen model."""
    cfg = rmu.RMUConfig(
        layer=1, steering_coef=(20.0, 30.0), alpha=(50.0, 70.0), lr=1e-2, batch_size=3,
        mask_padding=mask_padding, steps=1,
    )  # fmt: skip
    corpora = ([FORGET_A, FORGET_B], [RETAIN, RETAIN[5:]])
    after_one = rmu.train_rmu(_model(word_tokenizer), *corpora, cfg, progress=False)
    model = _model(word_tokenizer)
    result = rmu.train_rmu(model, *corpora, cfg.__class__(**{**cfg.to_dict(), "steps": 2}), progress=False)  # fmt: skip
    row = result.history.iloc[1]
    assert (row.topic, row.batch) == (1, 0)
    with Variant("after step 0", after_one.unlearned_weights).applied(model):
        h_f, f_mask = _layer_output(model, FORGET_B[:3], layer=1)
        h_r, r_mask = _layer_output(model, RETAIN[5:8], layer=1)
    with Variant("frozen", result.base_weights).applied(model):
        h_r_frozen, _ = _layer_output(model, RETAIN[5:8], layer=1)
    target = 30.0 * result.control_vectors[1]
    if mask_padding:
        w_f, w_r = f_mask.unsqueeze(-1).float(), r_mask.unsqueeze(-1).float()
        forget = (((h_f - target) ** 2) * w_f).sum() / (w_f.sum() * 32)
        retain = (((h_r - h_r_frozen) ** 2) * w_r).sum() / (w_r.sum() * 32)
    else:
        forget = ((h_f - target) ** 2).mean()
        retain = ((h_r - h_r_frozen) ** 2).mean()
    assert (f_mask == 0).any() and (r_mask == 0).any()
    assert retain.item() > 1e-6  # the retain term is live: the weights already moved
    assert row.forget_loss == pytest.approx(forget.item(), rel=1e-5)
    assert row.retain_loss == pytest.approx(retain.item(), rel=1e-4)
    assert row.loss == pytest.approx(forget.item() + 70.0 * retain.item(), rel=1e-4)


def test_rmu_steers_forget_activations_to_c_u_and_keeps_retain_activations(word_tokenizer):
    """The science: with a large coefficient, forget activations at `layer` point along u with
    norm near c, while retain activations stay aligned with the frozen model's."""
    model = _model(word_tokenizer, d_model=64)
    cfg = rmu.RMUConfig(layer=2, steering_coef=100.0, alpha=100.0, lr=1e-2, steps=250)
    result = rmu.train_rmu(model, [FORGET_A], [RETAIN], cfg, progress=False)
    u = result.control_vectors[0]
    h_f, f_mask = _layer_output(model, FORGET_A, layer=2)
    real = f_mask.bool()
    cos_u = torch.nn.functional.cosine_similarity(h_f, u.expand_as(h_f), dim=-1)[real]
    norm = h_f.norm(dim=-1)[real]
    h_r, r_mask = _layer_output(model, RETAIN, layer=2)
    with Variant("frozen", result.base_weights).applied(model):
        h_r_frozen, _ = _layer_output(model, RETAIN, layer=2)
        h_f_frozen, _ = _layer_output(model, FORGET_A, layer=2)
    cos_retain = torch.nn.functional.cosine_similarity(h_r, h_r_frozen, dim=-1)[r_mask.bool()]
    assert cos_u.mean() > 0.9
    assert 85.0 < norm.mean() < 115.0
    assert h_f_frozen.norm(dim=-1)[real].mean() < 20.0  # the norm really was raised
    assert cos_retain.mean() > 0.99
    last = result.history.iloc[-1]
    assert last.cos_forget_u > 0.9 and last.cos_retain_frozen > 0.99


def test_only_w_out_of_update_layers_changes_and_grad_flags_are_restored(word_tokenizer):
    model = _model(word_tokenizer, n_layers=4)
    model.embed.W_E.requires_grad_(False)  # a flag that must come back as it was
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = _params(model)
    cfg = rmu.RMUConfig(layer=2, update_layers=(0, 2), lr=1e-2, steps=4, batch_size=2)
    result = rmu.train_rmu(model, [FORGET_A], [RETAIN], cfg, progress=False)
    trained = {"blocks.0.mlp.W_out", "blocks.2.mlp.W_out"}
    after = _params(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == trained
    assert set(result.unlearned_weights) == set(result.base_weights) == trained
    for name in trained:
        assert torch.equal(result.base_weights[name], before[name])
        assert torch.equal(result.unlearned_weights[name], after[name])
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_topics_alternate_and_batches_are_consecutive_with_wrap_around(word_tokenizer):
    """Each row's frozen forget norm is that of the documents the schedule names."""
    model = _model(word_tokenizer)
    forget = [FORGET_A[:5], FORGET_B[:3]]
    cfg = rmu.RMUConfig(layer=1, steering_coef=10.0, alpha=10.0, steps=6, batch_size=2,
                        frozen_forget_every=1)  # fmt: skip
    history = rmu.train_rmu(model, forget, [RETAIN, RETAIN], cfg, progress=False).history
    assert history.topic.tolist() == [0, 1, 0, 1, 0, 1]
    assert history.batch.tolist() == [0, 0, 1, 1, 2, 2]
    expected_docs = [
        FORGET_A[0:2], FORGET_B[0:2], FORGET_A[2:4], [FORGET_B[2], FORGET_B[0]],
        [FORGET_A[4], FORGET_A[0]], FORGET_B[1:3],
    ]  # fmt: skip
    base = _model(word_tokenizer)  # same seed: the frozen model
    for row, docs in zip(history.itertuples(), expected_docs, strict=True):
        h, mask = _layer_output(base, docs, layer=1)
        assert row.frozen_forget_norm == pytest.approx(rmu.mean_token_norm(h, mask), rel=1e-5)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_adaptive_coefficient_is_beta_times_measured_frozen_norm(word_tokenizer, mask_padding):
    model = _model(word_tokenizer)
    cfg = rmu.RMUConfig(
        layer=1, adaptive_beta=5.0, steering_coef=1.0, steps=2, batch_size=3,
        mask_padding=mask_padding,
    )  # fmt: skip
    result = rmu.train_rmu(model, [FORGET_A, FORGET_B], [RETAIN, RETAIN], cfg, progress=False)
    base = _model(word_tokenizer)
    for topic, corpus in enumerate([FORGET_A, FORGET_B]):
        h, mask = _layer_output(base, corpus[:3], layer=1)
        norms = h.double().norm(dim=-1)
        measured = norms[mask.bool()].mean() if mask_padding else norms.mean()
        assert result.coefficients[topic].item() == pytest.approx(5.0 * measured.item(), rel=1e-6)
    assert result.coefficients[0] != result.coefficients[1]
    assert torch.allclose(result.targets.norm(dim=-1), result.coefficients.float())
    # The first step's target is c_0 u_0: the forget loss says so.
    h, mask = _layer_output(base, FORGET_A[:3], layer=1)
    target = result.targets[0]
    expected = (
        (((h - target) ** 2) * mask.unsqueeze(-1)).sum() / (mask.sum() * 32)
        if mask_padding
        else ((h - target) ** 2).mean()
    )
    assert result.history.forget_loss[0] == pytest.approx(expected.item(), rel=1e-5)


def test_same_seed_and_data_give_bit_identical_weights(word_tokenizer):
    cfg = rmu.RMUConfig(layer=1, steering_coef=20.0, alpha=10.0, lr=1e-2, steps=4, batch_size=2)
    runs = [
        rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
        for _ in range(2)
    ]
    for name, tensor in runs[0].unlearned_weights.items():
        assert torch.equal(tensor, runs[1].unlearned_weights[name])
        assert not torch.equal(tensor, runs[0].base_weights[name])
    assert torch.equal(runs[0].control_vectors, runs[1].control_vectors)
    pd.testing.assert_frame_equal(runs[0].history, runs[1].history)


def test_base_weights_from_the_caller_train_bitwise_the_same_and_are_checked(word_tokenizer):
    """A ``restored_weights`` snapshot as RMU's frozen copy: the same weights and history as
    RMU's own copy; a copy of other tensors or of other values is refused before training."""
    cfg = rmu.RMUConfig(layer=1, steering_coef=20.0, alpha=10.0, lr=1e-2, steps=4, batch_size=2)
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    own = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
    model = _model(word_tokenizer)
    with restored_weights(model, names) as saved:
        shared = rmu.train_rmu(model, [FORGET_A], [RETAIN], cfg, progress=False,
                               base_weights=saved)  # fmt: skip
        assert all(shared.base_weights[n] is saved[n] for n in names)  # no copy of its own
    for name in names:
        assert torch.equal(shared.unlearned_weights[name], own.unlearned_weights[name])
    pd.testing.assert_frame_equal(shared.history, own.history)
    before = _params(model)
    wrong_values = {n: t + 1.0 for n, t in saved.items()}
    other_tensors = {"blocks.0.mlp.W_out": saved[names[0]]}
    for wrong, says in ((other_tensors, "not the trained"), (wrong_values, "differs from")):
        with pytest.raises(ValueError, match=f"base_weights (holds .*, )?{says}"):
            rmu.train_rmu(model, [FORGET_A], [RETAIN], cfg, progress=False, base_weights=wrong)
    assert all(torch.equal(t, _params(model)[n]) for n, t in before.items())


def test_frozen_forget_every_k_trains_bitwise_the_same_weights_and_history(word_tokenizer):
    """Two topics, 10 steps (batches 0..4 of each), diagnostics on every 3rd batch and each
    topic's last step: batches 0, 3, 4 carry the frozen-forget columns, 1 and 2 hold NaN."""
    cfg = rmu.RMUConfig(layer=2, update_layers=(1, 2), steering_coef=20.0, alpha=10.0, lr=1e-2,
                        steps=10, batch_size=2, frozen_forget_every=1)  # fmt: skip
    runs = {}
    for every in (1, 3):
        model = _model(word_tokenizer, rotary=True)
        config = rmu.RMUConfig.from_dict({**cfg.to_dict(), "frozen_forget_every": every})
        runs[every] = (model, rmu.train_rmu(model, [FORGET_A, FORGET_B], [RETAIN] * 2, config,
                                            progress=False))  # fmt: skip
    (model_1, every_step), (model_3, sparse) = runs[1], runs[3]
    for name, tensor in every_step.unlearned_weights.items():
        assert torch.equal(tensor, sparse.unlearned_weights[name])
        assert not torch.equal(tensor, every_step.base_weights[name])
    for (name, p1), (_, p3) in zip(
        model_1.named_parameters(), model_3.named_parameters(), strict=True
    ):
        assert torch.equal(p1, p3), name
    diagnostics = ["frozen_forget_norm", "cos_forget_frozen"]
    assert sparse.history.batch[sparse.history[diagnostics[0]].isna()].tolist() == [1, 1, 2, 2]
    assert sparse.history[diagnostics].isna().sum().tolist() == [4, 4]
    assert every_step.history[diagnostics].notna().all().all()
    kept = sparse.history[diagnostics[0]].notna()
    pd.testing.assert_frame_equal(sparse.history[kept], every_step.history[kept])
    others = [c for c in rmu.HISTORY_COLUMNS if c not in diagnostics]
    pd.testing.assert_frame_equal(sparse.history[others], every_step.history[others])


def test_sparse_diagnostics_history_round_trips_and_still_plots(word_tokenizer, tmp_path):
    from unlearn_interp import analysis, plotting

    cfg = rmu.RMUConfig(layer=1, steering_coef=10.0, steps=6, batch_size=2, frozen_forget_every=2)
    result = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, progress=False)
    assert result.history.frozen_forget_norm.isna().tolist() == [False, True, False, True] + [
        False,
        False,
    ]  # batches 0, 2, 4 and the last step (5)
    result.save(tmp_path / "run")
    loaded = rmu.RMUResult.load(tmp_path / "run")
    pd.testing.assert_frame_equal(loaded.history, result.history, check_dtype=False)
    fig = plotting.plot_training_curves(analysis.training_curves(loaded))
    frozen = [t for t in fig.data if t.legendgroup == "frozen_forget_norm"]
    assert frozen[0].connectgaps  # the points every k steps are drawn as one line
    assert "nan" not in fig.layout.title.text


def test_given_control_vectors_are_normalised_and_used(word_tokenizer):
    given = torch.zeros(1, 32)
    given[0, 3] = 2.0
    cfg = rmu.RMUConfig(layer=1, steering_coef=10.0, steps=1, batch_size=2)
    result = rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, given, progress=False)
    assert torch.equal(result.control_vectors, given / 2.0)
    with pytest.raises(UnlearnInterpError, match="control_vectors has shape"):
        rmu.train_rmu(_model(word_tokenizer), [FORGET_A], [RETAIN], cfg, torch.ones(2, 32))


def test_non_finite_loss_names_the_step_and_restores_base_weights(word_tokenizer):
    model = _model(word_tokenizer)
    before = _params(model)
    calls = {"n": 0}

    def poison(activation, hook):
        calls["n"] += 1  # four layer-1 outputs per step: forget/retain, frozen/updated
        return activation * float("nan") if calls["n"] > 8 else activation

    cfg = rmu.RMUConfig(layer=1, lr=1e-2, steps=5, batch_size=2)
    with (
        model.hooks(fwd_hooks=[(models.resid_hook(1), poison)]),
        pytest.raises(UnlearnInterpError, match=r"step 2 .*not finite|step 2 .*nan"),
    ):
        rmu.train_rmu(model, [FORGET_A], [RETAIN], cfg, progress=False)
    after = _params(model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in model.parameters())


def test_save_load_round_trip_writes_the_run_directory(word_tokenizer, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"organism": {"size": "test"}}))
    cfg = rmu.RMUConfig(layer=1, steering_coef=(10.0, 12.0), steps=3, batch_size=2)
    model = _model(word_tokenizer)
    result = rmu.train_rmu(model, [FORGET_A, FORGET_B], [RETAIN, RETAIN], cfg, progress=False)
    result.save(tmp_path)
    for name in (
        "config.json", "control_vectors.safetensors", "unlearned_weights.safetensors",
        "base_weights.safetensors", "tables/rmu_history.csv",
    ):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["organism"] == {"size": "test"}  # other steps' settings are kept
    assert record["seed"] == 42 and record["rmu"]["steering_coef"] == [10.0, 12.0]
    assert record["model"] == {"name": models.model_name(model), "d_model": 32, "n_layers": 3}
    assert "torch" in record["library_versions"]
    loaded = rmu.RMUResult.load(tmp_path)
    assert loaded.config == cfg
    assert torch.equal(loaded.control_vectors, result.control_vectors)
    assert torch.equal(loaded.coefficients, result.coefficients)
    for name, tensor in result.unlearned_weights.items():
        assert torch.equal(loaded.unlearned_weights[name], tensor)
        assert torch.equal(loaded.base_weights[name], result.base_weights[name])
    pd.testing.assert_frame_equal(loaded.history, result.history, check_dtype=False)
    (tmp_path / "control_vectors.safetensors").unlink()
    with pytest.raises(UnlearnInterpError, match="control_vectors.safetensors"):
        rmu.RMUResult.load(tmp_path)


# --- command line -------------------------------------------------------------------------------


@pytest.fixture
def cli_files(tmp_path, tokenizer):
    from conftest import save_hf_checkpoint

    checkpoint = save_hf_checkpoint("llama", tmp_path / "tiny-llama", tokenizer)
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in FORGET_A))
    retain = tmp_path / "retain.txt"
    retain.write_text("\n".join(RETAIN) + "\n")
    return checkpoint, forget, retain


def test_cli_unlearn_writes_a_loadable_run_directory(cli_files, tmp_path, capsys):
    from unlearn_interp import cli

    checkpoint, forget, retain = cli_files
    out = tmp_path / "run"
    argv = ["-q", "unlearn", "--model", str(checkpoint), "--forget", str(forget), str(forget)]
    argv += ["--retain", str(retain), "--layer", "1", "--steering-coef", "8", "9", "--alpha", "5"]
    argv += ["--steps", "3", "--batch-size", "2", "--max-len", "24", "--device", "cpu"]
    argv += ["--out", str(out), "--seed", "7", "--no-mask-padding"]
    assert cli.main(argv) == 0
    assert "RMU at layer 1, 3 steps" in capsys.readouterr().out
    result = rmu.RMUResult.load(out)
    assert result.config.steering_coef == (8.0, 9.0) and result.config.alpha == 5.0
    assert result.config.update_layers == (0, 1) and result.config.mask_padding is False
    assert result.config.seed == 7 and result.config.lr == 5e-5  # unset: RMUConfig's default
    assert result.history.topic.tolist() == [0, 1, 0]
    assert set(result.unlearned_weights) == {"blocks.0.mlp.W_out", "blocks.1.mlp.W_out"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--layer": "5"}, "layer 5 is out of range"),
        ({"--alpha": "-1"}, "RMUConfig.alpha must be >= 0"),
        ({"--retain": ["R", "R"]}, "--retain needs one file per --forget file"),
        ({"--forget": "empty"}, "empty.txt"),
    ],
)
def test_cli_unlearn_bad_input_is_one_line_and_exit_status_2(
    cli_files, tmp_path, capsys, change, message
):
    from unlearn_interp import cli

    checkpoint, forget, retain = cli_files
    (tmp_path / "empty.txt").write_text("\n\n")
    names = {"R": str(retain), "empty": str(tmp_path / "empty.txt")}
    options = {"--forget": str(forget), "--retain": str(retain), "--layer": "1", "--steps": "1"}
    options.update(change)
    argv = ["-q", "unlearn", "--model", str(checkpoint), "--out", str(tmp_path / "run")]
    for flag, value in options.items():
        argv += [flag, *[names.get(v, v) for v in (value if isinstance(value, list) else [value])]]
    assert cli.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "run" / "unlearned_weights.safetensors").exists()
