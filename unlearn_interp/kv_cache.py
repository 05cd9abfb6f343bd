"""Key-value caches for decoding: an empty cache for a batch (TransformerLens' own, or buffers of
the final length that a step writes into), and a cache of chosen rows of another.

Part of the backend seam (with :mod:`activations`, which re-exports these and runs the steps:
``activations.decode_step``). A buffered cache is one :class:`backend_decode.BufferedEntry` per
layer; for a model whose attention is the toolkit's (``backend_components.uses_toolkit_decoding``)
its entries carry shared step tables and keep keys rotated (``backend_decode``'s decode path),
for any other model (a user's own HookedTransformer) TransformerLens' forward reads them.

    >>> cache = new_kv_cache(model, batch_size=4, max_len=64)                # doctest: +SKIP
    >>> resid = activations.decode_step(model, tokens, attention_mask, cache)  # doctest: +SKIP
    >>> per_choice = kv_cache_rows(cache, [0, 0, 0, 0, 1, 1])                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformer_lens import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

from unlearn_interp import backend_components
from unlearn_interp.backend_decode import BufferedEntry, StepTables
from unlearn_interp.checks import check_int
from unlearn_interp.models import Model

KVCache = TransformerLensKeyValueCache


def new_kv_cache(model: Model, batch_size: int, max_len: int | None = None) -> KVCache:
    """An empty key-value cache for ``batch_size`` rows, on the model's device.

    With ``max_len`` (the most positions it will hold, prompt included) keys and values go into
    buffers of that length, so each decoding step copies only its own positions (no-grad use
    only: with gradients on, or past ``max_len``, it concatenates as TransformerLens does). Such
    a cache also keeps keys rotated and shares masks across layers (``backend_decode``) when the
    model's attention is the toolkit's and supports it."""
    if max_len is not None:
        check_int(max_len, "max_len", minimum=1)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)
    if max_len is not None:
        tables = StepTables() if backend_components.uses_toolkit_decoding(model) else None
        cache.entries = [
            BufferedEntry(*(x.new_empty(batch_size, max_len, *x.shape[2:]) for x in pair), tables)
            for pair in ((e.past_keys, e.past_values) for e in cache.entries)
        ]
    return cache


def kv_cache_rows(cache: KVCache, rows: Sequence[int]) -> KVCache:
    """A new cache holding ``cache``'s rows ``rows`` (repeats allowed): keys, values and
    attention mask alike. A buffered cache stays buffered (its room to spare copied too, keys
    as stored: rotated on the decode path), with step tables of its own."""

    def pick(x: Tensor) -> Tensor:
        return x.index_select(0, torch.tensor(list(rows), device=x.device))

    shared = StepTables()  # one step's tables, for the new entries on the decode path

    def rows_of(e: TransformerLensKeyValueCacheEntry) -> TransformerLensKeyValueCacheEntry:
        if not isinstance(e, BufferedEntry):
            return TransformerLensKeyValueCacheEntry(pick(e.past_keys), pick(e.past_values))
        tables = shared if e.tables is not None else None
        return BufferedEntry(pick(e.keys), pick(e.values), tables, e.length)

    entries = [rows_of(e) for e in cache.entries]  # [rows, ctx_pos, n_kv_heads, d_head] each
    return TransformerLensKeyValueCache(entries, pick(cache.previous_attention_mask))


__all__ = ["KVCache", "kv_cache_rows", "new_kv_cache"]
