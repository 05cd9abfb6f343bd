"""MCQ scoring identical to lm-evaluation-harness, batching, continuation scoring, hooks,
generation, confidence, retain loss and the ``evaluate`` command."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_hf_checkpoint

from unlearn_interp import activations, cli, data, evaluation, models, stats
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation import scoring
from unlearn_interp.interventions import Variant, add_vector_hook, project_out_hook

WORDS = [
    "fox",
    "dog",
    "cat",
    "bird",
    "zorb",
    "quill",
    "mave",
    "trent",
    "virus",
    "agent",
    "gene",
    "cell",
    "host",
    "spore",
    "toxin",
    "lab",
]


def make_items(n: int, seed: int = 0, subject: str | None = "biology") -> list[MCQItem]:
    """``n`` fictional questions of varied length (so batches need padding)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        choices = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(4)]
        items.append(MCQItem(f"Which {words} is number {i}?", choices, rng.randrange(4), subject))
    return items


ITEMS = make_items(24)
# Text the "letter" tokenizers learn from, so that " A" .. " D" become single tokens.
LETTER_CORPUS = [data.mcq_prompt(item) + " " + "ABCD"[item.answer] for item in make_items(60, 1)]


@pytest.fixture(scope="session")
def letter_tokenizer():
    """GPT-2-like: no BOS added; the letters are single tokens."""
    tok = data.train_tokenizer(LETTER_CORPUS, vocab_size=400, add_bos=False)
    assert all(len(tok(f" {x}", add_special_tokens=False)["input_ids"]) == 1 for x in "ABCD")
    return tok


@pytest.fixture(scope="session")
def letter_bos_tokenizer():
    """Llama-like: BOS added by the post-processor; the letters are single tokens."""
    tok = data.train_tokenizer(LETTER_CORPUS, vocab_size=400, add_bos=True)
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    return tok


def small_model(tokenizer, **kwargs):
    cfg = dict(n_layers=2, d_model=32, n_heads=4, n_ctx=256, tokenizer=tokenizer)
    return models.random_model(**{**cfg, **kwargs})


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ---------------------------------------------------------------------------------------------
# Cross-check against lm-evaluation-harness
# ---------------------------------------------------------------------------------------------


def seeded_checkpoint(family, path, tokenizer, std=1.0, seed=1):
    """A tiny HF checkpoint with weights drawn larger than the default init, so its predictions
    depend on the question and their margins stand far above float noise."""
    import transformers

    save_hf_checkpoint(family, path, tokenizer, seed=seed)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in hf.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    hf.save_pretrained(path)
    return path


def write_wmdp_jsonl(path, items):
    rows = [{"question": i.question, "choices": list(i.choices), "answer": i.answer} for i in items]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def lm_eval_samples(tmp_path, ckpt, data_file, task_yaml, add_bos_token=None):
    """Run lm-evaluation-harness's own task (``task_yaml`` from its package, with the dataset
    pointed at ``data_file``) on ``ckpt``, offline; its logged samples ordered by document."""
    lm_eval = pytest.importorskip("lm_eval")
    from pathlib import Path

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    source = Path(lm_eval.__file__).parent / "tasks" / task_yaml
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir(exist_ok=True)
    name = f"local_{task_dir.parent.name}_{source.stem}".replace("-", "_")
    (task_dir / f"{name}.yaml").write_text(
        f"include: {json.dumps(str(source))}\n"
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(data_file))}, dev: {json.dumps(str(data_file))}}}\n"
        f"  cache_dir: {json.dumps(str(tmp_path / 'hf_datasets'))}\n"
    )
    extra = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
    lm = HFLM(pretrained=str(ckpt), device="cpu", batch_size=8, **extra)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[name], task_manager=manager, log_samples=True, bootstrap_iters=0
    )
    return sorted(results["samples"][name], key=lambda s: s["doc_id"])


CROSS_CHECK_CASES = {
    # family, tokenizer fixture, add_bos, letters one token?
    "gpt2-no-bos": ("gpt2", "letter_tokenizer", None, True),
    "llama-bos": ("llama", "letter_bos_tokenizer", None, True),
    "llama-bos-disabled": ("llama", "letter_bos_tokenizer", False, True),
    "llama-multi-token-letters": ("llama", "tokenizer", None, False),
}


