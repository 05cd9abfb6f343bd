"""The variants of one run directory, read from the files its steps wrote, once per run.

``base`` and the unlearned model come from the weight files of the unlearn step; the unlearned
model is called ``rmu`` when the toolkit trained RMU and ``unlearned`` for a pair it audits.
Every ablated variant is one of them with a removed direction or subspace (a file of the
directions step) projected out everywhere (``rmu_ablated``, ``base_subspace_ablated``). Each
file is read at most once; later steps reuse what was read.

    >>> variants = RunVariants(run)                                         # doctest: +SKIP
    >>> variants.variants(["base", "rmu", "rmu_ablated"])                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import directions, models
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.interventions import ablation_hooks
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.variants import Variant

# variant name suffix -> the file of what is projected out ("rmu_ablated", "base_subspace_ablated")
ABLATIONS = {
    "ablated": RunFiles.DIRECTION,
    "random_ablated": RunFiles.RANDOM_DIRECTION,
    "subspace_ablated": RunFiles.SUBSPACE,
    "random_subspace_ablated": RunFiles.RANDOM_SUBSPACE,
}


class RunVariants:
    """Variants built from a run directory's files (the unlearned model named ``unlearned``);
    each file is read on first use only."""

    def __init__(self, run: RunDir, unlearned: str = "rmu") -> None:
        self.run = run
        self.unlearned = unlearned
        self._plain: dict[str, Variant] | None = None
        self._removed: dict[str, Tensor] = {}
        self._controls: dict[str, Tensor | None] = {}  # empty until read

    def plain(self) -> dict[str, Variant]:
        """``base`` (the saved base weights; none for an unlearned checkpoint) and the unlearned
        model."""
        if self._plain is None:
            unlearned = models.load_weights(self.run.path(RunFiles.UNLEARNED_WEIGHTS))
            base_file = self.run.path(RunFiles.BASE_WEIGHTS)
            base = models.load_weights(base_file) if base_file.is_file() else {}
            self._plain = {
                "base": Variant("base", weights=base),
                self.unlearned: Variant(self.unlearned, weights=unlearned),
            }
        return self._plain

    def available(self) -> list[str]:
        """Every variant name the run's files allow, ``base`` and the unlearned model first."""
        starts = (self.unlearned, "base")  # the variants an ablation is applied to
        names = list(starts[::-1])
        for suffix, file in ABLATIONS.items():
            if self.run.path(file).is_file():
                names += [f"{start}_{suffix}" for start in starts]
        return names

    def variants(self, names: Sequence[str] | None = None) -> dict[str, Variant]:
        """The variants called ``names`` (default :meth:`available`), in that order."""
        return {name: self.variant(name) for name in (names or self.available())}

    def variant(self, name: str) -> Variant:
        """One variant by name: ``base``, the unlearned model or ``<start>_<ablation>``."""
        plain = self.plain()
        if name in plain:
            return plain[name]
        start = next((s for s in plain if name.startswith(f"{s}_")), None)
        suffix = name[len(start) + 1 :] if start is not None else ""
        if suffix not in ABLATIONS:
            raise KeyError(f"no variant {name!r} in {self.run.root}")
        return plain[start].with_hooks(ablation_hooks(self.removed(suffix)), name=name)

    def removed(self, suffix: str) -> Float[Tensor, "*k d_model"]:
        """The direction (``[d_model]``) or subspace basis (``[k, d_model]``) of an ablation."""
        if suffix not in self._removed:
            path = self.run.path(ABLATIONS[suffix])
            if "subspace" in suffix:
                self._removed[suffix] = directions.Subspace.load(path).basis
            else:
                self._removed[suffix] = directions.Direction.load(path).vector
        return self._removed[suffix]

    def junk(self) -> directions.Direction:
        """The junk direction the directions step chose."""
        return directions.Direction.load(self.run.path(RunFiles.DIRECTION))

    def control_vectors(self) -> Float[Tensor, "n_topics d_model"] | None:
        """The run's RMU control vectors, or None when it has none (an unlearned checkpoint)."""
        if not self._controls:
            self._controls["control_vectors"] = control_vectors(self.run)
        return self._controls["control_vectors"]


def control_vectors(run: RunDir) -> torch.Tensor | None:
    """The run's RMU control vectors ``[n_topics, d_model]``, or None when it has none."""
    path = run.path(RunFiles.CONTROL_VECTORS)
    return models.load_weights(path)["control_vectors"] if path.is_file() else None
