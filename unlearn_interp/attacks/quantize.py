"""Quantisation as a recovery attack: round-to-nearest (RTN) group quantisation of the weights.

Zhang et al. (ICLR 2025, "Catastrophic failure of LLM unlearning via quantization") found that
unlearned models keep 21% of the forgotten knowledge at full precision and 83% after 4-bit
quantisation: unlearning moves the weights by less than one quantisation step, so rounding
snaps many of them back to where the base model's weights round to. This module applies the
same rounding to base and unlearned models alike, in torch, on any device.

What is quantised: every block's linear matrices (attention W_Q/W_K/W_V/W_O, MLP
W_in/W_gate/W_out, as :func:`models.linear_weight_inputs` lists them); embeddings, unembedding,
norms and biases stay in full precision, as in GPTQ and AWQ's usual settings. Each matrix is
read as ``nn.Linear`` stores it, ``[out_features, in_features]``, and each output row is cut
into groups of ``group_size`` consecutive inputs. Per group, asymmetric min/max quantisation
to ``bits`` bits::

    scale = (max - min) / (2**bits - 1)          # a constant group keeps scale 1: exact
    zero  = round(-min / scale)
    q     = clamp(round(w / scale) + zero, 0, 2**bits - 1)
    w'    = (q - zero) * scale                   # dequantised, |w' - w| <= scale / 2

computed in float32 and cast back to the model's dtype. A row whose width is not a multiple of
``group_size`` ends with one smaller group holding the remainder, so a ``group_size`` at least
the row width is per-channel quantisation (one group per row).

RTN and GPTQ/AWQ: RTN is the baseline both improve on. They use the same storage format (integer
codes plus a per-group scale and zero point) and differ in how the codes are chosen: GPTQ
rounds one input column at a time and corrects the not-yet-rounded columns with second-order
(Hessian) information from calibration activations; AWQ rescales salient input channels, found
from activation magnitudes, before rounding. Both lower the quantisation error RTN leaves; Zhang
et al. report recovery with GPTQ and AWQ as well as RTN, so RTN here is the plainest version of
the attack, needing no calibration data.

    >>> w4 = quantized_variant(model, rmu, bits=4)                   # doctest: +SKIP
    >>> with w4.applied(model):                                       # doctest: +SKIP
    ...     acc = evaluation.mcq_accuracy(model, items).accuracy
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant, get_param

MIN_BITS, MAX_BITS = 2, 8
DEFAULT_GROUP_SIZE = 64


def check_bits(bits: object) -> int:
    """``bits`` when it is an integer from 2 to 8, else one sentence saying so."""
    if not is_int(bits) or not MIN_BITS <= bits <= MAX_BITS:
        raise UnlearnInterpError(
            f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}"
        )
    return bits


def check_group_size(group_size: object) -> int:
    """``group_size`` when it is a positive integer, else one sentence saying so."""
    if not is_int(group_size) or group_size < 1:
        raise UnlearnInterpError(
            f"group_size must be a positive integer (inputs per quantisation group), "
            f"got {group_size!r}"
        )
    return group_size


def rtn_groups(groups: Float[Tensor, "*n g"], bits: int) -> Float[Tensor, "*n g"]:
    """Round-to-nearest asymmetric quantisation of each row of ``groups`` (its last axis is one
    group), dequantised; float32 in, float32 out."""
    levels = 2**bits - 1
    low = groups.amin(dim=-1, keepdim=True)
    high = groups.amax(dim=-1, keepdim=True)
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale)
    codes = torch.clamp(torch.round(groups / scale) + zero, 0, levels)
    return (codes - zero) * scale


def quantize_rows(
    rows: Float[Tensor, "out inputs"], bits: int, group_size: int = DEFAULT_GROUP_SIZE
) -> Float[Tensor, "out inputs"]:
    """RTN group quantisation of a ``[out_features, in_features]`` matrix, dequantised to its
    dtype: each row in groups of ``group_size`` consecutive inputs, the last group of a row
    holding the remainder when ``group_size`` does not divide the width.

    >>> quantize_rows(torch.tensor([[0.0, 0.1, 0.2, 1.0]]), bits=2, group_size=4)
    tensor([[0.0000, 0.0000, 0.3333, 1.0000]])
    """
    check_bits(bits)
    check_group_size(group_size)
    x = rows.float()
    width = x.shape[-1]
    full = (width // group_size) * group_size
    parts = []
    if full:
        grouped = x[:, :full].reshape(x.shape[0], -1, group_size)
        parts.append(rtn_groups(grouped, bits).reshape(x.shape[0], full))
    if full < width:
        parts.append(rtn_groups(x[:, full:], bits))
    return torch.cat(parts, dim=-1).to(rows.dtype)


def quantize_linear(
    weight: Tensor, input_axes: tuple[int, ...], bits: int, group_size: int
) -> Tensor:
    """``weight`` quantised with its ``input_axes`` as the inputs (moved last and flattened in
    order, so each output is one row of ``nn.Linear``'s layout), in its own shape and dtype."""
    last = tuple(range(weight.ndim - len(input_axes), weight.ndim))
    moved = weight.detach().movedim(input_axes, last)
    rows = moved.reshape(-1, moved.shape[len(moved.shape) - len(last) :].numel())
    quantized = quantize_rows(rows, bits, group_size).reshape(moved.shape)
    return quantized.movedim(last, input_axes).contiguous()


def quantized_weights(
    model: Model, bits: int, group_size: int = DEFAULT_GROUP_SIZE
) -> dict[str, Tensor]:
    """Every block's linear matrix quantised (RTN, ``bits`` bits, groups of ``group_size``
    inputs per output row) and dequantised to the model's dtype, keyed by parameter name; the
    model is not changed. Use it as a ``Variant``'s weights (see :func:`quantized_variant`).

    >>> w8 = Variant("base_rtn8", weights=quantized_weights(model, bits=8))   # doctest: +SKIP
    """
    check_bits(bits)
    check_group_size(group_size)
    with torch.no_grad():
        return {
            name: quantize_linear(get_param(model, name), axes, bits, group_size)
            for name, axes in models.linear_weight_inputs(model).items()
        }


def quantized_variant(
    model: Model,
    variant: Variant,
    bits: int,
    group_size: int = DEFAULT_GROUP_SIZE,
    name: str | None = None,
) -> Variant:
    """``variant`` quantised: its weights applied to ``model``, then every block's linear
    matrix quantised (:func:`quantized_weights`); the result keeps ``variant``'s hooks and its
    other overrides, and is named ``name`` (default ``<variant>_rtn<bits>_g<group_size>``).
    The model is as it was afterwards.

    >>> rmu4 = quantized_variant(model, rmu, bits=4)                 # doctest: +SKIP
    >>> base4 = quantized_variant(model, Variant("base"), bits=4)    # doctest: +SKIP
    """
    check_bits(bits)
    check_group_size(group_size)
    with variant.applied(model):
        weights = quantized_weights(model, bits, group_size)
    return variant.with_weights(weights, name=name or f"{variant.name}_rtn{bits}_g{group_size}")


__all__ = [
    "DEFAULT_GROUP_SIZE",
    "MAX_BITS",
    "MIN_BITS",
    "check_bits",
    "check_group_size",
    "quantize_linear",
    "quantize_rows",
    "quantized_variant",
    "quantized_weights",
    "rtn_groups",
]
