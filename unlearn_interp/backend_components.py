"""The toolkit's own TransformerLens components: subclasses of TransformerLens 3.9's embeddings,
gated MLP, unembedding and attention that run the same forward without its per-call weight
copies, whose gradients do not depend on thread timing, and whose attention runs the cached
decode path of :mod:`backend_decode`. Put only on the models the toolkit builds
(``models.random_model`` and every path of ``models.load_model``) by
:func:`use_toolkit_components`; TransformerLens itself is never changed, so a model built any
other way in the same process is TransformerLens' own.

**Why.** TransformerLens 3.9 stores its linear matrices as ``x @ W`` wants them (``W_in``
``[d_model, d_mlp]``, ``W_U`` ``[d_model, d_vocab]``) but computes them with ``F.linear``, which
takes nn.Linear's ``[out, in]``, and copies them into that layout on every call:
``GatedMLP.forward`` runs ``F.linear(x, W_gate.T.contiguous())`` (likewise ``W_in`` and
``W_out``) and ``Unembed.forward`` ``F.linear(residual, W_U.T.contiguous(), b_U)`` (113 MB per
call for SmolLM2's 49,152 x 576 unembedding).

**What differs.**

* :class:`OrderedGradEmbed` and :class:`OrderedGradPosEmbed` (learned positions of a padded
  batch): rows gathered with ``F.embedding`` instead of indexing. The same rows forward;
  backward, indexing's ``index_put_`` accumulates a repeated token's (or position's) gradient
  rows from several threads in arrival order, so on a 2-core CPU two runs of one fine-tuning
  step gave embedding gradients differing in the last bits and, 50 steps on, different
  models. ``F.embedding``'s backward sums them in a fixed order: the same step twice is the
  same bits (gradients equal TransformerLens' up to the order of that sum).
* :class:`NoCopyGatedMLP`: TransformerLens' ``GatedMLP.forward`` with ``F.linear(x,
  self.W_gate.T)`` (a view) for ``F.linear(x, self.W_gate.T.contiguous())``, likewise ``W_in``
  and ``F.linear(post_act, self.W_out.T, self.b_out)``: the same hooks in the same order, no
  weight copied. On the CPU (MKL) this is bitwise TransformerLens' result, forward and both
  gradients, when the flattened row count ``batch x pos`` is at least 4 and a multiple of 4, or
  about 12 and more; for 1, 2, 3, 5, 6, 7, 9, 10 and 11 rows MKL may take another path and the
  last bits differ (~1e-5 relative, measured at SmolLM2's sizes; the tests' tiny models stay
  bitwise). In bfloat16 the view and the copy take different kernels at any row count:
  SmolLM2-135M's logits (up to ~34) differ from TransformerLens' own by up to ~0.8, as much as
  TransformerLens' own differ from HuggingFace's. That is accepted: float rounding, not a
  different computation (the tests compare within bounds; float32 on the CPU is bitwise there).
* :class:`NoCopyUnembed`: ``F.linear(residual, self.W_U.T, self.b_U)``, hooks as in
  TransformerLens (the same rounding note).
* :class:`RotatedCacheAttention` and :class:`RotatedCacheGroupedQueryAttention`: ``forward``
  has exactly ``AbstractAttention.forward``'s signature and runs
  :func:`backend_decode.decode_attention` when its cache entry is a
  :class:`backend_decode.BufferedEntry` with ``tables`` (keys stored rotated), else
  TransformerLens' forward unchanged. In that forward (prompts, training) attention's own copies
  of ``W_Q``/``W_K``/``W_V``/``W_O`` (``rearrange`` to ``[(head d_head), d_model]``) stay, so
  its results are TransformerLens' bit for bit; the decode path multiplies per head without
  them (within float rounding, see :mod:`backend_decode`).

**What stays.** :func:`use_toolkit_components` only reassigns ``__class__`` of the modules whose
type is exactly one of those TransformerLens classes: no parameter, buffer or hook point is
added, so parameter names, hook names, ``state_dict`` keys, strides and storage, and
``init_weights`` under a seed are TransformerLens'. The subclasses are module-level, so models
serialise, deepcopy and go to Ray workers with them. :func:`use_transformer_lens_components` puts
TransformerLens' classes back (for comparisons and benchmarks), :func:`uses_toolkit_components`
says whether a model has them, :func:`uses_toolkit_decoding` whether its caches take the decode
path.

**How it is pinned.** :func:`use_toolkit_components` acts only on the TransformerLens releases in
:data:`TESTED_VERSIONS` (another logs once and leaves TransformerLens' classes in place).
Widening the pin means reading the subclassed forwards of the new release again and running
``tests/test_backend_components.py`` (no MLP or unembedding weight copied, logits, gradients,
hooks, variants and training equal to TransformerLens' own components) and
``tests/test_backend_decode.py``.

    >>> from unlearn_interp import backend_components, models
    >>> model = models.load_model("smollm2-135m")                       # doctest: +SKIP
    >>> backend_components.uses_toolkit_components(model)               # doctest: +SKIP
    True
    >>> reference = backend_components.use_transformer_lens_components(copy.deepcopy(model))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedTransformer, TransformerLensKeyValueCacheEntry
from transformer_lens.components import (
    AbstractAttention,
    Attention,
    Embed,
    GatedMLP,
    GroupedQueryAttention,
    PosEmbed,
    Unembed,
)
from transformer_lens.utilities.tensors import get_offset_position_ids

from unlearn_interp import backend_decode

log = logging.getLogger(__name__)

# TransformerLens releases whose Embed, PosEmbed, GatedMLP, Unembed and AbstractAttention
# forwards were read and tested against these subclasses.
TESTED_VERSIONS = ("3.9.",)


@functools.cache
def backend_version() -> str:
    """The installed TransformerLens version."""
    return importlib.metadata.version("transformer_lens")


def is_tested_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) is one the components were tested on.

    >>> is_tested_version("3.9.0"), is_tested_version("4.0.0")          # doctest: +SKIP
    (True, False)
    """
    return (version or backend_version()).startswith(TESTED_VERSIONS)


