"""The backend seam: every forward pass the toolkit runs goes through this module.

Nothing outside ``models`` (with ``loader``), ``hf_convert``, ``activations`` (with
``kv_cache``), ``interventions``, ``variants`` and the toolkit's own TransformerLens components
(``backend_components``, ``backend_decode``) passes TransformerLens keyword arguments, reads
``model.cfg`` or touches TL's cache classes (``tests/test_architecture.py`` enforces it), so a
second backend (TL 4's ``TransformerBridge``, nnsight) replaces these and nothing else.

* Batches: :func:`iter_batches` (left-padded, within the model's context), :func:`select_positions`.
* Blocks: :func:`run_blocks` runs blocks ``start..stop-1`` from tokens or from a residual
  stream, optionally with other weights (a frozen copy through ``functional_call``);
  :func:`unembed` is what the model does after its last block; :func:`logits` both.
* Capture: :func:`capture_resid` streams the residual stream after chosen layers at chosen
  tokens; :func:`mean_activations` keeps only float64 running sums (:class:`MaskedSums`).
* Decoding: :func:`decode_step` on a cache from :func:`new_kv_cache` (or :func:`kv_cache_rows`;
  both live in :mod:`kv_cache`, re-exported here). With ``max_len`` the cache is buffered; on a
  model the toolkit built (``backend_components``) its attention then keeps keys rotated
  (``backend_decode``), on any other HookedTransformer TransformerLens' own forward reads it.

Layer ``l`` is the residual stream *after* block ``l`` (``blocks.{l}.hook_resid_post``).

    >>> h = run_blocks(model, batch.tokens, stop=8, attention_mask=batch.attention_mask)  # doctest: +SKIP
    >>> out = run_blocks(model, h, start=8, attention_mask=batch.attention_mask)         # doctest: +SKIP
    >>> logp = unembed(model, out[:, -1:]).log_softmax(-1)                                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from unlearn_interp import data, models
from unlearn_interp.checks import check_int, is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.kv_cache import KVCache, kv_cache_rows, new_kv_cache
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant, applied, hooks_installed

log = logging.getLogger(__name__)

Positions = (
    str | int
)  # "last" | "all" | a token index counted in real tokens (negative: from the end)

# ---------------------------------------------------------------------------------------------
# Batches and which tokens count
# ---------------------------------------------------------------------------------------------


def check_batch_size(batch_size: Any) -> int:
    """Return ``batch_size`` if it is a positive integer, else raise saying so."""
    return check_int(batch_size, "batch_size", minimum=1)


def iter_batches(
    model: Model,
    prompts: Sequence[str],
    batch_size: int,
    max_len: int | None,
    desc: str,
) -> Iterator[tuple[int, data.Batch]]:
    """``(index of the first prompt, left-padded batch on the model's device)`` per batch."""
    if not prompts:
        raise UnlearnInterpError("the prompt list is empty")
    check_batch_size(batch_size)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=None, leave=False):
        chunk = list(prompts[start : start + batch_size])
        batch = encode_within_context(model, chunk, max_len, start)
        yield start, batch.to(models.model_device(model))


def encode_within_context(
    model: Model, texts: list[str], max_len: int | None, first_prompt: int = 0
) -> data.Batch:
    """``texts`` cut on the right to ``max_len`` tokens and never beyond the model's context;
    a cut the caller did not ask for (``max_len`` unset or larger) is logged as a warning."""
    n_ctx = models.n_ctx(model)
    if max_len is not None and max_len <= n_ctx:
        return data.encode_batch(model.tokenizer, texts, max_len)
    batch = data.encode_batch(model.tokenizer, texts, n_ctx + 1)
    if batch.tokens.shape[1] <= n_ctx:
        return batch
    longest = first_prompt + int(batch.attention_mask.sum(dim=1).argmax())
    log.warning(
        "prompt %d (and maybe others) is longer than the model's %d-token context; "
        "truncated to its first %d tokens",
        longest,
        n_ctx,
        n_ctx,
    )
    return data.encode_batch(model.tokenizer, texts, n_ctx)