@pytest.mark.parametrize("case", sorted(CROSS_CHECK_CASES))
def test_letter_predictions_equal_lm_evaluation_harness_item_for_item(request, tmp_path, case):
    family, tok_fixture, add_bos, single = CROSS_CHECK_CASES[case]
    tokenizer = request.getfixturevalue(tok_fixture)
    assert evaluation.encode_requests(tokenizer, ["Answer:"], [[" A", " B"]])[0].shared == single
    ckpt = seeded_checkpoint(family, tmp_path / "ckpt", tokenizer)
    data_file = write_wmdp_jsonl(tmp_path / "wmdp_bio.jsonl", ITEMS)
    samples = lm_eval_samples(tmp_path, ckpt, data_file, "wmdp/wmdp_bio.yaml", add_bos)

    model = models.load_model(ckpt, device="cpu")
    items = data.load_mcq(data_file)
    ours = evaluation.mcq_accuracy(model, items, batch_size=5, progress=False, add_bos=add_bos)

    assert [s["arguments"][0][0] for s in samples] == [data.mcq_prompt(i) for i in items]
    theirs = np.array([[ll for ll, _ in s["filtered_resps"]] for s in samples])
    mine = ours.per_item[[f"logprob_{x}" for x in "ABCD"]].to_numpy()
    assert ours.per_item["predicted"].tolist() == theirs.argmax(1).tolist()
    assert ours.per_item["predicted"].nunique() > 1  # otherwise equality proves little
    np.testing.assert_allclose(mine, theirs, rtol=5e-5, atol=1e-4)
    their_acc = np.mean([s["acc"] for s in samples])
    assert ours.accuracy == pytest.approx(their_acc)


def test_continuation_scores_equal_lm_evaluation_harness_mmlu_continuation(
    tmp_path, letter_tokenizer
):
    ckpt = seeded_checkpoint("gpt2", tmp_path / "ckpt", letter_tokenizer)
    items = [MCQItem(i.question, i.choices, i.answer, "anatomy") for i in ITEMS[:12]]
    data_file = write_wmdp_jsonl(tmp_path / "anatomy.jsonl", items)
    samples = lm_eval_samples(tmp_path, ckpt, data_file, "mmlu/continuation/mmlu_anatomy.yaml")

    model = models.load_model(ckpt, device="cpu")
    ours = evaluation.mcq_accuracy(
        model,
        items,
        mode="continuation",
        prompt_template=evaluation.MMLU_CONTINUATION_TEMPLATE,
        progress=False,
    )
    theirs = np.array([[ll for ll, _ in s["filtered_resps"]] for s in samples])
    mine = ours.per_item[[f"logprob_{x}" for x in "ABCD"]].to_numpy()
    np.testing.assert_allclose(mine, theirs, rtol=5e-5, atol=1e-4)
    assert ours.per_item["predicted"].tolist() == theirs.argmax(1).tolist()
    assert ours.per_item["predicted"].nunique() > 1


# ---------------------------------------------------------------------------------------------
# Letter scoring: one forward pass, batching, agreement with a naive scorer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tok_fixture", "letter_tokens"), [("letter_tokenizer", 1), ("tokenizer", 2)]
)
def test_letter_mode_runs_each_question_once_and_only_the_rest_of_longer_letters_on_top(
    request, tok_fixture, letter_tokens
):
    tokenizer = request.getfixturevalue(tok_fixture)
    assert len(tokenizer(" A", add_special_tokens=False)["input_ids"]) == letter_tokens
    model = small_model(tokenizer)
    seen = []
    hook = ("hook_embed", lambda x, hook: seen.append(tuple(x.shape[:2])))
    evaluation.mcq_accuracy(model, ITEMS[:10], batch_size=4, fwd_hooks=[hook], progress=False)
    # Whole questions are many tokens wide; a letter's tokens after its first are 1 wide here.
    questions = [rows for rows, width in seen if width > 1]
    letters = [rows for rows, width in seen if width == 1]
    assert sum(questions) == 10 and len(questions) >= 3  # each question once, <= 4 per batch
    assert sum(letters) == 10 * 4 * (letter_tokens - 1)
    assert max(rows for rows, _ in seen) <= 4
    assert no_hooks_left(model)


@torch.no_grad()
def naive_scores(model, items, mode="letter"):
    """One unpadded forward per choice over the whole of context + continuation."""
    out = []
    for item in items:
        if mode == "letter":
            ctx, conts = data.mcq_prompt(item), [f" {x}" for x in item.letters]
        else:
            ctx, conts = evaluation.qa_prompt(item), [f" {c}" for c in item.choices]
        n_ctx = len(model.tokenizer(ctx)["input_ids"])
        row = []
        for cont in conts:
            ids = torch.tensor([model.tokenizer(ctx + cont)["input_ids"]])
            lp = model(ids)[0].log_softmax(-1)
            row.append(sum(float(lp[p - 1, ids[0, p]]) for p in range(n_ctx, ids.shape[1])))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("mode", ["letter", "continuation"])
