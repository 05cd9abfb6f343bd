"""RMU on the first l+1 blocks: ``models.load_model(..., first_blocks=k)`` builds only
the embeddings and blocks 0..k-1 from the checkpoint, bitwise the full model's tensors; anything
needing the unembedding refuses with one sentence; ``train_rmu`` on it gives bitwise the weights
training on the whole model gives, and the saved result applied to the full model is the same
model; ``unlearn`` loads only blocks 0..layer; loading the first 8 of 32 blocks of the
Zephyr-proportioned checkpoint peaks at <= 0.35x the whole model's parameter bytes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CORPUS, save_hf_checkpoint
from safetensors.torch import load_file
from test_loading_memory import big_checkpoint, measure_in_fresh_process
from test_rmu import FORGET_A, FORGET_B, RETAIN

from unlearn_interp import activations, data, evaluation, models, rmu
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline import jobs
from unlearn_interp.variants import Variant

CFG = rmu.RMUConfig(
    layer=2,
    update_layers=(1, 2),
    steering_coef=8.0,
    alpha=5.0,
    lr=1e-3,
    batch_size=2,
    steps=4,
    max_len=24,
    seed=3,
)  # fmt: skip  lr 1e-3: the update is far above float noise, so equality means something


def deep_checkpoint(path: Path, tokenizer, family: str = "mistral", n_layers: int = 6) -> Path:
    """A tiny random HF checkpoint with ``n_layers`` blocks (conftest's has 3)."""
    import transformers as tf

    common = dict(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=128, **common)
        cls = tf.GPT2LMHeadModel
    else:
        config = tf.MistralConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            sliding_window=None, **common,
        )  # fmt: skip
        cls = tf.MistralForCausalLM
    torch.manual_seed(0)
    cls(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    return deep_checkpoint(tmp_path_factory.mktemp("fb") / "tiny-mistral", tokenizer)


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2"])
def test_first_blocks_are_the_full_models_tensors_and_residual_stream(
    family, tmp_path, tokenizer, no_network
):
    path = save_hf_checkpoint(family, tmp_path / family, tokenizer)
    full = models.load_model(path, device="cpu")
    part = models.load_model(path, device="cpu", first_blocks=2)
    assert models.n_layers(part) == 2 and models.is_truncated(part)
    assert not models.is_truncated(full)
    assert models.model_name(part) == f"{family} (truncated: first 2 of 3 blocks, no unembedding)"
    whole = dict(full.named_parameters())
    kept = dict(part.named_parameters())
    assert set(whole) - set(kept) == {n for n in whole if n.startswith(("blocks.2.", "unembed."))}
    assert [n for n, t in kept.items() if not torch.equal(t, whole[n])] == []
    assert models.d_vocab(part) == models.d_vocab(full)  # the vocabulary is still the real one
    batch = data.encode_batch(tokenizer, CORPUS[:3])
    ours = activations.run_blocks(part, batch.tokens, attention_mask=batch.attention_mask)
    theirs = activations.run_blocks(full, batch.tokens, stop=2, attention_mask=batch.attention_mask)
    assert torch.equal(ours, theirs)


def test_first_blocks_of_a_bin_checkpoint_equal_the_streamed_ones(tmp_path, tokenizer):
    path = save_hf_checkpoint("llama", tmp_path / "ckpt", tokenizer)
    streamed = models.load_model(path, device="cpu", first_blocks=2)
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    pickled = models.load_model(path, device="cpu", first_blocks=2)
    a, b = streamed.state_dict(), pickled.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert models.is_truncated(pickled)


@pytest.mark.parametrize(
    ("first_blocks", "message"),
    [
        (0, "first_blocks must be a positive integer, got 0"),
        (-1, "first_blocks must be a positive integer, got -1"),
        (True, "first_blocks must be a positive integer, got True"),
        (7, r"first_blocks 7 is out of range: tiny-mistral has 6 blocks \(valid 1\.\.6\)"),
    ],
)
def test_wrong_first_blocks_is_one_sentence(checkpoint, first_blocks, message):
    with pytest.raises(UnlearnInterpError, match=f"^{message}$"):
        models.load_model(checkpoint, device="cpu", first_blocks=first_blocks)


def test_all_blocks_is_allowed_and_still_has_no_unembedding(checkpoint):
    model = models.load_model(checkpoint, device="cpu", first_blocks=6)
    assert models.n_layers(model) == 6 and models.is_truncated(model)


# --- refusing what needs the unembedding -----------------------------------------------------


def _uses_of_the_unembedding(model):
    batch = data.encode_batch(model.tokenizer, CORPUS[:2])
    resid = torch.zeros(1, 2, models.d_model(model))
    item = data.MCQItem(
        "What jumps over the dog?", ["fox", "cat", "cow", "owl"], 0, subject="biology"
    )
    return {
        "logits": lambda: activations.logits(model, batch),
        "unembed": lambda: activations.unembed(model, resid),
        "unembedding vectors": lambda: activations.unembedding_vectors(model, torch.tensor([1])),
        "last logprobs": lambda: activations.last_logprobs(model, batch, 1),
        "after blocks": lambda: activations.after_blocks(model, resid, 6, None, "logits"),
        "letter scoring": lambda: evaluation.mcq_accuracy(model, [item], progress=False),
        "continuation": lambda: evaluation.mcq_accuracy(
            model, [item], mode="continuation", progress=False
        ),
        "generation": lambda: evaluation.generate(
            model, ["The quick"], max_new_tokens=2, progress=False
        ),
        "forward": lambda: model(batch.tokens),
    }


def test_a_truncated_model_refuses_everything_that_needs_the_unembedding(checkpoint):
    model = models.load_model(checkpoint, device="cpu", first_blocks=6)
    expected = (
        "tiny-mistral (truncated: first 6 of 6 blocks, no unembedding) gives no logits "
        "(no scoring, generation or forward pass to the end): load the model without "
        "first_blocks for that"
    )
    refused = {}
    for use, call in _uses_of_the_unembedding(model).items():
        with pytest.raises(UnlearnInterpError) as caught:
            call()
        refused[use] = str(caught.value)
    assert refused == dict.fromkeys(refused, expected)
    assert len(refused) == 9


# --- RMU: trained truncated == trained whole --------------------------------------------------


@pytest.fixture(scope="module")
def trained(checkpoint):
    """(result trained on the whole model, result trained on blocks 0..layer)."""
    forget, retain = [FORGET_A, FORGET_B], [RETAIN, RETAIN]
    full = models.load_model(checkpoint, device="cpu")
    whole = rmu.train_rmu(full, forget, retain, CFG, progress=False)
    part = models.load_model(checkpoint, device="cpu", first_blocks=CFG.layer + 1)
    first = rmu.train_rmu(part, forget, retain, CFG, progress=False)
    return whole, first


def test_rmu_on_the_first_blocks_trains_bitwise_the_same_weights(trained):
    whole, first = trained
    names = ["blocks.1.mlp.W_out", "blocks.2.mlp.W_out"]
    assert sorted(first.unlearned_weights) == sorted(whole.unlearned_weights) == names
    diffs = [(first.unlearned_weights[n] - whole.unlearned_weights[n]).abs().max() for n in names]
    assert max(diffs).item() == 0.0
    update = max((whole.unlearned_weights[n] - whole.base_weights[n]).abs().max() for n in names)
    assert update.item() > 1e-4  # the weights did move, so equality is not of untouched tensors
    columns = ["forget_loss", "retain_loss", "forget_norm", "cos_forget_u", "cos_retain_frozen"]
    assert first.history[columns].equals(whole.history[columns])
    assert torch.equal(first.coefficients, whole.coefficients)
    assert (
        first.model_info["name"] == "tiny-mistral (truncated: first 3 of 6 blocks, no unembedding)"
    )


def test_a_result_trained_truncated_applied_to_the_full_model_is_the_full_trained_model(
    trained, checkpoint, tmp_path
):
    whole, first = trained
    first.save(tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / rmu.UNLEARNED_WEIGHTS_FILE))
    assert sorted(saved) == ["blocks.1.mlp.W_out", "blocks.2.mlp.W_out"]  # the changed tensors
    loaded = rmu.RMUResult.load(tmp_path / "run")
    full = models.load_model(checkpoint, device="cpu")
    batch = data.encode_batch(full.tokenizer, CORPUS[:3])
    with Variant("rmu", weights=loaded.unlearned_weights).applied(full):
        from_truncated = activations.logits(full, batch)
    with Variant("rmu", weights=whole.unlearned_weights).applied(full):
        from_whole = activations.logits(full, batch)
    assert torch.equal(from_truncated, from_whole)
    assert not torch.equal(from_whole, activations.logits(full, batch))  # RMU changed the model


