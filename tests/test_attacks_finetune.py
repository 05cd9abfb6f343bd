"""Fine-tuning attacks (unlearn_interp.attacks.finetune): weights always restored, RTT on the base
organism keeps V, training does something, "mlp_out" trains only W_out, bad settings fail in
one sentence."""

from __future__ import annotations

import pytest
import torch

from unlearn_interp import evaluation, models, training
from unlearn_interp.attacks.finetune import (
    FinetuneConfig,
    finetune_curve,
    finetuned_variant,
    lr_grid,
    relearning_attack,
)
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.variants import Variant, applied

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A multiple choice question about biology has four answers.",
    "Residual streams carry information between transformer blocks.",
]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_identical(model, before: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def _loss(texts):
    return lambda m: {"loss": evaluation.retain_loss(m, texts, max_len=32, progress=False)}


def _split(org):
    """{"T": items, "V": items} and the forget documents about T, split by entity: the
    oracle module's split when it exists, else the first half of the entities is T."""
    try:
        from unlearn_interp.organism import oracle
    except ImportError:
        facts = org.world.facts_in("hazardous")
        entities = sorted({f.entity for f in facts})
        t_entities = set(entities[: len(entities) // 2])
        items = {"T": [], "V": []}
        for fact, item in zip(facts, org.hazardous_mcq, strict=True):
            items["T" if fact.entity in t_entities else "V"].append(item)
        docs = [d for d in org.forget_corpus if any(e in d for e in t_entities)]
        return items, docs
    split = oracle.split_facts(org.world)
    return oracle.split_items(org, split), oracle.t_documents(org, split)


def test_weights_bit_identical_after_return_and_after_error(tiny_model):
    before = _state(tiny_model)
    variant = Variant("shifted", {"blocks.0.mlp.W_out": before["blocks.0.mlp.W_out"] + 1.0})
    cfg = FinetuneConfig(steps=4, lr=1e-2, batch_size=2, max_len=16, eval_every=2)
    curve = finetune_curve(tiny_model, variant, TEXTS, cfg, _loss(TEXTS))
    assert curve["step"].tolist() == [0, 2, 4]
    _assert_identical(tiny_model, before)

    calls = []

    def failing(model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("evaluation broke")
        return {"x": 0.0}

    with pytest.raises(RuntimeError, match="evaluation broke"):
        finetune_curve(tiny_model, variant, TEXTS, cfg, failing)
    _assert_identical(tiny_model, before)
    assert all(not p.requires_grad or p.grad is None for p in tiny_model.parameters())


def test_training_lowers_the_loss_on_its_text(tiny_model):
    cfg = FinetuneConfig(steps=10, lr=1e-2, batch_size=3, max_len=32, eval_every=10)
    curve = finetune_curve(tiny_model, None, TEXTS, cfg, _loss(TEXTS))
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0] - 0.5


def test_finetuned_variant_keeps_the_trained_weights_and_restores_the_model(tiny_model):
    before = _state(tiny_model)
    cfg = FinetuneConfig(steps=10, lr=1e-2, batch_size=3, max_len=32, eval_every=2)
    tuned = finetuned_variant(tiny_model, Variant("start"), TEXTS, cfg, "tuned")
    _assert_identical(tiny_model, before)
    assert tuned.name == "tuned" and set(tuned.weights) == set(before)
    losses = {}
    for variant in (Variant("start"), tuned):
        with applied(variant, tiny_model):
            losses[variant.name] = _loss(TEXTS)(tiny_model)["loss"]
    curve = finetune_curve(tiny_model, None, TEXTS, cfg, _loss(TEXTS))
    assert losses["start"] == pytest.approx(curve["loss"].iloc[0])
    assert losses["tuned"] == pytest.approx(curve["loss"].iloc[-1])  # the same run, kept
    assert losses["tuned"] < losses["start"] - 0.5


def test_mlp_out_trains_only_w_out(tiny_model):
    before = _state(tiny_model)
    changed = {}

    def record(model):
        changed.update({n: not torch.equal(p, before[n]) for n, p in model.named_parameters()})
        return {}

    cfg = FinetuneConfig(steps=2, lr=1e-2, batch_size=2, max_len=16, params="mlp_out")
    finetune_curve(tiny_model, None, TEXTS, cfg, record)
    w_out = {models.mlp_out_param(layer) for layer in range(models.n_layers(tiny_model))}
    assert {n for n, c in changed.items() if c} == w_out
    _assert_identical(tiny_model, before)


def test_batches_are_seeded_and_cover_every_text():
    draw = training.text_batches(TEXTS, 2, seed=3)
    first = [next(draw) for _ in range(3)]
    again = training.text_batches(TEXTS, 2, seed=3)
    assert [next(again) for _ in range(3)] == first
    assert sorted(sum(first, [])) == sorted(TEXTS * 2)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"steps": 0}, "FinetuneConfig.steps must be a positive integer"),
        ({"batch_size": True}, "FinetuneConfig.batch_size must be a positive integer"),
        ({"lr": float("nan")}, "FinetuneConfig.lr must be a positive finite number"),
        ({"lr": -1e-3}, "FinetuneConfig.lr must be a positive finite number"),
        ({"params": "mlp"}, "FinetuneConfig.params must be 'all' or 'mlp_out'"),
        ({"seed": -1}, "FinetuneConfig.seed must be a non-negative integer"),
    ],
)
def test_bad_config_is_one_sentence(change, words):
    with pytest.raises(UnlearnInterpError) as err:
        FinetuneConfig(**change)
    assert str(err.value).startswith(words) and "\n" not in str(err.value)


def test_bad_inputs_are_one_sentence(tiny_model):
    cfg = FinetuneConfig(steps=1)
    with pytest.raises(UnlearnInterpError, match="texts must be a non-empty list"):
        finetune_curve(tiny_model, None, [], cfg, _loss(TEXTS))
    with pytest.raises(UnlearnInterpError, match="contains a learning rate twice"):
        lr_grid(lambda c: None, cfg, [1e-3, 1e-3])
    one = FinetuneConfig(steps=1, batch_size=2, max_len=16)
    before = _state(tiny_model)
    with torch.no_grad():
        tiny_model.get_parameter("blocks.0.mlp.W_out").fill_(float("inf"))
    with pytest.raises(UnlearnInterpError, match="the fine-tuning loss at step 1 is (nan|inf)"):
        finetune_curve(tiny_model, None, TEXTS, one, lambda m: {})
    assert torch.isinf(tiny_model.get_parameter("blocks.0.mlp.W_out")).all()
    with torch.no_grad():
        tiny_model.get_parameter("blocks.0.mlp.W_out").copy_(before["blocks.0.mlp.W_out"])


def test_rtt_on_the_base_organism_keeps_v(organism_test):
    org = organism_test
    items, t_docs = _split(org)
    before = _state(org.model)
    cfg = FinetuneConfig(steps=20, lr=1e-3, batch_size=4, max_len=128, eval_every=20)
    kwargs = {"mode": org.mcq_mode, "prompt_template": org.qa_template, "batch_size": 32}
    curve = lr_grid(
        lambda c: relearning_attack(org.model, None, t_docs, items, c, kwargs), cfg, [1e-3]
    )
    assert list(curve.columns) == ["lr", "step", "task", "accuracy", "n"]
    acc = curve.set_index(["step", "task"])["accuracy"]
    assert acc[(20, "V")] >= acc[(0, "V")] - 0.05
    assert acc[(20, "T")] >= acc[(0, "T")] - 0.05
    _assert_identical(org.model, before)