@pytest.mark.parametrize("tok_fixture", ["letter_bos_tokenizer", "tokenizer"])
def test_batched_scores_equal_unbatched_and_naive_per_choice_scores(request, mode, tok_fixture):
    model = small_model(request.getfixturevalue(tok_fixture))
    items = ITEMS[:9]
    cols = [f"logprob_{x}" for x in "ABCD"]
    batched = evaluation.mcq_accuracy(model, items, mode, batch_size=4, progress=False)
    single = evaluation.mcq_accuracy(model, items, mode, batch_size=1, progress=False)
    np.testing.assert_allclose(batched.per_item[cols], single.per_item[cols], atol=1e-5)
    np.testing.assert_allclose(batched.per_item[cols], naive_scores(model, items, mode), atol=1e-4)
    assert batched.per_item["predicted"].tolist() == single.per_item["predicted"].tolist()


def test_per_item_and_per_subject_tables(letter_tokenizer):
    model = small_model(letter_tokenizer)
    items = [
        MCQItem(i.question, i.choices, i.answer, s)
        for i, s in zip(ITEMS[:6], "xxyyyy", strict=True)
    ]
    res = evaluation.mcq_accuracy(model, items, progress=False)
    assert list(res.per_item.columns[:5]) == ["item", "subject", "answer", "predicted", "correct"]
    assert res.per_subject["n"].tolist() == [2, 4]
    assert res.accuracy == pytest.approx(res.per_item["correct"].mean())
    assert (res.per_item["correct"] == (res.per_item["answer"] == res.per_item["predicted"])).all()
    assert res.n == 6 and res.mode == "letter" and res.accuracy_norm is None


def test_letter_mode_without_subject_is_an_error(letter_tokenizer):
    model = small_model(letter_tokenizer)
    with pytest.raises(UnlearnInterpError, match="subject"):
        evaluation.mcq_accuracy(model, make_items(2, subject=None), progress=False)
    res = evaluation.mcq_accuracy(
        model, make_items(2, subject=None), subject="biology", progress=False
    )
    assert set(res.per_item["subject"]) == {"biology"}


def test_bad_mode_and_batch_size_are_errors(letter_tokenizer):
    model = small_model(letter_tokenizer)
    with pytest.raises(UnlearnInterpError, match="mode"):
        evaluation.mcq_accuracy(model, ITEMS[:2], mode="letters")
    with pytest.raises(UnlearnInterpError, match="batch_size"):
        evaluation.mcq_accuracy(model, ITEMS[:2], batch_size=0)


def test_encode_requests_moves_trailing_space_and_follows_bos_rules(letter_bos_tokenizer):
    tok = letter_bos_tokenizer
    (req,) = evaluation.encode_requests(tok, ["Answer: "], [["A"]])
    assert req.context == tuple(tok("Answer:")["input_ids"])
    assert req.continuations[0] == tuple(tok(" A", add_special_tokens=False)["input_ids"])
    (no_bos,) = evaluation.encode_requests(tok, ["Answer:"], [[" A"]], add_bos=False)
    assert no_bos.context == req.context[1:]
    (already,) = evaluation.encode_requests(tok, [tok.bos_token + "Answer:"], [[" A"]])
    assert already.context == req.context  # no second BOS when the text starts with it


# ---------------------------------------------------------------------------------------------
# Continuation scoring on a context cache: each context once, the continuations on top
# ---------------------------------------------------------------------------------------------


def random_requests(vocab: int, n_ctx: int, seed: int = 0) -> list[evaluation.Request]:
    """Random token-id questions: contexts of 1-60 tokens with four choices of 1-6 tokens (mixed
    lengths in one batch), plus the edge cases of the context window and of shared scoring."""
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> tuple[int, ...]:
        return tuple(rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi)))

    requests = [
        evaluation.Request(ids(1, 60), tuple(ids(1, 6) for _ in range(4))) for _ in range(20)
    ]
    return requests + [
        # truncated on the left, as the harness does: scored as one full row per choice
        evaluation.Request(ids(n_ctx + 9, n_ctx + 9), (ids(2, 2), ids(5, 5), ids(1, 1))),
        # the longest choice just fits untruncated: context + 3 tokens = n_ctx inputs
        evaluation.Request(ids(n_ctx - 3, n_ctx - 3), (ids(4, 4), ids(2, 2))),
        # every choice one token: one row for all of them
        evaluation.Request(ids(15, 15), tuple(ids(1, 1) for _ in range(4))),
    ]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # learned positions; rotary + grouped-query