def check_positions(positions: Positions) -> Positions:
    """Return ``positions`` if it is ``"last"``, ``"all"`` or an int, else raise naming the field."""
    if positions in ("last", "all") or is_int(positions):
        return positions
    raise UnlearnInterpError(
        f"positions {positions!r} is not 'last', 'all' or a token index (an integer)"
    )


def select_positions(
    batch: data.Batch, positions: Positions, first_prompt: int = 0
) -> Bool[Tensor, "batch pos"]:
    """Which tokens of ``batch`` count: ``"all"`` real tokens, each prompt's ``"last"`` real token,
    or its token number ``positions`` counted in real tokens (``-1`` is the last, ``0`` the first,
    BOS where the tokenizer adds one). Works whatever the padding side.

    ``first_prompt`` is the batch's offset in the prompt list, so errors name the right prompt.

    >>> batch = data.encode_batch(tok, ["a b", "a"])               # doctest: +SKIP
    >>> select_positions(batch, "last").sum(dim=1)                  # doctest: +SKIP
    tensor([1, 1])
    """
    check_positions(positions)
    mask = batch.attention_mask.bool()
    lengths = mask.sum(dim=1)
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise UnlearnInterpError(f"prompt {first_prompt + row} has no tokens")
    if positions == "all":
        return mask
    if positions == "last":
        chosen = torch.zeros_like(mask)
        chosen[torch.arange(mask.shape[0], device=mask.device), batch.last_positions] = True
        return chosen
    return mask & _token_number_mask(mask, lengths, positions, first_prompt)


def _token_number_mask(
    mask: Tensor, lengths: Tensor, position: int, first_prompt: int
) -> Bool[Tensor, "batch pos"]:
    rank = mask.long().cumsum(dim=1) - 1  # index of each real token among the real tokens
    target = position if position >= 0 else lengths + position
    target = torch.as_tensor(target, device=mask.device).expand_as(lengths)
    outside = (target < 0) | (target >= lengths)
    if outside.any():
        row = int(outside.nonzero()[0])
        raise UnlearnInterpError(
            f"positions {position} does not exist in prompt {first_prompt + row}, "
            f"which has {int(lengths[row])} tokens"
        )
    return rank == target.unsqueeze(1)


def check_layers(model: Model, layers: Sequence[int] | int) -> list[int]:
    """``layers`` as a list of distinct valid block indices, else one sentence saying what is wrong."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise UnlearnInterpError("layers is empty: ask for at least one layer")
    for layer in layers:
        models.check_layer(model, layer, field="layer")
    if len(set(layers)) != len(layers):
        raise UnlearnInterpError(f"layers {layers} contains a layer twice")
    return layers


# ---------------------------------------------------------------------------------------------
# Running blocks
# ---------------------------------------------------------------------------------------------


def run_blocks(
    model: Model,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    *,
    start: int = 0,
    stop: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    weights: Mapping[str, Tensor] | None = None,
    kv_cache: KVCache | None = None,
    recompute: bool = False,
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after block ``stop - 1`` (default: after the last block, before the
    final norm), running blocks ``start..stop-1``.

    ``inputs`` are token ids (integers; ``start`` must then be 0) or the residual stream
    entering block ``start`` (floats; any ``start``, 0 included). ``weights`` (name -> tensor) run in place of the model's own tensors of those
    names without touching them (a frozen copy through ``torch.func.functional_call``; no
    gradient flows to the model). ``kv_cache`` (:func:`new_kv_cache`) is read and extended.
    ``recompute``: each block runs under activation checkpointing (only its input is kept; the
    backward pass reruns one block at a time): same values and gradients, less memory.
    """
    stop = models.n_layers(model) if stop is None else stop
    if recompute and (weights is not None or kv_cache is not None):
        raise UnlearnInterpError(
            "recompute runs the model's own blocks, without weights= or kv_cache="
        )
    if recompute:
        return _recomputed_blocks(model, inputs, range(start, stop), attention_mask)
    kwargs: dict[str, Any] = {"stop_at_layer": stop}
    if start or torch.is_floating_point(inputs):  # a residual stream enters block `start`, 0 too
        kwargs["start_at_layer"] = start
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if kv_cache is not None:
        kwargs["past_kv_cache"] = kv_cache
    if weights is None:
        return model(inputs, **kwargs)
    return torch.func.functional_call(model, dict(weights), args=(inputs,), kwargs=kwargs)