# --- the unlearn job ---------------------------------------------------------------------------


def test_unlearn_job_loads_blocks_0_to_layer_and_trains_the_same_weights(
    trained, checkpoint, tmp_path, caplog
):
    forget = []
    for name, docs in (("a", FORGET_A), ("b", FORGET_B)):
        forget.append(tmp_path / f"{name}.jsonl")
        forget[-1].write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "retain.txt").write_text("\n".join(RETAIN) + "\n")
    with caplog.at_level(logging.INFO, logger="unlearn_interp.models"):
        jobs.unlearn_job(
            str(tmp_path / "run"), model=str(checkpoint), forget=[str(f) for f in forget],
            retain=[str(tmp_path / "retain.txt")], rmu_settings=CFG.to_dict(), device="cpu",
            progress=False,
        )  # fmt: skip
    assert "loading only its first 3 of 6 blocks, without the unembedding" in caplog.text
    result = rmu.RMUResult.load(tmp_path / "run")
    assert "truncated: first 3 of 6 blocks" in result.model_info["name"]
    whole = trained[0].unlearned_weights
    assert all(torch.equal(result.unlearned_weights[n], whole[n]) for n in whole)


def test_unlearn_job_reports_a_layer_the_model_lacks_as_the_layer(checkpoint, tmp_path):
    (tmp_path / "f.txt").write_text("\n".join(FORGET_A))
    with pytest.raises(UnlearnInterpError, match=r"^layer 6 is out of range: the model has 6 "):
        jobs.unlearn_job(
            str(tmp_path / "run"), model=str(checkpoint), forget=[str(tmp_path / "f.txt")],
            retain=[str(tmp_path / "f.txt")], rmu_settings={"layer": 6}, device="cpu",
        )  # fmt: skip


