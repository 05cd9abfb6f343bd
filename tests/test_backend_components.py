"""backend_components: the models the toolkit builds get its own TransformerLens components, whose
forward copies no MLP or unembedding weight and whose embedding gradients are the same bits
from one run to the next, and nothing a user sees changes: parameters keep
TransformerLens' layout, names and initialisation, and logits, gradients, every hook's
activation, variants applied in place and training steps equal TransformerLens' own components
(the same model after ``use_transformer_lens_components``) and HuggingFace's on the same
checkpoint.

Three families, as tiny random HuggingFace checkpoints loaded through ``models.load_model``:
``llama`` (SmolLM2-like: grouped-query attention, 4 heads over 2 K/V heads, RMSNorm, gated MLP),
``gpt2`` (multi-head attention, LayerNorm, plain MLP) and ``mistral`` (grouped-query).

    python -m pytest tests/test_backend_components.py -q
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from conftest import save_hf_checkpoint
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformer_lens import HookedTransformer
from transformer_lens.components import AbstractAttention, GatedMLP, Unembed

from unlearn_interp import activations, backend_components, data, loader, models
from unlearn_interp.organism.pretraining import torch_threads
from unlearn_interp.variants import Variant

FAMILIES = ["llama", "gpt2", "mistral"]
TOLERANCE = 1e-4  # float32 logits


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"ckpt_{request.param}")
    return save_hf_checkpoint(request.param, path, tokenizer, seed=3)


@pytest.fixture
def pair(checkpoint):
    """(ours, theirs): the loaded model and a copy with TransformerLens' own components."""
    model = models.load_model(checkpoint, device="cpu")
    return model, backend_components.use_transformer_lens_components(copy.deepcopy(model))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))


class ParameterCopies(TorchDispatchMode):
    """Counts the operations that copy out of the storage of ``params`` while active."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ops = {torch.ops.aten.clone.default: 0, torch.ops.aten.copy_.default: 1}
        if func in ops and isinstance(args[ops[func]], torch.Tensor):
            source = args[ops[func]].untyped_storage().data_ptr()
            self.count += source in self.storages
        return func(*args, **(kwargs or {}))


def mlp_and_unembedding_params(model) -> list[torch.nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, GatedMLP | Unembed) for p in m.parameters()]


def parameter_copies(model, tokens) -> int:
    """How many times a forward copies out of a gated-MLP or unembedding parameter."""
    with torch.no_grad(), ParameterCopies(mlp_and_unembedding_params(model)) as mode:
        model(tokens)
    return mode.count


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|; equal infinities (masked attention scores) differ by 0, and a NaN in
    either is ``inf``, so it fails every bound (a NaN would slip through Python's ``max``)."""
    a, b = a.float(), b.float()
    diff = torch.where(a == b, 0.0, (a - b).abs())
    return torch.nan_to_num(diff, nan=float("inf")).max().item()


def component_types(model) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules()}


def test_the_installed_transformer_lens_is_a_tested_version():
    # A TransformerLens upgrade fails here: read its forwards again before widening the pin.
    assert backend_components.is_tested_version()
    assert not backend_components.is_tested_version("3.10.0")


def test_every_built_model_has_the_components_and_transformer_lens_is_untouched(pair, tokenizer):
    model, reference = pair
    assert backend_components.uses_toolkit_components(model)
    assert not backend_components.uses_toolkit_components(reference)
    assert backend_components.uses_toolkit_components(models.random_model(tokenizer=tokenizer))
    # a HookedTransformer built directly stays TransformerLens' own, in the same process
    assert not backend_components.uses_toolkit_components(HookedTransformer(model.cfg))
    assert AbstractAttention.forward.__module__ == "transformer_lens.components.abstract_attention"
    assert HookedTransformer.__init__.__module__ == "transformer_lens.HookedTransformer"
    # idempotent both ways, and a round trip restores the classes
    twice = backend_components.use_toolkit_components(copy.deepcopy(model))
    assert component_types(twice) == component_types(model)
    back = backend_components.use_toolkit_components(copy.deepcopy(reference))
    assert component_types(back) == component_types(model)


