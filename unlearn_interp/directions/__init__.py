"""Junk directions: the difference-in-means direction RMU writes, per-layer candidates with an
auditable selection, subspaces, and the random controls.

The blog's recipe (Arditi & Chughtai 2024): run the base and the unlearned variant on a handful
of hazardous prompts, take the mean unlearned activation minus the mean base activation at the
last token, at the RMU layer, and normalise::

    base, rmu = Variant("base"), Variant("rmu", weights=result.unlearned_weights)
    d = junk_direction(model, base=base, unlearned=rmu, prompts=prompts, layer=7)
    d.save(run_dir)                                   # direction.safetensors + direction.json
    control = random_direction(d.d_model, seed=0, orthogonal_to=d.vector)

Every layer at once, scored, with a selection that keeps its reasons; the candidates are
computed once and every later question reads them::

    cands = candidate_directions(model, base, rmu, prompts, control_vectors=result.control_vectors)
    d = select_direction(cands, min_cos_control=0.9)  # d.metadata["selection"] says why
    d7 = junk_direction(model, base, rmu, prompts, layer=7, candidates=cands)   # no new pass

RMU trains several blocks (``update_layers``) and each writes its own junk, so the span of the
difference-in-means directions at those blocks' outputs can recover more than one direction::

    sub = junk_subspace(model, base, rmu, prompts, layers=subspace_layers(result.config))
    ablated = rmu.with_hooks(ablation_hooks(sub.basis), name="rmu_subspace_ablated")
    control = random_subspace_control(sub, seed=0)   # same dimension, orthogonal to it

Layer ``l`` is the residual stream *after* block ``l`` (``blocks.{l}.hook_resid_post``); the
reference RMU layer 7 is the blog's "start of layer 8". Means are masked (padding never counts)
and accumulated in float64, batch by batch (:mod:`unlearn_interp.activations`).

Where things are: ``artifact`` (Direction, Subspace, Origin, save / load), ``candidates``
(scoring and selection), ``methods`` (junk_direction by method, extract_direction), ``subspace``,
``controls`` (random directions and subspaces), ``run_io`` (reading and writing a run directory
for the ``direction`` command).
"""

from unlearn_interp.activations import (
    Positions,
    check_positions,
    iter_batches,
    mean_activations,
    select_positions,
)
from unlearn_interp.directions.artifact import (
    DEPENDENT_RTOL,
    FORMAT,
    JSON_FILE,
    SUBSPACE_FORMAT,
    SUBSPACE_JSON_FILE,
    SUBSPACE_TENSOR_FILE,
    TENSOR_FILE,
    Direction,
    Origin,
    Subspace,
)
from unlearn_interp.directions.candidates import (
    PREFERENCES,
    ZERO_NORM_RTOL,
    Candidates,
    candidate_directions,
    select_direction,
)
from unlearn_interp.directions.controls import (
    random_control,
    random_direction,
    random_subspace,
    random_subspace_control,
)
from unlearn_interp.directions.methods import (
    METHODS,
    SPREAD_RTOL,
    extract_direction,
    junk_direction,
)
from unlearn_interp.directions.run_io import save_extraction, unlearned_from_run
from unlearn_interp.directions.subspace import junk_subspace, subspace_layers

__all__ = [
    "DEPENDENT_RTOL",
    "FORMAT",
    "JSON_FILE",
    "METHODS",
    "PREFERENCES",
    "SPREAD_RTOL",
    "SUBSPACE_FORMAT",
    "SUBSPACE_JSON_FILE",
    "SUBSPACE_TENSOR_FILE",
    "TENSOR_FILE",
    "ZERO_NORM_RTOL",
    "Candidates",
    "Direction",
    "Origin",
    "Positions",
    "Subspace",
    "candidate_directions",
    "check_positions",
    "extract_direction",
    "iter_batches",
    "junk_direction",
    "junk_subspace",
    "mean_activations",
    "random_control",
    "random_direction",
    "random_subspace",
    "random_subspace_control",
    "save_extraction",
    "select_direction",
    "select_positions",
    "subspace_layers",
    "unlearned_from_run",
]
