"""benchmarks/memory_arithmetic.py: the formulas against tiny models of the same family.

Parameter counts against ``sum(p.numel())`` (HuggingFace and TransformerLens), the tensors
autograd saves for backward (RMU's suffix, the fine-tuning attack in both modes) against what
``saved_tensors_hooks`` sees (bytes of distinct storages that are not parameters), AdamW's state
against ``optimizer.state``, the KV cache against ``activations.new_kv_cache``, in float32 and
bfloat16; the README's table against the script's output. No process memory is measured.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unlearn_interp import activations, data, models, rmu, training
from unlearn_interp.analysis.adaptive import _Retraining
from unlearn_interp.attacks.finetune import FinetuneConfig, finetune_curve, trained_names
from unlearn_interp.rmu.forward import SplitForward
from unlearn_interp.rmu.loss import forget_term
from unlearn_interp.variants import restored_weights, snapshot_weights

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "memory_arithmetic", ROOT / "benchmarks" / "memory_arithmetic.py"
)
ma = importlib.util.module_from_spec(_spec)
sys.modules["memory_arithmetic"] = ma  # dataclasses look their module up there
_spec.loader.exec_module(ma)

TINY = ma.Arch(
    "tiny", d_model=64, n_layers=4, n_heads=8, n_kv_heads=2, d_mlp=224, d_vocab=300, n_ctx=128
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BATCH, SEQ = 2, 16


def tiny_hf_config():
    from transformers import MistralConfig

    return MistralConfig(
        hidden_size=TINY.d_model,
        intermediate_size=TINY.d_mlp,
        num_hidden_layers=TINY.n_layers,
        num_attention_heads=TINY.n_heads,
        num_key_value_heads=TINY.n_kv_heads,
        vocab_size=TINY.d_vocab,
        max_position_embeddings=TINY.n_ctx,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from transformers import MistralForCausalLM

    path = tmp_path_factory.mktemp("tiny-mistral")
    torch.manual_seed(0)
    MistralForCausalLM(tiny_hf_config()).save_pretrained(path)
    texts = [f"word{i} and word{i + 1} then word{i * 7 % 13}" for i in range(200)]
    data.train_tokenizer(texts, vocab_size=TINY.d_vocab).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=list(DTYPES))
def tiny(request, checkpoint):
    """The tiny model in one dtype, and that dtype's size in bytes."""
    dtype = DTYPES[request.param]
    return models.load_model(checkpoint, device="cpu", dtype=dtype), dtype.itemsize


def a_batch() -> data.Batch:
    torch.manual_seed(1)
    tokens = torch.randint(0, TINY.d_vocab, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, :3] = 0  # left padding in one row
    return data.Batch(tokens, mask)


def saved_bytes(model, compute) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``compute()`` runs."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_parameter_counts_of_the_real_configs():
    assert ma.parameter_count(ma.MISTRAL_7B) == 7_241_732_096
    assert ma.parameter_count(ma.LLAMA3_70B) == 70_553_706_496


def test_parameter_counts_equal_tiny_models(checkpoint):
    from transformers import MistralForCausalLM

    hf = MistralForCausalLM(tiny_hf_config())
    assert ma.parameter_count(TINY) == sum(p.numel() for p in hf.parameters()) == 251_968
    model = models.load_model(checkpoint, device="cpu")
    assert ma.backend_parameter_count(TINY) == sum(p.numel() for p in model.parameters())
    rotary = sum(b.nbytes for n, b in model.named_buffers() if "rotary" in n)
    assert ma.buffer_bytes(TINY, 4) == rotary
    first_blocks = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("embed.", "blocks.0.", "blocks.1."))
    )
    biases_2 = 2 * (
        TINY.n_heads * TINY.d_head
        + 2 * TINY.n_kv_heads * TINY.d_head
        + 2 * TINY.d_model
        + TINY.d_mlp
    )
    assert ma.parameter_count(TINY, n_blocks=2, unembed=False) == first_blocks - biases_2


@pytest.mark.parametrize("masked", [True, False])
def test_rmu_saved_activations_equal_autograds(tiny, masked):
    model, e = tiny
    names = [models.mlp_out_param(layer) for layer in (1, 2)]
    fwd = SplitForward(model, first=1, layer=2, base=snapshot_weights(model, names))
    batch, target = a_batch(), torch.ones(TINY.d_model, dtype=models.model_dtype(model))
    with training.trainable(model, names, lr=1e-3):
        resid = fwd.prefix(batch)
        mask = batch.attention_mask if masked else None
        measured = saved_bytes(model, lambda: forget_term(fwd.suffix(resid, batch), target, mask))
    assert measured == ma.rmu_saved_bytes(TINY, BATCH, SEQ, 1, 2, e, masked)