# ---------------------------------------------------------------------------------------------
# The components
# ---------------------------------------------------------------------------------------------


class NoCopyGatedMLP(GatedMLP):
    """TransformerLens' gated MLP reading ``W_gate``, ``W_in`` and ``W_out`` through transposed
    views instead of contiguous copies (see the module docstring for the rounding note)."""

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.W_gate.device != x.device:
            x = x.to(self.W_gate.device)
        pre_act = self.hook_pre(F.linear(x, self.W_gate.T))  # [batch, pos, d_mlp]
        if (
            self.cfg.is_layer_norm_activation()
            and self.hook_mid is not None
            and self.ln is not None
        ):
            mid_act = self.hook_mid(self.act_fn(pre_act))
            post_act = self.hook_post(self.ln(mid_act))
        else:
            pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T))
            post_act = self.hook_post((self.act_fn(pre_act) * pre_linear) + self.b_in)
        return F.linear(post_act, self.W_out.T, self.b_out)


class NoCopyUnembed(Unembed):
    """TransformerLens' unembedding reading ``W_U`` through a transposed view instead of a
    contiguous copy."""

    def forward(
        self, residual: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_vocab_out"]:
        residual = self.hook_in(residual)
        return self.hook_out(F.linear(residual, self.W_U.T, self.b_U))


class OrderedGradEmbed(Embed):
    """TransformerLens' token embedding gathering rows with ``F.embedding`` instead of indexing
    (``W_E[tokens, :]``): the same rows forward; backward, the gradient rows of a repeated token
    are summed in a fixed order (indexing's backward adds them from several threads in whatever
    order they arrive, so on a multi-core CPU two runs of one step differ in the last bits)."""

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        embedded = F.embedding(tokens, self.W_E)
        return self.ln(embedded) if self.cfg.post_embedding_ln else embedded


class OrderedGradPosEmbed(PosEmbed):
    """TransformerLens' learned positional embedding gathering padded batches' rows with
    ``F.embedding`` (see :class:`OrderedGradEmbed`); the same rows, padding zeroed as there."""

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        past_kv_pos_offset: int = 0,
        attention_mask: Int[Tensor, "batch offset_pos"] | None = None,
    ) -> Float[Tensor, "batch new_pos d_model"]:
        if attention_mask is None:
            return super().forward(tokens, past_kv_pos_offset, attention_mask)
        positions = get_offset_position_ids(past_kv_pos_offset, attention_mask)
        pos_embed = F.embedding(positions, self.W_pos)  # [batch, pos, d_model]
        length = tokens.size(-1)
        padding = ~attention_mask.bool()[:, past_kv_pos_offset : length + past_kv_pos_offset]
        return torch.where(padding.unsqueeze(-1), 0, pos_embed).clone()


