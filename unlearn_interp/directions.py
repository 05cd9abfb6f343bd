"""Junk directions: masked activation means, the difference-in-means direction RMU writes,
per-layer candidates with an auditable selection, and the random control direction.

The blog's recipe (Arditi & Chughtai 2024): run the base and the unlearned variant on a handful
of hazardous prompts, take the mean unlearned activation minus the mean base activation at the
last token, at the RMU layer, and normalise::

    base, rmu = Variant("base"), Variant("rmu", weights=result.unlearned_weights)
    d = junk_direction(model, base=base, unlearned=rmu, prompts=prompts, layer=7)
    d.save(run_dir)                                   # direction.safetensors + direction.json
    control = random_direction(d.d_model, seed=0, orthogonal_to=d.vector)

Every layer at once, scored, with a selection that keeps its reasons::

    cands = candidate_directions(model, base, rmu, prompts, control_vectors=result.control_vectors)
    d = select_direction(cands, min_cos_control=0.9)  # d.metadata["selection"] says why

RMU trains several blocks (``update_layers``) and each writes its own junk, so the span of the
difference-in-means directions at those blocks' outputs can recover more than one direction::

    sub = junk_subspace(model, base, rmu, prompts, layers=subspace_layers(result.config))
    ablated = rmu.with_hooks(ablation_hooks(sub.basis), name="rmu_subspace_ablated")
    control = random_subspace_control(sub, seed=0)   # same dimension, orthogonal to it

Layer ``l`` is the residual stream *after* block ``l`` (``blocks.{l}.hook_resid_post``); the
reference RMU layer 7 is the blog's "start of layer 8". Means are masked (padding never counts)
and accumulated in float64, batch by batch: only running sums are kept, never the activations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from unlearn_interp import data, models
from unlearn_interp.artifacts import atomic_path, library_versions, read_json, write_json
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant, as_basis, unit

log = logging.getLogger(__name__)

Positions = (
    str | int
)  # "last" | "all" | a token index counted in real tokens (negative: from the end)

METHODS = ("diff_in_means", "forget_minus_retain", "pca")
PREFERENCES = ("raw_norm", "relative_norm", "norm_jump", "cos_control")

# A difference this small relative to the activations' own norm is float noise, not a direction.
ZERO_NORM_RTOL = 1e-5
# Difference norms spread less than this (relative to their mean) are equal up to float noise.
SPREAD_RTOL = 1e-4

FORMAT = "unlearn_interp.direction"
TENSOR_FILE, JSON_FILE = "direction.safetensors", "direction.json"
SUBSPACE_FORMAT = "unlearn_interp.subspace"
SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE = "subspace.safetensors", "subspace.json"
# A vector whose part orthogonal to the span of the earlier ones is shorter than this fraction of
# its own length adds no dimension (a repeat of a direction already in the span, or float noise).
DEPENDENT_RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Which tokens count
# ---------------------------------------------------------------------------------------------


def check_positions(positions: Positions) -> Positions:
    """Return ``positions`` if it is ``"last"``, ``"all"`` or an int, else raise naming the field."""
    if positions in ("last", "all") or (
        isinstance(positions, int) and not isinstance(positions, bool)
    ):
        return positions
    raise UnlearnInterpError(
        f"positions {positions!r} is not 'last', 'all' or a token index (an integer)"
    )


def select_positions(
    batch: data.Batch, positions: Positions, first_prompt: int = 0
) -> Bool[Tensor, "batch pos"]:
    """Which tokens of ``batch`` count: ``"all"`` real tokens, each prompt's ``"last"`` real token,
    or its token number ``positions`` counted in real tokens (``-1`` is the last, ``0`` the first,
    BOS where the tokenizer adds one). Works whatever the padding side.

    ``first_prompt`` is the batch's offset in the prompt list, so errors name the right prompt.

    >>> batch = data.encode_batch(tok, ["a b", "a"])               # doctest: +SKIP
    >>> select_positions(batch, "last").sum(dim=1)                  # doctest: +SKIP
    tensor([1, 1])
    """
    check_positions(positions)
    mask = batch.attention_mask.bool()
    lengths = mask.sum(dim=1)
    if (lengths == 0).any():
        row = int((lengths == 0).nonzero()[0])
        raise UnlearnInterpError(f"prompt {first_prompt + row} has no tokens")
    if positions == "all":
        return mask
    if positions == "last":
        chosen = torch.zeros_like(mask)
        chosen[torch.arange(mask.shape[0], device=mask.device), batch.last_positions] = True
        return chosen
    rank = mask.long().cumsum(dim=1) - 1  # index of each real token among the real tokens
    target = positions if positions >= 0 else lengths + positions
    target = torch.as_tensor(target, device=mask.device).expand_as(lengths)
    outside = (target < 0) | (target >= lengths)
    if outside.any():
        row = int(outside.nonzero()[0])
        raise UnlearnInterpError(
            f"positions {positions} does not exist in prompt {first_prompt + row}, "
            f"which has {int(lengths[row])} tokens"
        )
    return mask & (rank == target.unsqueeze(1))


# ---------------------------------------------------------------------------------------------
# Masked means, batch by batch
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Sums:
    """Running float64 sums over the selected tokens, one row per layer asked."""

    total: Tensor  # [layer, d_model] sum of activations
    norm_total: Tensor  # [layer] sum of per-token norms
    count: int = 0

    def add(self, index: int, rows: Tensor) -> None:
        rows = rows.double()
        self.total[index] += rows.sum(dim=0).cpu()
        self.norm_total[index] += rows.norm(dim=-1).sum().cpu()

    @property
    def mean(self) -> Tensor:
        return self.total / self.count

    @property
    def mean_norm(self) -> Tensor:
        return self.norm_total / self.count


def _applied(
    variant: Variant | None, model: HookedTransformer
) -> contextlib.AbstractContextManager:
    return variant.applied(model) if variant is not None else contextlib.nullcontext(model)


def iter_batches(
    model: HookedTransformer,
    prompts: Sequence[str],
    batch_size: int,
    max_len: int | None,
    desc: str,
) -> Iterator[tuple[int, data.Batch]]:
    """``(index of the first prompt, left-padded batch on the model's device)`` per batch."""
    if not prompts:
        raise UnlearnInterpError("the prompt list is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UnlearnInterpError(f"batch_size {batch_size!r} must be a positive integer")
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=None, leave=False):
        chunk = list(prompts[start : start + batch_size])
        yield start, _encode_within_context(model, chunk, max_len, start).to(model.cfg.device)


def _encode_within_context(
    model: HookedTransformer, texts: list[str], max_len: int | None, first_prompt: int
) -> data.Batch:
    """``texts`` cut on the right to ``max_len`` tokens and never beyond the model's context;
    a cut the caller did not ask for (``max_len`` unset or larger) is logged as a warning."""
    n_ctx = int(model.cfg.n_ctx)
    if max_len is not None and max_len <= n_ctx:
        return data.encode_batch(model.tokenizer, texts, max_len)
    batch = data.encode_batch(model.tokenizer, texts, n_ctx + 1)
    if batch.tokens.shape[1] <= n_ctx:
        return batch
    longest = first_prompt + int(batch.attention_mask.sum(dim=1).argmax())
    log.warning(
        "prompt %d (and maybe others) is longer than the model's %d-token context; "
        "truncated to its first %d tokens",
        longest, n_ctx, n_ctx,
    )  # fmt: skip
    return data.encode_batch(model.tokenizer, texts, n_ctx)


def forward_selected(
    model: HookedTransformer,
    batch: data.Batch,
    layers: Sequence[int],
    select: Tensor,
    variant: Variant | None,
    consume: Callable[[int, Tensor], None],
) -> None:
    """One forward pass of ``variant`` on ``batch``, stopped after the deepest layer asked;
    ``consume(i, rows)`` receives ``layers[i]``'s residual stream at the selected tokens
    (``[n_selected, d_model]``) while the pass runs, so nothing else is kept."""
    index = {models.resid_hook(layer): i for i, layer in enumerate(layers)}

    def capture(activation: Tensor, hook: Any) -> None:
        consume(index[hook.name], activation[select])

    capturing = [(name, capture) for name in index]
    with torch.no_grad(), _applied(variant, model), model.hooks(fwd_hooks=capturing):
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=max(layers) + 1)


