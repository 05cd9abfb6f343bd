"""Key-value caches for decoding: an empty cache for a batch (TransformerLens' own, or buffers of
the final length that a step writes into), and a cache of chosen rows of another.

Part of the backend seam (with :mod:`activations`, which re-exports these and runs the steps:
``activations.decode_step``); :mod:`backend_decode` supplies the caches that keep keys rotated.

    >>> cache = new_kv_cache(model, batch_size=4, max_len=64)                # doctest: +SKIP
    >>> resid = activations.decode_step(model, tokens, attention_mask, cache)  # doctest: +SKIP
    >>> per_choice = kv_cache_rows(cache, [0, 0, 0, 0, 1, 1])                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

from unlearn_interp import backend_decode
from unlearn_interp.checks import check_int
from unlearn_interp.models import Model

KVCache = TransformerLensKeyValueCache


class _BufferedEntry(TransformerLensKeyValueCacheEntry):
    """One layer's keys and values in buffers of the final length: a step writes only its new
    positions where TransformerLens's entry concatenates the whole past again (``past_keys``
    and ``past_values`` are views of the part written so far)."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:  # [batch, max_len, heads, d_head]
        self.keys, self.values, self.length, self.frozen = keys, values, 0, False

    @property
    def past_keys(self) -> Tensor:
        return self.keys[:, : self.length]

    @past_keys.setter
    def past_keys(self, keys: Tensor) -> None:  # what the concatenating fallback stores
        self.keys, self.length = keys, keys.shape[1]

    @property
    def past_values(self) -> Tensor:
        return self.values[:, : self.length]

    @past_values.setter
    def past_values(self, values: Tensor) -> None:
        self.values = values

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + new_keys.shape[1]
        if self.frozen or end > self.keys.shape[1] or torch.is_grad_enabled():
            return super().append(new_keys, new_values)  # concatenates, stores nothing new
        self.keys[:, self.length : end] = new_keys
        self.values[:, self.length : end] = new_values
        self.length = end
        return self.past_keys, self.past_values


def new_kv_cache(model: Model, batch_size: int, max_len: int | None = None) -> KVCache:
    """An empty key-value cache for ``batch_size`` rows, on the model's device.

    With ``max_len`` (the most positions it will hold, prompt included) keys and values go into
    buffers of that length, so each decoding step copies only its own positions (no-grad use
    only: with gradients on, or past ``max_len``, it concatenates as TransformerLens does). Such
    a cache also keeps keys rotated and shares masks across layers (``backend_decode``) when the
    model supports it."""
    if max_len is not None:
        check_int(max_len, "max_len", minimum=1)
        if backend_decode.supports(model):
            return backend_decode.new_cache(model, batch_size, max_len)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)
    if max_len is not None:
        cache.entries = [
            _BufferedEntry(*(x.new_empty(batch_size, max_len, *x.shape[2:]) for x in pair))
            for pair in ((e.past_keys, e.past_values) for e in cache.entries)
        ]
    return cache


def kv_cache_rows(cache: KVCache, rows: Sequence[int]) -> KVCache:
    """A new cache holding ``cache``'s rows ``rows`` (repeats allowed): keys, values and
    attention mask alike."""
    if backend_decode.is_decode_cache(cache):
        return backend_decode.cache_rows(cache, rows)

    def pick(x: Tensor) -> Tensor:
        return x.index_select(0, torch.tensor(list(rows), device=x.device))

    entries = [
        TransformerLensKeyValueCacheEntry(pick(e.past_keys), pick(e.past_values))
        for e in cache.entries
    ]  # [rows, ctx_pos, n_kv_heads, d_head] each
    return TransformerLensKeyValueCache(entries, pick(cache.previous_attention_mask))


__all__ = ["KVCache", "kv_cache_rows", "new_kv_cache"]