def test_context_cache_scores_equal_one_full_row_per_choice_within_1e_4(
    tmp_path, tokenizer, family
):
    ckpt = seeded_checkpoint(family, tmp_path / family, tokenizer, std=0.3)
    model = models.load_model(ckpt, device="cpu")
    items = ITEMS[:8]
    requests = random_requests(len(tokenizer), model.cfg.n_ctx) + evaluation.encode_requests(
        tokenizer,
        [evaluation.qa_prompt(i) for i in items],
        [[f" {c}" for c in i.choices] for i in items],
    )
    assert sum(not r.shared for r in requests) > 20 and any(r.shared for r in requests)
    rows = evaluation.score_requests(model, requests, 5, progress=False, reuse_context=False)
    assert len({int(np.argmax(s)) for s in rows}) > 1  # otherwise equal predictions prove little
    for batch_size in (1, 3, 64):  # one question per batch, batches that split questions, all
        cached = evaluation.score_requests(model, requests, batch_size, progress=False)
        assert max_abs_diff(cached, rows) < 1e-4
        assert [int(np.argmax(s)) for s in cached] == [int(np.argmax(s)) for s in rows]

    push, direction = torch.randn(2, model.cfg.d_model)
    hooks = [
        ("blocks.0.hook_resid_post", add_vector_hook(push)),
        ("blocks.1.hook_resid_pre", project_out_hook(direction / direction.norm())),
    ]
    with model.hooks(fwd_hooks=hooks):
        hooked_rows = evaluation.score_requests(
            model, requests, 5, progress=False, reuse_context=False
        )
        hooked = evaluation.score_requests(model, requests, 5, progress=False)
    assert max_abs_diff(hooked_rows, rows) > 1e-2
    assert max_abs_diff(hooked, hooked_rows) < 1e-4
    assert no_hooks_left(model)


def padded_cost(lengths, groups, call_cost):
    return sum(len(g) * max(lengths[i] for i in g) + call_cost for g in groups)


