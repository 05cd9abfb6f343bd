"""Logit lens and tuned lens per layer (analysis.lens, analysis.tuned_lens) on the test organism:
the last layer is the model's own prediction, a zero tuned lens is the logit lens, a fitted one
is closer to the final layer on held-out text, the lens round-trips through safetensors, and
bad input fails in one sentence."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from unlearn_interp import activations, data, models, rmu
from unlearn_interp.analysis import questions
from unlearn_interp.analysis.lens import (
    COLUMNS,
    ITEM_COLUMNS,
    answer_scores,
    decision_questions,
    lens_items,
    logit_lens,
)
from unlearn_interp.analysis.questions import QuestionSet, question_set
from unlearn_interp.analysis.tuned_lens import TunedLens, fit_tuned_lens, lens_kl
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline.organism_demo import organism_rmu_config
from unlearn_interp.variants import Variant, applied, restore_weights

MIDDLE = 1  # a middle layer of the 4-layer test organism (its RMU layer is 2)


@pytest.fixture(scope="module")
def org(organism_test):
    return organism_test


@pytest.fixture(scope="module")
def rmu_variant(org):
    """The organism's RMU recipe (seeded), shortened to 100 steps; the shared model is put back
    on its base weights."""
    cfg = organism_rmu_config(org)
    cfg = rmu.RMUConfig(**{**cfg.to_dict(), "steps": 100})
    result = rmu.train_rmu(org.model, [org.forget_corpus], [org.retain_corpus], cfg, progress=False)
    restore_weights(org.model, result.base_weights)
    return Variant("rmu", weights=result.unlearned_weights)


@pytest.fixture(scope="module")
def question_sets(org):
    groups = [f.entity for f in org.world.facts_in("hazardous")]
    first = {
        "hazardous": question_set(org.model, org.hazardous_mcq, org.mcq_mode, org.qa_template,
                                  groups=groups),
        "benign": question_set(org.model, org.benign_mcq, org.mcq_mode, org.qa_template),
    }  # fmt: skip
    decision = {
        "hazardous": decision_questions(org.model, org.hazardous_mcq, org.mcq_mode,
                                        org.qa_template, groups=groups),
        "benign": decision_questions(org.model, org.benign_mcq, org.mcq_mode, org.qa_template),
    }  # fmt: skip
    return {"first": first, "decision": decision}


@pytest.fixture(scope="module")
def texts(org):
    """Retain text: the first three quarters fit the tuned lens, the rest is held out."""
    cut = len(org.retain_corpus) * 3 // 4
    return {"train": org.retain_corpus[:cut], "held_out": org.retain_corpus[cut:]}


@pytest.fixture(scope="module")
def fitted(org, texts):
    return fit_tuned_lens(org.model, texts["train"], layers=[MIDDLE], steps=60, progress=False)


def own_ranks(model, qs: QuestionSet, variant) -> torch.Tensor:
    """Rank of each answer's scored token in the model's full forward pass (its prediction)."""
    batch = data.left_pad(qs.contexts, data.pad_token_id(model.tokenizer))
    with torch.no_grad(), applied(variant, model):
        logprobs = activations.last_logprobs(model, batch, 1)[:, 0]
    return torch.tensor(answer_scores(logprobs, qs)["rank"].tolist())


def distinct_share(qs: QuestionSet) -> float:
    """Fraction of questions whose scored choice tokens are all different."""
    tokens = qs.choice_tokens
    same = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).sum(dim=(1, 2))
    return float((same == tokens.shape[1]).float().mean())


# ---------------------------------------------------------------------------------------------
# The logit lens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["first", "decision"])
def test_last_layer_rank_equals_the_models_own_prediction_rank(org, rmu_variant, question_sets,
                                                               kind):  # fmt: skip
    last = models.n_layers(org.model) - 1
    variants = [Variant("base"), rmu_variant]
    items = lens_items(org.model, variants, question_sets[kind], layers=[last])
    assert list(items.columns) == list(ITEM_COLUMNS)
    for variant in variants:
        for name, qs in question_sets[kind].items():
            rows = items[(items["variant"] == variant.name) & (items["prompt_set"] == name)]
            lens_ranks = torch.tensor(rows.sort_values("item")["rank"].tolist())
            assert torch.equal(lens_ranks, own_ranks(org.model, qs, variant)), (variant, name)


def test_decision_tokens_separate_the_choices_where_first_tokens_do_not(question_sets):
    first, decision = question_sets["first"]["hazardous"], question_sets["decision"]["hazardous"]
    assert distinct_share(first) < 0.5  # most choices start with " the"
    assert distinct_share(decision) >= 0.8
    assert torch.equal(first.answers, decision.answers) and first.groups == decision.groups
    for short, long in zip(first.contexts, decision.contexts, strict=True):
        assert long[: len(short)] == short


def test_a_residual_store_runs_each_context_once_and_gives_the_same_residuals(
    org, rmu_variant, question_sets, monkeypatch
):
    first, decision = question_sets["first"]["hazardous"], question_sets["decision"]["hazardous"]
    plain = questions.question_resid(org.model, decision, rmu_variant, layers=[1, 3])
    batches = []
    run = questions.capture_resid

    def counted(model, batch, *args):
        batches.append(len(batch.tokens))
        run(model, batch, *args)

    monkeypatch.setattr(questions, "capture_resid", counted)
    store = questions.ResidStore()
    stored = questions.question_resid(org.model, decision, rmu_variant, [1, 3], 32, store)
    assert sum(batches) == len(set(decision.contexts))
    torch.testing.assert_close(stored, plain, rtol=0, atol=1e-5)
    again = questions.question_resid(org.model, decision, rmu_variant, [1, 3], 32, store)
    assert sum(batches) == len(set(decision.contexts)) and torch.equal(again, stored)
    questions.question_resid(org.model, first, rmu_variant, [1, 3], 32, store)  # shorter contexts
    assert sum(batches) == len(set(decision.contexts) | set(first.contexts))
    questions.question_resid(org.model, decision, Variant("base"), [1, 3], 32, store)
    assert sum(batches) == len(set(decision.contexts) | set(first.contexts)) + len(
        set(decision.contexts)
    )  # another variant is another forward pass


def test_logit_lens_table_reads_base_knowledge_and_rmu_forgetting(org, rmu_variant, question_sets):
    table = logit_lens(org.model, [Variant("base"), rmu_variant], question_sets["decision"],
                       n_boot=200)  # fmt: skip
    n_layers = models.n_layers(org.model)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 2 * 2 * n_layers and set(table["lens"]) == {"logit"}
    assert (table["n"] == 40).all()
    assert ((table["ci_low"] <= table["choice_accuracy"]) &
            (table["choice_accuracy"] <= table["ci_high"])).all()  # fmt: skip
    last = table[table["layer"] == n_layers - 1].set_index(["variant", "prompt_set"])
    assert last.loc[("base", "hazardous"), "choice_accuracy"] >= 0.85
    assert last.loc[("base", "benign"), "choice_accuracy"] >= 0.85
    forgotten = (
        last.loc[("base", "hazardous"), "choice_accuracy"]
        - last.loc[("rmu", "hazardous"), "choice_accuracy"]
    )
    assert forgotten >= 0.3
    assert last.loc[("rmu", "hazardous"), "answer_rank_mean"] > 10 * max(
        last.loc[("base", "hazardous"), "answer_rank_mean"], 0.1
    )


def test_answer_scores_count_strictly_better_tokens_and_ties_lose():
    logprobs = torch.log_softmax(torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 2.0]]), -1)
    qs = QuestionSet(((1,), (1,)), torch.tensor([[1, 2], [0, 1]]), torch.tensor([0, 1]), ("a", "b"))
    scores = answer_scores(logprobs, qs)
    assert scores["rank"].tolist() == [2, 1]  # token 1 is third in row 0; token 1 ties token 0
    assert scores["correct"].tolist() == [0, 0]  # row 0: token 2 beats it; row 1: a tie loses
    assert scores["logprob"][0] == pytest.approx(float(logprobs[0, 1]))


# ---------------------------------------------------------------------------------------------
# The tuned lens
# ---------------------------------------------------------------------------------------------


def test_a_zero_tuned_lens_reproduces_the_logit_lens_exactly(org, question_sets):
    lens = TunedLens.zeros(range(models.n_layers(org.model)), models.d_model(org.model))
    table = logit_lens(org.model, [Variant("base")], question_sets["decision"], lens=lens,
                       n_boot=50)  # fmt: skip
    keys = ["variant", "prompt_set", "layer"]
    logit = table[table["lens"] == "logit"].drop(columns="lens").set_index(keys)
    tuned = table[table["lens"] == "tuned"].drop(columns="lens").set_index(keys)
    pd.testing.assert_frame_equal(logit, tuned, check_exact=True)


def test_tuned_lens_is_closer_to_the_final_layer_on_held_out_text(org, texts, fitted):
    held_out = texts["held_out"]
    kl = pd.concat([lens_kl(org.model, None, held_out, layers=[MIDDLE]),
                    lens_kl(org.model, fitted, held_out)]).set_index("lens")  # fmt: skip
    assert list(kl["layer"]) == [MIDDLE, MIDDLE] and (kl["n_tokens"] > 100).all()
    assert kl.loc["tuned", "kl"] < 0.75 * kl.loc["logit", "kl"]
    assert fitted.settings["final_loss"] < fitted.settings["first_loss"]
    last = models.n_layers(org.model) - 1
    at_last = lens_kl(org.model, None, texts["held_out"], layers=[last])
    assert at_last["kl"].tolist() == [pytest.approx(0.0, abs=1e-6)]  # the last layer IS the model


def test_max_tokens_subsamples_the_tokens_of_each_step(org, texts, fitted):
    kwargs = dict(layers=[MIDDLE], steps=60, progress=False)
    roomy = fit_tuned_lens(org.model, texts["train"], max_tokens=10**6, **kwargs)
    assert torch.equal(roomy.A, fitted.A) and torch.equal(roomy.b, fitted.b)  # nothing dropped
    sampled = fit_tuned_lens(org.model, texts["train"], max_tokens=32, **kwargs)
    assert not torch.equal(sampled.A, fitted.A) and sampled.settings["max_tokens"] == 32
    held_out = texts["held_out"]
    logit = lens_kl(org.model, None, held_out, layers=[MIDDLE])["kl"].item()
    assert lens_kl(org.model, sampled, held_out)["kl"].item() < logit


def test_fitting_leaves_the_model_untouched(org, texts):
    """No weight moves and no gradient reaches the model (whatever .grad earlier training left)."""
    params = dict(org.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
    fit_tuned_lens(org.model, texts["train"][:8], layers=[0], steps=2, progress=False)
    for name, param in params.items():
        assert torch.equal(param, before[name]), name
        if grads[name] is None:
            assert param.grad is None, name
        else:
            assert torch.equal(param.grad, grads[name]), name


def test_tuned_lens_round_trips_through_safetensors(fitted, tmp_path):
    assert fitted.A.abs().max() > 0  # a fitted lens, not the zeros
    path = fitted.save(tmp_path)
    assert path.name == "tuned_lens.safetensors" and (tmp_path / "tuned_lens.json").is_file()
    again = TunedLens.load(tmp_path)
    assert again.layers == fitted.layers and again.settings == fitted.settings
    assert torch.equal(again.A, fitted.A) and torch.equal(again.b, fitted.b)
    h = torch.randn(3, fitted.d_model)
    assert torch.equal(again.apply(MIDDLE, h), fitted.apply(MIDDLE, h))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_fails_in_one_sentence(org, question_sets, texts, fitted, tmp_path):
    model, qs = org.model, question_sets["decision"]
    base = [Variant("base")]
    cases = [
        (lambda: logit_lens(model, base, qs, layers=[99]), "layer"),
        (lambda: logit_lens(model, base, qs, layers=[0], lens=fitted), "no translator for layer 0"),
        (lambda: logit_lens(model, [], qs), "at least one variant"),
        (lambda: logit_lens(model, base, {}), "at least one question set"),
        (lambda: fit_tuned_lens(model, [], progress=False), "texts is empty"),
        (lambda: fit_tuned_lens(model, texts["train"], layers=[-1], progress=False), "layer"),
        (lambda: fit_tuned_lens(model, texts["train"], lr=math.nan, progress=False), "lr"),
        (lambda: lens_kl(model, None, []), "texts is empty"),
        (lambda: TunedLens.load(tmp_path), "does not exist"),
        (lambda: TunedLens((0,), torch.full((1, 4, 4), math.nan), torch.zeros(1, 4)), "NaN"),
    ]
    for call, words in cases:
        with pytest.raises(UnlearnInterpError, match=words):
            call()


def test_a_nan_loss_stops_fitting_with_one_sentence(org, texts):
    """A variant that breaks the model (NaN after block 0) makes every target NaN."""
    broken = Variant("broken", hooks=((models.resid_hook(0), lambda x, hook: x * math.nan),))
    with pytest.raises(UnlearnInterpError, match="tuned-lens loss at layer 1 is nan"):
        fit_tuned_lens(org.model, texts["train"], layers=[1], steps=3, variant=broken,
                       progress=False)  # fmt: skip
