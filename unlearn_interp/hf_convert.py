"""HuggingFace checkpoints to TransformerLens: the config and the tensors, using only the
checkpoint's own fields (nothing inferred from a directory name, nothing fetched).

``models.load_model`` and ``models.variant_from_checkpoint`` call these; a second backend that
runs HuggingFace modules directly would not need this module at all.

* :func:`read_hf_config` reads and checks a checkpoint directory's ``config.json``.
* :func:`tl_config_from_hf` maps GPT-2 and Llama/Mistral/Qwen2 configs to a
  ``HookedTransformerConfig`` (context capped at :data:`MAX_CTX`).
* :func:`convert_state_dict` converts a loaded HF model's weights; :func:`hf_tensor_to_tl`
  converts one safetensors tensor at a time (for comparing two checkpoints lazily).
* :func:`checkpoint_shards` and :func:`load_checkpoint_tensors` stream a checkpoint's
  safetensors shards into a model's parameters, one tensor (and one 4 MB slab) at a time, from
  a memory map: ``load_model``'s peak host memory is the model plus a few slabs, and bfloat16
  stays bfloat16 (the HF model is never built). :func:`model_through_transformers` is the
  whole-model path, kept for pickled ``.bin`` checkpoints.

    >>> cfg = tl_config_from_hf(read_hf_config(Path("/ckpts/zephyr")), model_name="zephyr")  # doctest: +SKIP
    >>> load_checkpoint_tensors(dict(model.named_parameters()), checkpoint_shards(path), cfg,
    ...                         tie_word_embeddings=False)                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

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
        config = AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as err:
        raise UnlearnInterpError(f"{path / 'config.json'} could not be read: {err}") from err
    if not trust_remote_code and getattr(config, "auto_map", None):
        log.warning(
            "%s declares custom code (auto_map in config.json), which is not run: it is loaded "
            "as the standard %s architecture",
            path,
            (getattr(config, "architectures", None) or ["(unnamed)"])[0],
        )
    return config


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


def model_through_transformers(
    path: Path,
    cfg: HookedTransformerConfig,
    trust_remote_code: bool,
    into: HookedTransformer | None = None,
) -> HookedTransformer:
    """The whole HuggingFace model built, converted and copied into a HookedTransformer: about
    twice the model in host memory (``load_model``'s path for pickled ``.bin`` checkpoints).
    ``into``: the model to load into (default a new one of ``cfg``); tensors it lacks (the
    blocks and unembedding a truncated model leaves out) are not copied."""
    from transformers import AutoModelForCausalLM

    try:
        hf_model, info = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            dtype=cfg.dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except OSError as err:
        raise UnlearnInterpError(f"{path} has no readable weights ({err})") from err
    _check_nothing_missing(path, hf_model, info)
    state_dict = convert_state_dict(hf_model, cfg)
    del hf_model
    model = HookedTransformer(cfg, move_to_device=False) if into is None else into
    if into is not None:
        kept = into.state_dict()
        state_dict = {name: value for name, value in state_dict.items() if name in kept}
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model


def _check_nothing_missing(path: Path, hf_model: Any, info: dict[str, Any]) -> None:
    """One sentence when the checkpoint's weight files lack tensors the architecture needs
    (transformers would leave them randomly initialised)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        files = ", ".join(p.name for p in sorted(path.glob("*.bin"))) or "its weight files"
        total = len(hf_model.state_dict())
        raise UnlearnInterpError(
            f"{path}: {len(missing)} of the model's {total} tensors are missing from {files} "
            f"(e.g. {', '.join(missing[:3])}); they would be random, so it is not loaded"
        )


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
        "ln_1.weight": "ln1.w",
        "ln_1.bias": "ln1.b",
        "ln_2.weight": "ln2.w",
        "ln_2.bias": "ln2.b",
        "attn.c_proj.bias": "attn.b_O",
        "mlp.c_fc.weight": "mlp.W_in",
        "mlp.c_fc.bias": "mlp.b_in",
        "mlp.c_proj.weight": "mlp.W_out",
        "mlp.c_proj.bias": "mlp.b_out",
    }
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
    transposed = {
        "mlp.up_proj.weight": "mlp.W_in",
        "mlp.gate_proj.weight": "mlp.W_gate",
        "mlp.down_proj.weight": "mlp.W_out",
    }
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


# ---------------------------------------------------------------------------------------------
# Streaming a checkpoint's safetensors shards into a model, tensor by tensor
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# How much of a mapped shard may be resident at once while one tensor is copied (bytes).
_SLAB_BYTES = 4 * 2**20
_MAX_HEADER_BYTES = 100 * 2**20


