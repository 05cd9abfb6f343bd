"""One network run several ways: ``Variant`` (parameter overrides plus forward hooks) and the
weight snapshot / restore every experiment needs.

This is the ground floor of the model code: it knows how to swap named tensors into a model and
install hooks for the length of a ``with`` block, and nothing about what the tensors mean.

    rmu = Variant("rmu", weights=result.unlearned_weights)       # only the changed tensors
    ablated = rmu.with_hooks(ablation_hooks(direction.vector), name="rmu_ablated")
    for v in (base, rmu, ablated):
        with v.applied(model):                                   # restored on exit, always
            acc[v.name] = evaluation.mcq_accuracy(model, items).accuracy
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from unlearn_interp.errors import UnlearnInterpError

HookFn = Callable[..., Tensor]
NameFilter = str | Callable[[str], bool]
Hook = tuple[NameFilter, HookFn]


def get_param(model: Any, name: str) -> torch.nn.Parameter:
    """The parameter called ``name``, or one sentence saying it does not exist."""
    params = dict(model.named_parameters())
    if name not in params:
        raise UnlearnInterpError(f"the model has no parameter named {name!r}")
    return params[name]


def snapshot_weights(model: Any, names: Iterable[str]) -> dict[str, Tensor]:
    """Detached copies of the named parameters (e.g. the base weights before RMU trains them)."""
    return {name: get_param(model, name).detach().clone() for name in names}


def restore_weights(model: Any, weights: Mapping[str, Tensor]) -> None:
    """Copy ``weights`` (name -> tensor) into the model's parameters of those names, in place."""
    with torch.no_grad():
        for name, value in weights.items():
            get_param(model, name).copy_(value)


@contextlib.contextmanager
def restored_weights(model: Any, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Put the parameters ``names`` back exactly as they were on exit (also after an error):
    what lets a sweep or an attack train in place at one point and start from the base at the next.
    Yields the saved copies (name -> tensor; read them, never write them).

    >>> with restored_weights(model, [models.mlp_out_param(l) for l in (5, 6, 7)]):  # doctest: +SKIP
    ...     train_rmu(model, forget, retain, cfg)
    """
    saved = snapshot_weights(model, names)
    try:
        yield saved
    finally:
        restore_weights(model, saved)


def hooks_installed(model: Any, fwd_hooks: Sequence[Hook]) -> contextlib.AbstractContextManager:
    """The forward hooks ``fwd_hooks`` added on entry and removed on exit (also after an error)."""
    return model.hooks(fwd_hooks=list(fwd_hooks))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running a model: parameter overrides plus forward hooks.

    ``weights`` maps parameter names to replacement tensors (only the ones that change);
    ``hooks`` are ``(hook name or name filter, hook function)`` pairs.

    >>> base = Variant("base")
    >>> rmu = Variant("rmu", weights=result.unlearned_weights)          # doctest: +SKIP
    >>> with rmu.applied(model):                                         # doctest: +SKIP
    ...     logits = model(tokens)
    """

    name: str
    weights: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)
    hooks: tuple[Hook, ...] = ()

    def with_hooks(self, hooks: Sequence[Hook], name: str | None = None) -> Variant:
        """The same weights with ``hooks`` added (named ``name``, default ``<name>+hooks``)."""
        return Variant(name or f"{self.name}+hooks", dict(self.weights), self.hooks + tuple(hooks))

    def with_weights(self, weights: Mapping[str, Tensor], name: str | None = None) -> Variant:
        """These hooks with ``weights`` laid over this variant's own overrides."""
        merged = {**self.weights, **weights}
        return Variant(name or f"{self.name}+weights", merged, self.hooks)

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Swap the weights in and add the hooks; restore both on exit, even after an exception."""
        originals = self._swap_in(model)
        try:
            with hooks_installed(model, self.hooks):
                yield model
        finally:
            restore_weights(model, originals)

    def _swap_in(self, model: Any) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        for name, value in self.weights.items():
            if name not in params:
                raise UnlearnInterpError(
                    f"variant {self.name!r}: the model has no parameter {name!r}"
                )
            if tuple(value.shape) != tuple(params[name].shape):
                raise UnlearnInterpError(
                    f"variant {self.name!r}: {name} has shape {tuple(value.shape)} but the model's "
                    f"is {tuple(params[name].shape)} (a run from another model?)"
                )
        originals = snapshot_weights(model, self.weights)
        restore_weights(model, self.weights)
        return originals


def applied(variant: Variant | None, model: Any) -> contextlib.AbstractContextManager:
    """``variant.applied(model)``, or the model as it is when ``variant`` is None."""
    return variant.applied(model) if variant is not None else contextlib.nullcontext(model)


def run_variants(
    model: Any, variants: Sequence[Variant], fn: Callable[[Any], object]
) -> dict[str, object]:
    """``{variant.name: fn(model)}`` with each variant applied in turn.

    >>> run_variants(model, [base, rmu], lambda m: mcq_accuracy(m, items).accuracy)  # doctest: +SKIP
    """
    results = {}
    for variant in variants:
        with variant.applied(model):
            results[variant.name] = fn(model)
    return results


__all__ = [
    "Hook",
    "HookFn",
    "NameFilter",
    "Variant",
    "applied",
    "get_param",
    "hooks_installed",
    "restore_weights",
    "restored_weights",
    "run_variants",
    "snapshot_weights",
]
