"""training.trainable: scoped gradients, and the put-back after an error, from its own copy or
from one the caller already keeps (``entry``)."""

from __future__ import annotations

import pytest
import torch

from unlearn_interp import models, training
from unlearn_interp.variants import get_param, snapshot_weights

NAMES = [models.mlp_out_param(layer) for layer in (0, 1)]


class Boom(Exception):
    pass


def _train_then_fail(model, **kwargs):
    with pytest.raises(Boom), training.trainable(model, NAMES, lr=1e-1, **kwargs) as optimizer:
        model(torch.tensor([[1, 2, 3]])).sum().backward()
        optimizer.step()
        raise Boom


@pytest.mark.parametrize("given", [False, True])
def test_an_error_puts_the_trained_tensors_back_from_the_entry_copy(tiny_model, given):
    before = snapshot_weights(tiny_model, NAMES)
    _train_then_fail(tiny_model, entry=before if given else None)
    assert all(torch.equal(get_param(tiny_model, n), before[n]) for n in NAMES)
    assert all(p.grad is None for p in tiny_model.parameters())


def test_the_given_entry_copy_is_what_comes_back(tiny_model):
    before = snapshot_weights(tiny_model, NAMES)
    halved = {name: value / 2 for name, value in before.items()}
    _train_then_fail(tiny_model, entry=halved)  # restored from the caller's copy, not its own
    assert all(torch.equal(get_param(tiny_model, n), halved[n]) for n in NAMES)


def test_an_entry_copy_of_other_tensors_is_refused(tiny_model):
    entry = snapshot_weights(tiny_model, NAMES[:1])
    with (
        pytest.raises(ValueError, match="not the trained tensors"),
        training.trainable(tiny_model, NAMES, lr=1e-3, entry=entry),
    ):
        pass