@pytest.mark.parametrize("call_cost", [0, 7, 1000])
def test_length_groups_are_the_batches_of_least_padding(call_cost):
    rng = random.Random(call_cost)
    for _ in range(40):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 9))]
        groups = scoring.length_groups(lengths, 3, call_cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert max(len(g) for g in groups) <= 3
        order = [i for g in groups for i in g]  # longest first, batches consecutive
        assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
        # every way to cut the sorted list into consecutive batches of <= 3 costs as much or more
        n, best = len(lengths), float("inf")
        for cuts in itertools.product([False, True], repeat=n - 1):
            bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
            parts = [order[a:b] for a, b in itertools.pairwise(bounds)]
            if max(len(p) for p in parts) <= 3:
                best = min(best, padded_cost(lengths, parts, call_cost))
        assert padded_cost(lengths, groups, call_cost) == best
    assert scoring.length_groups([], 3, 0) == []
    assert len(scoring.length_groups([9] * 7, 3, 1000)) == 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # learned positions; rotary + grouped-query
def test_shared_prompt_prefix_runs_once_and_scores_stay_within_1e_4(
    tmp_path, monkeypatch, letter_tokenizer, family
):
    ckpt = seeded_checkpoint(family, tmp_path / family, letter_tokenizer, std=0.3)
    model = models.load_model(ckpt, device="cpu")
    items = ITEMS[:12]
    letters = evaluation.mcq_requests(model, items, "letter")  # one description line for all
    choices = evaluation.mcq_requests(model, items, "continuation", data.MMLU_CONTINUATION_TEMPLATE)
    requests = letters + choices + random_requests(len(letter_tokenizer), model.cfg.n_ctx)[18:]
    prefixes = []
    run_after_prefix = scoring._run_after_prefix

    def spy(model, rows, n_prefix, *room):
        prefixes.append((len(rows), n_prefix))
        return run_after_prefix(model, rows, n_prefix, *room)

    monkeypatch.setattr(scoring, "_run_after_prefix", spy)
    results = {}
    for reuse in (True, False):
        for shared in (True, False):
            monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 4 if shared else 10**9)
            prefixes.clear()
            results[reuse, shared] = evaluation.score_requests(
                model, requests, 5, progress=False, reuse_context=reuse
            )
            # letters: 12 questions x the description line's tokens skipped, but once per batch
            skipped = sum(rows * (n - 1) for rows, n in prefixes if n)
            assert (skipped > 12 * 8) if shared else not any(n for _, n in prefixes)
    reference = results[False, False]  # whole rows, as the harness runs them
    assert len({int(np.argmax(s)) for s in reference}) > 1
    for key, scores in results.items():
        assert max_abs_diff(scores, reference) < 1e-4, key
        assert [int(np.argmax(s)) for s in scores] == [int(np.argmax(s)) for s in reference]

    hook = ("blocks.0.hook_resid_post", add_vector_hook(torch.randn(model.cfg.d_model)))
    shared_prefix, found = scoring._shared_prefix, []

    def spy_found(*args, **kwargs):
        found.append(shared_prefix(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(scoring, "_shared_prefix", spy_found)
    monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 4)
    with model.hooks(fwd_hooks=[hook]):  # hooks see whole rows: no prefix is split off
        evaluation.score_requests(model, letters, 5, progress=False)
    assert len(found) == 3 and found == [0, 0, 0]


def test_a_shared_prefix_runs_once_only_where_it_saves_more_than_a_call_costs(
    tmp_path, monkeypatch, tokenizer
):
    model = models.load_model(seeded_checkpoint("gpt2", tmp_path, tokenizer), device="cpu")
    rows = [[7] * 16 + [i, i + 1, i + 2] for i in range(8)]  # 16 shared tokens, 8 rows
    assert scoring.prefix_call_cost(model) == 0  # on a CPU any prefix of 4+ tokens runs apart
    assert scoring._shared_prefix(model, rows, keep=1) == 16
    monkeypatch.setattr(models, "model_device", lambda model: torch.device("cuda"))
    assert scoring.prefix_call_cost(model) == scoring.ACCELERATOR_CALL_COST_TOKENS
    for cost, expected in ((32, 16), (111, 16), (112, 0), (2048, 0)):  # 7 rows x 16 saved = 112
        monkeypatch.setattr(scoring, "call_cost", lambda model, cost=cost: cost)
        assert scoring._shared_prefix(model, rows, keep=1) == expected, cost


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # learned positions; rotary + grouped-query
def test_continuations_are_written_into_their_context_caches_buffers(
    tmp_path, monkeypatch, tokenizer, family
):
    ckpt = seeded_checkpoint(family, tmp_path / family, tokenizer, std=0.3)
    model = models.load_model(ckpt, device="cpu")
    requests = random_requests(len(tokenizer), model.cfg.n_ctx)[:12]
    copies, kv_cache_rows = [], activations.kv_cache_rows

    def spy(cache, rows):  # every copy of cached rows: (cache, its buffer, positions held)
        dup = kv_cache_rows(cache, rows)
        copies.append((dup, dup.entries[-1].keys, dup.entries[-1].past_keys.shape[1]))
        return dup

    monkeypatch.setattr(activations, "kv_cache_rows", spy)
    cached = evaluation.score_requests(model, requests, 4, progress=False)
    on_top = [c for c in copies if c[0].entries[-1].past_keys.shape[1] > c[2]]
    n_longer = sum(len(c) > 1 for r in requests for c in r.continuations)
    assert sum(c[0].entries[-1].keys.shape[0] for c in on_top) == n_longer
    # the continuations' keys went into the buffers the contexts' pass made, none was regrown
    assert all(dup.entries[-1].keys is keys for dup, keys, _ in on_top)
    rows = evaluation.score_requests(model, requests, 4, progress=False, reuse_context=False)
    assert max_abs_diff(cached, rows) < 1e-4


def test_context_cache_runs_each_context_once(tokenizer):
    model = small_model(tokenizer)
    requests = random_requests(len(tokenizer), model.cfg.n_ctx)[:20]
    passes = {True: [], False: []}  # (rows, new positions, cached positions before them)

    def record(pattern, hook, reuse):  # pattern: [batch, head, new, cached + new]
        passes[reuse].append(
            (pattern.shape[0], pattern.shape[2], pattern.shape[3] - pattern.shape[2])
        )

    for reuse in (True, False):
        hook = ("blocks.0.attn.hook_pattern", functools.partial(record, reuse=reuse))
        with model.hooks(fwd_hooks=[hook]):
            evaluation.score_requests(model, requests, 20, progress=False, reuse_context=reuse)
    # the 20 contexts once each, then the choices' tokens after their first (at most 5) on top
    contexts = [p for p in passes[True] if p[2] == 0]
    on_top = [p for p in passes[True] if p[2] > 0]
    n_longer = sum(len(c) > 1 for r in requests for c in r.continuations)
    assert sum(rows for rows, _, _ in contexts) == 20
    assert contexts[0][1] == max(len(r.context) for r in requests)
    assert sum(rows for rows, _, _ in on_top) == n_longer and max(p[1] for p in on_top) <= 5
    assert max(rows for rows, _, _ in passes[True]) <= 20
    assert sum(rows for rows, _, _ in passes[False]) == 80  # 80 full rows, none cached
    assert all(p[2] == 0 for p in passes[False])


# ---------------------------------------------------------------------------------------------
# Continuation scoring on a model that has memorised the answers
# ---------------------------------------------------------------------------------------------


def test_continuation_mode_picks_the_memorised_answers(tokenizer):
    rng = random.Random(3)
    values = ["red fox", "blue", "green dog", "lazy", "quick brown", "the cat"]
    items = []
    for i in range(6):
        choices = rng.sample(values, 4)
        items.append(MCQItem(f"What is thing {i}?", choices, rng.randrange(4)))
    model = small_model(tokenizer)
    before = evaluation.mcq_accuracy(model, items, mode="continuation", progress=False)
    texts = [evaluation.qa_prompt(i) + " " + i.choices[i.answer] for i in items]
    batch = data.encode_batch(tokenizer, texts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(batch.tokens, attention_mask=batch.attention_mask, return_type="loss")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = evaluation.mcq_accuracy(model, items, mode="continuation", progress=False)
    assert before.accuracy < 1.0
    assert after.accuracy == 1.0 and after.accuracy_norm == 1.0
    lp = after.per_item[[f"logprob_{x}" for x in "ABCD"]].to_numpy()
    norm = after.per_item[[f"logprob_norm_{x}" for x in "ABCD"]].to_numpy()
    n_bytes = np.array([[len(c.encode()) for c in i.choices] for i in items])
    np.testing.assert_allclose(norm, lp / n_bytes)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------


def test_fwd_hooks_change_scores_and_leave_no_hook_behind(letter_tokenizer):
    model = small_model(letter_tokenizer)
    push = torch.randn(model.cfg.d_model) * 10
    hooks = [("blocks.0.hook_resid_post", add_vector_hook(push))]
    plain = evaluation.mcq_accuracy(model, ITEMS[:6], progress=False)
    hooked = evaluation.mcq_accuracy(model, ITEMS[:6], fwd_hooks=hooks, progress=False)
    cols = [f"logprob_{x}" for x in "ABCD"]
    assert np.abs(plain.per_item[cols].to_numpy() - hooked.per_item[cols].to_numpy()).max() > 1e-2
    assert no_hooks_left(model)
    with Variant("pushed", hooks=tuple(hooks)).applied(model):
        applied = evaluation.mcq_accuracy(model, ITEMS[:6], progress=False)
    np.testing.assert_allclose(applied.per_item[cols], hooked.per_item[cols], atol=1e-6)
    again = evaluation.mcq_accuracy(model, ITEMS[:6], progress=False)
    np.testing.assert_allclose(again.per_item[cols], plain.per_item[cols], atol=1e-6)


def test_no_hook_survives_an_exception_inside_scoring(letter_tokenizer):
    model = small_model(letter_tokenizer)

    def explode(x, hook):
        raise RuntimeError("boom")

    for fn in (
        lambda h: evaluation.mcq_accuracy(model, ITEMS[:2], fwd_hooks=h, progress=False),
        lambda h: evaluation.generate(model, ["a"], 2, fwd_hooks=h, progress=False),
        lambda h: evaluation.retain_loss(model, ["a b c"], fwd_hooks=h, progress=False),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            fn([("blocks.1.hook_resid_post", explode)])
        assert no_hooks_left(model)


def test_gap_recovered():
    assert evaluation.gap_recovered(0.6, 0.3, 0.5) == pytest.approx(2 / 3)
    assert evaluation.gap_recovered(0.6, 0.3, 0.3) == 0.0
    assert math.isnan(evaluation.gap_recovered(0.5, 0.5, 0.7))


def test_gap_recovered_is_the_rule_of_stats_gap_ratio(monkeypatch, caplog):
    monkeypatch.setattr(stats, "gap_ratio", lambda i, u, b: np.float64(100 * i + 10 * u + b))
    assert evaluation.gap_recovered(0.1, 0.2, 0.3) == pytest.approx(32.1)
    monkeypatch.undo()
    with caplog.at_level("WARNING"):
        assert math.isnan(evaluation.gap_recovered(0.5, 0.5, 0.7))
    assert "no gap to recover" in caplog.text


# ---------------------------------------------------------------------------------------------
# Generation and confidence
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_without_cache(model, prompt_ids, n):
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_greedy_generation_equals_recomputing_each_step(tmp_path, tokenizer, family):
    model = models.load_model(
        save_hf_checkpoint(family, tmp_path / family, tokenizer), device="cpu"
    )
    prompts = ["The quick brown fox jumps", "A", "Residual streams carry"]
    gen = evaluation.generate(model, prompts, 6, stop_at_eos=False, batch_size=3, progress=False)
    for prompt, tokens in zip(prompts, gen.tokens, strict=True):
        assert tokens == greedy_without_cache(model, tokenizer(prompt)["input_ids"], 6)
    assert gen.texts[0] == tokenizer.decode(gen.tokens[0], skip_special_tokens=True)


def test_generation_stops_at_eos(tokenizer):
    model = small_model(copy.deepcopy(tokenizer))
    free = evaluation.generate(model, ["The quick"], 8, stop_at_eos=False, progress=False).tokens[0]
    stop_at = min(i for i, t in enumerate(free) if i > 0 and free.index(t) == i)  # first new token
    assert stop_at < 7
    model.tokenizer.eos_token = model.tokenizer.convert_ids_to_tokens(free[stop_at])
    stopped = evaluation.generate(model, ["The quick"], 8, progress=False).tokens[0]
    assert stopped == free[: stop_at + 1]


def test_compare_generations_table_and_hooks_change_the_text(letter_tokenizer):
    model = small_model(letter_tokenizer)
    push = Variant(
        "pushed", hooks=(("blocks.0.hook_resid_post", add_vector_hook(torch.randn(32) * 50)),)
    )
    prompts = ["Which fox is", "The gene"]
    table = evaluation.compare_generations(
        model, [Variant("base"), push], prompts, max_new_tokens=5, progress=False
    )
    assert (
        list(table.columns) == ["prompt", "base", "pushed"] and table["prompt"].tolist() == prompts
    )
    assert (table["base"] != table["pushed"]).any()
    assert no_hooks_left(model)
    with pytest.raises(UnlearnInterpError, match="unique"):
        evaluation.compare_generations(model, [Variant("a"), Variant("a")], prompts)


def test_chat_template_is_used_when_the_tokenizer_has_one(letter_tokenizer):
    tok = copy.deepcopy(letter_tokenizer)
    model = small_model(tok)
    plain = evaluation.generate(model, ["Which fox"], 4, stop_at_eos=False, progress=False)
    tok.chat_template = "{% for m in messages %}User: {{ m['content'] }}\nAssistant:{% endfor %}"
    text, special = evaluation.chat_prompt(tok, "Which fox", None)
    assert text == "User: Which fox\nAssistant:" and special is False
    chat = evaluation.generate(model, ["Which fox"], 4, stop_at_eos=False, progress=False)
    forced_plain = evaluation.generate(
        model, ["Which fox"], 4, stop_at_eos=False, use_chat_template=False, progress=False
    )
    assert chat.tokens != plain.tokens and forced_plain.tokens == plain.tokens


def test_max_logit_and_entropy_match_a_direct_forward(letter_bos_tokenizer):
    model = small_model(letter_bos_tokenizer)
    items = ITEMS[:3]
    table = evaluation.max_logit(model, items, k=4, progress=False)
    assert len(table) == 12 and table.groupby("item").size().tolist() == [4, 4, 4]
    entropy = evaluation.next_token_entropy(model, items, progress=False)
    for i, item in enumerate(items):
        with torch.no_grad():
            logits = model(torch.tensor([model.tokenizer(data.mcq_prompt(item))["input_ids"]]))[
                0, -1
            ]
        lp = logits.log_softmax(-1)
        first = table[(table.item == i) & (table.step == 0)].iloc[0]
        assert first.max_logit == pytest.approx(float(logits.max()), abs=1e-4)
        assert first.token == int(logits.argmax())
        assert entropy.entropy[i] == pytest.approx(float(-(lp.exp() * lp).sum()), abs=1e-4)
        assert first.entropy == pytest.approx(entropy.entropy[i], abs=1e-4)


def test_retain_loss_is_token_weighted_mean_and_ignores_padding(tokenizer):
    from conftest import CORPUS

    model = small_model(tokenizer)
    docs = CORPUS[:4] + ["short"]
    total, count = 0.0, 0
    for doc in docs:
        ids = torch.tensor([tokenizer(doc)["input_ids"]])
        lp = model(ids)[0, :-1].log_softmax(-1).detach()
        total -= float(lp.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    expected = total / count
    assert evaluation.retain_loss(model, docs, batch_size=5, progress=False) == pytest.approx(
        expected, rel=1e-5
    )
    assert evaluation.retain_loss(model, docs, batch_size=1, progress=False) == pytest.approx(
        expected, rel=1e-5
    )
    with pytest.raises(UnlearnInterpError):
        evaluation.retain_loss(model, [])


# ---------------------------------------------------------------------------------------------
# evaluate_variants and the command line
# ---------------------------------------------------------------------------------------------


def test_evaluate_command_writes_base_unlearned_and_ablated_rows(
    tmp_path, letter_tokenizer, capsys
):
    ckpt = save_hf_checkpoint("gpt2", tmp_path / "ckpt", letter_tokenizer)
    data_file = write_wmdp_jsonl(tmp_path / "wmdp_bio.jsonl", ITEMS[:8])
    model = models.load_model(ckpt, device="cpu")
    run = tmp_path / "run"
    w_out = models.get_param(model, "blocks.1.mlp.W_out").detach()
    models.save_weights(
        {"blocks.1.mlp.W_out": w_out + 0.5 * torch.randn_like(w_out)},
        run / "unlearned_weights.safetensors",
    )
    models.save_weights(
        {"vector": torch.randn(model.cfg.d_model)}, tmp_path / "direction.safetensors"
    )
    out = tmp_path / "tables" / "acc.csv"
    argv = ["-q", "evaluate", "--model", str(ckpt), "--mcq", str(data_file), "--run", str(run),
            "--ablate", str(tmp_path / "direction.safetensors"), "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    table = pd.read_csv(out)
    assert table["variant"].tolist() == ["base", "unlearned", "unlearned_ablated"]
    assert table["task"].tolist() == ["wmdp_bio"] * 3 and (table["n"] == 8).all()
    base = evaluation.mcq_accuracy(model, data.load_mcq(data_file), progress=False).accuracy
    assert table["accuracy"][0] == pytest.approx(base)
    printed = capsys.readouterr().out
    assert "wmdp_bio" in printed and "gap recovered: unlearned_ablated" in printed


def test_evaluate_command_bad_file_exits_2_naming_row(tmp_path, letter_tokenizer, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b", "c"], "answer": 0}) + "\n")
    assert cli.main(["evaluate", "--model", str(tmp_path), "--mcq", str(bad)]) == 2
    assert "line 1: field 'choices'" in capsys.readouterr().err


def noisy_variants(model) -> list[Variant]:
    w_out = models.get_param(model, "blocks.1.mlp.W_out").detach()
    torch.manual_seed(1)
    noisy = {"blocks.1.mlp.W_out": w_out + 0.5 * torch.randn_like(w_out)}
    return [Variant("base"), Variant("noisy", weights=noisy)]


def test_accuracy_table_equals_mcq_accuracy_under_each_variant(letter_tokenizer):
    model = small_model(letter_tokenizer)
    variants = noisy_variants(model)
    tasks = {"a": ITEMS[:6], "b": ITEMS[6:10]}
    table, per_item = evaluation.accuracy_table(
        model, variants, tasks, batch_size=4, progress=False, per_item=True,
        task_kwargs={"b": {"mode": "continuation"}},
    )  # fmt: skip
    assert list(table.columns) == ["variant", "task", "accuracy", "n", "accuracy_norm"]
    assert table[["variant", "task"]].values.tolist() == [
        ["base", "a"], ["base", "b"], ["noisy", "a"], ["noisy", "b"],
    ]  # fmt: skip
    assert len(per_item) == 20 and no_hooks_left(model)
    for variant in variants:
        for task, mode in (("a", "letter"), ("b", "continuation")):
            with variant.applied(model):
                expected = evaluation.mcq_accuracy(model, tasks[task], mode, progress=False)
            row = table.query(f"variant == '{variant.name}' and task == '{task}'").iloc[0]
            assert (row.accuracy, row.n) == (expected.accuracy, expected.n)
            assert (row.accuracy_norm == expected.accuracy_norm) or (
                mode == "letter" and math.isnan(row.accuracy_norm)
            )
            got = per_item.query(f"variant == '{variant.name}' and task == '{task}'")
            cols = list(expected.per_item.columns)
            pd.testing.assert_frame_equal(
                got[cols].reset_index(drop=True), expected.per_item, check_dtype=False
            )
    assert table.accuracy.nunique() > 1  # the noisy weights were in place for its rows


def test_accuracy_table_takes_tasks_per_variant_and_evaluate_variants_is_it(letter_tokenizer):
    model = small_model(letter_tokenizer)
    variants = noisy_variants(model)
    tasks = {"a": ITEMS[:4], "b": ITEMS[4:8]}
    only_a = evaluation.accuracy_table(
        model, variants, lambda name: tasks if name == "base" else {"a": tasks["a"]},
        progress=False,
    )  # fmt: skip
    assert only_a[["variant", "task"]].values.tolist() == [
        ["base", "a"], ["base", "b"], ["noisy", "a"],
    ]  # fmt: skip
    whole = evaluation.evaluate_variants(model, variants, tasks, progress=False)
    pd.testing.assert_frame_equal(whole.iloc[:3], only_a)


def test_format_accuracy_table_adds_gap_rows():
    table = pd.DataFrame(
        {
            "variant": ["base", "rmu", "rmu_ablated"] * 2,
            "task": ["bio"] * 3 + ["mmlu"] * 3,
            "n": 10,
            "accuracy": [0.6, 0.3, 0.5, 0.5, 0.5, 0.5],
        }
    )
    text = evaluation.format_accuracy_table(table)
    lines = text.splitlines()
    assert lines[0].split() == ["bio", "mmlu"]
    assert lines[-1].split() == ["gap", "recovered:", "rmu_ablated", "0.6667", "NaN"]
