"""TransformerLens' forward without rebuilding weights: parameters stored in the layout the forward
reads. The one place this toolkit changes how TransformerLens (3.9) runs.

**Why.** TransformerLens 3.9 stores its linear matrices as ``x @ W`` wants them (``W_in``
``[d_model, d_mlp]``, ``W_Q`` ``[head, d_model, d_head]``, ``W_U`` ``[d_model, d_vocab]``, all
contiguous) but computes them with ``F.linear``, which wants nn.Linear's ``[out, in]``, so every
forward copies each of them into that layout first:

* ``GatedMLP.forward``: ``F.linear(x, W_gate.T.contiguous())``, likewise ``W_in`` and ``W_out``;
* ``Unembed.forward``: ``F.linear(residual, W_U.T.contiguous(), b_U)`` (113 MB per call for
  SmolLM2's 49,152 x 576 unembedding);
* ``simple_attn_linear``: ``rearrange(W_Q, "head d_model d_head -> (head d_head) d_model")``,
  likewise ``W_K``/``W_V`` (grouped ``_W_K``/``_W_V`` too), and ``AbstractAttention.forward``:
  ``rearrange(W_O, "head d_head d_model -> d_model (head d_head)").contiguous()``.

On SmolLM2-135M (4 x 128 tokens, 1 CPU thread) these copies were ~0.6 of ~3.7 s.

**What is patched.** :func:`install` (``models`` calls it at import) wraps
``HookedTransformer.__init__`` so that every model, however built, ends its construction with
:func:`hf_layout`: each of those parameters keeps its TransformerLens shape, name and
``Parameter`` object and only changes its strides: it becomes a transposed view of a contiguous
tensor in exactly the layout the forward builds (nn.Linear's, i.e. HuggingFace's). The forward's
``.T.contiguous()`` and rearranges are then free views of the parameter itself. Nothing is
cached or derived, so nothing can go stale: in-place copies (``variants.applied``,
``restore_weights``), optimizer steps and gradients act on the same tensors the forward reads,
and the forward passes ``F.linear`` the same values in the same layout as before, so logits are
unchanged (bitwise in float32 on CPU in the tests). Loading keeps the layout:
``load_state_dict`` copies into the parameters and ``.to(device/dtype)`` preserves strides. A
parameter replaced wholesale (``param.data = t``, ``load_state_dict(assign=True)``) takes ``t``'s
layout: still correct, only slower again; call :func:`hf_layout` after such a load.
Non-gated MLPs (GPT-2) are left alone: their ``batch_addmm`` reads ``W_in``/``W_out`` as stored.

**How it is pinned.** :func:`install` acts only on the TransformerLens versions in
:data:`backend_pin.TESTED_VERSIONS` (others run unpatched, logged once).
``tests/test_backend_speed.py`` asserts that a patched forward copies no parameter and an unpatched
one does (so a release that changes these forwards fails there), and that logits, gradients, every
hook's activation and variants are equal to the unpatched model's. ``benchmarks/bench_forward.py``
measures it against HuggingFace.

    >>> from unlearn_interp import backend_speed, models
    >>> model = models.load_model("smollm2-135m")            # doctest: +SKIP
    >>> backend_speed.uses_fast_layout(model)                 # doctest: +SKIP
    True
    >>> reference = backend_speed.tl_layout(copy.deepcopy(model))   # unpatched, for comparisons  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import AbstractAttention, Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP

from unlearn_interp.backend_pin import TESTED_VERSIONS as TESTED_VERSIONS
from unlearn_interp.backend_pin import backend_version as backend_version
from unlearn_interp.backend_pin import is_tested_version as is_tested_version

log = logging.getLogger(__name__)

_MARK = "_unlearn_interp_fast_layout"

# Per parameter: the dimension order whose contiguous tensor the forward builds (nn.Linear's
# [out, in]; for [head, d_model, d_head] that is [(head d_head), d_model]).
_ATTN_ORDERS = {"W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1),
                "_W_V": (0, 2, 1), "W_O": (2, 0, 1)}  # fmt: skip
_GATED_MLP_ORDERS = {"W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0)}
_UNEMBED_ORDERS = {"W_U": (1, 0)}


def install() -> bool:
    """Make every HookedTransformer built from now on use :func:`hf_layout`; idempotent.

    Returns whether the patch is active (False on an untested TransformerLens version).

    >>> backend_speed.install()                               # doctest: +SKIP
    True
    """
    if getattr(HookedTransformer.__init__, _MARK, False):
        return True
    if not is_tested_version():
        log.info("TransformerLens %s is untested here: forward runs unpatched", backend_version())
        return False
    original = HookedTransformer.__init__

    @functools.wraps(original)
    def init_then_relayout(self, *args, **kwargs):
        original(self, *args, **kwargs)
        hf_layout(self, keep_values=bool(self.cfg.init_weights))  # unfilled models stay unwritten

    setattr(init_then_relayout, _MARK, True)
    HookedTransformer.__init__ = init_then_relayout
    return True


def hf_layout(model: HookedTransformer, *, keep_values: bool = True) -> HookedTransformer:
    """Store ``model``'s linear matrices in the layout its forward reads, in place; idempotent.

    Shapes, names, values and ``Parameter`` objects are unchanged; only strides change.
    ``keep_values=False`` (a model built unfilled, to be loaded into) allocates the new storage
    without writing it.

    >>> backend_speed.hf_layout(model)                        # doctest: +SKIP
    """
    for param, order in _targets(model):
        if not _stored_as(param, order):
            param.data = _with_storage_order(param.data, order, keep_values)
    return model


def tl_layout(model: HookedTransformer) -> HookedTransformer:
    """Store every matrix :func:`hf_layout` touches contiguously again: the unpatched model, for
    comparisons and benchmarks. In place.

    >>> reference = backend_speed.tl_layout(copy.deepcopy(model))   # doctest: +SKIP
    """
    for param, _ in _targets(model):
        if not param.is_contiguous():
            param.data = param.data.contiguous()
    return model


def uses_fast_layout(model: HookedTransformer) -> bool:
    """Whether every matrix the forward would copy is stored as the forward reads it."""
    return all(_stored_as(param, order) for param, order in _targets(model))


def _targets(model: HookedTransformer) -> Iterator[tuple[torch.nn.Parameter, tuple[int, ...]]]:
    """Each parameter whose forward rebuilds it, with the dimension order it is rebuilt in."""
    if getattr(model.cfg, "load_in_4bit", False):
        return  # 4-bit weights are bitsandbytes tensors: left as they are
    for module in model.modules():
        if isinstance(module, AbstractAttention):
            orders = _ATTN_ORDERS
        elif isinstance(module, GatedMLP):
            orders = _GATED_MLP_ORDERS
        elif isinstance(module, Unembed):
            orders = _UNEMBED_ORDERS
        else:
            continue
        for name, order in orders.items():
            param = module._parameters.get(name)
            if param is not None and param.dim() == len(order):
                yield param, order


def _stored_as(tensor: Tensor, order: tuple[int, ...]) -> bool:
    """Whether ``tensor.permute(order)`` is contiguous (what the forward builds costs nothing)."""
    return tensor.permute(order).is_contiguous()


def _with_storage_order(
    tensor: Float[Tensor, "..."], order: tuple[int, ...], keep_values: bool = True
) -> Float[Tensor, "..."]:
    """``tensor``'s shape (and values, if ``keep_values``), stored so that ``permute(order)`` is
    contiguous."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    permuted = tensor.permute(order)
    stored = (
        permuted.contiguous()
        if keep_values
        else torch.empty_like(permuted, memory_format=torch.contiguous_format)
    )
    return stored.permute(inverse)
