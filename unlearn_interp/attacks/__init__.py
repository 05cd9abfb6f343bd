"""Recovery attacks: is the unlearned knowledge gone, or only hidden?

An attack here is anything that tries to bring unlearned knowledge back without teaching it
anew. Each is returned as a ``Variant`` (weights and hooks to apply with ``Variant.applied``:
quantisation, directional ablation) or, when it has to train, applied to the model in place
and always undone afterwards (``variants.restored_weights``), so no attack leaks into the next.
Every attack is meant to be run on the base model (and, where one exists, the oracle twin that
never saw the facts) as well, to measure what the attack teaches by itself.

* ``quantize``: round-to-nearest group quantisation of every block's linear matrices
  (:func:`quantized_weights`, :func:`quantized_variant`).
* ``ablation``: per-layer directional ablation (:func:`per_layer_ablation`) and its matched
  random control (:func:`random_per_layer_ablation`).
* ``finetune``: fine-tuning attacks that train in place and restore: :func:`finetune_curve`,
  relearning on held-out facts (:func:`relearning_attack`), :func:`benign_finetune`, :func:`lr_grid`.

    >>> rmu4 = attacks.quantized_variant(model, rmu, bits=4)                     # doctest: +SKIP
    >>> ablated = rmu.with_hooks(attacks.per_layer_ablation(cands))              # doctest: +SKIP
"""

from unlearn_interp.attacks.ablation import (
    per_layer_ablation,
    per_layer_units,
    random_per_layer_ablation,
    random_per_layer_units,
)
from unlearn_interp.attacks.finetune import (
    FinetuneConfig,
    benign_finetune,
    finetune_curve,
    finetuned_variant,
    lr_grid,
    relearning_attack,
)
from unlearn_interp.attacks.quantize import (
    DEFAULT_GROUP_SIZE,
    quantize_rows,
    quantized_variant,
    quantized_weights,
)

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "FinetuneConfig",
    "benign_finetune",
    "finetune_curve",
    "finetuned_variant",
    "lr_grid",
    "per_layer_ablation",
    "per_layer_units",
    "quantize_rows",
    "quantized_variant",
    "quantized_weights",
    "random_per_layer_ablation",
    "relearning_attack",
    "random_per_layer_units",
]