def _recomputed_blocks(
    model: Model, resid: Tensor, blocks: range, attention_mask: Int[Tensor, "batch pos"] | None
) -> Float[Tensor, "batch pos d_model"]:
    """``run_blocks(recompute=True)``: each block under ``torch.utils.checkpoint``."""
    if not torch.is_floating_point(resid):
        raise UnlearnInterpError("recompute runs blocks on a residual stream, not on token ids")
    if has_forward_hooks(model):  # the backward pass reruns each block, and its hooks with it
        raise UnlearnInterpError(
            "recompute reruns blocks in the backward pass, so installed forward hooks would "
            "fire twice; remove them or run without recompute"
        )
    for block in blocks:
        resid = checkpoint(
            run_blocks,
            model,
            resid,
            start=block,
            stop=block + 1,
            attention_mask=attention_mask,
            use_reentrant=False,
        )
    return resid


def unembed(
    model: Model, resid: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """What the model does after its last block: final norm, unembedding, logit soft-cap (their
    hooks fire as usual). Run it on the positions you score only: a 32k vocabulary is large."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    logits = model.unembed(resid)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def unembedding_vectors(model: Model, tokens: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
    """Each token's column of the unembedding matrix (no final norm, no bias), a detached copy."""
    return model.unembed.W_U[:, tokens.to(model.unembed.W_U.device)].T.detach().clone()


def logits(model: Model, batch: data.Batch) -> Float[Tensor, "batch pos d_vocab"]:
    """The whole forward pass on a batch (on the model's device): logits at every position."""
    batch = batch.to(models.model_device(model))
    return model(batch.tokens, attention_mask=batch.attention_mask)


def after_blocks(
    model: Model,
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    attention_mask: Int[Tensor, "batch pos"] | None,
    output: str = "resid",
) -> Tensor:
    """Blocks ``start..`` on a residual stream: the final residual (``output="resid"``) or the
    logits (``output="logits"``, through the final norm and unembedding)."""
    if output not in ("resid", "logits"):
        raise UnlearnInterpError(f"output {output!r} is not 'resid' or 'logits'")
    if start >= models.n_layers(model):
        out = resid
    else:
        out = run_blocks(model, resid, start=start, attention_mask=attention_mask)
    return out if output == "resid" else unembed(model, out)


def last_logprobs(
    model: Model, batch: data.Batch, n_positions: int
) -> Float[Tensor, "batch pos d_vocab"]:
    """Float32 log-softmax at the last ``n_positions`` positions of each (left-padded) row.

    The blocks run on the whole batch; the final norm and the unembedding only on the positions
    that are scored, which saves gigabytes of logits for a 32k vocabulary.
    """
    batch = batch.to(models.model_device(model))
    resid = run_blocks(model, batch.tokens, attention_mask=batch.attention_mask)
    return unembed(model, resid[:, -n_positions:]).float().log_softmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# Capturing the residual stream
# ---------------------------------------------------------------------------------------------


def capture_resid(
    model: Model,
    batch: data.Batch,
    layers: Sequence[int],
    select: Bool[Tensor, "batch pos"],
    variant: Variant | None,
    consume: Callable[[int, Tensor], None],
) -> None:
    """One forward pass of ``variant`` on ``batch``, stopped after the deepest layer asked;
    ``consume(i, rows)`` receives ``layers[i]``'s residual stream at the selected tokens
    (``[n_selected, d_model]``) while the pass runs, so nothing else is kept."""
    index = {models.resid_hook(layer): i for i, layer in enumerate(layers)}

    def capture(activation: Tensor, hook: Any) -> None:
        consume(index[hook.name], activation[select])

    capturing = [(name, capture) for name in index]
    with torch.no_grad(), applied(variant, model), hooks_installed(model, capturing):
        run_blocks(model, batch.tokens, stop=max(layers) + 1, attention_mask=batch.attention_mask)


@dataclasses.dataclass
class MaskedSums:
    """Running float64 sums over the selected tokens, one row per layer asked."""

    total: Float[Tensor, "n_layers_asked d_model"]  # sum of activations
    norm_total: Float[Tensor, " n_layers_asked"]  # sum of per-token norms
    count: int = 0

    @classmethod
    def zeros(cls, n_layers: int, d_model: int) -> MaskedSums:
        return cls(
            torch.zeros(n_layers, d_model, dtype=torch.float64),
            torch.zeros(n_layers, dtype=torch.float64),
        )

    def add(self, index: int, rows: Tensor) -> None:
        rows = rows.double()
        self.total[index] += rows.sum(dim=0).cpu()
        self.norm_total[index] += rows.norm(dim=-1).sum().cpu()

    @property
    def mean(self) -> Tensor:
        return self.total / self.count

    @property
    def mean_norm(self) -> Tensor:
        return self.norm_total / self.count


def activation_sums(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int],
    positions: Positions,
    variant: Variant | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> MaskedSums:
    """:class:`MaskedSums` of the residual stream after ``layers`` at the selected tokens."""
    sums = MaskedSums.zeros(len(layers), models.d_model(model))
    desc = f"activations ({variant.name if variant else 'model'})"
    for start, batch in iter_batches(model, prompts, batch_size, max_len, desc):
        select = select_positions(batch, positions, first_prompt=start)
        capture_resid(model, batch, layers, select, variant, sums.add)
        sums.count += int(select.sum())
    return sums


def mean_activations(
    model: Model,
    prompts: Sequence[str],
    layers: Sequence[int] | int,
    positions: Positions = "last",
    variant: Variant | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Float[Tensor, "n_layers_asked d_model"]:
    """Mean residual stream after each block in ``layers`` over the selected tokens, in float64.

    ``positions``: ``"last"`` (each prompt's last real token; the blog's choice), ``"all"`` (every
    real token, each token weighing the same) or an int (that token, counted in real tokens;
    negative counts from the end). Padding never counts. One forward pass per batch, stopped
    after the deepest layer asked, with ``variant`` applied; only running sums are kept. Prompts
    longer than ``max_len`` tokens are cut on the right, so "last" is then the last kept token.

    >>> means = mean_activations(model, prompts, layers=[5, 6, 7], variant=rmu)  # doctest: +SKIP
    >>> means.shape                                  # doctest: +SKIP
    torch.Size([3, 4096])
    """
    layers = check_layers(model, layers)
    check_positions(positions)
    return activation_sums(model, prompts, layers, positions, variant, batch_size, max_len).mean


# ---------------------------------------------------------------------------------------------
# Decoding with a key-value cache
# ---------------------------------------------------------------------------------------------


def has_forward_hooks(model: Model) -> bool:
    """True when a forward hook is installed on any of the model's hook points (a caller that
    would split a pass in two, e.g. to share a prompt prefix, must then keep it whole)."""
    return any(point.has_hooks(dir="fwd") for point in model.hook_dict.values())


def decode_step(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    cache: KVCache,
) -> Float[Tensor, "batch pos d_model"]:
    """Run ``tokens`` after what ``cache`` holds (extending it): the final residual stream at
    the new positions (before the final norm; :func:`unembed` the ones you need)."""
    return run_blocks(model, tokens, attention_mask=attention_mask, kv_cache=cache)


__all__ = [
    "KVCache",
    "MaskedSums",
    "Positions",
    "activation_sums",
    "after_blocks",
    "capture_resid",
    "check_batch_size",
    "check_layers",
    "check_positions",
    "decode_step",
    "encode_within_context",
    "has_forward_hooks",
    "iter_batches",
    "kv_cache_rows",
    "last_logprobs",
    "logits",
    "mean_activations",
    "new_kv_cache",
    "run_blocks",
    "select_positions",
    "unembed",
]