def _check_layers(model: HookedTransformer, layers: Sequence[int] | int) -> list[int]:
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise UnlearnInterpError("layers is empty: ask for at least one layer")
    for layer in layers:
        models.check_layer(model, layer, field="layer")
    if len(set(layers)) != len(layers):
        raise UnlearnInterpError(f"layers {layers} contains a layer twice")
    return layers


def _activation_sums(
    model: HookedTransformer,
    prompts: Sequence[str],
    layers: Sequence[int],
    positions: Positions,
    variant: Variant | None,
    batch_size: int,
    max_len: int | None,
) -> _Sums:
    sums = _Sums(
        torch.zeros(len(layers), models.d_model(model), dtype=torch.float64),
        torch.zeros(len(layers), dtype=torch.float64),
    )
    desc = f"activations ({variant.name if variant else 'model'})"
    for start, batch in iter_batches(model, prompts, batch_size, max_len, desc):
        select = select_positions(batch, positions, first_prompt=start)
        forward_selected(model, batch, layers, select, variant, sums.add)
        sums.count += int(select.sum())
    return sums


def mean_activations(
    model: HookedTransformer,
    prompts: Sequence[str],
    layers: Sequence[int] | int,
    positions: Positions = "last",
    variant: Variant | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Float[Tensor, "n_layers_asked d_model"]:
    """Mean residual stream after each block in ``layers`` over the selected tokens, in float64.

    ``positions``: ``"last"`` (each prompt's last real token; the blog's choice), ``"all"`` (every
    real token, each token weighing the same) or an int (that token, counted in real tokens;
    negative counts from the end). Padding never counts. One forward pass per batch, stopped
    after the deepest layer asked, with ``variant`` applied; only running sums are kept. Prompts
    longer than ``max_len`` tokens are cut on the right, so "last" is then the last kept token.

    >>> means = mean_activations(model, prompts, layers=[5, 6, 7], variant=rmu)  # doctest: +SKIP
    >>> means.shape                                  # doctest: +SKIP
    torch.Size([3, 4096])
    """
    layers = _check_layers(model, layers)
    check_positions(positions)
    sums = _activation_sums(model, prompts, layers, positions, variant, batch_size, max_len)
    return sums.mean


# ---------------------------------------------------------------------------------------------
# The Direction artifact
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
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise UnlearnInterpError(f"layer {self.layer!r} must be a non-negative integer")
        check_positions(self.positions)
        if (
            isinstance(self.n_prompts, bool)
            or not isinstance(self.n_prompts, int)
            or self.n_prompts < 0
        ):
            raise UnlearnInterpError(f"n_prompts {self.n_prompts!r} must be a non-negative integer")
        if not self.method:
            raise UnlearnInterpError("method must be a non-empty string")
        self.raw_norm = float(self.raw_norm)

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
            "metadata": _json_ready(self.metadata),
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], vector: Tensor) -> Direction:
        names = ("layer", "positions", "n_prompts", "method", "model_name", "raw_norm")
        missing = [name for name in names if name not in fields]
        if missing:
            raise UnlearnInterpError(f"direction metadata lacks the field(s) {', '.join(missing)}")
        if "d_model" in fields and fields["d_model"] != vector.shape[0]:
            raise UnlearnInterpError(
                f"direction metadata says d_model {fields['d_model']} but the vector has "
                f"{vector.shape[0]} entries"
            )
        kwargs = {name: fields[name] for name in names}
        if isinstance(kwargs["raw_norm"], int) and not isinstance(kwargs["raw_norm"], bool):
            kwargs["raw_norm"] = float(kwargs["raw_norm"])  # JSON written by hand: 3, not 3.0
        return cls(vector=vector, metadata=dict(fields.get("metadata") or {}), **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``direction.safetensors`` (key ``"vector"``) and ``direction.json``, atomically.

        ``path`` is a directory (a run directory), or a ``.safetensors``/``.json`` file name whose
        twin is written beside it. Returns the safetensors path.
        """
        tensor_path, json_path = _direction_paths(path)
        models.save_weights({"vector": self.vector}, tensor_path, metadata={"format": FORMAT})
        write_json(json_path, {**self.to_dict(), "library_versions": library_versions()})
        return tensor_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        """Read a direction written by :meth:`save`, refusing NaN and mismatched shapes.

        >>> d = Direction.load("runs/demo")               # doctest: +SKIP
        """
        return _load_artifact(cls, _direction_paths(path), "vector", "[d_model]")


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


def _direction_paths(
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


def _json_ready(value: Any) -> Any:
    """NaN becomes null and numpy/torch scalars plain numbers, so the JSON is standard."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is pd.NA:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Candidates at every layer, and an auditable selection
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Difference-in-means candidates at several layers and one row of scores per layer.

    ``vectors[i]`` is the unit candidate at ``scores.layer[i]`` (zero where there was no
    difference). ``scores`` columns: ``layer``; ``raw_norm`` (length of mean unlearned minus
    mean base); ``base_norm`` / ``unlearned_norm`` (mean per-token activation norms);
    ``relative_norm`` (raw_norm / base_norm); ``norm_jump`` (raw_norm minus the previous
    layer's: the layer where the difference is written stands out even when it persists
    downstream); ``cos_mean_activations`` (cosine of the two mean
    activations); ``cos_ones`` (cosine with the all-ones direction: about 0.87 for RMU's
    uniform-[0,1) control vector, about 0 for a Gaussian one); ``cos_control`` (largest |cosine|
    with the run's control vectors, NaN without them) and ``control_index`` (which one);
    ``zero`` (the difference is float noise).
    """

    vectors: Float[Tensor, "layer d_model"]
    scores: pd.DataFrame
    positions: Positions
    n_prompts: int
    model_name: str

    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.scores["layer"]]

    def row(self, layer: int) -> dict[str, Any]:
        """The scores of ``layer`` as a plain dict."""
        if layer not in self.layers:
            raise UnlearnInterpError(f"layer {layer} is not among the candidates {self.layers}")
        return _json_ready(self.scores.iloc[self.layers.index(layer)].to_dict())

    def direction(self, layer: int, metadata: Mapping[str, Any] | None = None) -> Direction:
        """The candidate at ``layer`` as a :class:`Direction`; a zero difference is an error."""
        row = self.row(layer)
        if row["zero"]:
            raise _zero_norm_error(layer, self.n_prompts, row["raw_norm"], row["base_norm"])
        return Direction(
            vector=self.vectors[self.layers.index(layer)],
            raw_norm=row["raw_norm"],
            layer=layer,
            positions=self.positions,
            n_prompts=self.n_prompts,
            method="diff_in_means",
            model_name=self.model_name,
            metadata={"scores": row, **(metadata or {})},
        )

    def subspace(self, layers: Sequence[int], rtol: float = DEPENDENT_RTOL) -> Subspace:
        """The span of the candidates at ``layers``, orthonormalised in that order, without
        another forward pass (see :meth:`Subspace.from_vectors`; layers with no difference or
        no new dimension are dropped and listed in ``metadata["dropped"]``).

        >>> cands = candidate_directions(model, base, rmu, prompts)          # doctest: +SKIP
        >>> sub = cands.subspace([5, 6, 7]); sub.k, sub.layers                # doctest: +SKIP
        (3, (5, 6, 7))
        """
        layers = [int(layer) for layer in layers]
        rows = [self.row(layer) for layer in layers]  # an unknown layer: one sentence
        index = [self.layers.index(layer) for layer in layers]
        return Subspace.from_vectors(
            self.vectors[index],
            layers,
            raw_norms=[row["raw_norm"] for row in rows],
            rtol=rtol,
            positions=self.positions,
            n_prompts=self.n_prompts,
            model_name=self.model_name,
            metadata={"scores": rows},
        )


def _zero_norm_error(layer: int, n_prompts: int, raw: float, scale: float) -> UnlearnInterpError:
    return UnlearnInterpError(
        f"the unlearned and base variants give the same activations at layer {layer} on these "
        f"{n_prompts} prompts (difference norm {raw:.3g} against activation norm {scale:.3g}), "
        f"so there is no direction to extract"
    )


def _is_zero(raw_norm: float, scale: float) -> bool:
    return raw_norm <= ZERO_NORM_RTOL * max(scale, 1e-12)


def _control_scores(
    vectors: Tensor, control_vectors: Tensor | None
) -> tuple[list[float], list[int | None]]:
    if control_vectors is None:
        return [math.nan] * len(vectors), [None] * len(vectors)
    controls = control_vectors.detach().to("cpu", torch.float64)
    controls = controls.reshape(-1, controls.shape[-1])
    if controls.shape[-1] != vectors.shape[-1]:
        raise UnlearnInterpError(
            f"control_vectors have width {controls.shape[-1]} but the model's d_model is "
            f"{vectors.shape[-1]}"
        )
    controls = controls / controls.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cosines = (vectors.double() @ controls.T).abs()  # [layer, topic]
    best, which = cosines.max(dim=1)
    zero_rows = vectors.norm(dim=-1) == 0
    return (
        [math.nan if z else float(b) for b, z in zip(best, zero_rows, strict=True)],
        [None if z else int(w) for w, z in zip(which, zero_rows, strict=True)],
    )


def candidate_directions(
    model: HookedTransformer,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Positions = "last",
    control_vectors: Float[Tensor, "*topic d_model"] | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Candidates:
    """Difference-in-means candidates at ``layers`` (default: every layer), scored.

    Two forward passes per batch (base and unlearned), each stopped after the deepest layer.

    >>> cands = candidate_directions(model, base, rmu, prompts,
    ...                              control_vectors=result.control_vectors)   # doctest: +SKIP
    >>> cands.scores[["layer", "raw_norm", "cos_control"]]                    # doctest: +SKIP
    """
    layers = _check_layers(model, range(models.n_layers(model)) if layers is None else layers)
    check_positions(positions)
    args = (model, prompts, layers, positions)
    base_sums = _activation_sums(*args, base, batch_size, max_len)
    unl_sums = _activation_sums(*args, unlearned, batch_size, max_len)
    diff = unl_sums.mean - base_sums.mean  # [layer, d_model]
    raw = diff.norm(dim=-1)
    base_norm = base_sums.mean_norm
    zero = raw <= ZERO_NORM_RTOL * base_norm.clamp_min(1e-12)
    vectors = torch.where(zero.unsqueeze(1), 0.0, diff / raw.clamp_min(1e-30).unsqueeze(1))
    cos_control, control_index = _control_scores(vectors, control_vectors)
    d = models.d_model(model)
    scores = pd.DataFrame(
        {
            "layer": layers,
            "raw_norm": raw.tolist(),
            "base_norm": base_norm.tolist(),
            "unlearned_norm": unl_sums.mean_norm.tolist(),
            "relative_norm": (raw / base_norm.clamp_min(1e-30)).tolist(),
            "norm_jump": _norm_jumps(layers, raw.tolist()),
            "cos_mean_activations": torch.cosine_similarity(
                unl_sums.mean, base_sums.mean, dim=-1
            ).tolist(),
            "cos_ones": (vectors.sum(dim=-1) / math.sqrt(d)).tolist(),
            "cos_control": cos_control,
            "control_index": pd.array(control_index, dtype="Int64"),
            "zero": zero.tolist(),
        }
    )
    return Candidates(vectors.float(), scores, positions, len(prompts), models.model_name(model))


def _norm_jumps(layers: Sequence[int], raw: Sequence[float]) -> list[float]:
    """raw_norm minus the previous layer's (NaN where that layer was not scored; layer 0 counts
    from an unchanged embedding): large where a variant writes its difference."""
    by_layer = dict(zip(layers, raw, strict=True))
    previous = {layer: 0.0 if layer == 0 else by_layer.get(layer - 1, math.nan) for layer in layers}
    return [by_layer[layer] - previous[layer] for layer in layers]


def select_direction(
    candidates: Candidates,
    min_raw_norm: float = 0.0,
    min_relative_norm: float | None = None,
    min_cos_control: float | None = None,
    prefer: str = "raw_norm",
) -> Direction:
    """Pick one candidate by named thresholds, keeping every score and the reasons.

    A candidate survives when its difference is not float noise, ``raw_norm > min_raw_norm``,
    ``relative_norm >= min_relative_norm`` and ``cos_control >= min_cos_control`` (the last two
    only when given). Among survivors the largest ``prefer`` score wins (ties: the earlier
    layer). ``metadata["selection"]`` records the thresholds, the chosen row, the runner-up and
    the whole table with ``passes``/``selected`` columns; when nothing survives the error names
    the thresholds and the best scores seen.

    >>> d = select_direction(cands, min_cos_control=0.9)            # doctest: +SKIP
    >>> d.metadata["selection"]["runner_up"]["layer"]               # doctest: +SKIP
    """
    if prefer not in PREFERENCES:
        raise UnlearnInterpError(f"prefer {prefer!r} is not one of {', '.join(PREFERENCES)}")
    table = candidates.scores.copy()
    has_controls = table["cos_control"].notna().any()
    if (min_cos_control is not None or prefer == "cos_control") and not has_controls:
        raise UnlearnInterpError(
            "selecting by cos_control needs control vectors, but these candidates were scored "
            "without any"
        )
    thresholds = {
        "min_raw_norm": min_raw_norm,
        "min_relative_norm": min_relative_norm,
        "min_cos_control": min_cos_control,
    }
    passes = ~table["zero"] & (table["raw_norm"] > min_raw_norm)
    if min_relative_norm is not None:
        passes &= table["relative_norm"] >= min_relative_norm
    if min_cos_control is not None:
        passes &= table["cos_control"].fillna(-1.0) >= min_cos_control
    table["passes"] = passes
    if not passes.any():
        raise UnlearnInterpError(_nothing_survives(table, thresholds))
    ranked = table[passes].sort_values([prefer, "layer"], ascending=[False, True])
    chosen = int(ranked["layer"].iloc[0])
    table["selected"] = table["layer"] == chosen
    runner_up = int(ranked["layer"].iloc[1]) if len(ranked) > 1 else None
    selection = {
        "prefer": prefer,
        "thresholds": {k: v for k, v in thresholds.items() if v is not None},
        "chosen": candidates.row(chosen),
        "runner_up": candidates.row(runner_up) if runner_up is not None else None,
        "n_candidates": len(table),
        "n_passing": int(passes.sum()),
        "table": _json_ready(table.to_dict(orient="records")),
    }
    log.info(
        "selected layer %d by %s (%d of %d candidates pass)",
        chosen,
        prefer,
        int(passes.sum()),
        len(table),
    )
    return candidates.direction(chosen, metadata={"selection": selection})


def _nothing_survives(table: pd.DataFrame, thresholds: Mapping[str, float | None]) -> str:
    given = ", ".join(f"{k}={v}" for k, v in thresholds.items() if v is not None)
    best = table.loc[table["raw_norm"].idxmax()]
    text = f"best raw_norm {best['raw_norm']:.3g} at layer {int(best['layer'])}"
    if table["cos_control"].notna().any():
        top = table.loc[table["cos_control"].idxmax()]
        text += f", best cos_control {top['cos_control']:.3g} at layer {int(top['layer'])}"
    return f"no candidate layer passes the thresholds {given} ({text})"


# ---------------------------------------------------------------------------------------------
# One direction at one layer, by method
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Moments:
    """Float64 moments of per-token differences (unlearned minus base) at one layer."""

    total: Tensor
    second: Tensor | None
    base_norm_total: float = 0.0
    count: int = 0

    def add(self, diff: Tensor, base_rows: Tensor) -> None:
        self.total += diff.sum(dim=0).cpu()
        if self.second is not None:
            self.second += (diff.T @ diff).cpu()
        self.base_norm_total += float(base_rows.norm(dim=-1).sum())
        self.count += diff.shape[0]


def _paired_rows(
    model: HookedTransformer,
    base: Variant,
    unlearned: Variant,
    prompts: Sequence[str],
    layer: int,
    positions: Positions,
    batch_size: int,
    max_len: int | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per batch, ``(unlearned - base, base)`` at the selected tokens of ``layer``, float64."""
    found: list[Tensor] = []  # this batch's rows: base, then unlearned

    def keep(_: int, rows: Tensor) -> None:
        found.append(rows.double())

    for start, batch in iter_batches(model, prompts, batch_size, max_len, "token differences"):
        select = select_positions(batch, positions, first_prompt=start)
        found.clear()
        for variant in (base, unlearned):
            forward_selected(model, batch, [layer], select, variant, keep)
        base_rows, unlearned_rows = found
        yield unlearned_rows - base_rows, base_rows


def _difference_moments(
    rows: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    d_model: int,
    second_moment: bool,
    outlier_z: float | None,
) -> tuple[_Moments, dict[str, Any]]:
    """Moments of the per-token differences, after dropping outlier tokens when asked.

    The outlier filter needs every token's difference norm before it can set the cut, so it
    costs one extra pass (norms only, one float per token) instead of keeping activations.
    """
    keep, info = None, {}
    if outlier_z is not None:
        norms = torch.cat([diff.norm(dim=-1).cpu() for diff, _ in rows()])
        keep, info = _outlier_filter(norms, outlier_z)
    moments = _Moments(
        torch.zeros(d_model, dtype=torch.float64),
        torch.zeros(d_model, d_model, dtype=torch.float64) if second_moment else None,
    )
    seen = 0
    for diff, base_rows in rows():
        if keep is not None:
            kept = keep[seen : seen + diff.shape[0]].to(diff.device)
            seen += diff.shape[0]
            diff, base_rows = diff[kept], base_rows[kept]
        moments.add(diff, base_rows)
    return moments, info


def _outlier_filter(norms: Tensor, outlier_z: float) -> tuple[Tensor, dict[str, Any]]:
    """Keep tokens whose difference norm is at most ``outlier_z`` standard deviations above the
    mean: attention-sink tokens (BOS) carry huge activations that would otherwise dominate."""
    if not outlier_z > 0:
        raise UnlearnInterpError(f"outlier_z {outlier_z!r} must be positive")
    mean, std = norms.mean(), norms.std(unbiased=False)
    if std <= SPREAD_RTOL * mean:  # all norms equal up to float noise: z-scores mean nothing
        keep = torch.ones_like(norms, dtype=torch.bool)
    else:
        keep = (norms - mean) / std <= outlier_z
    info = {
        "outlier_z": outlier_z,
        "n_tokens": len(norms),
        "n_dropped": int((~keep).sum()),
        "norm_mean": float(mean),
        "norm_std": float(std),
    }
    log.info("outlier filter dropped %d of %d tokens", info["n_dropped"], len(norms))
    return keep, info


def junk_direction(
    model: HookedTransformer,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layer: int,
    positions: Positions = "last",
    method: str = "diff_in_means",
    retain_prompts: Sequence[str] | None = None,
    outlier_z: float | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Direction:
    """The junk direction at ``layer``: by default the blog's mean unlearned activation minus mean
    base activation on the same ``prompts`` (last token), normalised.

    ``method``:

    * ``"diff_in_means"``: the blog's recipe.
    * ``"forget_minus_retain"``: mean *unlearned* activation on ``prompts`` minus on
      ``retain_prompts`` (``base`` is not used and may be None).
    * ``"pca"``: first principal axis of the per-token differences (unlearned minus base on the
      same token), sign aligned with their mean. Uncentred (the second moment), because the junk
      is a shift: centring would throw away the very component being looked for.

    ``outlier_z`` (with ``"diff_in_means"`` or ``"pca"``, meant for ``positions="all"``) first
    drops tokens whose difference norm has a z-score above it; ``metadata`` records how many.

    >>> d = junk_direction(model, base=base, unlearned=rmu, prompts=prompts, layer=7)  # doctest: +SKIP
    >>> d = junk_direction(model, base, rmu, prompts, layer=7, positions="all",
    ...                    method="pca", outlier_z=3.0)                             # doctest: +SKIP
    """
    models.check_layer(model, layer, field="layer")
    check_positions(positions)
    if method not in METHODS:
        raise UnlearnInterpError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method == "forget_minus_retain":
        return _forget_minus_retain(
            model,
            unlearned,
            prompts,
            retain_prompts,
            layer,
            positions,
            outlier_z,
            batch_size,
            max_len,
        )
    if base is None:
        raise UnlearnInterpError(f"method {method!r} needs a base variant")
    if method == "diff_in_means" and outlier_z is None:
        cands = candidate_directions(
            model,
            base,
            unlearned,
            prompts,
            [layer],
            positions,
            batch_size=batch_size,
            max_len=max_len,
        )
        return cands.direction(layer)

    def rows() -> Iterator[tuple[Tensor, Tensor]]:
        return _paired_rows(model, base, unlearned, prompts, layer, positions, batch_size, max_len)

    moments, info = _difference_moments(rows, models.d_model(model), method == "pca", outlier_z)
    mean = moments.total / moments.count
    base_norm = moments.base_norm_total / moments.count
    vector, raw, extra = (
        _pca_axis(moments, mean) if method == "pca" else (mean, float(mean.norm()), {})
    )
    spread = float(moments.second.trace().sqrt()) if moments.second is not None else raw
    if _is_zero(max(raw, spread), base_norm):
        raise _zero_norm_error(layer, len(prompts), raw, base_norm)
    return Direction(
        vector=vector,
        raw_norm=raw,
        layer=layer,
        positions=positions,
        n_prompts=len(prompts),
        method=method,
        model_name=models.model_name(model),
        metadata={"base_norm": base_norm, **extra, **info},
    )


def _pca_axis(moments: _Moments, mean: Tensor) -> tuple[Tensor, float, dict[str, Any]]:
    """Top eigenvector of the uncentred second moment, pointing along the mean difference."""
    second = moments.second / moments.count
    eigenvalues, eigenvectors = torch.linalg.eigh(second)
    axis = eigenvectors[:, -1]
    if float(axis @ mean) < 0:
        axis = -axis
    explained = float(eigenvalues[-1] / eigenvalues.sum().clamp_min(1e-300))
    # raw_norm: the mean difference's length along the axis, comparable to diff_in_means'.
    return axis, abs(float(axis @ mean)), {"explained_second_moment": explained}


def _forget_minus_retain(
    model: HookedTransformer,
    unlearned: Variant,
    prompts: Sequence[str],
    retain_prompts: Sequence[str] | None,
    layer: int,
    positions: Positions,
    outlier_z: float | None,
    batch_size: int,
    max_len: int | None,
) -> Direction:
    if not retain_prompts:
        raise UnlearnInterpError("method 'forget_minus_retain' needs retain_prompts")
    if outlier_z is not None:
        raise UnlearnInterpError(
            "outlier_z applies to per-token differences, not to 'forget_minus_retain'"
        )
    common = dict(
        layers=[layer],
        positions=positions,
        variant=unlearned,
        batch_size=batch_size,
        max_len=max_len,
    )
    forget = _activation_sums(model, prompts, **common)
    retain = _activation_sums(model, retain_prompts, **common)
    diff = (forget.mean - retain.mean)[0]
    raw, scale = float(diff.norm()), float(retain.mean_norm[0])
    if _is_zero(raw, scale):
        raise UnlearnInterpError(
            f"the unlearned variant's mean activation at layer {layer} is the same on the forget "
            f"and the retain prompts (difference norm {raw:.3g}), so there is no direction"
        )
    return Direction(
        vector=diff,
        raw_norm=raw,
        layer=layer,
        positions=positions,
        n_prompts=len(prompts),
        method="forget_minus_retain",
        model_name=models.model_name(model),
        metadata={"n_retain_prompts": len(retain_prompts), "retain_norm": scale},
    )


# ---------------------------------------------------------------------------------------------
# The random control
# ---------------------------------------------------------------------------------------------


def random_direction(
    d_model: int, seed: int, orthogonal_to: Float[Tensor, "*k d_model"] | None = None
) -> Float[Tensor, " d_model"]:
    """A unit Gaussian direction (uniform on the sphere), reproducible from ``seed``; exactly
    orthogonal (to float precision) to ``orthogonal_to`` (one direction or several rows) when
    given. The control every recovery number needs.

    >>> r = random_direction(4096, seed=0, orthogonal_to=junk.vector)   # doctest: +SKIP
    >>> abs(float(r @ junk.vector)) < 1e-6                               # doctest: +SKIP
    True
    """
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
        raise UnlearnInterpError(f"d_model {d_model!r} must be a positive integer")
    generator = torch.Generator().manual_seed(int(seed))
    v = torch.randn(d_model, generator=generator, dtype=torch.float64)
    if orthogonal_to is not None:
        others = orthogonal_to.detach().to("cpu", torch.float64).reshape(-1, d_model)
        if others.shape[0] >= d_model:
            raise UnlearnInterpError(
                f"cannot be orthogonal to {others.shape[0]} directions in {d_model} dimensions"
            )
        basis, _ = torch.linalg.qr(others.T)  # [d_model, k], orthonormal columns
        for _ in range(2):  # twice: one Gram-Schmidt pass leaves ~1e-16 * |v| behind
            v = v - basis @ (basis.T @ v)
    return (v / v.norm()).float()


# ---------------------------------------------------------------------------------------------
# Subspaces: one junk direction per updated block
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
        k = self.k
        self.layers = tuple(self.layers)
        self.raw_norms = tuple(float(v) for v in self.raw_norms)
        if len(self.layers) != k or len(self.raw_norms) != k:
            raise UnlearnInterpError(
                f"a subspace of dimension {k} needs {k} layers and {k} raw norms, got "
                f"{len(self.layers)} and {len(self.raw_norms)}"
            )
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.layers):
            raise UnlearnInterpError(f"layers {list(self.layers)} must be non-negative integers")
        if not all(math.isfinite(v) and v >= 0 for v in self.raw_norms):
            raise UnlearnInterpError(f"raw_norms {list(self.raw_norms)} must be finite and >= 0")
        check_positions(self.positions)
        if isinstance(self.n_prompts, bool) or not isinstance(self.n_prompts, int):
            raise UnlearnInterpError(f"n_prompts {self.n_prompts!r} must be an integer")
        if self.n_prompts < 0 or not self.method:
            raise UnlearnInterpError("n_prompts must be >= 0 and method a non-empty string")

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
        norms = v.norm(dim=-1)
        raw = norms.tolist() if raw_norms is None else [float(x) for x in raw_norms]
        if len(raw) != len(layers):
            raise UnlearnInterpError(f"{len(raw)} raw norms for {len(layers)} vectors")
        kept, residuals, dropped = _gram_schmidt(v, norms, rtol)
        for i, residual in dropped:
            why = "zero vector" if residual == 0 else "in the span of the earlier rows"
            log.warning("subspace: dropped the vector of layer %s (%s)", layers[i], why)
        if not kept:
            raise UnlearnInterpError(
                f"all {len(layers)} vectors (layers {layers}) are zero, so they span nothing"
            )
        units = v / norms.clamp_min(1e-300).unsqueeze(1)
        extra = {
            "input_layers": layers,
            "rtol": rtol,
            "residuals": [residuals[i] for i, _ in kept],
            "dropped": [
                {"layer": layers[i], "raw_norm": raw[i], "residual": r} for i, r in dropped
            ],
            "cosines": (units @ units.T).tolist(),
        }
        extra.update(metadata or {})
        return cls(
            basis=torch.stack([row for _, row in kept]).float(),
            layers=[layers[i] for i, _ in kept],
            raw_norms=[raw[i] for i, _ in kept],
            positions=positions,
            n_prompts=n_prompts,
            method=method,
            model_name=model_name,
            metadata=extra,
        )

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
            "metadata": _json_ready(self.metadata),
        }

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any], basis: Tensor) -> Subspace:
        names = ("layers", "raw_norms", "positions", "n_prompts", "method", "model_name")
        missing = [name for name in names if name not in fields]
        if missing:
            raise UnlearnInterpError(f"subspace metadata lacks the field(s) {', '.join(missing)}")
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
        tensor_path, json_path = _direction_paths(path, SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE)
        models.save_weights({"basis": self.basis}, tensor_path, {"format": SUBSPACE_FORMAT})
        write_json(json_path, {**self.to_dict(), "library_versions": library_versions()})
        return tensor_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Subspace:
        """Read a subspace written by :meth:`save`, refusing NaN, wrong shapes and a basis that is
        not orthonormal, each in one sentence naming the file.

        >>> sub = Subspace.load("runs/demo")               # doctest: +SKIP
        """
        paths = _direction_paths(path, SUBSPACE_TENSOR_FILE, SUBSPACE_JSON_FILE)
        return _load_artifact(cls, paths, "basis", "[k, d_model]")


