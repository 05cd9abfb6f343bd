"""The Direction and Subspace artifacts: validated on construction, saved as a safetensors + JSON
pair (atomically), loaded back refusing NaN, wrong shapes and skewed bases in one sentence.

    d = Direction.at(Origin(layer=7, positions="last", n_prompts=64, model_name="zephyr"),
                     vector, raw_norm=12.5, method="diff_in_means")
    d.save(run_dir)                             # direction.safetensors + direction.json
    sub = Subspace.from_vectors(vectors, layers=[5, 6, 7])   # orthonormalised in float64
    sub.save(run_dir)                           # subspace.safetensors + subspace.json

File names come from :class:`unlearn_interp.artifacts.RunFiles`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import models
from unlearn_interp.activations import Positions, check_positions
from unlearn_interp.artifacts import RunFiles, library_versions, read_json, write_json
from unlearn_interp.checks import check_int, is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import as_basis, unit

log = logging.getLogger(__name__)

FORMAT = "unlearn_interp.direction"
TENSOR_FILE, JSON_FILE = RunFiles.DIRECTION, RunFiles.DIRECTION_JSON
SUBSPACE_FORMAT = "unlearn_interp.subspace"
SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE = RunFiles.SUBSPACE, RunFiles.SUBSPACE_JSON
# A vector whose part orthogonal to the span of the earlier ones is shorter than this fraction of
# its own length adds no dimension (a repeat of a direction already in the span, or float noise).
DEPENDENT_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a direction was measured: the residual stream after block ``layer``, at
    ``positions`` of ``n_prompts`` prompts, in the model called ``model_name``.

    >>> Origin(7, "last", 64, "zephyr").layer
    7
    """

    layer: int
    positions: Positions
    n_prompts: int
    model_name: str


