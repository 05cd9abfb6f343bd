"""Analyses that turn a model and its variants into tidy pandas DataFrames for plotting.

* :mod:`.profile`: :func:`layer_profile`, the blog's per-layer picture (mean residual norm and
  cosine to the reference variant per layer, forget and retain prompts side by side).
* :mod:`.changes`: :func:`weight_changes`, where unlearning wrote: each changed tensor's
  relative change, and :func:`block_changes` per block.
* :mod:`.similarity`: :func:`representation_similarity`, linear CKA (:func:`linear_cka`) and
  mean cosine between the reference variant's residual stream and each variant's, per layer.
* :mod:`.lens`: :func:`logit_lens`, the answer's rank, log-probability and choice accuracy as
  each layer decodes it; :mod:`.tuned_lens`: :func:`fit_tuned_lens` and :func:`lens_kl`.
* :mod:`.sweeps`: the one sweep engine, :func:`run_sweep` / :func:`run_sweep_tables`: a
  measurement at each point, rows stacked, the table written as it goes, an interrupted sweep
  resumed.
* :mod:`.adaptive`: Adaptive RMU (Dang et al.): the measurements :func:`cos_distribution`,
  :func:`forget_norm_by_layer`, :func:`training_curves` and the RMU retraining sweeps
  :func:`coefficient_sweep` and :func:`layer_sweep`; :mod:`.noise`: :func:`noise_sensitivity`.

    >>> profile = layer_profile(model, [base, rmu, ablated], {"forget": hazardous, "retain": benign},
    ...                         directions={"junk": d.vector})          # doctest: +SKIP
    >>> tables = coefficient_sweep(model, [bio], [wiki], {"bio": items}, cfg, coefs=[6.5, 20, 100],
    ...                            table_dir="runs/sweeps")                # doctest: +SKIP

A new analysis goes in its own module here, built on :mod:`unlearn_interp.activations` for every
forward pass and on :func:`run_sweep` when it is a sweep.
"""

from unlearn_interp.analysis.adaptive import (
    METHOD_ADAPTIVE,
    METHOD_FIXED,
    MCQSets,
    MCQSetup,
    coefficient_sweep,
    cos_distribution,
    forget_norm_by_layer,
    layer_sweep,
    training_curves,
)
from unlearn_interp.analysis.changes import block_changes, weight_changes
from unlearn_interp.analysis.lens import decision_questions, lens_items, logit_lens
from unlearn_interp.analysis.noise import noise_sensitivity
from unlearn_interp.analysis.probes import Readouts, layer_probes, organism_readouts, readouts
from unlearn_interp.analysis.profile import PromptSets, layer_profile
from unlearn_interp.analysis.similarity import linear_cka, representation_similarity
from unlearn_interp.analysis.sweeps import (
    SWEEP_RECORD_SUFFIX,
    Point,
    Rows,
    Scalar,
    run_sweep,
    run_sweep_tables,
)
from unlearn_interp.analysis.tuned_lens import TunedLens, fit_tuned_lens, lens_kl
from unlearn_interp.variants import restored_weights

__all__ = [
    "MCQSets",
    "MCQSetup",
    "METHOD_ADAPTIVE",
    "METHOD_FIXED",
    "Point",
    "PromptSets",
    "Readouts",
    "Rows",
    "SWEEP_RECORD_SUFFIX",
    "Scalar",
    "TunedLens",
    "block_changes",
    "coefficient_sweep",
    "cos_distribution",
    "decision_questions",
    "fit_tuned_lens",
    "forget_norm_by_layer",
    "layer_probes",
    "layer_profile",
    "layer_sweep",
    "lens_items",
    "lens_kl",
    "linear_cka",
    "logit_lens",
    "noise_sensitivity",
    "organism_readouts",
    "readouts",
    "representation_similarity",
    "restored_weights",
    "run_sweep",
    "run_sweep_tables",
    "training_curves",
    "weight_changes",
]