@pytest.mark.parametrize("params", ["all", "mlp_out"])
def test_finetune_saved_activations_equal_autograds(tiny, params):
    model, e = tiny
    with training.trainable(model, trained_names(model, params), lr=1e-3):
        measured = saved_bytes(model, lambda: training.next_token_loss(model, a_batch()))
    assert measured == ma.finetune_saved_bytes(TINY, BATCH, SEQ, e, params)


def test_adamw_state_equals_the_optimizers(tiny):
    model, e = tiny
    names = [models.mlp_out_param(layer) for layer in (1, 2, 3)]
    with training.trainable(model, names, lr=1e-3) as optimizer:
        training.next_token_loss(model, a_batch()).backward()
        optimizer.step()
        moments = sum(
            t.nbytes for s in optimizer.state.values() for k, t in s.items() if k != "step"
        )
        grads = sum(p.grad.nbytes for g in optimizer.param_groups for p in g["params"])
    n = ma.update_matrices(TINY)
    assert moments == ma.adamw_state_bytes(n, e) == 2 * 3 * 224 * 64 * e
    assert grads == n * e


def parameter_copy_bytes(model, compute) -> int:
    """Bytes of the copies ``compute()`` makes of the model's parameters as stored (``clone``
    calls on a contiguous tensor sharing a parameter's storage: what a snapshot makes). The
    copies TransformerLens' attention makes of W_Q/W_K/W_V/W_O on every call reshape a permuted
    view (not contiguous): transient, counted where autograd keeps them
    (``attention_weight_copy_bytes``)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert all(p.is_contiguous() for p in model.parameters())
    copies = []

    class CountCopies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            clone = func is torch.ops.aten.clone.default and args[0].is_contiguous()
            if clone and args[0].untyped_storage().data_ptr() in params:
                copies.append(out.nbytes)
            return out

    with CountCopies():
        compute()
    return sum(copies)


def test_rmu_keeps_the_one_snapshot_the_arithmetic_counts(tiny):
    model, e = tiny
    texts = [f"word{i} and word{i + 1} then word{i * 7 % 13}" for i in range(8)]
    cfg = rmu.RMUConfig(layer=2, update_layers=(1, 2), steps=2, batch_size=2, max_len=16)
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    n = len(names) * TINY.d_mlp * TINY.d_model
    with restored_weights(model, names):
        copies = parameter_copy_bytes(
            model, lambda: rmu.train_rmu(model, [texts], [texts[::-1]], cfg, progress=False)
        )
    assert copies == ma.snapshot_bytes(n, e) + n * e  # and the result's unlearned_weights


def test_rmu_in_a_sweep_point_shares_the_points_snapshot(tiny):
    """A sweep point (``restored_weights`` around RMU) holds one copy of the trained tensors,
    not two: RMU takes the point's snapshot as its frozen copy and copies only its result."""
    model, e = tiny
    texts = [f"word{i} and word{i + 1} then word{i * 7 % 13}" for i in range(8)]
    cfg = rmu.RMUConfig(layer=2, update_layers=(1, 2), steps=2, batch_size=2, max_len=16)
    names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
    n = len(names) * TINY.d_mlp * TINY.d_model

    def sweep_point():  # what every RMU sweep point runs (coefficient, layer, noise sweeps)
        with _Retraining(model, [texts], [texts[::-1]], cfg).trained(cfg):
            pass

    assert parameter_copy_bytes(model, sweep_point) == ma.snapshot_bytes(n, e) + n * e


@pytest.mark.parametrize("params", ["all", "mlp_out"])
def test_finetune_keeps_the_one_snapshot_the_arithmetic_counts(tiny, params):
    model, e = tiny
    texts = [f"word{i} and word{i + 1}" for i in range(4)]
    cfg = FinetuneConfig(steps=1, batch_size=2, max_len=16, params=params)
    n = sum(
        p.numel() for name, p in model.named_parameters() if name in trained_names(model, params)
    )
    copies = parameter_copy_bytes(
        model, lambda: finetune_curve(model, None, texts, cfg, lambda m: {})
    )
    assert copies == ma.snapshot_bytes(n, e)


def test_kv_cache_equals_the_toolkits(tiny):
    model, e = tiny
    cache = activations.new_kv_cache(model, BATCH, max_len=SEQ)
    measured = sum(x.nbytes for entry in cache.entries for x in (entry.keys, entry.values))
    assert measured == ma.kv_cache_bytes(TINY, BATCH, SEQ, e)


def test_readme_table_is_the_scripts():
    readme = (ROOT / "README.md").read_text()
    table = ma.markdown_table((ma.MISTRAL_7B, ma.LLAMA3_70B), ma.Setting())
    assert ma.with_table(readme, table) == readme