def checkpoint_shards(path: Path) -> list[Path]:
    """The safetensors files of checkpoint directory ``path``: the shards its
    ``model.safetensors.index.json`` names (every one must exist), else every ``*.safetensors``
    file in it; an empty list when it has none (a pickled ``.bin`` checkpoint)."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(path.glob("*.safetensors"))
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UnlearnInterpError(f"{index} is not a readable shard index ({err!r})") from err
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise UnlearnInterpError(
            f"{path} is missing shard(s) {', '.join(missing)} that {index.name} names"
        )
    return [path / name for name in names]


def load_checkpoint_tensors(
    params: dict[str, Tensor],
    shards: list[Path],
    cfg: HookedTransformerConfig,
    tie_word_embeddings: bool,
) -> None:
    """Fill ``params`` (a TransformerLens model's parameters by name) from safetensors ``shards``.

    Each HuggingFace tensor is converted with :func:`hf_tensor_to_tl` as a view of the
    memory-mapped file and copied into its parameter a slab at a time (cast to the parameter's
    dtype on the way), giving the mapped pages back after each slab: host memory holds the model
    plus at most a few slabs of the file. With ``tie_word_embeddings`` the unembedding is the
    embedding's transpose (as HuggingFace ties them). Parameters the checkpoint lacks keep their
    construction value (zero biases, unit norms) unless they are weight matrices: then a missing
    tensor, like a corrupt shard or a shape that differs from the model's, is an error.
    """
    skip = {"unembed.W_U"} if tie_word_embeddings else set()
    loaded: set[str] = set()
    with torch.no_grad():
        for shard in shards:
            with _MappedShard(shard) as mapped:
                for hf_name in mapped.names():
                    loaded |= _load_one_tensor(mapped, hf_name, params, cfg, skip)
        if tie_word_embeddings and "unembed.W_U" in params:
            params["unembed.W_U"].copy_(params["embed.W_E"].T)
            loaded.add("unembed.W_U")
    matrices = [name for name in params if name.rsplit(".", 1)[-1].startswith(("W_", "_W_"))]
    missing = [name for name in matrices if name not in loaded]
    if missing:
        files = ", ".join(shard.name for shard in shards)
        raise UnlearnInterpError(
            f"{shards[0].parent}: {len(missing)} of the model's {len(matrices)} weight matrices "
            f"are missing from {files} (e.g. {', '.join(missing[:3])})"
        )


def _load_one_tensor(
    mapped: _MappedShard,
    hf_name: str,
    params: dict[str, Tensor],
    cfg: HookedTransformerConfig,
    skip: set[str],
) -> set[str]:
    """Copy checkpoint tensor ``hf_name`` into the parameter(s) it becomes; their names."""
    source = mapped.tensor(hf_name)
    done = set()
    for tl_name, value in hf_tensor_to_tl(hf_name, source, cfg).items():
        if tl_name not in params or tl_name in skip:
            continue
        target = params[tl_name]
        if value.shape != target.shape:
            raise UnlearnInterpError(
                f"{mapped.path}: tensor {hf_name} has shape {tuple(value.shape)} but the "
                f"model's {tl_name} has {tuple(target.shape)}"
            )
        _copy_in_slabs(target, value, lambda: mapped.release(hf_name))
        done.add(tl_name)
    return done


def _copy_in_slabs(target: Tensor, source: Tensor, release: Callable[[], None]) -> None:
    """``target.copy_(source)`` a slab at a time along ``source``'s outermost axis (largest
    stride: consecutive bytes of the file), calling ``release`` after each slab."""
    if source.dim() == 0:
        target.copy_(source)
        return
    axis = max(range(source.dim()), key=source.stride)
    step = max(1, _SLAB_BYTES // max(1, source.stride(axis) * source.element_size()))
    for start in range(0, source.shape[axis], step):
        length = min(step, source.shape[axis] - start)
        target.narrow(axis, start, length).copy_(source.narrow(axis, start, length))
        release()


class _MappedShard:
    """One safetensors file, memory-mapped; tensors are views of the mapping (no copy), and
    :meth:`release` gives the pages read so far back to the kernel (they stay in its page cache).
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed in __exit__
        try:
            self._entries, self._data_start = _read_header(self._file, path)
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> _MappedShard:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(BufferError):  # a view still alive: it closes when that dies
            self._map.close()
        self._file.close()

    def names(self) -> list[str]:
        """Tensor names in file order."""
        return sorted(self._entries, key=lambda name: self._entries[name]["data_offsets"][0])

    def tensor(self, name: str) -> Tensor:
        entry = self._entries[name]
        dtype, shape = _ST_DTYPES[entry["dtype"]], entry["shape"]
        offset = self._data_start + entry["data_offsets"][0]
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        if offset % torch.empty((), dtype=dtype).element_size():  # unaligned: copy this one
            raw = torch.frombuffer(
                self._map, dtype=torch.uint8, count=entry["nbytes"], offset=offset
            )
            return raw.clone().view(dtype).view(shape)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(shape)

    def release(self, name: str) -> None:
        """Give back the pages of tensor ``name`` (whole pages, so maybe a neighbour's edge)."""
        begin, end = (self._data_start + x for x in self._entries[name]["data_offsets"])
        start = begin - begin % mmap.PAGESIZE
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)


def _read_header(handle: Any, path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor entries of a safetensors file and where its data starts, checked against the
    file's size; anything malformed is one sentence naming the file."""
    size = os.fstat(handle.fileno()).st_size
    try:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or not 2 <= length <= min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        entries = {name: _checked_entry(entry, size - 8 - length) for name, entry in header.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise UnlearnInterpError(f"{path} is not a valid safetensors file ({err})") from err
    return entries, 8 + length


def _checked_entry(entry: dict[str, Any], data_bytes: int) -> dict[str, Any]:
    begin, end = (int(x) for x in entry["data_offsets"])
    shape = [int(n) for n in entry["shape"]]
    itemsize = torch.empty((), dtype=_ST_DTYPES[entry["dtype"]]).element_size()
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_bytes:
        raise ValueError(f"tensor offsets {begin}..{end} lie outside its {data_bytes} data bytes")
    if end - begin != math.prod(shape) * itemsize:
        raise ValueError(
            f"a tensor of shape {shape} and dtype {entry['dtype']} is not {end - begin} bytes"
        )
    return {**entry, "shape": shape, "data_offsets": [begin, end], "nbytes": end - begin}