def _gram_schmidt(
    vectors: Tensor, norms: Tensor, rtol: float
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


def subspace_layers(config: Any) -> list[int]:
    """The layers whose junk directions span the default subspace of an RMU run: the output of
    each updated block (the residual stream after it), i.e. ``config.update_layers``.

    ``config`` is an ``rmu.RMUConfig`` (or ``RMUResult.config``) or the ``"rmu"`` section of a run's
    ``config.json``.

    >>> subspace_layers({"layer": 7, "update_layers": [5, 6, 7]})
    [5, 6, 7]
    """
    layers = config.get("update_layers") if isinstance(config, Mapping) else None
    if not isinstance(config, Mapping):
        layers = getattr(config, "update_layers", None)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise UnlearnInterpError(
            f"the RMU config names no update_layers (got {layers!r}), so there is no default "
            "subspace; give the layers"
        )
    return [int(layer) for layer in layers]


def junk_subspace(
    model: HookedTransformer,
    base: Variant | None,
    unlearned: Variant,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    positions: Positions = "last",
    control_vectors: Float[Tensor, "*topic d_model"] | None = None,
    rtol: float = DEPENDENT_RTOL,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Subspace:
    """The span of the difference-in-means junk directions at ``layers`` (default choice:
    :func:`subspace_layers`, one per updated block), orthonormalised in the order given.

    Each direction is :func:`junk_direction`'s (mean unlearned minus mean base activation at
    ``positions``, padding excluded), all from one forward pass per variant and batch, stopped
    after the deepest layer. Layers with no difference, or whose direction lies in the span of
    the earlier ones, are dropped and listed in ``metadata["dropped"]``. With
    ``control_vectors`` the cosine of each with the subspace is kept in
    ``metadata["cos_with_control_vectors"]``.

    >>> sub = junk_subspace(model, base, rmu, prompts, layers=[6, 7])        # doctest: +SKIP
    >>> ablated = rmu.with_hooks(ablation_hooks(sub.basis))                   # doctest: +SKIP
    """
    layers = _check_layers(model, layers)
    cands = candidate_directions(
        model, base, unlearned, prompts, layers, positions, control_vectors, batch_size, max_len
    )
    sub = cands.subspace(layers, rtol=rtol)
    if control_vectors is not None:
        sub.metadata["cos_with_control_vectors"] = sub.cos_with(control_vectors).tolist()
    return sub


def random_subspace(
    d_model: int, k: int, seed: int, orthogonal_to: Float[Tensor, "*m d_model"] | None = None
) -> Float[Tensor, "k d_model"]:
    """``k`` orthonormal rows drawn uniformly (Haar) among k-frames, reproducible from ``seed``;
    inside the orthogonal complement of ``orthogonal_to`` (rows, need not be orthonormal) when
    given. The control of matched dimension for a subspace ablation.

    >>> r = random_subspace(4096, 3, seed=0, orthogonal_to=sub.basis)   # doctest: +SKIP
    >>> float((r @ sub.basis.T).abs().max()) < 1e-6                     # doctest: +SKIP
    True
    """
    for name, value in (("d_model", d_model), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnlearnInterpError(f"{name} {value!r} must be a positive integer")
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(d_model, k, generator=generator, dtype=torch.float64)
    m = 0
    if orthogonal_to is not None:
        others = orthogonal_to.detach().to("cpu", torch.float64).reshape(-1, d_model)
        m = others.shape[0]
        if m + k > d_model:
            raise UnlearnInterpError(
                f"cannot fit {k} directions orthogonal to {m} others in {d_model} dimensions"
            )
        span, _ = torch.linalg.qr(others.T)  # [d_model, m], orthonormal columns
        for _ in range(2):  # twice, as in random_direction
            gaussian = gaussian - span @ (span.T @ gaussian)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # fixes QR's signs: Haar, not biased
    return q.T.float().contiguous()


def random_subspace_control(subspace: Subspace, seed: int = 0, orthogonal: bool = True) -> Subspace:
    """A random control for ``subspace``: same dimension, layers and raw norms, a
    :func:`random_subspace` basis orthogonal to it unless ``orthogonal=False``.

    >>> rand = random_subspace_control(sub, seed=0)                       # doctest: +SKIP
    >>> ctrl = rmu.with_hooks(ablation_hooks(rand.basis), name="rmu_random_subspace_ablated")  # doctest: +SKIP
    """
    basis = random_subspace(
        subspace.d_model, subspace.k, seed, orthogonal_to=subspace.basis if orthogonal else None
    )
    return Subspace(
        basis=basis,
        layers=subspace.layers,
        raw_norms=subspace.raw_norms,
        positions=subspace.positions,
        n_prompts=0,
        method="random",
        model_name=subspace.model_name,
        metadata={"seed": seed, "orthogonal_to_junk": orthogonal, "control_for": subspace.method},
    )


# ---------------------------------------------------------------------------------------------
# The `direction` step: extract, then write the artifacts
# ---------------------------------------------------------------------------------------------


def extract_direction(
    model: HookedTransformer,
    base: Variant,
    unlearned: Variant,
    prompts: Sequence[str],
    layer: int | None = None,
    all_layers: bool = False,
    positions: Positions = "last",
    method: str = "diff_in_means",
    retain_prompts: Sequence[str] | None = None,
    outlier_z: float | None = None,
    control_vectors: Tensor | None = None,
    min_raw_norm: float = 0.0,
    min_cos_control: float | None = None,
    prefer: str = "raw_norm",
    batch_size: int = 16,
    max_len: int | None = None,
) -> tuple[Direction, Candidates]:
    """The ``direction`` command: score candidates at ``layer`` (or every layer with
    ``all_layers``) and return the direction with its candidates table.

    Without ``layer`` (``all_layers`` only) :func:`select_direction` picks the layer by the
    thresholds (its reasons stay in ``metadata["selection"]``); the direction is then taken at
    that layer by ``method``.

    >>> d, cands = extract_direction(model, base, rmu, prompts, all_layers=True)  # doctest: +SKIP
    """
    if layer is None and not all_layers:
        raise UnlearnInterpError("give a layer, or ask for all layers to select one")
    if layer is not None:
        models.check_layer(model, layer, field="layer")
    cands = candidate_directions(
        model,
        base,
        unlearned,
        prompts,
        None if all_layers else [layer],
        positions,
        control_vectors,
        batch_size,
        max_len,
    )
    by_candidates = method == "diff_in_means" and outlier_z is None
    extra: dict[str, Any] = {}
    if layer is None:
        chosen = select_direction(
            cands, min_raw_norm=min_raw_norm, min_cos_control=min_cos_control, prefer=prefer
        )
        if by_candidates:
            return chosen, cands
        layer, extra = chosen.layer, {"selection": chosen.metadata["selection"]}
    if by_candidates:
        return cands.direction(layer), cands
    direction = junk_direction(
        model,
        base,
        unlearned,
        prompts,
        layer,
        positions,
        method,
        retain_prompts,
        outlier_z,
        batch_size,
        max_len,
    )
    direction.metadata.update(scores=cands.row(layer), **extra)
    return direction, cands


def random_control(direction: Direction, seed: int = 0, orthogonal: bool = True) -> Direction:
    """A random control for ``direction``: same layer, positions and raw norm (norm-matched),
    a :func:`random_direction` vector orthogonal to it unless ``orthogonal=False``.

    >>> rand = random_control(junk, seed=0)                            # doctest: +SKIP
    >>> abl = rmu.with_hooks(ablation_hooks(rand.vector), name="rmu_random_ablated")  # doctest: +SKIP
    """
    vector = random_direction(
        direction.d_model, seed, orthogonal_to=direction.vector if orthogonal else None
    )
    return Direction(
        vector=vector,
        raw_norm=direction.raw_norm,
        layer=direction.layer,
        positions=direction.positions,
        n_prompts=0,
        method="random",
        model_name=direction.model_name,
        metadata={"seed": seed, "orthogonal_to_junk": orthogonal, "control_for": direction.method},
    )


def save_extraction(
    out: str | os.PathLike, direction: Direction, candidates: Candidates
) -> dict[str, Path]:
    """Write ``direction.safetensors``, ``direction.json`` and ``tables/direction_candidates.csv``
    into run directory ``out``; the table marks the chosen layer (and, after a selection,
    which layers passed the thresholds)."""
    out = Path(out)
    table = candidates.scores.copy()
    selection = direction.metadata.get("selection")
    if selection:
        table["passes"] = [row["passes"] for row in selection["table"]]
    table["selected"] = table["layer"] == direction.layer
    csv_path = out / "tables" / "direction_candidates.csv"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    tensor_path = direction.save(out)
    return {"direction": tensor_path, "metadata": out / JSON_FILE, "candidates": csv_path}


def unlearned_from_run(
    model: HookedTransformer, run_dir: str | os.PathLike
) -> tuple[Variant, Tensor | None]:
    """The unlearned variant stored in run directory ``run_dir``
    (``unlearned_weights.safetensors``) and its control vectors
    (``control_vectors.safetensors``, key ``"control_vectors"``) when the run saved them.

    >>> rmu, controls = unlearned_from_run(model, "runs/demo")     # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    weights_path = run_dir / "unlearned_weights.safetensors"
    if not weights_path.is_file():
        raise UnlearnInterpError(
            f"{run_dir} has no unlearned_weights.safetensors, so it is not an RMU run"
        )
    variant = Variant("unlearned", weights=models.load_weights(weights_path))
    controls_path = run_dir / "control_vectors.safetensors"
    if not controls_path.is_file():
        return variant, None
    tensors = models.load_weights(controls_path)
    if "control_vectors" not in tensors:
        raise UnlearnInterpError(f"{controls_path} has no tensor named 'control_vectors'")
    return variant, tensors["control_vectors"]
