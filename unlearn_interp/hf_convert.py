"""HuggingFace checkpoints to TransformerLens: the config and the tensors, using only the
checkpoint's own fields (nothing inferred from a directory name, nothing fetched).

``models.load_model`` and ``models.variant_from_checkpoint`` call these; a second backend that
runs HuggingFace modules directly would not need this module at all.

* :func:`read_hf_config` reads and checks a checkpoint directory's ``config.json``.
* :func:`tl_config_from_hf` maps GPT-2 and Llama/Mistral/Qwen2 configs to a
  ``HookedTransformerConfig`` (context capped at :data:`MAX_CTX`).
* :func:`convert_state_dict` converts a loaded HF model's weights; :func:`hf_tensor_to_tl`
  converts one safetensors tensor at a time (for comparing two checkpoints lazily).

    >>> cfg = tl_config_from_hf(read_hf_config(Path("/ckpts/zephyr")), model_name="zephyr")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformerConfig

from unlearn_interp.errors import UnlearnInterpError

# TransformerLens allocates an [n_ctx, n_ctx] causal mask per layer; long-context checkpoints
# (Zephyr: 32k) would spend gigabytes on it. RMU and WMDP need at most 768 tokens.
MAX_CTX = 2048


SUPPORTED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
)


def read_hf_config(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    if not path.exists():
        raise UnlearnInterpError(f"{path} does not exist")
    if not path.is_dir():
        raise UnlearnInterpError(f"{path} is a file, not a checkpoint directory")
    if not (path / "config.json").is_file():
        raise UnlearnInterpError(
            f"{path} has no config.json, so it is not a HuggingFace checkpoint"
        )
    try:
        return AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as err:
        raise UnlearnInterpError(f"{path / 'config.json'} could not be read: {err}") from err


def _architecture(hf_config: Any) -> str:
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise UnlearnInterpError("config.json names no architecture (the 'architectures' field)")
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnlearnInterpError(
            f"architecture {architecture!r} is not supported for local checkpoints; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def tl_config_from_hf(
    hf_config: Any,
    *,
    model_name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> HookedTransformerConfig:
    """A HookedTransformerConfig from a HuggingFace config object, using only its own fields.

    Unlike TransformerLens' own conversion, nothing is inferred from the directory name (a folder
    called ``my-llama-rmu`` holding a Mistral stays a Mistral) and nothing is fetched.
    """
    architecture = _architecture(hf_config)
    fields = (
        _gpt2_fields(hf_config) if architecture == "GPT2LMHeadModel" else _llama_fields(hf_config)
    )
    return HookedTransformerConfig(
        **fields,
        model_name=model_name,
        original_architecture=architecture,
        dtype=dtype,
        device=str(device),
        tokenizer_name=None,
    )


def _gpt2_fields(c: Any) -> dict[str, Any]:
    n_ctx = getattr(c, "n_ctx", None) or c.n_positions  # transformers 5 drops n_ctx on save
    return {
        "d_model": c.n_embd,
        "d_head": c.n_embd // c.n_head,
        "n_heads": c.n_head,
        "d_mlp": c.n_inner or 4 * c.n_embd,
        "n_layers": c.n_layer,
        "n_ctx": min(n_ctx, MAX_CTX),
        "eps": c.layer_norm_epsilon,
        "d_vocab": c.vocab_size,
        "act_fn": c.activation_function,
        "use_attn_scale": getattr(c, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(c, "scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN",
    }


def _llama_fields(c: Any) -> dict[str, Any]:
    """Llama, Mistral and Qwen2 share one layout: RMSNorm, rotary, gated SiLU MLP, maybe GQA."""
    from transformer_lens.loading_from_pretrained import _get_rope_theta

    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": min(c.max_position_embeddings, MAX_CTX),
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_act,
        # TransformerLens switches to grouped-query attention whenever this is not None.
        "n_key_value_heads": n_kv if n_kv != c.num_attention_heads else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": _get_rope_theta(c),
        "final_rms": True,
        "gated_mlp": True,
    }


def convert_state_dict(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights,
        convert_llama_weights,
        convert_mistral_weights,
        convert_qwen2_weights,
    )

    converters: dict[str, Callable[[Any, HookedTransformerConfig], dict[str, Tensor]]] = {
        "GPT2LMHeadModel": convert_gpt2_weights,
        "LlamaForCausalLM": convert_llama_weights,
        "MistralForCausalLM": convert_mistral_weights,
        "Qwen2ForCausalLM": convert_qwen2_weights,
    }
    state_dict = converters[cfg.original_architecture](hf_model, cfg)
    if cfg.original_architecture == "MistralForCausalLM" and cfg.n_key_value_heads is None:
        # TransformerLens' Mistral converter always writes grouped-query names (_W_K, _b_K, ...).
        state_dict = {
            re.sub(r"attn\._([Wb]_[KV])$", r"attn.\1", k): v for k, v in state_dict.items()
        }
    return state_dict


_GPT2_LAYER = re.compile(r"^h\.(\d+)\.(.+)$")
_LLAMA_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_tensor_to_tl(hf_name: str, t: Tensor, cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    """Convert one HuggingFace tensor to the TransformerLens tensor(s) it becomes.

    Mirrors TransformerLens' whole-model converters tensor by tensor (tested against them), so a
    checkpoint can be diffed without materialising a second model.
    """
    if cfg.original_architecture == "GPT2LMHeadModel" or hf_name.startswith(("transformer.", "h.")):
        return _gpt2_tensor(hf_name.removeprefix("transformer."), t, cfg)
    return _llama_tensor(hf_name, t, cfg)


def _gpt2_tensor(name: str, t: Tensor, cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    top = {"wte.weight": "embed.W_E", "ln_f.weight": "ln_final.w", "ln_f.bias": "ln_final.b"}
    if name in top:
        return {top[name]: t}
    if name == "wpe.weight":
        return {"pos_embed.W_pos": t[: cfg.n_ctx]}
    if name == "lm_head.weight":
        return {"unembed.W_U": t.T}
    match = _GPT2_LAYER.match(name)
    if not match:
        return {}
    b, rest = f"blocks.{match.group(1)}", match.group(2)
    heads = cfg.n_heads
    simple = {
        "ln_1.weight": "ln1.w", "ln_1.bias": "ln1.b", "ln_2.weight": "ln2.w", "ln_2.bias": "ln2.b",
        "attn.c_proj.bias": "attn.b_O", "mlp.c_fc.weight": "mlp.W_in", "mlp.c_fc.bias": "mlp.b_in",
        "mlp.c_proj.weight": "mlp.W_out", "mlp.c_proj.bias": "mlp.b_out",
    }  # fmt: skip
    if rest in simple:
        return {f"{b}.{simple[rest]}": t}
    if rest == "attn.c_attn.weight":
        q, k, v = torch.split(t, cfg.d_model, dim=1)
        split = {"W_Q": q, "W_K": k, "W_V": v}
        return {
            f"{b}.attn.{n}": einops.rearrange(w, "m (i h) -> i m h", i=heads)
            for n, w in split.items()
        }
    if rest == "attn.c_attn.bias":
        q, k, v = t.view(3, heads, cfg.d_head)
        return {f"{b}.attn.b_Q": q, f"{b}.attn.b_K": k, f"{b}.attn.b_V": v}
    if rest == "attn.c_proj.weight":
        return {f"{b}.attn.W_O": einops.rearrange(t, "(i h) m -> i h m", i=heads)}
    return {}


def _llama_tensor(name: str, t: Tensor, cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    top = {"model.embed_tokens.weight": "embed.W_E", "model.norm.weight": "ln_final.w"}
    if name in top:
        return {top[name]: t}
    if name == "lm_head.weight":
        return {"unembed.W_U": t.T}
    match = _LLAMA_LAYER.match(name)
    if not match:
        return {}
    b, rest = f"blocks.{match.group(1)}", match.group(2)
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    transposed = {"mlp.up_proj.weight": "mlp.W_in", "mlp.gate_proj.weight": "mlp.W_gate",
                  "mlp.down_proj.weight": "mlp.W_out"}  # fmt: skip
    norms = {"input_layernorm.weight": "ln1.w", "post_attention_layernorm.weight": "ln2.w"}
    if rest in transposed:
        return {f"{b}.{transposed[rest]}": t.T}
    if rest in norms:
        return {f"{b}.{norms[rest]}": t}
    if rest == "self_attn.o_proj.weight":
        return {f"{b}.attn.W_O": einops.rearrange(t, "m (n h) -> n h m", n=cfg.n_heads)}
    qkv = {"q": ("", cfg.n_heads), "k": (gqa, n_kv), "v": (gqa, n_kv)}
    match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
    if match:
        letter, kind = match.groups()
        prefix, n = qkv[letter]
        if kind == "weight":
            return {
                f"{b}.attn.{prefix}W_{letter.upper()}": einops.rearrange(t, "(n h) m -> n m h", n=n)
            }
        return {f"{b}.attn.{prefix}b_{letter.upper()}": t.view(n, cfg.d_head)}
    return {}
