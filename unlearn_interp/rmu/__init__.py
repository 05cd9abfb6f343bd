"""RMU (Li et al. 2024) and Adaptive RMU (Dang et al. 2024) on one model, trained in place.

The loss is the reference's, exactly (docs/methods.md, "RMU")::

    L = mse(h_upd(x_F), c_t * u_t) + alpha_t * mse(h_upd(x_R), h_frz(x_R))

where ``h`` is the residual stream after block ``layer`` (``blocks.{layer}.hook_resid_post``; the
reference's layer 7 is the input of block 8), ``mse`` is ``F.mse_loss`` (a mean over batch,
positions *and* ``d_model``), ``u_t`` is one fixed unit control vector per topic (uniform in
[0, 1) before normalising, as the reference draws it) and only the MLP output matrices ``W_out``
of ``update_layers`` train. Step ``i`` uses topic ``i % n_topics`` and that topic's batch
``i // n_topics`` (consecutive documents), as the reference does.

What differs from the reference is the cost, not the result:

* the forward pass stops after block ``layer``; blocks before the first updated layer run once per
  batch without gradient, and only ``first..layer`` run with gradient;
* the frozen model is the same model with the saved base ``W_out`` tensors swapped in for one
  no-grad pass (``torch.func.functional_call``), so there is never a second copy of the model;
* only the trained tensors require grad, and the forget and retain terms are back-propagated one
  after the other, so only one of their graphs is alive at a time;
* the frozen model's forget pass, which feeds only the history's ``frozen_forget_norm`` and
  ``cos_forget_frozen`` (the reference's ``verbose`` logging), runs every
  ``RMUConfig.frozen_forget_every`` batches (10) and on each topic's last step; other rows hold
  NaN there, and the trained weights are bitwise the same for any setting;
* ``mask_padding=True`` (the default) excludes padding from both terms; ``False`` is the
  reference's unmasked mean, in which pads are pulled toward ``c * u`` too.

The optimiser is the reference's: AdamW without weight decay and ``eps = 1e-6``
(``transformers.AdamW``'s default; ``RMUConfig.adam_eps``). torch's own default, 1e-8, is not
a detail here: RMU's gradients are tiny, so ``eps`` changes the size of every step.

Where things are: ``config`` (:class:`RMUConfig`), ``loss`` (control vectors, the schedule, the
loss terms, token metrics), ``forward`` (the split forward), ``train`` (:func:`train_rmu`, its
step and :class:`StepRecord`), ``result`` (:class:`RMUResult` and its run-directory files).

>>> cfg = RMUConfig(layer=7, steering_coef=6.5, alpha=1200.0, steps=150)     # doctest: +SKIP
>>> result = train_rmu(model, forget=[bio, cyber], retain=[wiki, wiki], cfg=cfg)  # doctest: +SKIP
>>> result.save("runs/zephyr_rmu")                                           # doctest: +SKIP
"""

from unlearn_interp.rmu.config import (
    CONTROL_VECTOR_KINDS,
    LEGACY_ADAM_EPS,
    Number,
    PerTopic,
    RMUConfig,
)
from unlearn_interp.rmu.loss import (
    forget_term,
    make_control_vectors,
    masked_mse,
    mean_token_norm,
    retain_term,
    rmu_loss,
    schedule,
    topic_batch,
)
from unlearn_interp.rmu.result import (
    BASE_WEIGHTS_FILE,
    CONFIG_FILE,
    CONTROL_VECTORS_FILE,
    HISTORY_FILE,
    UNLEARNED_WEIGHTS_FILE,
    RMUResult,
)
from unlearn_interp.rmu.train import HISTORY_COLUMNS, StepRecord, train_rmu

__all__ = [
    "BASE_WEIGHTS_FILE",
    "CONFIG_FILE",
    "CONTROL_VECTORS_FILE",
    "CONTROL_VECTOR_KINDS",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "LEGACY_ADAM_EPS",
    "Number",
    "PerTopic",
    "RMUConfig",
    "RMUResult",
    "StepRecord",
    "UNLEARNED_WEIGHTS_FILE",
    "forget_term",
    "make_control_vectors",
    "masked_mse",
    "mean_token_norm",
    "retain_term",
    "rmu_loss",
    "schedule",
    "topic_batch",
    "train_rmu",
]
