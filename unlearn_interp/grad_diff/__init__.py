"""Gradient difference (the TOFU baseline, Maini et al. 2024): gradient ascent on the forget
text's next-token loss, capped at a uniform guess so it cannot run away, plus descent on the
retain text's; trains the MLP matrices of every block by default.

``config`` (:class:`GradDiffConfig`), ``loss`` (:func:`grad_diff_loss`), ``train``
(:func:`train_grad_diff`, through ``training.trainable``).

    >>> result = train_grad_diff(model, forget_docs, retain_docs, GradDiffConfig(steps=100))  # doctest: +SKIP
"""

from unlearn_interp.grad_diff.config import GradDiffConfig
from unlearn_interp.grad_diff.loss import grad_diff_loss
from unlearn_interp.grad_diff.train import METHOD, train_grad_diff, trained_names

__all__ = ["METHOD", "GradDiffConfig", "grad_diff_loss", "train_grad_diff", "trained_names"]