# --- RMU recomputing the trained blocks in the backward pass ------------------------------------


def test_run_blocks_recomputing_gives_bitwise_the_same_values_and_gradients(checkpoint):
    model = models.load_model(checkpoint, device="cpu")
    batch = data.encode_batch(model.tokenizer, CORPUS[:3])
    with torch.no_grad():
        resid = activations.run_blocks(
            model, batch.tokens, stop=1, attention_mask=batch.attention_mask
        )
    params = dict(model.named_parameters())
    outputs, grads = [], []
    for recompute in (False, True):
        out = activations.run_blocks(
            model, resid, start=1, stop=4, attention_mask=batch.attention_mask, recompute=recompute
        )
        out.pow(2).mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in params.items() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert torch.equal(outputs[0], outputs[1])
    assert sorted(grads[0]) == sorted(grads[1])
    assert any(n.startswith("blocks.3.") for n in grads[0])  # blocks 1..3 all got gradients
    assert [n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])] == []


@pytest.fixture(scope="module")
def trained_recomputing(checkpoint):
    """(whole model, first blocks) results, each trained with ``recompute_blocks=True``."""
    forget, retain = [FORGET_A, FORGET_B], [RETAIN, RETAIN]
    results = []
    for first_blocks in (None, CFG.layer + 1):
        model = models.load_model(checkpoint, device="cpu", first_blocks=first_blocks)
        results.append(
            rmu.train_rmu(model, forget, retain, CFG, progress=False, recompute_blocks=True)
        )
    return tuple(results)


