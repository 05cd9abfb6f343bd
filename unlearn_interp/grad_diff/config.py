"""GradDiffConfig: every setting of a gradient-difference unlearning run, checked when built.

>>> GradDiffConfig(steps=50).retain_weight
1.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from unlearn_interp.checks import check_int, is_int
from unlearn_interp.errors import UnlearnInterpError

PARAMS = ("mlp", "mlp_out", "all")


@dataclasses.dataclass(frozen=True)
class GradDiffConfig:
    """Gradient difference (the TOFU baseline): ``L = -NLL(forget) + retain_weight * NLL(retain)``.

    The guard against the ascent running away: the forget term is
    ``-min(NLL(forget), max_forget_loss)``, so once the forget text is as unlikely as a uniform
    guess over the vocabulary (``max_forget_loss`` None: ``ln(d_vocab)``) it stops pushing and
    only the retain term trains. ``params`` picks what trains in each block of ``layers`` (None:
    every block): ``"mlp"`` (every MLP matrix), ``"mlp_out"`` (``W_out`` only) or ``"all"``
    (every parameter of the model; ``layers`` must then be None).

    >>> GradDiffConfig(lr=-1.0)
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: GradDiffConfig.lr must be a positive finite number, got -1.0
    """

    steps: int = 100  # optimiser steps, each one forget batch and one retain batch
    lr: float = 1e-5  # AdamW learning rate
    batch_size: int = 4  # texts per forget batch and per retain batch
    max_len: int = 128  # texts cut to this many tokens
    retain_weight: float = 1.0  # lambda, the weight of the retain NLL
    max_forget_loss: float | None = None  # the ascent's ceiling in nats; None = ln(d_vocab)
    layers: Sequence[int] | None = None  # blocks whose parameters train; None = every block
    params: str = "mlp"  # "mlp" (W_in, W_gate, W_out), "mlp_out" or "all"
    seed: int = 0  # the order batches are drawn in

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_len"):
            check_int(getattr(self, name), f"GradDiffConfig.{name}", minimum=1)
        check_int(self.seed, "GradDiffConfig.seed", minimum=0)
        _positive("lr", self.lr)
        _positive("retain_weight", self.retain_weight, zero_ok=True)
        if self.max_forget_loss is not None:
            _positive("max_forget_loss", self.max_forget_loss)
        if self.params not in PARAMS:
            raise UnlearnInterpError(
                f"GradDiffConfig.params must be one of {PARAMS}, got {self.params!r}"
            )
        if self.layers is not None:
            object.__setattr__(self, "layers", _checked_layers(self.layers))
            if self.params == "all":
                raise UnlearnInterpError(
                    "GradDiffConfig.params 'all' trains every block: leave layers None"
                )

    def to_dict(self) -> dict[str, Any]:
        """As config.json records it."""
        out = dataclasses.asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GradDiffConfig:
        """From :meth:`to_dict`'s form; an unknown field is one sentence."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnlearnInterpError(f"GradDiffConfig has no field {unknown[0]!r}")
        return cls(**values)


def _positive(name: str, value: Any, zero_ok: bool = False) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        what = "a non-negative" if zero_ok else "a positive"
        raise UnlearnInterpError(
            f"GradDiffConfig.{name} must be {what} finite number, got {value!r}"
        )


def _checked_layers(layers: Sequence[int]) -> tuple[int, ...]:
    values = tuple(layers)
    if (
        not values
        or not all(is_int(v) and v >= 0 for v in values)
        or len(set(values)) != len(values)
    ):
        raise UnlearnInterpError(
            f"GradDiffConfig.layers must be distinct non-negative block indices, got {list(values)}"
        )
    return tuple(sorted(values))
