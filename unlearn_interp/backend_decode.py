"""Cached decoding without redoing past work every step: the buffered key-value cache entry and
the attention forward the toolkit's own attention components (:mod:`backend_components`) run on
it. Nothing here changes TransformerLens; :func:`decode_attention` runs only when one of those
components gets a :class:`BufferedEntry` whose ``tables`` are set, which
``activations.new_kv_cache(model, n, max_len=)`` makes only for a model that uses them
(``backend_components.uses_toolkit_decoding``).

**Why.** At every decoding step TransformerLens 3.9's ``AbstractAttention.forward``

* concatenates the whole past again to append one position's keys and values;
* keeps the keys *unrotated* in its cache and rotates every cached key again (``apply_rotary(k,
  0, attention_mask)`` over all positions), recomputing the position ids from the whole mask;
* repeats the cached keys and values of grouped-query attention to one per query head
  (``repeat_interleave``) before both matmuls;
* rebuilds the causal mask (two ``arange`` and a comparison) in every layer;
* rearranges ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` into contiguous matrices (a copy of every
  attention weight) before multiplying.

On SmolLM2-135M the middle three were ~15% of a batch-1 decoding step; the weight copies were
another ~30% (91 ms a step with them, 63 ms without, one thread).

**The entry.** A :class:`BufferedEntry` holds one layer's keys and values in buffers of the
final length, and a step writes only its new positions (``past_keys``/``past_values`` are views
of the part written so far). Frozen, past the buffer's length, or with gradients on, it
concatenates as TransformerLens' entry does. Its ``tables`` (a :class:`StepTables` shared by
every layer of one cache) are set exactly when the entry belongs to the toolkit's decode path:
keys are then stored *after* rotation (before ``hook_rot_k``); with ``tables`` None it is a
plain buffered entry that TransformerLens' own forward reads and extends (unrotated keys).

**The forward.** :func:`decode_attention` multiplies each head by its weights as stored
(one batched matmul over heads), rotates only the new keys, with cosines, sines and the
mask built once per step for all layers (:class:`StepTables`), and multiplies grouped queries
by the unrepeated keys and values (queries reshaped to ``[batch, kv_head, group x pos,
d_head]``).

**Hooks see what they saw.** ``hook_q``/``hook_k``/``hook_v`` see the new positions'
projections and ``hook_rot_q`` the rotated queries, as in TransformerLens; ``hook_rot_k`` sees
all positions' rotated keys ``[batch, pos, kv_head, d_head]`` and what it returns is used for
this step only (rotation is per position, so a key rotated once equals the one TransformerLens
rotates again; a hook's edit is re-applied each step and never cached, as there). No hook point
sees a repeated key or value, so grouping changes no hook's view; ``hook_attn_scores``,
``hook_pattern`` and ``hook_z`` get the ``[batch, head, query, key]`` / ``[batch, pos, head,
d_head]`` tensors they always get (scores equal up to float rounding of the grouped matmul).

**What it covers.** :func:`supports` lists the attention features the decode path implements
and refuses a model with any other (ALiBi, relative bias, local windows, dynamic NTK, log-n
scaling, sinks, QKV clipping, q/k norm, 4-bit weights, split or per-head attention inputs,
``use_attn_result``), which then decodes through TransformerLens' own forward on unrotated
buffered entries. The TransformerLens version pin is ``backend_components``' (its components
are the only callers).
``tests/test_backend_decode.py`` checks tokens, per-step logits and every attention hook's
activations against TransformerLens' own forward.

    >>> from unlearn_interp import activations
    >>> cache = activations.new_kv_cache(model, 8, max_len=96)          # doctest: +SKIP
    >>> cache.entries[0].tables is not None                              # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, TransformerLensKeyValueCacheEntry
from transformer_lens.components import AbstractAttention
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.tensors import get_offset_position_ids

_UNSUPPORTED_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def supports(model: HookedTransformer) -> bool:
    """Whether every attention layer of ``model`` uses only features :func:`decode_attention`
    implements (a feature check: whether the layers run it is ``backend_components``')."""
    attns = [m for m in model.modules() if isinstance(m, AbstractAttention)]
    return bool(attns) and all(_supported(a) for a in attns)


def _supported(attn: AbstractAttention) -> bool:
    """Whether one attention layer runs the same under :func:`decode_attention`."""
    cfg = attn.cfg
    return (
        cfg.positional_embedding_type in ("standard", "rotary", "shortformer")
        and (attn._attention_dir_override or cfg.attention_dir) == "causal"
        and attn.attn_type == "global"
        and not cfg.use_dynamic_ntk_rope
        and not cfg.use_logn_attn
        and not cfg.use_attention_sinks
        and cfg.clip_qkv is None
        and cfg.original_architecture not in _UNSUPPORTED_ARCHITECTURES
        and not cfg.load_in_4bit
        and not cfg.use_attn_result
        and not cfg.use_split_qkv_input
        and not cfg.use_attn_in
        and not cfg.use_qk_norm
        and not cfg.ungroup_grouped_query_attention
        and cfg.n_devices == 1  # one step's shared tables live on one device
    )


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


class StepTables:
    """What every layer of one decoding step shares, built by the first layer that needs it:
    the new positions' rotary cosines and sines, the boolean mask of allowed keys. Keyed by the
    attention mask TransformerLens passes to every block of one forward (the same tensor)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.rotary: dict[int, tuple[Tensor, Tensor]] = {}
        self.allowed: Tensor | None = None

    def start(self, attention_mask: Tensor | None, offset: int, n_new: int) -> StepTables:
        """Forget the previous step's tables when this is a new step."""
        if self.key is None or self.key[0] is not attention_mask or self.key[1:] != (offset, n_new):
            self.key, self.rotary, self.allowed = (attention_mask, offset, n_new), {}, None
        return self


class BufferedEntry(TransformerLensKeyValueCacheEntry):
    """One layer's keys and values in buffers of the final length (``keys``/``values``,
    ``[batch, max_len, heads, d_head]``); ``past_keys``/``past_values`` are views of the first
    ``length`` positions, the part written so far. ``tables`` set: the toolkit's decode path
    (keys stored rotated, :func:`decode_attention`); None: TransformerLens' forward reads it.

    >>> entry = BufferedEntry(torch.empty(2, 16, 4, 8), torch.empty(2, 16, 4, 8))  # doctest: +SKIP
    >>> keys, values = entry.append(new_keys, new_values)  # writes positions 0..n-1  # doctest: +SKIP
    """

    def __init__(
        self,
        keys: Float[Tensor, "batch max_len heads d_head"],
        values: Float[Tensor, "batch max_len heads d_head"],
        tables: StepTables | None = None,
        length: int = 0,
    ) -> None:
        self.keys, self.values, self.tables = keys, values, tables
        self.length, self.frozen = length, False

    @property
    def past_keys(self) -> Tensor:
        return self.keys[:, : self.length]

    @past_keys.setter
    def past_keys(self, keys: Tensor) -> None:  # what TransformerLens' concatenation stores
        self.keys, self.length = keys, keys.shape[1]

    @property
    def past_values(self) -> Tensor:
        return self.values[:, : self.length]

    @past_values.setter
    def past_values(self, values: Tensor) -> None:
        self.values = values

    def append(
        self,
        new_keys: Float[Tensor, "batch new heads d_head"],
        new_values: Float[Tensor, "batch new heads d_head"],
    ) -> tuple[Float[Tensor, "batch all heads d_head"], Float[Tensor, "batch all heads d_head"]]:
        """Store the new positions (keys as given: the decode path rotates them first) and
        return all of them; frozen, past the buffer or with gradients on, TransformerLens'
        concatenation (which stores the result unless frozen)."""
        end = self.length + new_keys.shape[1]
        if self.frozen or end > self.keys.shape[1] or torch.is_grad_enabled():
            return super().append(new_keys, new_values)
        self.keys[:, self.length : end] = new_keys
        self.values[:, self.length : end] = new_values
        self.length = end
        return self.past_keys, self.past_values


# ---------------------------------------------------------------------------------------------
# The attention forward
# ---------------------------------------------------------------------------------------------


def decode_attention(
    attn: AbstractAttention,
    query_input: Float[Tensor, "batch pos d_model"],
    key_input: Float[Tensor, "batch pos d_model"],
    value_input: Float[Tensor, "batch pos d_model"],
    entry: BufferedEntry,
    attention_mask: Int[Tensor, "batch key_pos"] | None,
) -> Float[Tensor, "batch pos d_model"]:
    """``attn``'s forward on new positions after those ``entry`` holds (extending it), every
    hook point firing as in TransformerLens' forward."""
    q, k, v = _projected_qkv(attn, query_input, key_input, value_input)
    offset, n_new = entry.length, q.shape[1]
    tables = entry.tables.start(attention_mask, offset, n_new)
    if attn.cfg.positional_embedding_type == "rotary":
        cos, sin = _rotary_tables(attn, tables, attention_mask, offset, n_new)
        q = attn.hook_rot_q(_rotate(attn, q, cos, sin))
        keys, values = entry.append(_rotate(attn, k, cos, sin), v)
        keys = attn.hook_rot_k(keys.clone() if attn.hook_rot_k._forward_hooks else keys)
    else:
        keys, values = entry.append(k, v)
    scores = _grouped_scores(attn, q, keys)
    scores = torch.where(_allowed(tables, attention_mask, offset, n_new), scores, attn.IGNORE)
    pattern = F.softmax(attn.hook_attn_scores(scores), dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    pattern = attn.hook_pattern(pattern).to(dtype=values.dtype)
    return _output(attn, _grouped_z(attn, pattern, values))


def _rotary_tables(
    attn: AbstractAttention,
    tables: StepTables,
    attention_mask: Int[Tensor, "batch key_pos"] | None,
    offset: int,
    n_new: int,
) -> tuple[Float[Tensor, "batch pos 1 rotary_dim"], Float[Tensor, "batch pos 1 rotary_dim"]]:
    """The new positions' rotary cosines and sines, gathered once per step and rotary table
    exactly as ``AbstractAttention.apply_rotary`` gathers them."""
    if offset + n_new > attn.rotary_cos.shape[0]:  # TransformerLens' table extension
        attn._extend_rotary_embeddings(
            min(attn.cfg.n_ctx, max(offset + n_new, 2 * attn.rotary_cos.shape[0]))
        )
    key = id(attn.rotary_cos)
    if key not in tables.rotary:
        if attention_mask is None:
            where = slice(offset, offset + n_new)
            pair = attn.rotary_cos[None, where, None, :], attn.rotary_sin[None, where, None, :]
        else:
            positions = get_offset_position_ids(offset, attention_mask)
            positions = positions.to(attn.rotary_cos.device)
            pair = attn.rotary_cos[positions, None, :], attn.rotary_sin[positions, None, :]
        tables.rotary[key] = pair
    return tables.rotary[key]


def _rotate(
    attn: AbstractAttention,
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos 1 rotary_dim"],
    sin: Float[Tensor, "batch pos 1 rotary_dim"],
) -> Float[Tensor, "batch pos head d_head"]:
    """``AbstractAttention.apply_rotary``'s arithmetic on given cosines and sines (the same
    operations in the same order, so the same values)."""
    dim = attn.cfg.rotary_dim
    x_rot, x_pass = x[..., :dim], x[..., dim:]
    if attn.cfg.rotary_adjacent_pairs:
        x_flip = torch.stack([-x_rot[..., 1::2], x_rot[..., ::2]], dim=-1).flatten(-2)
    else:
        half = dim // 2
        x_flip = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    rotated = x_rot * cos + x_flip * sin
    return rotated if x_pass.shape[-1] == 0 else torch.cat([rotated, x_pass], dim=-1)


def _allowed(
    tables: StepTables, attention_mask: Int[Tensor, "batch key_pos"] | None, offset: int, n_new: int
) -> Bool[Tensor, "batch 1 pos key_pos"]:
    """Which keys each new position may attend to (causal, and not padding), once per step."""
    if tables.allowed is None:
        device = attention_mask.device if attention_mask is not None else None
        queries = torch.arange(offset, offset + n_new, device=device)
        keys = torch.arange(offset + n_new, device=device)
        allowed = (keys[None, :] <= queries[:, None])[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        tables.allowed = allowed
    return tables.allowed


def _grouped_scores(
    attn: AbstractAttention,
    q: Float[Tensor, "batch pos head d_head"],
    keys: Float[Tensor, "batch key_pos kv_head d_head"],
) -> Float[Tensor, "batch head pos key_pos"]:
    """Attention scores of every query head against its group's key head, without repeating
    the keys: queries as ``[batch, kv_head, group x pos, d_head]``."""
    batch, pos, heads, d_head = q.shape
    kv_heads = keys.shape[2]
    q_grouped = q.permute(0, 2, 1, 3).reshape(batch, kv_heads, (heads // kv_heads) * pos, d_head)
    scores = q_grouped @ keys.permute(0, 2, 3, 1) / attn.attn_scale
    scores = scores.view(batch, heads, pos, keys.shape[1])
    return apply_softcap(scores, attn.cfg.attn_scores_soft_cap)


def _grouped_z(
    attn: AbstractAttention,
    pattern: Float[Tensor, "batch head pos key_pos"],
    values: Float[Tensor, "batch key_pos kv_head d_head"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Each head's pattern times its group's value head (``hook_z`` fires on the result)."""
    batch, heads, pos, key_pos = pattern.shape
    kv_heads = values.shape[2]
    grouped = pattern.reshape(batch, kv_heads, (heads // kv_heads) * pos, key_pos)
    z = grouped @ values.permute(0, 2, 1, 3)  # [batch, kv_head, group x pos, d_head]
    return attn.hook_z(z.view(batch, heads, pos, -1).permute(0, 2, 1, 3))


def _projected_qkv(
    attn: AbstractAttention,
    query_input: Float[Tensor, "batch pos d_model"],
    key_input: Float[Tensor, "batch pos d_model"],
    value_input: Float[Tensor, "batch pos d_model"],
) -> tuple[
    Float[Tensor, "batch pos head d_head"],
    Float[Tensor, "batch pos kv_head d_head"],
    Float[Tensor, "batch pos kv_head d_head"],
]:
    """``calculate_qkv_matrices`` without its weight copies: TransformerLens rearranges each
    ``[head, d_model, d_head]`` weight into a contiguous ``[(head d_head), d_model]`` matrix at
    every call (a copy of all attention weights per decoding step); here each head multiplies
    the weights as stored. ``hook_q``/``hook_k``/``hook_v`` fire as there (grouped-query keys
    and values through the unrepeated ``_W_K``/``_W_V``, as TransformerLens' grouped forward)."""
    grouped = hasattr(attn, "_W_K")
    w_k, b_k = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    w_v, b_v = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    q = attn.hook_q(_per_head(query_input, attn.W_Q, attn.b_Q))
    k = attn.hook_k(_per_head(key_input, w_k, b_k))
    v = attn.hook_v(_per_head(value_input, w_v, b_v))
    return q, k, v


def _per_head(
    x: Float[Tensor, "batch pos d_model"],
    w: Float[Tensor, "head d_model d_head"],
    b: Float[Tensor, "head d_head"],
) -> Float[Tensor, "batch pos head d_head"]:
    """Every head's projection of ``x`` as one batched matmul over heads (no weight copy)."""
    batch, pos, d_model = x.shape
    x = x.to(w.device).reshape(1, batch * pos, d_model).expand(w.shape[0], -1, -1)
    out = torch.baddbmm(b.to(w.device)[:, None, :], x, w)  # [head, batch x pos, d_head]
    return out.permute(1, 0, 2).reshape(batch, pos, w.shape[0], w.shape[2])


def _output(
    attn: AbstractAttention, z: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch pos d_model"]:
    """The output projection, as TransformerLens computes it without ``use_attn_result``, on
    ``W_O`` as stored (``[head, d_head, d_model]`` is already ``[(head d_head), d_model]``)."""
    batch, pos = z.shape[:2]
    w = attn.W_O.reshape(-1, attn.W_O.shape[-1])
    z = z.reshape(batch * pos, -1).to(w.dtype)
    return torch.addmm(attn.b_O, z, w).view(batch, pos, -1)


__all__ = ["BufferedEntry", "StepTables", "decode_attention", "supports"]