@pytest.mark.parametrize("which", [0, 1], ids=["whole", "first_blocks"])
def test_rmu_recomputing_trains_bitwise_the_same_weights_and_history(
    trained, trained_recomputing, which
):
    plain, recomputed = trained[which], trained_recomputing[which]
    names = ["blocks.1.mlp.W_out", "blocks.2.mlp.W_out"]
    assert sorted(recomputed.unlearned_weights) == names
    diffs = [
        (recomputed.unlearned_weights[n] - plain.unlearned_weights[n]).abs().max() for n in names
    ]
    assert max(diffs).item() == 0.0
    assert not torch.equal(recomputed.unlearned_weights[names[0]], plain.base_weights[names[0]])
    pd.testing.assert_frame_equal(recomputed.history, plain.history)
    assert recomputed.config == plain.config  # not a config field: runs record the same settings


def test_recomputing_refuses_installed_forward_hooks_and_leaves_the_weights(checkpoint):
    model = models.load_model(checkpoint, device="cpu", first_blocks=CFG.layer + 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.hook_dict["blocks.1.hook_resid_post"].add_hook(lambda act, hook: None)
    try:
        with pytest.raises(UnlearnInterpError, match="forward hooks would fire twice"):
            rmu.train_rmu(model, [FORGET_A], [RETAIN], CFG, progress=False, recompute_blocks=True)
    finally:
        model.reset_hooks()
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": {}}, "without weights= or kv_cache="),
        ({"tokens": True}, "on a residual stream, not on token ids"),
    ],
)
def test_run_blocks_recompute_refusals_are_one_sentence(checkpoint, kwargs, message):
    model = models.load_model(checkpoint, device="cpu", first_blocks=2)
    batch = data.encode_batch(model.tokenizer, CORPUS[:2])
    inputs = batch.tokens if kwargs.pop("tokens", False) else torch.zeros(2, 3, 32)
    with pytest.raises(UnlearnInterpError, match=message):
        activations.run_blocks(model, inputs, recompute=True, **kwargs)


def test_unlearn_job_trains_recomputing_the_trained_blocks(checkpoint, tmp_path, monkeypatch):
    seen, train = [], rmu.train_rmu
    monkeypatch.setattr(rmu, "train_rmu", lambda *a, **kw: seen.append(kw) or train(*a, **kw))
    (tmp_path / "f.txt").write_text("\n".join(FORGET_A))
    jobs.unlearn_job(
        str(tmp_path / "run"), model=str(checkpoint), forget=[str(tmp_path / "f.txt")],
        retain=[str(tmp_path / "f.txt")], rmu_settings={**CFG.to_dict(), "steps": 1},
        device="cpu", progress=False,
    )  # fmt: skip
    assert [kw.get("recompute_blocks") for kw in seen] == [True]


# --- memory -------------------------------------------------------------------------------------


def peak_of_loading(path: Path, first_blocks: str) -> int:
    """Peak RSS of ``load_model`` (float32) above the imports, in KiB, in a fresh process."""
    measured = measure_in_fresh_process(
        """
        first_blocks = None if sys.argv[2] == "all" else int(sys.argv[2])
        model = models.load_model(sys.argv[1], device="cpu", first_blocks=first_blocks)
        print(json.dumps({"extra_kib": kib("VmHWM") - base}))
        """,
        str(path),
        first_blocks,
    )
    return measured["extra_kib"]


@pytest.mark.slow  # ~60 s on 2 busy cores, most of it writing the 117M-parameter checkpoint
def test_loading_8_of_32_blocks_peaks_below_035_of_loading_the_whole_model(tmp_path, tokenizer):
    """Issue 15's Zephyr-proportioned shape (32 blocks at d_model 512, ~117M parameters;
    parameters dominate loading's fixed costs): the embedding and first 8 blocks are 0.27 of
    the parameters. Measured 0.28. (Training on them adds activations and optimiser state that
    do not shrink with depth: ``benchmarks/bench_first_blocks.py`` measures that.)"""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak resident set size")
    path = big_checkpoint("mistral", tmp_path / "zephyr-512", tokenizer)
    assert peak_of_loading(path, "8") <= 0.35 * peak_of_loading(path, "all")
