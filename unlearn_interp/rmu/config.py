"""RMUConfig: every setting of an RMU or Adaptive RMU run, checked when it is built.

>>> RMUConfig(layer=7).update_layers
(5, 6, 7)
>>> RMUConfig.from_dict(RMUConfig(layer=7, alpha=(1200, 350)).to_dict()).alpha
(1200, 350)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError

Number = float | int
PerTopic = Number | Sequence[Number]  # one value for every topic, or one value per topic

CONTROL_VECTOR_KINDS = ("uniform", "gaussian")

# AdamW eps of runs saved before RMUConfig had an adam_eps field: torch's default, which
# train_rmu used then.
LEGACY_ADAM_EPS = 1e-8

PER_TOPIC_FIELDS = ("steering_coef", "alpha", "max_len")
# How often (in batches of a topic) the frozen model's forget pass runs for diagnostics.
FROZEN_FORGET_EVERY = 10


@dataclasses.dataclass(frozen=True)
class RMUConfig:
    """Every setting of an RMU run; defaults are those of the released Zephyr-7B RMU model.

    Per-topic fields (``steering_coef``, ``alpha``, ``max_len``) take one value for all topics or
    a sequence with one value per topic, in the order of ``train_rmu``'s ``forget`` corpora.

    >>> RMUConfig(layer=7).update_layers
    (5, 6, 7)
    >>> RMUConfig(layer=7, alpha=-1.0)
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: RMUConfig.alpha must be >= 0.0, got -1.0
    """

    layer: int  # steer the residual stream after this block (reference: 7 = input of block 8)
    update_layers: Sequence[int] | None = None  # blocks whose W_out trains; None = layer-2..layer
    steering_coef: PerTopic = 6.5  # c: norm of the forget target c*u (ignored if adaptive_beta)
    alpha: PerTopic = 1200.0  # weight of the retain term
    lr: Number = 5e-5  # AdamW learning rate
    adam_eps: Number = 1e-6  # AdamW eps: the reference's transformers.AdamW default; torch's
    # 1e-8 takes other steps, RMU's gradients being small next to eps (runs before: 1e-8)
    batch_size: int = 4  # documents per forget batch and per retain batch
    steps: int = 150  # optimiser steps in total, topics alternating
    max_len: int | Sequence[int] = 512  # forget truncation in tokens (reference: 512 bio, 768
    # cyber); retain text is truncated to the smallest value (reference: 512)
    adaptive_beta: Number | None = None  # Adaptive RMU: c_t = beta * frozen forget norm; None = RMU
    control_vector: str = "uniform"  # "uniform" in [0,1) then normalised (reference) or "gaussian"
    mask_padding: bool = True  # False = the reference's unmasked mean, pads pulled toward c*u too
    seed: int = 42  # seeds the control vectors
    frozen_forget_every: int = (
        FROZEN_FORGET_EVERY  # the frozen model's forget pass (history's frozen_forget_norm,
    )
    # cos_forget_frozen; nothing trains on it) runs on every k-th batch of each topic and on each
    # topic's last step, NaN elsewhere; 1 = every step. Weights are identical for any k. 10: ~1%
    # of a step instead of ~10%, and still 9 points per topic over 150 steps

    def __post_init__(self) -> None:
        _check_int(self.layer, "layer", minimum=0)
        self._set("update_layers", _checked_update_layers(self.update_layers, self.layer))
        self._set("steering_coef", _checked_per_topic(self.steering_coef, "steering_coef", 0.0))
        self._set("alpha", _checked_per_topic(self.alpha, "alpha", 0.0, strict=False))
        self._set("max_len", _checked_per_topic(self.max_len, "max_len", 1, integer=True))
        _check_number(self.lr, "lr", 0.0)
        _check_number(self.adam_eps, "adam_eps", 0.0)
        _check_int(self.batch_size, "batch_size", minimum=1)
        _check_int(self.steps, "steps", minimum=1)
        if self.adaptive_beta is not None:
            _check_number(self.adaptive_beta, "adaptive_beta", 0.0)
        _check_choices(self.control_vector, self.mask_padding)
        _check_int(self.seed, "seed")
        _check_int(self.frozen_forget_every, "frozen_forget_every", minimum=1)
        self.topic_count()  # per-topic fields must agree with each other

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own fields

    def topic_count(self) -> int | None:
        """The number of topics implied by per-topic fields (None when all are scalars)."""
        counts = {
            name: len(value)
            for name in PER_TOPIC_FIELDS
            if isinstance(value := getattr(self, name), tuple)
        }
        if len(set(counts.values())) > 1:
            raise UnlearnInterpError(
                f"RMUConfig per-topic fields disagree on the number of topics: {counts}"
            )
        return next(iter(counts.values()), None)

    def per_topic(self, name: str, n_topics: int) -> list[Any]:
        """Field ``name`` as a list with one value per topic.

        >>> RMUConfig(layer=7, alpha=(1200, 350)).per_topic("alpha", 2)
        [1200, 350]
        """
        value = getattr(self, name)
        if not isinstance(value, tuple):
            return [value] * n_topics
        if len(value) != n_topics:
            raise UnlearnInterpError(
                f"RMUConfig.{name} has {len(value)} values but there are {n_topics} topics"
            )
        return list(value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists). ``frozen_forget_every`` is left out at
        its default: it changes no weight, and runs recorded before it existed still resume."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if values["frozen_forget_every"] == FROZEN_FORGET_EVERY:
            del values["frozen_forget_every"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: Any) -> RMUConfig:  # user JSON: checked here
        """Inverse of :meth:`to_dict`; an unknown key is an error naming it, a missing optional
        one takes its default (``adam_eps`` too: a config file asks for a new run; a saved run's
        record is read by :meth:`RMUResult.load`, which knows what older runs used)."""
        if not isinstance(values, Mapping):
            raise UnlearnInterpError(
                f"RMUConfig must be an object of fields, got {type(values).__name__}"
            )
        fields = dataclasses.fields(cls)
        unknown = sorted(map(str, set(values) - {f.name for f in fields}))
        if unknown:
            raise UnlearnInterpError(f"RMUConfig has no field {unknown[0]!r}")
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise UnlearnInterpError(f"RMUConfig field {missing[0]!r} is missing")
        return cls(**dict(values))


def _checked_update_layers(update_layers: Any, layer: int) -> tuple[int, ...]:
    """``update_layers`` sorted, or ``layer-2..layer`` (clamped at 0) when it is None."""
    if update_layers is None:
        return tuple(range(max(0, layer - 2), layer + 1))
    if isinstance(update_layers, (str, bytes)) or not isinstance(update_layers, Sequence):
        raise UnlearnInterpError(
            f"RMUConfig.update_layers must be a list of block indices, got {update_layers!r}"
        )
    layers = tuple(update_layers)
    for value in layers:
        _check_int(value, "update_layers", minimum=0)
        if value > layer:
            raise UnlearnInterpError(
                f"RMUConfig.update_layers contains {value}, above layer {layer}: a block "
                "after the steered layer cannot change its activations"
            )
    if not layers or len(set(layers)) != len(layers):
        raise UnlearnInterpError(
            f"RMUConfig.update_layers must be non-empty without repeats, got {list(layers)}"
        )
    return tuple(sorted(layers))


def _check_choices(control_vector: Any, mask_padding: Any) -> None:
    if control_vector not in CONTROL_VECTOR_KINDS:
        raise UnlearnInterpError(
            f"RMUConfig.control_vector must be one of {CONTROL_VECTOR_KINDS}, "
            f"got {control_vector!r}"
        )
    if not isinstance(mask_padding, bool):
        raise UnlearnInterpError(
            f"RMUConfig.mask_padding must be True or False, got {mask_padding!r}"
        )


def _check_int(value: Any, field: str, minimum: int | None = None) -> None:
    if not is_int(value):
        raise UnlearnInterpError(f"RMUConfig.{field} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UnlearnInterpError(f"RMUConfig.{field} must be >= {minimum}, got {value}")


def _check_number(value: Any, field: str, bound: Number, strict: bool = True) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value):
        raise UnlearnInterpError(f"RMUConfig.{field} must be a finite number, got {value!r}")
    if value < bound or (strict and value == bound):
        raise UnlearnInterpError(
            f"RMUConfig.{field} must be {'>' if strict else '>='} {bound}, got {value}"
        )


def _checked_per_topic(
    value: Any, field: str, bound: Number, strict: bool = True, integer: bool = False
) -> Any:
    """A scalar stays a scalar; a sequence becomes a non-empty tuple; every value is checked."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    for item in values if values is not None else (value,):
        if integer:
            _check_int(item, field, minimum=int(bound))
        else:
            _check_number(item, field, bound, strict)
    if values is not None and not values:
        raise UnlearnInterpError(f"RMUConfig.{field} is an empty list")
    return values if values is not None else value


__all__ = ["CONTROL_VECTOR_KINDS", "LEGACY_ADAM_EPS", "Number", "PerTopic", "RMUConfig"]