def test_every_load_model_source_gives_the_components(monkeypatch, tmp_path, tokenizer):
    checkpoint = save_hf_checkpoint("llama", tmp_path / "llama", tokenizer)
    loaded = models.load_model(checkpoint, device="cpu")  # a local safetensors checkpoint
    assert backend_components.uses_toolkit_components(loaded)
    assert {type(m) for m in loaded.modules()} >= {backend_components.NoCopyGatedMLP,
        backend_components.NoCopyUnembed, backend_components.RotatedCacheGroupedQueryAttention}  # fmt: skip
    part = models.load_model(checkpoint, device="cpu", first_blocks=2)
    assert backend_components.uses_toolkit_components(part) and models.is_truncated(part)

    def plain(*args, **kwargs):
        return HookedTransformer(loaded.cfg)

    monkeypatch.setattr(loader, "_load_asset", plain)  # an asset fetched from the package index
    monkeypatch.setattr(loader, "_load_named_model", plain)  # a TransformerLens name
    assert backend_components.uses_toolkit_components(models.load_model("smollm2-135m"))
    assert backend_components.uses_toolkit_components(models.load_model("gpt2"))
    monkeypatch.undo()
    state = load_file(str(checkpoint / "model.safetensors"))  # a .bin through transformers
    (checkpoint / "model.safetensors").unlink()
    torch.save(state, checkpoint / "pytorch_model.bin")
    assert backend_components.uses_toolkit_components(models.load_model(checkpoint, device="cpu"))


def test_parameters_keep_transformer_lens_layout_names_and_initialisation(pair):
    model, reference = pair
    fresh = HookedTransformer(model.cfg)
    params, theirs = dict(model.named_parameters()), dict(fresh.named_parameters())
    assert list(params) == list(theirs)
    assert list(model.state_dict()) == list(fresh.state_dict())
    assert list(model.hook_dict) == list(fresh.hook_dict)
    assert all(p.is_contiguous() and p.stride() == theirs[n].stride() for n, p in params.items())
    torch.manual_seed(7)
    model.init_weights()
    torch.manual_seed(7)
    fresh.init_weights()
    assert all(torch.equal(p, theirs[n]) for n, p in params.items())


def test_forward_copies_no_mlp_or_unembedding_weight_and_transformer_lens_does(pair, tokens):
    model, reference = pair
    assert parameter_copies(model, tokens) == 0
    # TransformerLens' own copies W_U, and W_gate, W_in, W_out of every gated MLP
    gated = sum(isinstance(m, GatedMLP) for m in model.modules())
    assert parameter_copies(reference, tokens) >= 3 * gated + 1


def test_logits_equal_transformer_lens_and_huggingface(pair, tokens, checkpoint):
    from transformers import AutoModelForCausalLM

    model, reference = pair
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding in one row
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            logits = model(tokens, **kwargs)
            assert max_diff(logits, reference(tokens, **kwargs)) <= TOLERANCE
        assert max_diff(model(tokens), hf(tokens).logits) <= TOLERANCE


def test_gradients_equal_and_reach_the_parameters(pair, tokens):
    grads = []
    for m in pair:
        m.zero_grad()
        m(tokens, return_type="loss").backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    ours, theirs = grads
    assert all(g is not None for g in ours.values())
    assert max(max_diff(ours[n], theirs[n]) for n in ours) <= 1e-6


def test_every_hook_sees_the_same_activation(pair, tokens):
    model, reference = pair
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        _, expected = reference.run_with_cache(tokens)
    names = set(expected.keys())
    assert set(cache.keys()) == names
    for name in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.1.attn.hook_attn_scores",
                 "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"):  # fmt: skip
        assert name in names
    assert all(cache[n].shape == expected[n].shape for n in names)
    assert max(max_diff(cache[n], expected[n]) for n in names) <= TOLERANCE