# ---------------------------------------------------------------------------------------------
# Direction
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Direction:
    """A unit direction in the residual stream after block ``layer``, with where it came from.

    ``vector`` is stored unit-norm in float32 on the CPU; ``raw_norm`` is the length of the
    difference it was normalised from (how much junk there was); ``metadata`` holds everything
    else worth keeping (scores, thresholds, the runner-up, dropped tokens).

    >>> d = junk_direction(model, base, rmu, prompts, layer=7)      # doctest: +SKIP
    >>> d.save("runs/demo"); Direction.load("runs/demo").layer       # doctest: +SKIP
    7
    """

    vector: Float[Tensor, " d_model"]
    raw_norm: float
    layer: int
    positions: Positions
    n_prompts: int
    method: str
    model_name: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.vector) or self.vector.ndim != 1:
            raise UnlearnInterpError("direction vector must be a 1-dimensional tensor [d_model]")
        if not torch.isfinite(self.vector).all():
            raise UnlearnInterpError("direction vector contains NaN or infinite values")
        self.vector = unit(
            self.vector.detach().to("cpu", torch.float64), "direction vector"
        ).float()
        if not math.isfinite(self.raw_norm) or self.raw_norm < 0:
            raise UnlearnInterpError(f"raw_norm {self.raw_norm!r} must be finite and >= 0")
        check_int(self.layer, "layer", minimum=0)
        check_positions(self.positions)
        check_int(self.n_prompts, "n_prompts", minimum=0)
        if not self.method:
            raise UnlearnInterpError("method must be a non-empty string")
        self.raw_norm = float(self.raw_norm)

    @classmethod
    def at(
        cls,
        origin: Origin,
        vector: Float[Tensor, " d_model"],
        raw_norm: float,
        method: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> Direction:
        """The one way the library builds a direction: ``vector`` (normalised here) measured at
        ``origin`` by ``method``.

        >>> Direction.at(Origin(1, "last", 6, "m"), torch.ones(4), 2.0, "diff_in_means").vector
        tensor([0.5000, 0.5000, 0.5000, 0.5000])
        """
        return cls(
            vector,
            raw_norm,
            **dataclasses.asdict(origin),
            method=method,
            metadata=dict(metadata or {}),
        )

    @property
    def origin(self) -> Origin:
        """Where the direction was measured (layer, positions, prompt count, model)."""
        return Origin(self.layer, self.positions, self.n_prompts, self.model_name)

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Everything but the vector, as JSON-ready values."""
        return {
            "format": FORMAT,
            "d_model": self.d_model,
            "layer": self.layer,
            "positions": self.positions,
            "n_prompts": self.n_prompts,
            "method": self.method,
            "model_name": self.model_name,
            "raw_norm": self.raw_norm,
            "metadata": json_ready(self.metadata),
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], vector: Tensor) -> Direction:
        names = ("layer", "positions", "n_prompts", "method", "model_name", "raw_norm")
        _require_fields("direction", fields, names)
        if "d_model" in fields and fields["d_model"] != vector.shape[0]:
            raise UnlearnInterpError(
                f"direction metadata says d_model {fields['d_model']} but the vector has "
                f"{vector.shape[0]} entries"
            )
        kwargs = {name: fields[name] for name in names}
        if is_int(kwargs["raw_norm"]):
            kwargs["raw_norm"] = float(kwargs["raw_norm"])  # JSON written by hand: 3, not 3.0
        return cls(vector=vector, metadata=dict(fields.get("metadata") or {}), **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``direction.safetensors`` (key ``"vector"``) and ``direction.json``, atomically.

        ``path`` is a directory (a run directory), or a ``.safetensors``/``.json`` file name whose
        twin is written beside it. Returns the safetensors path.
        """
        paths = artifact_paths(path)
        return _save_artifact(paths, "vector", self.vector, FORMAT, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        """Read a direction written by :meth:`save`, refusing NaN and mismatched shapes.

        >>> d = Direction.load("runs/demo")               # doctest: +SKIP
        """
        return _load_artifact(cls, artifact_paths(path), "vector", "[d_model]")


# ---------------------------------------------------------------------------------------------
# Subspace
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Subspace:
    """A subspace of the residual stream: ``k`` orthonormal rows and where they came from.

    ``basis[i]`` is float32 on the CPU; it came from the difference at ``layers[i]`` (the
    residual stream after that block), with the parts along ``basis[:i]`` removed (Gram-Schmidt
    in the order given), and ``raw_norms[i]`` is the length of that difference before anything
    was removed or normalised. ``metadata`` holds the rest: per-layer scores, the cosines
    between the input directions, and the vectors dropped for adding no dimension.

    >>> sub = junk_subspace(model, base, rmu, prompts, layers=[5, 6, 7])   # doctest: +SKIP
    >>> sub.save("runs/demo"); Subspace.load("runs/demo").layers           # doctest: +SKIP
    (5, 6, 7)
    """

    basis: Float[Tensor, "k d_model"]
    layers: Sequence[int]
    raw_norms: Sequence[float]
    positions: Positions = "last"
    n_prompts: int = 0
    method: str = "diff_in_means"
    model_name: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.basis) or self.basis.ndim != 2:
            raise UnlearnInterpError("subspace basis must be a 2-dimensional tensor [k, d_model]")
        self.basis = as_basis(self.basis.detach().cpu()).contiguous()  # refuses NaN, skew rows
        self.layers = tuple(self.layers)
        self.raw_norms = tuple(float(v) for v in self.raw_norms)
        self._check_rows()
        check_positions(self.positions)
        check_int(self.n_prompts, "n_prompts", minimum=0)
        if not self.method:
            raise UnlearnInterpError("method must be a non-empty string")

    def _check_rows(self) -> None:
        """One layer and one finite raw norm per basis row."""
        k = self.k
        if len(self.layers) != k or len(self.raw_norms) != k:
            raise UnlearnInterpError(
                f"a subspace of dimension {k} needs {k} layers and {k} raw norms, got "
                f"{len(self.layers)} and {len(self.raw_norms)}"
            )
        if any(not is_int(x) or x < 0 for x in self.layers):
            raise UnlearnInterpError(f"layers {list(self.layers)} must be non-negative integers")
        if not all(math.isfinite(v) and v >= 0 for v in self.raw_norms):
            raise UnlearnInterpError(f"raw_norms {list(self.raw_norms)} must be finite and >= 0")

    @property
    def k(self) -> int:
        """The dimension of the subspace (number of basis rows)."""
        return int(self.basis.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.basis.shape[1])

    def cos_with(self, vectors: Float[Tensor, "*n d_model"]) -> Float[Tensor, "*n"]:
        """Cosine between each vector and the subspace: the length of its unit vector's
        projection onto the span (1: inside it, 0: orthogonal), in float64.

        >>> sub.cos_with(result.control_vectors)      # how much of u the span holds  # doctest: +SKIP
        """
        v = vectors.detach().to("cpu", torch.float64)
        if v.shape[-1] != self.d_model:
            raise UnlearnInterpError(
                f"vectors have width {v.shape[-1]} but the subspace's d_model is {self.d_model}"
            )
        inside = (v @ self.basis.double().T).norm(dim=-1)
        return inside / v.norm(dim=-1).clamp_min(1e-300)

    @classmethod
    def from_vectors(
        cls,
        vectors: Float[Tensor, "n d_model"],
        layers: Sequence[int],
        raw_norms: Sequence[float] | None = None,
        *,
        rtol: float = DEPENDENT_RTOL,
        positions: Positions = "last",
        n_prompts: int = 0,
        method: str = "diff_in_means",
        model_name: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Subspace:
        """The span of ``vectors`` (one per entry of ``layers``), orthonormalised in float64 by
        Gram-Schmidt in the order given (each vector is orthogonalised twice against the rows
        kept so far, so the basis is orthonormal to ~1e-15 before the float32 cast).

        A vector is dropped when it is zero or when its part orthogonal to the earlier rows is
        at most ``rtol`` of its length (numerically in their span); each drop is listed in
        ``metadata["dropped"]`` with its layer and that ratio, and logged. ``raw_norms``
        defaults to the vectors' own lengths. ``metadata["cosines"]`` holds the cosines between
        the input vectors, ``metadata["residuals"]`` each kept vector's orthogonal share.

        >>> sub = Subspace.from_vectors(torch.eye(4)[:2] * 3, layers=[6, 7])
        >>> sub.k, sub.layers, sub.raw_norms
        (2, (6, 7), (3.0, 3.0))
        """
        v, layers = _checked_vectors(vectors, layers, rtol)
        norms = v.norm(dim=-1)
        raw = norms.tolist() if raw_norms is None else [float(x) for x in raw_norms]
        if len(raw) != len(layers):
            raise UnlearnInterpError(f"{len(raw)} raw norms for {len(layers)} vectors")
        kept, residuals, dropped = gram_schmidt(v, norms, rtol)
        _log_dropped(layers, dropped)
        if not kept:
            raise UnlearnInterpError(
                f"all {len(layers)} vectors (layers {layers}) are zero, so they span nothing"
            )
        extra = {
            "input_layers": layers,
            "rtol": rtol,
            "residuals": [residuals[i] for i, _ in kept],
            "dropped": [
                {"layer": layers[i], "raw_norm": raw[i], "residual": r} for i, r in dropped
            ],
            "cosines": _cosines(v, norms),
            **(metadata or {}),
        }
        basis = torch.stack([row for _, row in kept]).float()
        layers, raw = [layers[i] for i, _ in kept], [raw[i] for i, _ in kept]
        return cls(basis, layers, raw, positions, n_prompts, method, model_name, extra)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the basis, as JSON-ready values."""
        return {
            "format": SUBSPACE_FORMAT,
            "k": self.k,
            "d_model": self.d_model,
            "layers": list(self.layers),
            "raw_norms": list(self.raw_norms),
            "positions": self.positions,
            "n_prompts": self.n_prompts,
            "method": self.method,
            "model_name": self.model_name,
            "metadata": json_ready(self.metadata),
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], basis: Tensor) -> Subspace:
        names = ("layers", "raw_norms", "positions", "n_prompts", "method", "model_name")
        _require_fields("subspace", fields, names)
        for key, size in (("k", basis.shape[0]), ("d_model", basis.shape[1])):
            if key in fields and fields[key] != size:
                raise UnlearnInterpError(
                    f"subspace metadata says {key} {fields[key]} but the basis has shape "
                    f"{tuple(basis.shape)}"
                )
        for key in ("layers", "raw_norms"):
            if not isinstance(fields[key], list):
                raise UnlearnInterpError(f"subspace metadata field {key} must be a list")
        kwargs = {name: fields[name] for name in names}
        return cls(basis=basis, metadata=dict(fields.get("metadata") or {}), **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``subspace.safetensors`` (key ``"basis"``) and ``subspace.json``, atomically.

        ``path`` is a directory (a run directory), or a ``.safetensors``/``.json`` file name whose
        twin is written beside it. Returns the safetensors path.
        """
        paths = artifact_paths(path, SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE)
        return _save_artifact(paths, "basis", self.basis, SUBSPACE_FORMAT, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Subspace:
        """Read a subspace written by :meth:`save`, refusing NaN, wrong shapes and a basis that is
        not orthonormal, each in one sentence naming the file.

        >>> sub = Subspace.load("runs/demo")               # doctest: +SKIP
        """
        paths = artifact_paths(path, SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE)
        return _load_artifact(cls, paths, "basis", "[k, d_model]")


def _checked_vectors(
    vectors: Tensor, layers: Sequence[int], rtol: float
) -> tuple[Float[Tensor, "n d_model"], list[int]]:
    """``vectors`` in float64 on the CPU and ``layers`` as a list, or one sentence on what is
    wrong: a shape that is not one row per layer, NaN, a negative ``rtol``."""
    v = vectors.detach().to("cpu", torch.float64)
    layers = list(layers)
    if v.ndim != 2 or len(layers) != v.shape[0]:
        raise UnlearnInterpError(
            f"vectors of shape {tuple(v.shape)} need one layer per row, got {len(layers)}"
        )
    if not torch.isfinite(v).all():
        raise UnlearnInterpError("vectors contain NaN or infinite values")
    if not rtol >= 0:
        raise UnlearnInterpError(f"rtol {rtol!r} must be >= 0")
    return v, layers


def _cosines(v: Float[Tensor, "n d_model"], norms: Float[Tensor, " n"]) -> list[list[float]]:
    """Cosines between every pair of rows of ``v`` (0 with a zero row), float64."""
    units = v / norms.clamp_min(1e-300).unsqueeze(1)
    return (units @ units.T).tolist()


def _log_dropped(layers: Sequence[int], dropped: Sequence[tuple[int, float]]) -> None:
    for i, residual in dropped:
        why = "zero vector" if residual == 0 else "in the span of the earlier rows"
        log.warning("subspace: dropped the vector of layer %s (%s)", layers[i], why)


def gram_schmidt(
    vectors: Float[Tensor, "n d_model"], norms: Float[Tensor, " n"], rtol: float
) -> tuple[list[tuple[int, Tensor]], list[float], list[tuple[int, float]]]:
    """``(kept (index, unit row), residual of every vector, dropped (index, residual))``, all
    float64; a vector's residual is the length of its unit vector's part orthogonal to the rows
    kept before it (the sine of its angle to their span)."""
    kept: list[tuple[int, Tensor]] = []
    residuals: list[float] = []
    dropped: list[tuple[int, float]] = []
    for i, (vector, norm) in enumerate(zip(vectors, norms, strict=True)):
        if norm == 0:
            residuals.append(0.0)
            dropped.append((i, 0.0))
            continue
        w = vector / norm
        for _ in range(2):  # twice: one pass leaves ~1e-16 relative error behind, per row kept
            for _, row in kept:
                w = w - (row @ w) * row
        residual = float(w.norm())
        residuals.append(residual)
        if residual <= rtol:
            dropped.append((i, residual))
        else:
            kept.append((i, w / residual))
    return kept, residuals, dropped


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def artifact_paths(
    path: str | os.PathLike, tensor_file: str = TENSOR_FILE, json_file: str = JSON_FILE
) -> tuple[Path, Path]:
    """``(tensor file, json file)``: ``path`` is a directory holding the two default names, or
    one of the two files, whose twin is beside it."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / tensor_file, path / json_file


def _require_fields(kind: str, fields: Mapping[str, Any], names: Sequence[str]) -> None:
    missing = [name for name in names if name not in fields]
    if missing:
        raise UnlearnInterpError(f"{kind} metadata lacks the field(s) {', '.join(missing)}")


def _save_artifact(
    paths: tuple[Path, Path], key: str, tensor: Tensor, fmt: str, fields: Mapping[str, Any]
) -> Path:
    """Write ``tensor`` as ``key`` to the safetensors file and ``fields`` (plus the library
    versions) to the JSON file, each atomically; return the safetensors path."""
    tensor_path, json_path = paths
    models.save_weights({key: tensor}, tensor_path, metadata={"format": fmt})
    write_json(json_path, {**fields, "library_versions": library_versions()})
    return tensor_path


def _load_artifact(cls: Any, paths: tuple[Path, Path], key: str, shape: str) -> Any:
    """``cls.from_dict(json fields, tensor)`` from a safetensors + JSON pair, each problem one
    sentence naming the file: no tensor ``key``, NaN, a shape other than ``shape``
    (``"[d_model]"`` or ``"[k, d_model]"``), JSON that is not an object or has bad fields."""
    tensor_path, json_path = paths
    tensors = models.load_weights(tensor_path)  # refuses NaN / inf
    if key not in tensors:
        raise UnlearnInterpError(f"{tensor_path} has no tensor named {key!r}")
    tensor = tensors[key]
    if tensor.ndim != shape.count(",") + 1 or tensor.shape[0] == 0:
        raise UnlearnInterpError(
            f"{tensor_path}: {key!r} has shape {tuple(tensor.shape)}, expected {shape}"
        )
    fields = read_json(json_path)
    if not isinstance(fields, dict):
        raise UnlearnInterpError(f"{json_path} does not hold a JSON object")
    try:
        return cls.from_dict(fields, tensor)
    except UnlearnInterpError as err:
        raise UnlearnInterpError(f"{json_path}: {err}") from err


def json_ready(value: Any) -> Any:
    """NaN becomes null and numpy/torch scalars plain numbers, so the JSON is standard."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is pd.NA:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