def _rotated_cache_forward(
    self: AbstractAttention,
    query_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
    key_input: Float[Tensor, "batch kv_pos d_model"]
    | Float[Tensor, "batch kv_pos kv_head d_model"],
    value_input: Float[Tensor, "batch kv_pos d_model"]
    | Float[Tensor, "batch kv_pos kv_head d_model"],
    past_kv_cache_entry: TransformerLensKeyValueCacheEntry | None = None,
    additive_attention_mask: Float[Tensor, "batch 1 1 kv_pos"] | None = None,
    attention_mask: Int[Tensor, "batch offset_pos"] | None = None,
    position_bias: Float[Tensor, "1 head pos kv_pos"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The ``forward`` of both attention subclasses, with ``AbstractAttention.forward``'s
    signature: the decode path for an entry of the toolkit's decode path, else TransformerLens'
    forward unchanged (``Attention`` and ``GroupedQueryAttention`` both inherit
    ``AbstractAttention``'s). A function both classes name, not a mixin: a mixin base would
    change the instance layout, and ``__class__`` could no longer be reassigned."""
    entry = past_kv_cache_entry
    if isinstance(entry, backend_decode.BufferedEntry) and entry.tables is not None:
        if additive_attention_mask is not None or position_bias is not None:
            raise ValueError(
                "the rotated-key decode cache takes no additive_attention_mask or "
                "position_bias: decode with activations.new_kv_cache(model, n) instead"
            )
        return backend_decode.decode_attention(
            self, query_input, key_input, value_input, entry, attention_mask
        )
    return AbstractAttention.forward(
        self,
        query_input,
        key_input,
        value_input,
        past_kv_cache_entry,
        additive_attention_mask,
        attention_mask,
        position_bias,
    )


class RotatedCacheAttention(Attention):
    """TransformerLens' multi-head attention that decodes on the toolkit's rotated-key cache."""

    forward = _rotated_cache_forward


class RotatedCacheGroupedQueryAttention(GroupedQueryAttention):
    """TransformerLens' grouped-query attention that decodes on the toolkit's rotated-key cache."""

    forward = _rotated_cache_forward


# TransformerLens' class -> the toolkit's subclass (exact types only: a further subclass of a
# TransformerLens class has its own forward and is left alone).
_TOOLKIT_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    Embed: OrderedGradEmbed,
    PosEmbed: OrderedGradPosEmbed,
    GatedMLP: NoCopyGatedMLP,
    Unembed: NoCopyUnembed,
    Attention: RotatedCacheAttention,
    GroupedQueryAttention: RotatedCacheGroupedQueryAttention,
}
_TRANSFORMER_LENS_CLASS = {ours: theirs for theirs, ours in _TOOLKIT_CLASS.items()}
_ATTENTION_CLASSES = (RotatedCacheAttention, RotatedCacheGroupedQueryAttention)


# ---------------------------------------------------------------------------------------------
# Putting them on a model and taking them off
# ---------------------------------------------------------------------------------------------


def use_toolkit_components(model: HookedTransformer) -> HookedTransformer:
    """Give ``model``'s embeddings, gated MLPs, unembedding and attention layers the toolkit's
    classes, in place (``__class__`` only: weights, names and hooks untouched); idempotent. On
    an untested TransformerLens version nothing changes (logged once).

    >>> model = backend_components.use_toolkit_components(HookedTransformer(cfg))  # doctest: +SKIP
    """
    if not is_tested_version():
        _log_untested(backend_version())
        return model
    return _swap_classes(model, _TOOLKIT_CLASS)


def use_transformer_lens_components(model: HookedTransformer) -> HookedTransformer:
    """Put TransformerLens' own classes back on every module :func:`use_toolkit_components`
    changed, in place: TransformerLens' forward, for comparisons and benchmarks.

    >>> reference = use_transformer_lens_components(copy.deepcopy(model))  # doctest: +SKIP
    """
    return _swap_classes(model, _TRANSFORMER_LENS_CLASS)


def _swap_classes(model: HookedTransformer, classes: Mapping[type, type]) -> HookedTransformer:
    """Give every module whose type is a key of ``classes`` that key's class, in place."""
    for module in model.modules():
        new = classes.get(type(module))
        if new is not None:
            module.__class__ = new
    return model


def uses_toolkit_components(model: HookedTransformer) -> bool:
    """Whether every embedding, gated MLP, unembedding and attention layer of ``model`` that
    :func:`use_toolkit_components` would change has the toolkit's class (and there is one)."""
    kinds = [type(m) for m in model.modules()]
    ours = [k for k in kinds if k in _TRANSFORMER_LENS_CLASS]
    return bool(ours) and not any(k in _TOOLKIT_CLASS for k in kinds)


def uses_toolkit_decoding(model: HookedTransformer) -> bool:
    """Whether ``activations.new_kv_cache(model, n, max_len=)`` gives the decode path's cache:
    every attention layer is the toolkit's and uses only features it implements
    (``backend_decode.supports``)."""
    attns = [m for m in model.modules() if isinstance(m, AbstractAttention)]
    return (
        bool(attns)
        and all(isinstance(a, _ATTENTION_CLASSES) for a in attns)
        and backend_decode.supports(model)
    )


@functools.cache
def _log_untested(version: str) -> None:
    log.info(
        "TransformerLens %s is untested here: models keep TransformerLens' own components "
        "(slower forward and decoding, same results)",
        version,
    )


__all__ = [
    "NoCopyGatedMLP",
    "NoCopyUnembed",
    "RotatedCacheAttention",
    "RotatedCacheGroupedQueryAttention",
    "TESTED_VERSIONS",
    "backend_version",
    "is_tested_version",
    "use_toolkit_components",
    "use_transformer_lens_components",
    "uses_toolkit_components",
    "uses_toolkit_decoding",
]