def test_a_variant_applied_in_place_changes_both_alike(pair, tokens):
    model, reference = pair
    gen = torch.Generator().manual_seed(1)
    names = ["blocks.1.mlp.W_out", "blocks.0.attn.W_Q", "blocks.0.attn.W_O", "unembed.W_U"]
    weights = {n: torch.randn(models.get_param(model, n).shape, generator=gen) * 0.1 for n in names}
    variant = Variant("shuffled", weights=weights)
    with torch.no_grad():
        before = model(tokens)
        with variant.applied(model), variant.applied(reference):
            changed, expected = model(tokens), reference(tokens)
        after = model(tokens)
    assert max_diff(changed, before) > 1e-2  # the variant does change the output
    assert max_diff(changed, expected) <= TOLERANCE
    assert max_diff(after, before) == 0.0


def test_a_training_step_updates_both_alike(pair, tokens):
    # RMU's optimiser (AdamW, eps 1e-6) on W_out as RMU trains it, and on other matrices
    kv = (
        "blocks.0.attn._W_K"
        if "blocks.0.attn._W_K" in dict(pair[0].named_parameters())
        else "blocks.0.attn.W_K"
    )
    names = ["blocks.1.mlp.W_out", "blocks.0.attn.W_Q", kv, "blocks.1.attn.W_O", "unembed.W_U"]
    trained = []
    for m in pair:
        params = [models.get_param(m, n) for n in names]
        optimizer = torch.optim.AdamW(params, lr=1e-2, eps=1e-6)
        for _ in range(2):
            optimizer.zero_grad()
            m(tokens, return_type="loss").backward()
            optimizer.step()
        trained.append({n: models.get_param(m, n).detach() for n in names})
    ours, theirs = trained
    assert max(max_diff(ours[n], theirs[n]) for n in names) <= 1e-6


def padded_batch_grads(model, batch) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the loss on a left-padded batch with repeated tokens."""
    model.zero_grad()
    logits = activations.logits(model, batch)
    logits.log_softmax(-1)[..., 0].sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_embedding_gradients_do_not_depend_on_thread_timing(pair):
    # 32 rows of 48 tokens drawn from 10 ids, left-padded: TransformerLens' indexing backward
    # accumulated the repeated rows from both threads in arrival order (different bits from
    # one run to the next on 2 cores); ours sums them in a fixed order.
    model, reference = pair
    gen = torch.Generator().manual_seed(2)
    ids = [torch.randint(1, 11, (int(n),), generator=gen).tolist() for n in range(17, 49)]
    batch = data.left_pad(ids, 0)
    with torch_threads(2):
        runs = [padded_batch_grads(model, batch) for _ in range(5)]
        expected = padded_batch_grads(reference, batch)
    for name in runs[0]:
        assert all(torch.equal(runs[0][name], r[name]) for r in runs[1:]), name
        scale = expected[name].abs().max().item()
        assert max_diff(runs[0][name], expected[name]) <= 1e-6 * scale, name  # summing order


def test_copying_pickling_and_casting_keep_the_components(pair, tokens):
    model, reference = pair
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert component_types(twin) == component_types(model)
    twin = models.place(copy.deepcopy(model), dtype=torch.bfloat16)
    assert backend_components.uses_toolkit_components(twin)
    models.place(reference, dtype=torch.bfloat16)
    with torch.no_grad():
        # at most bfloat16 rounding (bitwise on a CPU at 24 rows: see the module's rounding note)
        assert max_diff(twin(tokens), reference(tokens)) <= 0.1


def test_inert_on_an_untested_transformer_lens(monkeypatch, caplog):
    monkeypatch.setattr(backend_components, "backend_version", lambda: "4.0.0")
    with caplog.at_level(logging.INFO, logger="unlearn_interp.backend_components"):
        model = models.random_model()
    assert not backend_components.uses_toolkit_components(model)
    assert "TransformerLens 4.0.0 is untested here" in caplog.text
